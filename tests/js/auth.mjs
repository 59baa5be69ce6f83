// Logging in with @stomp/stompjs 7 (in Node, on `ws`): CONNECT with login/passcode
// headers, then a round trip through a topic; or, when the server refuses, its ERROR.
//
//   node tests/js/auth.mjs WS_URL LOGIN PASSCODE
//
// Prints ONE line of JSON and exits 0; exits 1 with the reason on stderr on a hang.

import { randomBytes } from 'node:crypto';

import { Peer, sleep, until } from './harness.mjs';

async function main() {
  const [url, login, passcode] = process.argv.slice(2);
  const connectHeaders = {};
  if (login) connectHeaders.login = login;
  if (passcode) connectHeaders.passcode = passcode;
  const peer = new Peer(url, { connectHeaders });
  peer.client.activate();
  await until(() => peer.connectedFrame || peer.stompErrors.length || peer.closeEvent,
    'CONNECTED, ERROR or close', 5000);
  if (!peer.connectedFrame) {
    await until(() => peer.closeEvent, 'the close after ERROR', 5000);
    const error = peer.stompErrors[0];
    console.log(JSON.stringify({
      connected: false,
      error: error ? error.frame.headers.message : null,
      closed: true,
    }));
    await peer.client.deactivate();
    return;
  }
  const destination = `/topic/interop.auth.${randomBytes(4).toString('hex')}`;
  const sub = await peer.subscribe(destination);
  await sleep(50);
  peer.client.publish({ destination, body: 'hello as me' });
  await until(() => sub.messages.length, 'the message back', 5000);
  console.log(JSON.stringify({
    connected: true,
    userName: peer.connectedFrame.headers['user-name'] ?? null,
    received: sub.messages.map(m => m.body),
  }));
  await peer.stop();
}

const timer = setTimeout(() => {
  console.error('auth.mjs: timed out');
  process.exit(1);
}, 20000);
main().then(() => { clearTimeout(timer); process.exit(0); }, error => {
  console.error(`auth.mjs: ${error.stack || error}`);
  process.exit(1);
});
