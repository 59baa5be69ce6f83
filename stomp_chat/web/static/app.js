// The chat page: sign in, rooms, history then live messages, presence, unread
// counts. Message text is only ever set with textContent, never parsed as HTML.

import { StompClient, State } from './stomp.js';

const HISTORY_PAGE = 50;
/** The most messages kept on screen per room; older ones are in the history. */
const MAX_SHOWN = 1000;
/** How often the room list is read again, for rooms other people created. */
const ROOMS_REFRESH = 30000;
const READ_REPORT_DELAY = 300;

const $ = (id) => document.getElementById(id);

const page = {
  me: null,
  token: null, // a login token or JWT, when the server asks for one
  myId: 0,
  client: null,
  rooms: new Map(), // id -> {id, name, unread}
  view: null, // the open room
  entered: new Set(), // rooms this page announced itself in (ENTER)
  names: new Map(), // senderId -> name, learnt from presence
  everConnected: false,
};

/** A stable positive 31-bit number for a name: the senderId the chat protocol wants. */
export function senderIdFor(name) {
  let hash = 0x811c9dc5;
  for (const byte of new TextEncoder().encode(name)) {
    hash ^= byte;
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return (hash % 2147483646) + 1;
}

/**
 * The CONNECT headers: the name as ``login``; with a password or token, the
 * token (from POST /api/login, or the one typed in) as ``passcode``.
 */
function credentials() {
  const headers = { login: page.me };
  if (page.token) headers.passcode = page.token;
  return headers;
}

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const headers = { 'content-type': 'application/json', ...(options.headers ?? {}) };
  if (page.token) headers.authorization = `Bearer ${page.token}`;
  const response = await fetch(path, { ...options, headers, credentials: 'same-origin' });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) askForSecret(body.message ?? 'sign in with a password or token');
  if (!response.ok) throw new HttpError(response.status, body.message ?? `HTTP ${response.status}`);
  return body;
}

/** Trade a password for a login token; a server without logins takes the secret as a token. */
async function tokenFor(name, secret) {
  try {
    const body = await api('/api/login', { method: 'POST', body: JSON.stringify({ login: name, password: secret }) });
    return body.token ?? secret;
  } catch (error) {
    if (error.status === 401) throw error;
    return secret;
  }
}

function askForSecret(reason) {
  if (page.client) {
    page.client.deactivate();
    signOut();
  }
  $('signin-secret-row').hidden = false;
  const shown = $('signin-error');
  shown.textContent = reason ?? '';
  shown.hidden = !reason;
}

function showNote(text) {
  const note = $('recovery-note');
  note.textContent = text;
  note.hidden = !text;
}

// -- connection ----------------------------------------------------------

function showConnection(state, detail) {
  const badge = $('connection');
  badge.dataset.state = state;
  const texts = {
    [State.IDLE]: 'not connected',
    [State.CONNECTING]: 'connecting…',
    [State.CONNECTED]: 'connected',
    [State.CLOSED]: 'disconnected',
  };
  badge.textContent = state === State.RECONNECTING && detail?.delay !== undefined
    ? `reconnecting in ${Math.max(1, Math.round(detail.delay / 1000))} s…`
    : texts[state] ?? 'reconnecting…';
  const usable = state === State.CONNECTED && page.view !== null;
  $('composer-text').disabled = !usable;
  $('composer').querySelector('button').disabled = !usable;
}

function signIn(name) {
  page.me = name;
  page.myId = senderIdFor(name);
  page.names.set(page.myId, name);
  sessionStorage.setItem('stomp-chat-name', name);
  $('me').textContent = name;
  $('me').hidden = false;
  $('signin').hidden = true;
  $('chat').hidden = false;
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const client = new StompClient(`${scheme}://${location.host}/ws/chat`, {
    connectHeaders: credentials,
    heartbeat: [10000, 10000],
    reconnect: { initial: 500, max: 10000 },
    onStateChange: showConnection,
    onConnect: connected,
    onStompError: (frame) => {
      // Connection-level news ("server shutting down"): cleared once connected again.
      showNote(`server: ${frame.headers.message ?? 'error'}`);
      page.connectionNote = true;
      if (!page.everConnected) askForSecret(frame.headers.message ?? 'the server refused to connect');
    },
  });
  page.client = client;
  client.subscribe('/user/queue/unread', (frame) => unreadChanged(frame.json()));
  client.subscribe('/user/queue/errors', (frame) => showNote(frame.json().message ?? 'error'));
  client.activate().catch(() => {});
}

function signOut() {
  page.client = null;
  page.token = null;
  $('chat').hidden = true;
  $('signin').hidden = false;
  $('me').hidden = true;
  sessionStorage.removeItem('stomp-chat-name');
}

function connected() {
  const first = !page.everConnected;
  page.everConnected = true;
  if (page.view) loadPresence(page.view);
  if (!page.view || page.connectionNote) showNote('');
  page.connectionNote = false;
  loadRooms().then(() => {
    if (first && page.rooms.size && page.view === null) {
      const wanted = Number(location.hash.slice(1));
      openRoom(page.rooms.has(wanted) ? wanted : [...page.rooms.keys()][0]);
    }
  });
}

