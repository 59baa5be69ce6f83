// A small STOMP 1.2 client over WebSocket, for the chat page and for Node.
//
// It speaks only what the page needs: CONNECT (accept-version 1.2) with
// heart-beats both ways, SUBSCRIBE/UNSUBSCRIBE, SEND, ACK/NACK, RECEIPTs as
// promises, and reconnecting by itself with exponential back-off. Subscriptions
// outlive a connection: after a reconnect each one is sent again, with headers
// computed at that moment (the chat uses this to ask for what it missed).

const NUL = 0;
const LF = 10;
const CR = 13;
const COLON = 58;

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8');

/** Connection states, in the order a healthy client goes through them. */
export const State = Object.freeze({
  IDLE: 'idle',
  CONNECTING: 'connecting',
  CONNECTED: 'connected',
  RECONNECTING: 'reconnecting',
  CLOSED: 'closed',
});

const ESCAPES = { '\\': '\\\\', '\n': '\\n', '\r': '\\r', ':': '\\c' };
const UNESCAPES = { '\\\\': '\\', '\\n': '\n', '\\r': '\r', '\\c': ':' };

/** Escape a header name or value as STOMP 1.2 requires. */
export function escapeHeader(text) {
  return String(text).replace(/[\\\n\r:]/g, (c) => ESCAPES[c]);
}

/** Undo escapeHeader; an undefined escape sequence is a protocol error. */
export function unescapeHeader(text) {
  return text.replace(/\\(.)/g, (seq) => {
    const plain = UNESCAPES[seq];
    if (plain === undefined) throw new Error(`invalid header escape ${JSON.stringify(seq)}`);
    return plain;
  });
}

/** One frame as bytes: command, escaped headers, content-length, body, NUL. */
export function encodeFrame(command, headers = {}, body = '') {
  const bodyBytes = typeof body === 'string' ? encoder.encode(body) : body;
  let head = command + '\n';
  const escape = command !== 'CONNECT' && command !== 'STOMP';
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || value === null) continue;
    head += escape ? `${escapeHeader(name)}:${escapeHeader(value)}\n` : `${name}:${value}\n`;
  }
  if (bodyBytes.length) head += `content-length:${bodyBytes.length}\n`;
  head += '\n';
  const headBytes = encoder.encode(head);
  const out = new Uint8Array(headBytes.length + bodyBytes.length + 1);
  out.set(headBytes, 0);
  out.set(bodyBytes, headBytes.length);
  out[out.length - 1] = NUL;
  return out;
}

/**
 * Turns a byte stream into frames: a WebSocket message may hold several
 * frames, a frame may span messages, and lone end-of-lines are heart-beats.
 */
export class FrameReader {
  constructor(maxFrameBytes = 16 * 1024 * 1024 + 65536) {
    this.buffer = new Uint8Array(0);
    this.maxFrameBytes = maxFrameBytes;
  }

  /** Add bytes; return the complete frames they finish, in order. */
  push(chunk) {
    const joined = new Uint8Array(this.buffer.length + chunk.length);
    joined.set(this.buffer, 0);
    joined.set(chunk, this.buffer.length);
    this.buffer = joined;
    const frames = [];
    for (;;) {
      const frame = this._next();
      if (frame === null) break;
      frames.push(frame);
    }
    if (this.buffer.length > this.maxFrameBytes) {
      throw new Error(`a frame is larger than ${this.maxFrameBytes} bytes`);
    }
    return frames;
  }

