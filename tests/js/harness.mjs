// Helpers for driving stomp-chat with @stomp/stompjs from Node.
//
// A Peer is one stompjs Client on a `ws` WebSocket, with everything it sees
// recorded: the raw WebSocket messages both ways, STOMP ERROR frames, RECEIPTs
// nobody waited for, heart-beats and the close event. Scenarios await
// conditions on those records with `until`, so a missing frame is a timeout
// with a description instead of a hang.

import { Client } from '@stomp/stompjs';
import WebSocket from 'ws';

// stompjs is written for browsers; in Node it gets `ws` as its WebSocket.
Object.assign(globalThis, { WebSocket });

export const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

/** Resolve with the first truthy value of `predicate`, polled; reject after `timeoutMs`. */
export async function until(predicate, what, timeoutMs = 3000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = predicate();
    if (value) return value;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    }
    await sleep(5);
  }
}

function asBuffer(data) {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  if (typeof data === 'string') return Buffer.from(data, 'utf8');
  if (ArrayBuffer.isView(data)) return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  return Buffer.from(data);
}

/** A MESSAGE (or any frame) as plain JSON: command, headers, UTF-8 body, body bytes as hex. */
export function describeFrame(frame, { hex = false } = {}) {
  const bytes = Buffer.from(frame.binaryBody ?? new Uint8Array());
  const out = {
    command: frame.command,
    headers: { ...frame.headers },
    body: bytes.toString('utf8'),
    bodyLength: bytes.length,
  };
  if (hex) out.bodyHex = bytes.toString('hex');
  return out;
}

let peerCount = 0;

export class Peer {
  /** Create a client (not yet connected); `config` is passed to stompjs `Client`. */
  constructor(url, config = {}) {
    this.name = config.name ?? `peer${peerCount++}`;
    delete config.name;
    this.url = url;
    this.ws = null;
    /** Every chunk stompjs handed to the WebSocket: {binary, length, text}. */
    this.sent = [];
    /** Every WebSocket message from the server: {binary, length, text}. */
    this.received = [];
    this.stompErrors = [];
    this.unhandledReceipts = [];
    this.unhandledMessages = [];
    this.heartbeatsReceived = 0;
    this.connectedFrame = null;
    this.closeEvent = null;
    /** When set, stompjs's outgoing heart-beats ("\n") are swallowed. */
    this.dropOutgoingHeartbeats = false;
    this._receipts = 0;
    this.client = new Client({
      reconnectDelay: 0,
      debug: () => {},
      webSocketFactory: () => this._createSocket(),
      ...config,
    });
    this.client.onConnect = frame => {
      this.connectedFrame = frame;
    };
    this.client.onStompError = frame => {
      this.stompErrors.push({ frame, at: Date.now() });
    };
    this.client.onUnhandledReceipt = frame => this.unhandledReceipts.push(frame);
    this.client.onUnhandledMessage = frame => this.unhandledMessages.push(frame);
    this.client.onHeartbeatReceived = () => {
      this.heartbeatsReceived += 1;
    };
    this.client.onWebSocketClose = evt => {
      this.closeEvent = { code: evt.code, reason: evt.reason, wasClean: evt.wasClean, at: Date.now() };
    };
  }

  /** Open a client and wait for CONNECTED. */
  static async open(url, config = {}, timeoutMs = 3000) {
    const peer = new Peer(url, config);
    await peer.connect(timeoutMs);
    return peer;
  }

  _createSocket() {
    const ws = new WebSocket(this.url, this.client.stompVersions.protocolVersions());
    ws.on('message', (data, isBinary) => {
      const bytes = asBuffer(data);
      this.received.push({ binary: isBinary, length: bytes.length, text: bytes.toString('utf8') });
    });
    const send = ws.send.bind(ws);
    ws.send = (data, ...rest) => {
      const binary = typeof data !== 'string';
      if (!binary && data === '\n' && this.dropOutgoingHeartbeats) return undefined;
      const bytes = asBuffer(data);
      this.sent.push({ binary, length: bytes.length, text: binary ? null : data });
      return send(data, ...rest);
    };
    this.ws = ws;
    return ws;
  }

  /** Throw if the server ended the session; `what` names what we were waiting for. */
  checkAlive(what) {
    if (this.stompErrors.length) {
      const frame = this.stompErrors[0].frame;
      throw new Error(
        `${this.name}: server sent ERROR while waiting for ${what}: ` +
          `${frame.headers.message} / ${Buffer.from(frame.binaryBody).toString('utf8')}`,
      );
    }
    if (this.closeEvent) {
      throw new Error(
        `${this.name}: WebSocket closed (${this.closeEvent.code} ${this.closeEvent.reason}) ` +
          `while waiting for ${what}`,
      );
    }
  }

  async connect(timeoutMs = 3000) {
    this.client.activate();
    await until(
      () => {
        if (this.connectedFrame) return true;
        this.checkAlive('CONNECTED');
        return false;
      },
      `${this.name}: CONNECTED`,
      timeoutMs,
    );
    return this.connectedFrame;
  }

  nextReceipt(prefix = 'r') {
    this._receipts += 1;
    return `${this.name}-${prefix}-${this._receipts}`;
  }

  /** Watch for a RECEIPT; returns a promise of the RECEIPT frame. */
  expectReceipt(receiptId, timeoutMs = 3000) {
    let receipt = null;
    this.client.watchForReceipt(receiptId, frame => {
      receipt = frame;
    });
    return until(
      () => {
        if (receipt) return receipt;
        this.checkAlive(`RECEIPT ${receiptId}`);
        return null;
      },
      `${this.name}: RECEIPT ${receiptId}`,
      timeoutMs,
    );
  }

  /** SUBSCRIBE and wait for its RECEIPT, so later publishes are sure to reach it. */
  async subscribe(destination, headers = {}, onMessage = null) {
    const messages = [];
    const receiptId = this.nextReceipt('sub');
    const receipt = this.expectReceipt(receiptId);
    const sub = this.client.subscribe(
      destination,
      message => {
        messages.push(message);
        if (onMessage) onMessage(message);
      },
      { ...headers, receipt: receiptId },
    );
    await receipt;
    return { id: sub.id, destination, messages, unsubscribe: h => sub.unsubscribe(h) };
  }

  /** SEND (stompjs `publish`), waiting for a RECEIPT unless `receipt: false`. */
  async publish(params, { receipt = true } = {}) {
    if (!receipt) {
      this.client.publish(params);
      return null;
    }
    const receiptId = this.nextReceipt('send');
    const waiting = this.expectReceipt(receiptId);
    this.client.publish({ ...params, headers: { ...(params.headers ?? {}), receipt: receiptId } });
    return waiting;
  }

  /** Wait until `list` holds at least `count` entries. */
  async waitForCount(list, count, what, timeoutMs = 3000) {
    await until(
      () => {
        if (list.length >= count) return true;
        this.checkAlive(what);
        return false;
      },
      `${this.name}: ${what} (have ${list.length} of ${count})`,
      timeoutMs,
    );
    return list;
  }

  /** Wait for the server to close the WebSocket. */
  async waitForClose(timeoutMs = 3000) {
    return until(() => this.closeEvent, `${this.name}: WebSocket close`, timeoutMs);
  }

  /** stompjs `deactivate()`: DISCONNECT with a receipt, wait for it, close the socket. */
  async stop(timeoutMs = 3000) {
    let done = false;
    this.client.deactivate().then(() => {
      done = true;
    });
    await until(() => done, `${this.name}: deactivate()`, timeoutMs);
  }
}
