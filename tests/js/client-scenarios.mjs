// Scenarios for the chat page's own STOMP module (stomp_chat/web/static/stomp.js),
// run in Node by tests/test_web_static_stomp.py against a real server.
//
//   node client-scenarios.mjs WS_URL SCENARIO   -> one JSON line of observations
//
// `ws` stands in for the browser's WebSocket; a wrapper records every socket so
// a scenario can cut one the way a network switch or a sleeping laptop does.

import { randomBytes } from 'node:crypto';
import { WebSocketServer } from 'ws';
import WebSocket from 'ws';

import {
  FrameReader,
  State,
  StompClient,
  backoffDelay,
  encodeFrame,
} from '../../stomp_chat/web/static/stomp.js';

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const tag = randomBytes(4).toString('hex');

async function until(predicate, what, timeoutMs = 4000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(5);
  }
}

/** A client whose sockets are remembered, with its state changes and errors recorded. */
function recordedClient(url, options = {}) {
  const sockets = [];
  const states = [];
  const errors = [];
  class RecordingSocket extends WebSocket {
    constructor(...args) {
      super(...args);
      sockets.push(this);
    }
  }
  const client = new StompClient(url, {
    WebSocket: RecordingSocket,
    onStateChange: (state) => states.push(state),
    onStompError: (frame) => errors.push(frame.headers.message),
    ...options,
  });
  return { client, sockets, states, errors };
}

const utf8 = new TextEncoder();
const text = (bytes) => new TextDecoder().decode(bytes);

