// An administrator acting on a room the chat page shows (--auth none with
// --admin-on-loopback on): run by tests/test_browser_chat.py.
//
//   node browser-admin.mjs BASE_URL OUTPUT_DIR CHROMIUM_PATH
//
// Prints one JSON object of observations.

import path from 'node:path';
import { chromium } from 'playwright-core';

const [base, outDir, executablePath] = process.argv.slice(2);

async function call(method, route, body) {
  const response = await fetch(base + route, {
    method,
    headers: { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: response.status, body: await response.json() };
}

const texts = (page) => page.$$eval('#messages .message .text', (nodes) => nodes.map((n) => n.textContent));

async function waitForText(page, text, present = true) {
  await page.waitForFunction(
    ([wanted, shown]) => [...document.querySelectorAll('#messages .message .text')]
      .some((n) => n.textContent === wanted) === shown,
    [text, present], { timeout: 10000 },
  );
}

async function main() {
  const browser = await chromium.launch({ executablePath, headless: true, args: ['--no-sandbox'] });
  const result = { pageErrors: [] };
  try {
    const room = (await call('POST', '/api/rooms', { name: 'announcements' })).body;
    const page = await browser.newPage({ viewport: { width: 900, height: 600 } });
    page.on('pageerror', (error) => result.pageErrors.push(String(error)));
    await page.goto(base + '/');
    await page.fill('#signin-name', 'ana');
    await page.click('#signin button[type=submit]');
    await page.waitForSelector('#connection[data-state="connected"]');
    await page.locator(`#room-list button[data-room-id="${room.id}"]`).click();
    await page.waitForFunction(() => !document.querySelector('#composer-text').disabled);
    for (const text of ['first', 'second', 'third']) {
      await page.fill('#composer-text', text);
      await page.press('#composer-text', 'Enter');
      await waitForText(page, text);
    }
    result.posted = await call('POST', `/api/admin/rooms/${room.id}/messages`, { text: 'maintenance at noon' });
    await waitForText(page, 'maintenance at noon');
    const seq = await page.$$eval('#messages .message', (nodes) => Number(
      nodes.find((n) => n.querySelector('.text').textContent === 'second').dataset.seq));
    result.deleted = await call('DELETE', `/api/admin/rooms/${room.id}/messages/${seq}`);
    await waitForText(page, 'second', false);
    result.messages = await page.$$eval('#messages .message', (nodes) => nodes.map((n) => ({
      system: n.classList.contains('system'),
      sender: n.querySelector('.sender').textContent,
      text: n.querySelector('.text').textContent,
    })));
    await page.screenshot({ path: path.join(outDir, 'admin-actions.png') });
    await page.reload();
    await page.waitForSelector('#connection[data-state="connected"]');
    await waitForText(page, 'maintenance at noon');
    result.afterReload = await texts(page);
  } finally {
    await browser.close();
  }
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(0));
}

setTimeout(() => {
  process.stderr.write('admin scenario did not finish in time\n');
  process.exit(1);
}, 40000);

main().catch((error) => {
  process.stderr.write(`admin scenario failed: ${error.stack ?? error}\n`);
  process.exit(1);
});