  _next() {
    const buf = this.buffer;
    let start = 0;
    while (start < buf.length && (buf[start] === LF || buf[start] === CR)) start++;
    if (start) this.buffer = buf.subarray(start);
    const data = this.buffer;
    const headEnd = findHeadEnd(data);
    if (headEnd === null) return null;
    const lines = decoder.decode(data.subarray(0, headEnd.at)).split('\n')
      .map((line) => (line.endsWith('\r') ? line.slice(0, -1) : line));
    const command = lines.shift();
    const headers = {};
    for (const line of lines) {
      if (!line) continue;
      const colon = line.indexOf(':');
      if (colon < 0) throw new Error(`malformed header line ${JSON.stringify(line)}`);
      const name = unescapeHeader(line.slice(0, colon));
      if (!(name in headers)) headers[name] = unescapeHeader(line.slice(colon + 1));
    }
    const bodyStart = headEnd.at + headEnd.length;
    let bodyEnd;
    if (headers['content-length'] !== undefined) {
      const length = Number(headers['content-length']);
      if (!Number.isInteger(length) || length < 0) throw new Error('invalid content-length');
      bodyEnd = bodyStart + length;
      if (data.length < bodyEnd + 1) return null;
      if (data[bodyEnd] !== NUL) throw new Error('frame body is not followed by NUL');
    } else {
      bodyEnd = data.indexOf(NUL, bodyStart);
      if (bodyEnd < 0) return null;
    }
    const bodyBytes = data.slice(bodyStart, bodyEnd);
    this.buffer = data.subarray(bodyEnd + 1);
    return new Frame(command, headers, bodyBytes);
  }
}

function findHeadEnd(data) {
  for (let i = 0; i < data.length; i++) {
    if (data[i] !== LF) continue;
    if (data[i + 1] === LF) return { at: i, length: 2 };
    if (data[i + 1] === CR && data[i + 2] === LF) return { at: i, length: 3 };
  }
  return null;
}

/** A received frame: command, unescaped headers, body bytes and their UTF-8 text. */
export class Frame {
  constructor(command, headers, bodyBytes) {
    this.command = command;
    this.headers = headers;
    this.binaryBody = bodyBytes;
  }

  get body() {
    return decoder.decode(this.binaryBody);
  }

  json() {
    return JSON.parse(this.body);
  }
}

/** How long to wait before reconnect attempt `attempt` (0-based): doubling, capped, jittered. */
export function backoffDelay(attempt, { initial = 500, max = 15000, jitter = 0.3 } = {}, random = Math.random) {
  const base = Math.min(max, initial * 2 ** Math.min(attempt, 30));
  return Math.round(base * (1 - jitter + 2 * jitter * random()));
}

/**
 * A STOMP client that stays connected.
 *
 * options: url; connectHeaders (login, passcode, ...) or a function returning
 * them; heartbeat [outgoing, incoming] ms; reconnect {initial, max, jitter}
 * (false: never reconnect); WebSocket (a constructor, for Node);
 * onStateChange(state, detail); onConnect(connectedFrame);
 * onStompError(errorFrame); onReceipt(frame) for receipts nobody awaited.
 */
export class StompClient {
  constructor(url, options = {}) {
    this.url = url;
    this.options = options;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    this.heartbeat = options.heartbeat ?? [10000, 10000];
    this.reconnect = options.reconnect === undefined ? {} : options.reconnect;
    this.state = State.IDLE;
    this.subscriptions = new Map();
    this.receipts = new Map();
    this.attempt = 0;
    this.nextId = 1;
    this.ws = null;
    this.timers = new Set();
    this.lastReceived = 0;
    this.connected = null;
  }

  /** Start connecting; resolves on the first CONNECTED. */
  activate() {
    if (this.state !== State.IDLE && this.state !== State.CLOSED) return this._whenConnected();
    this._setState(State.CONNECTING);
    this._open();
    return this._whenConnected();
  }

  _whenConnected() {
    if (this.state === State.CONNECTED) return Promise.resolve(this.connected);
    return new Promise((resolve, reject) => {
      const listener = (state, detail) => {
        if (state === State.CONNECTED) {
          this._stateListeners.delete(listener);
          resolve(detail);
        } else if (state === State.CLOSED) {
          this._stateListeners.delete(listener);
          reject(new Error('the client was closed before it connected'));
        }
      };
      this._stateListeners.add(listener);
    });
  }

  get _stateListeners() {
    if (!this.__listeners) this.__listeners = new Set();
    return this.__listeners;
  }

  _setState(state, detail) {
    if (this.state === state && state !== State.RECONNECTING) return;
    this.state = state;
    this.options.onStateChange?.(state, detail);
    for (const listener of [...this._stateListeners]) listener(state, detail);
  }

