// Interop scenarios: @stomp/stompjs 7 (in Node, on `ws`) against stomp-chat.
//
//   node tests/js/scenarios.mjs ws://127.0.0.1:PORT/ws/chat SCENARIO
//
// Each scenario prints ONE line of JSON with what it observed and exits 0;
// on any failure or on its own time limit it prints the reason to stderr and
// exits 1. tests/test_interop_stompjs.py runs them and checks the JSON.

import { createHash, randomBytes } from 'node:crypto';

import { Versions } from '@stomp/stompjs';

import { Peer, describeFrame, sleep, until } from './harness.mjs';

const tag = randomBytes(4).toString('hex');
const sha256 = bytes => createHash('sha256').update(bytes).digest('hex');
const bodies = messages => messages.map(m => Buffer.from(m.binaryBody).toString('utf8'));

/** SEND a 200 KB frame (with a receipt) and report the ERROR and close that follow. */
async function sendOversized(url, config) {
  const destination = `/topic/interop.toolarge.${tag}`;
  const peer = await Peer.open(url, config);
  const sentAt = Date.now();
  peer.client.publish({ destination, body: 'x'.repeat(200 * 1024), headers: { receipt: 'big-1' } });
  await peer.waitForClose(4000);
  const error = peer.stompErrors[0];
  return {
    sendChunks: peer.sent.filter(s => s.text && s.text.length > 1000).length,
    errors: peer.stompErrors.map(e => describeFrame(e.frame)),
    closeCode: peer.closeEvent.code,
    closeWasClean: peer.closeEvent.wasClean,
    closeAfterErrorMs: error ? peer.closeEvent.at - error.at : null,
    closeAfterSendMs: peer.closeEvent.at - sentAt,
    receipts: peer.unhandledReceipts.map(f => f.headers['receipt-id']),
  };
}

