// Two real browser pages (Debian's chromium, driven by playwright-core) chatting
// through a real server; run by tests/test_browser_chat.py.
//
//   node browser.mjs BASE_URL OUTPUT_DIR CHROMIUM_PATH
//
// The Python side owns the server: on "RESTART" it stops the server and answers
// "DOWN"; on "START" (the pages are offline now) it starts the server again on
// the same port and answers "UP".
// The last line printed is one JSON object of observations.

import { createInterface } from 'node:readline';
import path from 'node:path';
import { chromium } from 'playwright-core';
import WebSocket from 'ws';

import { StompClient } from '../../stomp_chat/web/static/stomp.js';

const [base, outDir, executablePath] = process.argv.slice(2);
const wsUrl = base.replace(/^http/, 'ws') + '/ws/chat';
const lines = createInterface({ input: process.stdin });
const waiting = [];
lines.on('line', (line) => waiting.shift()?.(line.trim()));
const nextLine = () => new Promise((resolve) => waiting.push(resolve));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const steps = [];
const step = (name) => steps.push({ name, at: Date.now() });

async function api(route, body) {
  const response = await fetch(base + route, body === undefined ? {} : {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return response.json();
}

async function signIn(page, name) {
  await page.goto(base + '/');
  await page.fill('#signin-name', name);
  await page.click('#signin button[type=submit]');
  await page.waitForSelector('#connection[data-state="connected"]');
}

const roomButton = (page, id) => page.locator(`#room-list button[data-room-id="${id}"]`);
const texts = (page) => page.$$eval('#messages .message .text', (nodes) => nodes.map((n) => n.textContent));
const presence = (page) => page.$$eval('#presence li', (nodes) => nodes.map((n) => n.textContent));

async function waitForText(page, text, timeout = 10000) {
  await page.waitForFunction(
    (wanted) => [...document.querySelectorAll('#messages .message .text')].some((n) => n.textContent === wanted),
    text, { timeout },
  );
}

async function send(page, text) {
  await page.fill('#composer-text', text);
  await page.press('#composer-text', 'Enter');
}

async function main() {
  const browser = await chromium.launch({ executablePath, headless: true, args: ['--no-sandbox'] });
  const result = {};
  try {
    const lobby = await api('/api/rooms', { name: '로비 lobby' });
    const random = await api('/api/rooms', { name: 'random' });
    const desktop = await browser.newContext({ viewport: { width: 1100, height: 640 }, locale: 'ko-KR', timezoneId: 'Asia/Seoul' });
    const phone = await browser.newContext({ viewport: { width: 390, height: 760 }, isMobile: true, hasTouch: true, locale: 'en-US', timezoneId: 'America/New_York' });
    const alice = await desktop.newPage();
    const bob = await phone.newPage();
    const pageErrors = [];
    for (const page of [alice, bob]) {
      page.on('pageerror', (error) => pageErrors.push(String(error)));
      page.on('dialog', (dialog) => {
        pageErrors.push(`dialog: ${dialog.message()}`);
        dialog.dismiss();
      });
    }
    await signIn(alice, 'alice');
    await signIn(bob, 'bob');
    step('signed in');
    // The first room opens by itself.
    for (const page of [alice, bob]) {
      await page.waitForFunction((id) => location.hash === `#${id}`, lobby.id);
    }
    await alice.waitForFunction(() => document.querySelectorAll('#presence li').length === 2);
    await bob.waitForFunction(() => document.querySelectorAll('#presence li').length === 2);
    result.presence = { alice: await presence(alice), bob: await presence(bob) };
    step('presence');

    await send(alice, '안녕하세요 👋');
    await waitForText(bob, '안녕하세요 👋');
    const attack = '<script>window.__owned = 1</script><img src=x onerror="window.__owned = 2"><b>bold</b>';
    await send(bob, attack);
    await waitForText(alice, attack);
    const long = '긴 메시지가 줄을 바꿔 가며 보입니다. '.repeat(12) + '🎉';
    await send(alice, long);
    await waitForText(bob, long);
    result.injected = await alice.evaluate(() => ({
      owned: window.__owned ?? null,
      elements: document.querySelectorAll('#messages script, #messages img, #messages b').length,
    }));
    result.times = await bob.$$eval('#messages time', (nodes) => nodes.map((n) => [n.dateTime, n.textContent]));
    // Each page shows times in its own zone and language: Seoul in Korean, New York in English.
    const shown = async (page) => page.$eval('#messages time', (n) => [n.dateTime, n.textContent]);
    const [aliceIso, aliceText] = await shown(alice);
    const [bobIso, bobText] = await shown(bob);
    const clock = (iso, timeZone) => new Date(iso)
      .toLocaleTimeString('en-US', { hour: '2-digit', minute: '2-digit', timeZone }).slice(0, 5);
    result.localTimes = {
      alice: [aliceText, clock(aliceIso, 'Asia/Seoul'), /[오전오후]/.test(aliceText)],
      bob: [bobText, clock(bobIso, 'America/New_York'), /AM|PM/.test(bobText)],
    };
    result.phoneFits = await bob.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth);
    step('messages');
    await sleep(700); // both pages report what they have read
    await alice.screenshot({ path: path.join(outDir, 'alice-desktop.png') });
    await bob.screenshot({ path: path.join(outDir, 'bob-phone.png') });

    // Unread counts: bob looks at another room while alice talks in the lobby.
    await roomButton(bob, random.id).click();
    await bob.waitForFunction((id) => location.hash === `#${id}`, random.id);
    await send(alice, 'unread one');
    await send(alice, 'unread two');
    await bob.waitForFunction((id) => document.querySelector(`#room-list button[data-room-id="${id}"] .unread`)?.textContent === '2', lobby.id);
    result.unreadWhileAway = await roomButton(bob, lobby.id).locator('.unread').textContent();
    await bob.screenshot({ path: path.join(outDir, 'bob-unread.png') });
    await roomButton(bob, lobby.id).click();
    await waitForText(bob, 'unread two');
    await sleep(700);
    result.unreadAfterReading = await roomButton(bob, lobby.id).locator('.unread').count();
    step('unread');

    // The server restarts; messages sent while the pages are away must appear once each.
    const before = { alice: await texts(alice), bob: await texts(bob) };
    process.stdout.write('RESTART\n');
    await nextLine(); // "DOWN"
    await alice.waitForSelector('#connection[data-state="reconnecting"]', { timeout: 10000 });
    await bob.waitForSelector('#connection[data-state="reconnecting"]', { timeout: 10000 });
    // Keep the pages away until the missed messages exist, whatever their back-off.
    await desktop.setOffline(true);
    await phone.setOffline(true);
    process.stdout.write('START\n');
    await nextLine(); // "UP"
    step('server back');
    const carol = new StompClient(wsUrl, { WebSocket, connectHeaders: { login: 'carol' }, reconnect: false });
    await carol.activate();
    const missed = [];
    for (let i = 1; i <= 5; i++) {
      const text = `while you were away ${i} 🌙`;
      missed.push(text);
      await carol.send('/app/message', { type: 'TALK', roomId: lobby.id, senderId: 3, detailMessage: text }, { receipt: true });
    }
    result.pagesStillAway = [await alice.locator('#connection').getAttribute('data-state'),
      await bob.locator('#connection').getAttribute('data-state')];
    await carol.deactivate();
    await desktop.setOffline(false);
    await phone.setOffline(false);
    for (const page of [alice, bob]) {
      await page.waitForSelector('#connection[data-state="connected"]', { timeout: 20000 });
      await waitForText(page, missed[missed.length - 1], 10000);
    }
    step('reconnected');
    await send(bob, 'back again');
    await waitForText(alice, 'back again');
    await sleep(300);
    const after = { alice: await texts(alice), bob: await texts(bob) };
    result.restart = {};
    for (const name of ['alice', 'bob']) {
      const shown = after[name];
      result.restart[name] = {
        keptBefore: before[name].every((text, i) => shown[i] === text),
        missedOnce: missed.map((text) => shown.filter((t) => t === text).length),
        duplicates: shown.length - new Set(shown.map((t, i) => (t.startsWith('while') || t === 'back again' ? t : `${i}`))).size,
        newest: shown.slice(-6),
      };
    }
    result.notesHiddenAfterRestart = [await alice.locator('#recovery-note').isHidden(),
      await bob.locator('#recovery-note').isHidden()];
    result.seqsInOrder = await alice.$$eval('#messages .message', (nodes) => {
      const seqs = nodes.map((n) => Number(n.dataset.seq));
      return seqs.every((s, i) => i === 0 || s > seqs[i - 1]);
    });
    await alice.screenshot({ path: path.join(outDir, 'alice-after-restart.png') });
    await bob.screenshot({ path: path.join(outDir, 'bob-after-restart.png') });
    result.pageErrors = pageErrors;
    result.steps = steps.map((s) => s.name);
  } finally {
    await browser.close();
  }
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(0));
}

setTimeout(() => {
  process.stderr.write(`browser scenario did not finish in time; steps: ${JSON.stringify(steps)}\n`);
  process.exit(1);
}, 90000);

main().catch((error) => {
  process.stderr.write(`browser scenario failed: ${error.stack ?? error}\nsteps: ${JSON.stringify(steps)}\n`);
  process.exit(1);
});