const SCENARIOS = {
  /** Frames split at every byte offset, several per chunk, between heart-beats. */
  async reader() {
    const frames = [
      encodeFrame('MESSAGE', { destination: '/topic/a:b', 'x-line': 'one\ntwo' }, '안녕하세요 👋'),
      encodeFrame('RECEIPT', { 'receipt-id': '7' }),
      encodeFrame('MESSAGE', { destination: '/topic/nul' }, new Uint8Array([1, 0, 2])),
    ];
    const stream = new Uint8Array([10, ...frames[0], 10, 13, 10, ...frames[1], ...frames[2], 10]);
    const splits = [];
    for (let cut = 0; cut <= stream.length; cut++) {
      const reader = new FrameReader();
      const got = [...reader.push(stream.subarray(0, cut)), ...reader.push(stream.subarray(cut))];
      splits.push(got.map((f) => [f.command, f.headers.destination ?? f.headers['receipt-id'],
        f.headers['x-line'] ?? null, [...f.binaryBody]]));
    }
    const same = splits.every((s) => JSON.stringify(s) === JSON.stringify(splits[0]));
    let oversized = null;
    try {
      new FrameReader(16).push(utf8.encode('MESSAGE\nlong:xxxxxxxxxxxxxxxxxxxxxxxx'));
    } catch (error) {
      oversized = error.message;
    }
    const delays = [0, 1, 2, 3, 10, 40].map((n) => backoffDelay(n, { initial: 500, max: 15000, jitter: 0 }));
    return { same, first: splits[0], count: splits.length, oversized, delays };
  },

  /** CONNECT with 1.2 and heart-beats; SEND with a receipt; Korean, emoji, 200 KB bodies; escaped headers. */
  async roundtrip(url) {
    const { client, states } = recordedClient(url, { heartbeat: [1000, 1000] });
    const connected = await client.activate();
    const got = [];
    const destination = `/topic/client-${tag}`;
    client.subscribe(destination, (frame) => got.push(frame));
    await client.send('/topic/nowhere', 'sync', { receipt: true }); // the SUBSCRIBE is in place
    const long = '가'.repeat(70000) + '👋';
    const receipt = await client.send(destination, '안녕하세요 👋', {
      headers: { 'x-odd': 'a:b\nc\\d' },
      receipt: true,
    });
    client.send(destination, long);
    client.send(destination, { hello: '세계' });
    await until(() => got.length === 3, 'three messages');
    await client.deactivate();
    return {
      version: connected.headers.version,
      serverHeartbeat: connected.headers['heart-beat'],
      receiptId: receipt.headers['receipt-id'],
      first: got[0].body,
      odd: got[0].headers['x-odd'],
      longOk: got[1].body === long,
      longBytes: got[1].binaryBody.length,
      json: got[2].json(),
      jsonType: got[2].headers['content-type'],
      states,
      finalState: client.state,
    };
  },

  /** client-individual ack on a queue: a NACKed message comes back, an ACKed one does not. */
  async acks(url) {
    const { client } = recordedClient(url);
    await client.activate();
    const queue = `/queue/client-${tag}`;
    const got = [];
    client.subscribe(queue, (frame) => got.push(frame), { ack: 'client-individual' });
    await client.send(queue, 'one', { receipt: true });
    await until(() => got.length === 1, 'the first delivery');
    got[0].nack();
    await until(() => got.length === 2, 'the redelivery after NACK');
    got[1].ack();
    await client.send('/topic/nowhere', 'sync', { receipt: true });
    await sleep(100);
    await client.deactivate();
    return { bodies: got.map((f) => f.body), ackHeader: Boolean(got[0].headers.ack) };
  },

  /** A dropped socket: the client reconnects by itself and sends each SUBSCRIBE again, with fresh headers. */
  async reconnect(url) {
    const { client, sockets, states } = recordedClient(url, {
      reconnect: { initial: 100, max: 400, jitter: 0 },
    });
    await client.activate();
    const destination = `/topic/again-${tag}`;
    const got = [];
    let calls = 0;
    client.subscribe(destination, (frame) => got.push(frame.body), () => ({ 'x-call': String(++calls) }));
    await client.send('/topic/nowhere', 'sync', { receipt: true });
    sockets[0].terminate(); // the network goes away without a close handshake
    await until(() => client.state === State.RECONNECTING, 'the reconnecting state');
    const pending = client.send('/topic/nowhere', 'x', { receipt: true }).then(() => 'sent', (e) => e.message);
    await until(() => client.state === State.CONNECTED, 'the reconnection');
    await client.send(destination, 'after', { receipt: true });
    await until(() => got.length === 1, 'a message on the re-sent subscription');
    await client.deactivate();
    return { sockets: sockets.length, states, calls, got, whileDown: await pending };
  },

  /** reconnectNow() skips a long back-off: the browser said it is online again. */
  async reconnectNow(url) {
    const { client, sockets } = recordedClient(url, { reconnect: { initial: 60000, max: 60000, jitter: 0 } });
    await client.activate();
    sockets[0].terminate();
    await until(() => client.state === State.RECONNECTING, 'the reconnecting state');
    const started = Date.now();
    client.reconnectNow();
    await until(() => client.state === State.CONNECTED, 'the reconnection', 3000);
    const took = Date.now() - started;
    await client.deactivate();
    return { sockets: sockets.length, took };
  },

  /** A server that goes silent (no heart-beats) is given up on and connected to again. */
  async silent() {
    const server = new WebSocketServer({ port: 0, host: '127.0.0.1', handleProtocols: () => 'v12.stomp' });
    let connects = 0;
    server.on('connection', (socket) => {
      socket.on('message', (data) => {
        if (String(data).startsWith('CONNECT')) {
          connects += 1;
          socket.send(encodeFrame('CONNECTED', { version: '1.2', 'heart-beat': '100,100' }));
        }
      });
    });
    await new Promise((resolve) => server.on('listening', resolve));
    const url = `ws://127.0.0.1:${server.address().port}/`;
    const { client, states } = recordedClient(url, {
      heartbeat: [100, 100],
      reconnect: { initial: 50, max: 50, jitter: 0 },
    });
    const started = Date.now();
    await client.activate();
    await until(() => connects >= 2, 'a second CONNECT after the silence', 5000);
    const took = Date.now() - started;
    await client.deactivate();
    server.close();
    return { connects, took, sawReconnecting: states.includes(State.RECONNECTING) };
  },

  /** An ERROR frame reaches onStompError and fails the receipt that caused it. */
  async error(url) {
    const { client, errors } = recordedClient(url, { reconnect: false });
    await client.activate();
    const outcome = await client.send('/nowhere/at/all', 'x', { receipt: true })
      .then(() => 'receipted', (error) => error.message);
    await until(() => client.state === State.CLOSED, 'the closed state');
    return { outcome, errors };
  },
};

function fail(name, error) {
  process.stderr.write(`scenario ${name} failed: ${error && error.stack ? error.stack : error}\n`);
  process.exit(1);
}

async function main() {
  const [url, name] = process.argv.slice(2);
  const scenario = SCENARIOS[name];
  if (!scenario) {
    process.stderr.write(`usage: node client-scenarios.mjs WS_URL SCENARIO (${Object.keys(SCENARIOS).join(', ')})\n`);
    process.exit(2);
  }
  setTimeout(() => fail(name, new Error('did not finish within 10 s')), 10000);
  let result;
  try {
    result = await scenario(url);
  } catch (error) {
    fail(name, error);
  }
  process.stdout.write(`${JSON.stringify({ scenario: name, ...result })}\n`, () => process.exit(0));
}

main();