  _open() {
    const ws = new this.WebSocket(this.url, ['v12.stomp']);
    ws.binaryType = 'arraybuffer';
    this.ws = ws;
    this.reader = new FrameReader();
    ws.onopen = () => {
      if (ws !== this.ws) return;
      const headers = typeof this.options.connectHeaders === 'function'
        ? this.options.connectHeaders() : { ...(this.options.connectHeaders ?? {}) };
      headers['accept-version'] = '1.2';
      headers['heart-beat'] = `${this.heartbeat[0]},${this.heartbeat[1]}`;
      if (headers.host === undefined) headers.host = safeHost(this.url);
      this._write(encodeFrame('CONNECT', headers));
    };
    ws.onmessage = (event) => {
      if (ws !== this.ws) return;
      this.lastReceived = Date.now();
      const data = typeof event.data === 'string'
        ? encoder.encode(event.data) : new Uint8Array(event.data);
      let frames;
      try {
        frames = this.reader.push(data);
      } catch (error) {
        this._drop(`unreadable data from the server: ${error.message}`);
        return;
      }
      for (const frame of frames) this._onFrame(frame);
    };
    ws.onclose = (event) => {
      if (ws !== this.ws) return;
      this._closed(`connection closed (${event.code}${event.reason ? ' ' + event.reason : ''})`);
    };
    ws.onerror = () => {};
  }

  _onFrame(frame) {
    switch (frame.command) {
      case 'CONNECTED':
        this._onConnected(frame);
        break;
      case 'MESSAGE': {
        const sub = this.subscriptions.get(frame.headers.subscription);
        if (!sub) break;
        frame.ack = (headers = {}) => this.ack(frame, headers);
        frame.nack = (headers = {}) => this.nack(frame, headers);
        sub.callback(frame);
        break;
      }
      case 'RECEIPT': {
        const id = frame.headers['receipt-id'];
        const waiting = this.receipts.get(id);
        if (waiting) {
          this.receipts.delete(id);
          waiting.resolve(frame);
        } else {
          this.options.onReceipt?.(frame);
        }
        break;
      }
      case 'ERROR':
        this.options.onStompError?.(frame);
        {
          const id = frame.headers['receipt-id'];
          const waiting = id !== undefined && this.receipts.get(id);
          if (waiting) {
            this.receipts.delete(id);
            waiting.reject(new Error(frame.headers.message ?? 'ERROR'));
          }
        }
        break;
      default:
        break;
    }
  }

  _onConnected(frame) {
    this.connected = frame;
    this.attempt = 0;
    this._startHeartbeats(frame.headers['heart-beat']);
    this._setState(State.CONNECTED, frame);
    for (const sub of this.subscriptions.values()) this._sendSubscribe(sub);
    this.options.onConnect?.(frame);
  }

  _startHeartbeats(serverHeartbeat) {
    const [sx, sy] = (serverHeartbeat ?? '0,0').split(',').map((n) => Number(n) || 0);
    const [cx, cy] = this.heartbeat;
    const outgoing = cx && sy ? Math.max(cx, sy) : 0;
    const incoming = cy && sx ? Math.max(cy, sx) : 0;
    if (outgoing) {
      this._every(outgoing, () => {
        if (this.ws?.readyState === 1) this.ws.send(encoder.encode('\n'));
      });
    }
    if (incoming) {
      this.lastReceived = Date.now();
      this._every(Math.min(incoming, 1000), () => {
        if (Date.now() - this.lastReceived > incoming * 2) {
          this._drop('no heart-beat from the server');
        }
      });
    }
  }

  _every(ms, fn) {
    const timer = setInterval(fn, ms);
    this.timers.add(timer);
  }

  _clearTimers() {
    for (const timer of this.timers) {
      clearInterval(timer);
      clearTimeout(timer);
    }
    this.timers.clear();
  }

  /** Close the socket now and let reconnection take over (a dead or broken link). */
  _drop(reason) {
    const ws = this.ws;
    this._closed(reason);
    try {
      ws?.close();
    } catch {
      // already closing
    }
  }