// -- rooms -----------------------------------------------------------------

async function loadRooms() {
  try {
    const { rooms } = await api('/api/rooms');
    for (const room of rooms) {
      const known = page.rooms.get(room.id);
      page.rooms.set(room.id, { unread: 0, ...known, id: room.id, name: room.name });
    }
    renderRooms();
  } catch (error) {
    showNote(`could not load rooms: ${error.message}`);
  }
}

function renderRooms() {
  const list = $('room-list');
  list.replaceChildren(...[...page.rooms.values()].map((room) => {
    const item = document.createElement('li');
    const button = document.createElement('button');
    button.type = 'button';
    button.dataset.roomId = room.id;
    button.setAttribute('aria-current', String(page.view?.id === room.id));
    const name = document.createElement('span');
    name.textContent = room.name;
    button.append(name);
    if (room.unread > 0 && page.view?.id !== room.id) {
      const badge = document.createElement('span');
      badge.className = 'unread';
      badge.textContent = String(room.unread);
      button.append(badge);
    }
    button.addEventListener('click', () => openRoom(room.id));
    item.append(button);
    return item;
  }));
}

async function createRoom(name) {
  try {
    const room = await api('/api/rooms', { method: 'POST', body: JSON.stringify({ name }) });
    page.rooms.set(room.id, { id: room.id, name: room.name, unread: 0 });
    renderRooms();
    openRoom(room.id);
  } catch (error) {
    showNote(`could not create the room: ${error.message}`);
  }
}

/**
 * Open a room: subscribe first and hold live messages back while the
 * history page loads, then show both, each seq once. After a reconnect the
 * subscription asks for everything after the last seq shown (since-seq).
 */
function openRoom(roomId) {
  const client = page.client;
  if (page.view?.id === roomId) return;
  if (page.view) {
    page.view.topic.unsubscribe();
    page.view.presence.unsubscribe();
  }
  const view = { id: roomId, bySeq: new Map(), lastSeq: 0, loading: true, held: [] };
  page.view = view;
  location.hash = String(roomId);
  $('room-title').textContent = page.rooms.get(roomId)?.name ?? `room ${roomId}`;
  $('messages').replaceChildren();
  $('presence').replaceChildren();
  showNote('');
  renderRooms();
  // Presence first: this page's own arrival is then among the events it sees.
  view.presence = client.subscribe(`/topic/chat/room/${roomId}/presence`,
    (frame) => renderPresence(view, frame.json().users));
  view.topic = client.subscribe(`/topic/chat/room/${roomId}`, (frame) => roomMessage(view, frame),
    () => (view.loading ? {} : { 'since-seq': String(view.lastSeq) }));
  showConnection(client.state, {});
  loadHistory(view).then(() => {
    if (!page.entered.has(roomId) && client.isConnected) {
      page.entered.add(roomId);
      client.send('/app/message', chatBody('ENTER', roomId));
    }
  });
  loadPresence(view);
}

function loadPresence(view) {
  api(`/api/rooms/${view.id}/presence`).then((body) => renderPresence(view, body.users))
    .catch(() => {});
}

async function loadHistory(view) {
  try {
    const body = await api(`/api/rooms/${view.id}/messages?limit=${HISTORY_PAGE}`);
    for (const message of body.messages) addMessage(view, message);
  } catch (error) {
    showNote(`could not load history: ${error.message}`);
  }
  view.loading = false;
  const held = view.held;
  view.held = [];
  for (const message of held) applyRoomEvent(view, message);
  reportRead(view);
}

function roomMessage(view, frame) {
  const recovery = frame.headers.recovery;
  if (recovery === 'too-old' || recovery === 'failed') {
    // More was missed than the server replays: show the newest history page too.
    showNote(recovery === 'too-old'
      ? 'You were away for a while: some older messages are only in the history.'
      : 'Some missed messages could not be loaded; showing the latest history.');
    api(`/api/rooms/${view.id}/messages?limit=${HISTORY_PAGE}`)
      .then((body) => body.messages.forEach((message) => addMessage(view, message)))
      .catch(() => {});
  }
  const message = frame.json();
  if (view.loading) view.held.push(message);
  else applyRoomEvent(view, message);
}

/** A chat message joins the list; a DELETE event (an administrator removed a message) takes
 * one out. */
function applyRoomEvent(view, message) {
  if (message.type === 'DELETE') removeMessage(view, message.deletedSeq);
  else addMessage(view, message);
}

function removeMessage(view, seq) {
  const item = view.bySeq.get(seq);
  if (page.view !== view || !item) return;
  view.bySeq.delete(seq);
  item.remove();
}