const SCENARIOS = {
  /** CONNECT with stompjs defaults; report the CONNECT sent and the CONNECTED got. */
  connect: {
    async run(url) {
      const peer = await Peer.open(url);
      const result = {
        connectSent: peer.sent[0].text,
        connected: describeFrame(peer.connectedFrame),
        connectedVersion: peer.client.connectedVersion,
        protocol: peer.client.webSocket.protocol,
        offeredProtocols: peer.client.stompVersions.protocolVersions(),
      };
      await peer.stop();
      return result;
    },
  },

  /** The WebSocket subprotocol and STOMP version for several `stompVersions` settings. */
  subprotocols: {
    async run(url) {
      const offers = [['1.2', '1.1', '1.0'], ['1.1', '1.0'], ['1.1'], ['1.0']];
      const results = [];
      for (const versions of offers) {
        const peer = await Peer.open(url, { stompVersions: new Versions(versions) });
        results.push({
          versions,
          offered: peer.client.stompVersions.protocolVersions(),
          protocol: peer.ws.protocol,
          version: peer.connectedFrame.headers.version,
          heartBeat: peer.connectedFrame.headers['heart-beat'] ?? null,
        });
        await peer.stop();
      }
      return { results };
    },
  },

  /** Korean + emoji body and headers needing escapes, through a /topic and back. */
  'topic-unicode': {
    async run(url) {
      const destination = `/topic/interop.unicode.${tag}`;
      const peer = await Peer.open(url);
      const sub = await peer.subscribe(destination);
      const body = '안녕하세요, 세계! 👋🎉 STOMP 채팅';
      const headers = {
        'x-note': 'a:b\nc\\d',
        'x-room': '방:1',
        'content-type': 'text/plain;charset=utf-8',
      };
      await peer.publish({ destination, body, headers });
      await peer.waitForCount(sub.messages, 1, 'MESSAGE');
      await sleep(100); // nothing more may come
      const sendChunk = peer.sent.find(s => s.text && s.text.startsWith('SEND\n'));
      const rawMessage = peer.received.find(r => r.text.startsWith('MESSAGE\n'));
      const result = {
        destination,
        subscriptionId: sub.id,
        sentBody: body,
        sentHeaders: headers,
        sentBodyBytes: Buffer.byteLength(body, 'utf8'),
        rawSend: sendChunk.text,
        rawMessage: rawMessage.text,
        rawMessageBinary: rawMessage.binary,
        // Per server WebSocket message: its command line and how many NULs it holds.
        wsMessages: peer.received.map(r => ({
          command: r.text.split('\n')[0],
          nuls: r.text.split('\0').length - 1,
          endsWithNul: r.text.endsWith('\0'),
        })),
        messages: sub.messages.map(m => describeFrame(m)),
      };
      await peer.stop();
      return result;
    },
  },

  /** Two subscribers of one /topic each get every message, in order. */
  fanout: {
    async run(url) {
      const destination = `/topic/interop.fanout.${tag}`;
      const alice = await Peer.open(url, { name: 'alice' });
      const bob = await Peer.open(url, { name: 'bob' });
      const subA = await alice.subscribe(destination);
      const subB = await bob.subscribe(destination);
      const sent = ['one', 'two', 'three', '넷'];
      for (const body of sent) await alice.publish({ destination, body });
      await alice.waitForCount(subA.messages, sent.length, 'fan-out to alice');
      await bob.waitForCount(subB.messages, sent.length, 'fan-out to bob');
      await sleep(150);
      const result = {
        sent,
        alice: bodies(subA.messages),
        bob: bodies(subB.messages),
        aliceSubscription: subA.messages.map(m => m.headers.subscription),
        bobSubscription: subB.messages.map(m => m.headers.subscription),
        aliceMessageIds: subA.messages.map(m => m.headers['message-id']),
        subscriptionIds: [subA.id, subB.id],
      };
      await Promise.all([alice.stop(), bob.stop()]);
      return result;
    },
  },

  /** Two consumers of one /queue share its messages round-robin. */
  'queue-round-robin': {
    async run(url) {
      const destination = `/queue/interop.rr.${tag}`;
      const first = await Peer.open(url, { name: 'first' });
      const second = await Peer.open(url, { name: 'second' });
      const producer = await Peer.open(url, { name: 'producer' });
      const subFirst = await first.subscribe(destination);
      const subSecond = await second.subscribe(destination);
      const sent = ['m1', 'm2', 'm3', 'm4', 'm5', 'm6'];
      for (const body of sent) await producer.publish({ destination, body });
      await until(
        () => subFirst.messages.length + subSecond.messages.length >= sent.length,
        'all queue messages delivered',
      );
      await sleep(150);
      const result = {
        sent,
        first: bodies(subFirst.messages),
        second: bodies(subSecond.messages),
        messageIds: [...subFirst.messages, ...subSecond.messages].map(m => m.headers['message-id']),
      };
      await Promise.all([first.stop(), second.stop(), producer.stop()]);
      return result;
    },
  },

  /**
   * client-individual: ack m1 and m3, nack m2 (redelivered, then acked); a
   * message left unacked at DISCONNECT goes to the next consumer.
   */
  'client-individual': {
    async run(url) {
      const destination = `/queue/interop.ci.${tag}`;
      const alice = await Peer.open(url, { name: 'alice' });
      const sub = await alice.subscribe(destination, { ack: 'client-individual' });
      for (const body of ['m1', 'm2', 'm3']) await alice.publish({ destination, body });
      await alice.waitForCount(sub.messages, 3, 'three MESSAGEs');
      const firstRound = sub.messages.slice(0, 3);
      const [m1, m2, m3] = firstRound;
      m1.ack();
      m2.nack();
      m3.ack();
      await alice.waitForCount(sub.messages, 4, 'redelivery of the NACKed message');
      const redelivered = sub.messages[3];
      const ackReceipt = alice.nextReceipt('ack');
      const acked = alice.expectReceipt(ackReceipt);
      redelivered.ack({ receipt: ackReceipt });
      await acked;

      // m4 stays unacked while alice disconnects: bob must get it, and only it.
      await alice.publish({ destination, body: 'm4' });
      await alice.waitForCount(sub.messages, 5, 'm4');
      await sleep(100);
      const aliceBodies = bodies(sub.messages);
      await alice.stop();

      const bob = await Peer.open(url, { name: 'bob' });
      const subBob = await bob.subscribe(destination, { ack: 'client-individual' });
      await bob.waitForCount(subBob.messages, 1, 'redelivery of the unacked m4');
      await sleep(200);
      subBob.messages.forEach(m => m.ack());
      const result = {
        alice: aliceBodies,
        firstRoundAckHeaders: firstRound.map(m => m.headers.ack ?? null),
        firstRoundMessageIds: firstRound.map(m => m.headers['message-id']),
        redelivered: describeFrame(redelivered),
        bob: bodies(subBob.messages),
        aliceErrors: alice.stompErrors.length,
      };
      await bob.stop();
      return result;
    },
  },

  /** client (cumulative) ack: acking the third message acks the first two too. */
  'client-ack': {
    async run(url) {
      const destination = `/queue/interop.cack.${tag}`;
      const alice = await Peer.open(url, { name: 'alice' });
      const sub = await alice.subscribe(destination, { ack: 'client' });
      for (const body of ['c1', 'c2', 'c3']) await alice.publish({ destination, body });
      await alice.waitForCount(sub.messages, 3, 'three MESSAGEs');
      const receiptId = alice.nextReceipt('ack');
      const acked = alice.expectReceipt(receiptId);
      sub.messages[2].ack({ receipt: receiptId });
      await acked;
      await alice.stop();

      const bob = await Peer.open(url, { name: 'bob' });
      const subBob = await bob.subscribe(destination, { ack: 'client' });
      await bob.publish({ destination, body: 'c4' });
      await bob.waitForCount(subBob.messages, 1, 'c4');
      await sleep(200);
      const result = { alice: bodies(sub.messages), bob: bodies(subBob.messages) };
      await bob.stop();
      return result;
    },
  },

  /** Binary bodies (every byte value, and NULs inside UTF-8 text) come back exact. */
  binary: {
    async run(url) {
      const destination = `/topic/interop.binary.${tag}`;
      const peer = await Peer.open(url);
      const sub = await peer.subscribe(destination);
      const allBytes = Uint8Array.from({ length: 256 }, (_, i) => i);
      const nulText = new Uint8Array(Buffer.from('a\u0000b\u0000한글\u0000', 'utf8'));
      await peer.publish({
        destination,
        binaryBody: allBytes,
        headers: { 'content-type': 'application/octet-stream' },
      });
      await peer.publish({
        destination,
        binaryBody: nulText,
        headers: { 'content-type': 'text/plain;charset=utf-8' },
      });
      await peer.waitForCount(sub.messages, 2, 'two binary MESSAGEs');
      await sleep(100);
      const messageFrames = peer.received.filter(r => r.text.startsWith('MESSAGE\n'));
      const result = {
        sentHex: [Buffer.from(allBytes).toString('hex'), Buffer.from(nulText).toString('hex')],
        sendChunksBinary: peer.sent.filter(s => s.binary).length,
        messages: sub.messages.map(m => describeFrame(m, { hex: true })),
        messageFramesBinary: messageFrames.map(r => r.binary),
      };
      await peer.stop();
      return result;
    },
  },

  /** A ~200 KB text body sent with splitLargeFrames in 8 KB WebSocket chunks. */
  'large-split': {
    async run(url) {
      const destination = `/topic/interop.large.${tag}`;
      const chunk = 8 * 1024;
      const sender = await Peer.open(url, {
        name: 'sender',
        splitLargeFrames: true,
        maxWebSocketChunkSize: chunk,
      });
      const receiver = await Peer.open(url, { name: 'receiver' });
      const sub = await receiver.subscribe(destination);
      const lines = [];
      for (let i = 0, size = 0; size < 200 * 1024; i++) {
        lines.push(`${String(i).padStart(5, '0')} 가나다라마바사 the quick brown fox ${i % 7}\n`);
        size += Buffer.byteLength(lines[i], 'utf8');
      }
      const body = lines.join('');
      const sentBefore = sender.sent.length;
      await sender.publish({ destination, body });
      const sendChunks = sender.sent.slice(sentBefore, sender.sent.length);
      await receiver.waitForCount(sub.messages, 1, 'the large MESSAGE', 5000);
      const got = Buffer.from(sub.messages[0].binaryBody);
      const result = {
        sentBytes: Buffer.byteLength(body, 'utf8'),
        sentSha256: sha256(Buffer.from(body, 'utf8')),
        sendChunkCount: sendChunks.length,
        maxChunkChars: Math.max(...sendChunks.map(s => s.text.length)),
        receivedBytes: got.length,
        receivedSha256: sha256(got),
        contentLength: sub.messages[0].headers['content-length'],
        received: sub.messages.length,
      };
      await Promise.all([sender.stop(), receiver.stop()]);
      return result;
    },
  },

  /** A frame over --max-frame-size, sent in 8 KB chunks (splitLargeFrames): ERROR, then close. */
  'too-large-split': {
    run: url => sendOversized(url, { splitLargeFrames: true, maxWebSocketChunkSize: 8 * 1024 }),
  },

  /** The same frame as one WebSocket message (stompjs's default): ERROR, then close. */
  'too-large-unsplit': {
    run: url => sendOversized(url, {}),
  },

  /** deactivate(): DISCONNECT with a receipt; earlier frames are processed first. */
  'disconnect-receipt': {
    async run(url) {
      const destination = `/queue/interop.disc.${tag}`;
      const alice = await Peer.open(url, { name: 'alice' });
      const timeline = [];
      let disconnectFrame = null;
      alice.client.onDisconnect = frame => {
        disconnectFrame = frame;
        timeline.push('RECEIPT');
      };
      const onClose = alice.client.onWebSocketClose;
      alice.client.onWebSocketClose = evt => {
        timeline.push('close');
        onClose(evt);
      };
      // Published without waiting: DISCONNECT must not overtake it.
      alice.client.publish({ destination, body: 'sent right before DISCONNECT' });
      await alice.stop();
      const disconnectSent = alice.sent.find(s => s.text && s.text.startsWith('DISCONNECT\n'));

      const bob = await Peer.open(url, { name: 'bob' });
      const sub = await bob.subscribe(destination);
      await bob.waitForCount(sub.messages, 1, 'the message published before DISCONNECT');
      const result = {
        disconnectSent: disconnectSent.text,
        receipt: disconnectFrame && describeFrame(disconnectFrame),
        timeline,
        closeCode: alice.closeEvent.code,
        closeWasClean: alice.closeEvent.wasClean,
        errors: alice.stompErrors.length,
        bob: bodies(sub.messages),
      };
      await bob.stop();
      return result;
    },
  },

  /** SEND to an /app destination with no handler: ERROR (seen by onStompError), then close. */
  'app-nohandler': {
    async run(url) {
      const peer = await Peer.open(url);
      peer.client.publish({
        destination: '/app/nohandler',
        body: '{"text":"hello"}',
        headers: { receipt: 'app-1', 'content-type': 'application/json' },
      });
      await until(() => peer.stompErrors.length, 'ERROR for /app/nohandler');
      const error = peer.stompErrors[0];
      await peer.waitForClose();
      return {
        error: describeFrame(error.frame),
        errors: peer.stompErrors.length,
        closeCode: peer.closeEvent.code,
        closeAfterErrorMs: peer.closeEvent.at - error.at,
        unhandledReceipts: peer.unhandledReceipts.map(f => f.headers['receipt-id']),
        connectedAfter: peer.client.connected,
      };
    },
  },

  /** A transaction through stompjs: nothing is delivered before COMMIT; ABORT discards. */
  transaction: {
    async run(url) {
      const destination = `/topic/interop.tx.${tag}`;
      const peer = await Peer.open(url);
      const sub = await peer.subscribe(destination);
      const tx = peer.client.begin();
      await peer.publish({ destination, body: 'tx-1', headers: { transaction: tx.id } });
      await peer.publish({ destination, body: 'tx-2', headers: { transaction: tx.id } });
      await peer.publish({ destination, body: 'outside' });
      await sleep(100);
      const beforeCommit = bodies(sub.messages);
      tx.commit();
      const aborted = peer.client.begin();
      await peer.publish({ destination, body: 'aborted', headers: { transaction: aborted.id } });
      aborted.abort();
      await peer.publish({ destination, body: 'after' });
      await peer.waitForCount(sub.messages, 4, 'committed messages and the marker');
      await sleep(100);
      const result = { beforeCommit, all: bodies(sub.messages), transactionIds: [tx.id, aborted.id] };
      await peer.stop();
      return result;
    },
  },

  /** Heart-beats of 1000 ms both ways keep an idle connection up for 3 s. */
  'heartbeat-idle': {
    timeoutMs: 9000,
    async run(url) {
      const destination = `/topic/interop.hb.${tag}`;
      const peer = await Peer.open(url, { heartbeatIncoming: 1000, heartbeatOutgoing: 1000 });
      const sub = await peer.subscribe(destination);
      const heartbeatsBefore = peer.heartbeatsReceived;
      const idleStart = Date.now();
      await sleep(3000);
      const idleMs = Date.now() - idleStart;
      const heartbeatsDuringIdle = peer.heartbeatsReceived - heartbeatsBefore;
      const closedDuringIdle = peer.closeEvent;
      const pingsSent = peer.sent.filter(s => s.text === '\n').length;
      let afterIdle = [];
      if (!closedDuringIdle) {
        await peer.publish({ destination, body: 'still here' });
        await peer.waitForCount(sub.messages, 1, 'a MESSAGE after the idle period');
        afterIdle = bodies(sub.messages);
      }
      const result = {
        connectSent: peer.sent[0].text,
        connectedHeartBeat: peer.connectedFrame.headers['heart-beat'],
        idleMs,
        heartbeatsDuringIdle,
        pingsSent,
        closedDuringIdle,
        errors: peer.stompErrors.map(e => e.frame.headers.message),
        afterIdle,
      };
      if (!closedDuringIdle) await peer.stop();
      return result;
    },
  },

  /** A client that promises 1000 ms heart-beats but goes silent is dropped with ERROR. */
  'heartbeat-silent-client': {
    timeoutMs: 9000,
    async run(url) {
      const peer = await Peer.open(url, { heartbeatIncoming: 0, heartbeatOutgoing: 1000 });
      peer.dropOutgoingHeartbeats = true;
      const silentSince = Date.now();
      await until(() => peer.closeEvent, 'the server to drop the silent client', 7000);
      return {
        connectedHeartBeat: peer.connectedFrame.headers['heart-beat'],
        errors: peer.stompErrors.map(e => describeFrame(e.frame)),
        errorAfterMs: peer.stompErrors.length ? peer.stompErrors[0].at - silentSince : null,
        closedAfterMs: peer.closeEvent.at - silentSince,
        closeCode: peer.closeEvent.code,
      };
    },
  },
};

function fail(name, error) {
  process.stderr.write(`scenario ${name} failed: ${error && error.stack ? error.stack : error}\n`);
  process.exit(1);
}

async function main() {
  const [url, name] = process.argv.slice(2);
  const scenario = SCENARIOS[name];
  if (!url || !scenario) {
    process.stderr.write(
      `usage: node scenarios.mjs WS_URL SCENARIO\nscenarios: ${Object.keys(SCENARIOS).join(', ')}\n`,
    );
    process.exit(2);
  }
  const limit = scenario.timeoutMs ?? 6000;
  setTimeout(() => fail(name, new Error(`did not finish within ${limit} ms`)), limit);
  let result;
  try {
    result = await scenario.run(url);
  } catch (error) {
    fail(name, error);
  }
  process.stdout.write(`${JSON.stringify({ scenario: name, ...result })}\n`, () => process.exit(0));
}

main();