  _closed(reason) {
    this.ws = null;
    this._clearTimers();
    for (const waiting of this.receipts.values()) {
      waiting.reject(new Error(`no receipt: ${reason}`));
    }
    this.receipts.clear();
    if (this.state === State.CLOSED) return;
    if (this.reconnect === false) {
      this._setState(State.CLOSED, reason);
      return;
    }
    const delay = backoffDelay(this.attempt++, this.reconnect);
    this._setState(State.RECONNECTING, { reason, delay, attempt: this.attempt });
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      if (this.state === State.RECONNECTING) this._open();
    }, delay);
    this.timers.add(timer);
  }

  /** Skip the rest of the back-off and try now (e.g. the browser says it is online again). */
  reconnectNow() {
    if (this.state !== State.RECONNECTING) return;
    this._clearTimers();
    this._open();
  }

  _write(bytes) {
    if (!this.ws || this.ws.readyState !== 1) throw new Error('not connected');
    this.ws.send(bytes);
  }

  /** Whether frames can be sent now. */
  get isConnected() {
    return this.state === State.CONNECTED;
  }

  /**
   * Subscribe now (if connected) and after every reconnect. `headers` may be
   * a function: it is called each time the SUBSCRIBE is sent.
   */
  subscribe(destination, callback, headers = {}) {
    const id = `sub-${this.nextId++}`;
    const sub = { id, destination, callback, headers };
    sub.unsubscribe = () => this._unsubscribe(sub);
    this.subscriptions.set(id, sub);
    if (this.isConnected) this._sendSubscribe(sub);
    return sub;
  }

  _sendSubscribe(sub) {
    const extra = typeof sub.headers === 'function' ? sub.headers() : sub.headers;
    this._write(encodeFrame('SUBSCRIBE', { ...extra, id: sub.id, destination: sub.destination }));
  }

  _unsubscribe(sub) {
    if (!this.subscriptions.delete(sub.id)) return;
    if (this.isConnected) this._write(encodeFrame('UNSUBSCRIBE', { id: sub.id }));
  }

  /**
   * SEND a body (string, bytes, or an object sent as JSON). With
   * `receipt: true` it resolves on the server's RECEIPT and rejects on ERROR
   * or a lost connection.
   */
  send(destination, body = '', { headers = {}, receipt = false } = {}) {
    let payload = body;
    const all = { ...headers, destination };
    if (typeof body === 'object' && !(body instanceof Uint8Array)) {
      payload = JSON.stringify(body);
      all['content-type'] = all['content-type'] ?? 'application/json;charset=utf-8';
    }
    if (!receipt) {
      this._write(encodeFrame('SEND', all, payload));
      return undefined;
    }
    return this._withReceipt((id) => encodeFrame('SEND', { ...all, receipt: id }, payload));
  }

  _withReceipt(build) {
    const id = `r-${this.nextId++}`;
    return new Promise((resolve, reject) => {
      try {
        this._write(build(id));
      } catch (error) {
        reject(error);
        return;
      }
      this.receipts.set(id, { resolve, reject });
    });
  }

  /** ACK a MESSAGE of a client-ack subscription (STOMP 1.2: by its ack header). */
  ack(frame, headers = {}) {
    this._write(encodeFrame('ACK', { ...headers, id: frame.headers.ack }));
  }

  nack(frame, headers = {}) {
    this._write(encodeFrame('NACK', { ...headers, id: frame.headers.ack }));
  }

  /** Say goodbye (DISCONNECT with a receipt), close, and never reconnect. */
  async deactivate() {
    const ws = this.ws;
    const wasConnected = this.isConnected;
    this._setState(State.CLOSED, 'closed by the client');
    this._clearTimers();
    if (wasConnected && ws) {
      try {
        await Promise.race([
          this._withReceipt((id) => encodeFrame('DISCONNECT', { receipt: id })),
          new Promise((resolve) => setTimeout(resolve, 1000)),
        ]);
      } catch {
        // the server went away first: nothing left to say goodbye to
      }
    }
    this.ws = null;
    ws?.close();
  }
}

function safeHost(url) {
  try {
    return new URL(url).hostname;
  } catch {
    return 'localhost';
  }
}