function addMessage(view, message) {
  if (page.view !== view || view.bySeq.has(message.seq) || message.seq < (view.floor ?? 0)) return;
  const item = renderMessage(message);
  view.bySeq.set(message.seq, item);
  item.dataset.seq = message.seq;
  const list = $('messages');
  const stick = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  if (message.seq > view.lastSeq) {
    list.append(item);
    view.lastSeq = message.seq;
  } else {
    const after = [...list.children].find((li) => Number(li.dataset.seq) > message.seq);
    list.insertBefore(item, after ?? null);
  }
  while (list.children.length > MAX_SHOWN) {
    const oldest = list.firstElementChild;
    view.bySeq.delete(Number(oldest.dataset.seq));
    oldest.remove();
    view.floor = Number(list.firstElementChild.dataset.seq); // older ones stay in the history
  }
  if (stick) list.scrollTop = list.scrollHeight;
  if (!view.loading) reportRead(view);
}

/**
 * A chat message body. Signed in with a password or token, the server knows
 * who is speaking and refuses a senderId naming anyone else, so none is sent;
 * with ``--auth none`` the name's number stands for the sender.
 */
function chatBody(type, roomId, text) {
  const body = { type, roomId };
  if (!page.token) body.senderId = page.myId;
  if (text !== undefined) body.detailMessage = text;
  return body;
}

function isMine(message) {
  return page.token ? message.senderName === page.me : message.senderId === page.myId;
}

function senderName(message) {
  if (message.type === 'SYSTEM') return 'system';
  return message.senderName ?? page.names.get(message.senderId) ?? `#${message.senderId}`;
}

function renderMessage(message) {
  const item = document.createElement('li');
  item.className = 'message';
  if (message.type === 'ENTER') item.classList.add('enter');
  if (message.type === 'SYSTEM') item.classList.add('system');
  if (isMine(message)) item.classList.add('mine');
  const meta = document.createElement('div');
  meta.className = 'meta';
  const who = document.createElement('span');
  who.className = 'sender';
  who.textContent = senderName(message);
  const when = document.createElement('time');
  when.dateTime = message.createdAt;
  when.textContent = new Date(message.createdAt).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  meta.append(who, when);
  const text = document.createElement('div');
  text.className = 'text';
  const known = message.senderName ?? page.names.get(message.senderId);
  text.textContent = message.type === 'ENTER' && known
    ? message.detailMessage.replace(String(message.senderId), known)
    : message.detailMessage;
  item.append(meta, text);
  return item;
}

function renderPresence(view, users) {
  if (page.view !== view || !Array.isArray(users)) return;
  $('presence').replaceChildren(...users.map((user) => {
    page.names.set(senderIdFor(user.name), user.name);
    const item = document.createElement('li');
    item.textContent = user.name;
    return item;
  }));
}

// -- read positions and unread counts --------------------------------------

function reportRead(view) {
  if (view.readTimer || !page.client?.isConnected || document.visibilityState === 'hidden') return;
  view.readTimer = setTimeout(() => {
    view.readTimer = null;
    if (page.view !== view || !page.client.isConnected) return;
    if (view.lastSeq > (view.reported ?? -1)) {
      view.reported = view.lastSeq;
      page.client.send('/app/read', { roomId: view.id, seq: view.lastSeq });
    }
  }, READ_REPORT_DELAY);
}

function unreadChanged(update) {
  let room = page.rooms.get(update.roomId);
  if (!room) {
    room = { id: update.roomId, name: `room ${update.roomId}`, unread: 0 };
    page.rooms.set(room.id, room);
  }
  room.unread = update.unread;
  renderRooms();
}

// -- wiring ------------------------------------------------------------------

function send() {
  const box = $('composer-text');
  const text = box.value.trim();
  const view = page.view;
  if (!text || !view || !page.client?.isConnected) return;
  box.value = '';
  page.client.send('/app/message', chatBody('TALK', view.id, text), { receipt: true }).catch((error) => {
    showNote(`not sent: ${error.message}`);
    if (!box.value) box.value = text;
  });
}

function start() {
  $('signin').addEventListener('submit', async (event) => {
    event.preventDefault();
    const name = $('signin-name').value.trim();
    const secret = $('signin-secret').value;
    if (!name) return;
    const error = $('signin-error');
    error.hidden = true;
    error.textContent = '';
    const button = $('signin').querySelector('button');
    button.disabled = true; // one sign-in at a time
    try {
      page.token = secret ? await tokenFor(name, secret) : null;
    } catch (refused) {
      askForSecret(refused.message);
      return;
    } finally {
      button.disabled = false;
    }
    signIn(name);
  });
  $('new-room').addEventListener('submit', (event) => {
    event.preventDefault();
    const name = $('new-room-name').value.trim();
    $('new-room-name').value = '';
    if (name) createRoom(name);
  });
  $('composer').addEventListener('submit', (event) => {
    event.preventDefault();
    send();
  });
  $('composer-text').addEventListener('keydown', (event) => {
    // Enter while an input method is composing (Hangul, kana) finishes the syllable.
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  // A laptop waking up or a phone changing networks: no need to wait out the back-off.
  window.addEventListener('online', () => page.client?.reconnectNow());
  document.addEventListener('visibilitychange', () => {
    if (page.view) reportRead(page.view);
  });
  setInterval(() => {
    if (page.client?.isConnected && document.visibilityState !== 'hidden') loadRooms();
  }, ROOMS_REFRESH);
  const remembered = sessionStorage.getItem('stomp-chat-name');
  if (remembered) signIn(remembered);
}

start();
