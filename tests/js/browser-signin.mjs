// The chat page signing in where the server checks passwords (--auth password):
// run by tests/test_browser_chat.py.
//
//   node browser-signin.mjs BASE_URL OUTPUT_DIR CHROMIUM_PATH LOGIN PASSWORD
//
// Prints one JSON object of observations.

import path from 'node:path';
import { chromium } from 'playwright-core';

const [base, outDir, executablePath, login, password] = process.argv.slice(2);

async function main() {
  const browser = await chromium.launch({ executablePath, headless: true, args: ['--no-sandbox'] });
  const result = { pageErrors: [] };
  try {
    const page = await browser.newPage({ viewport: { width: 900, height: 600 } });
    page.on('pageerror', (error) => result.pageErrors.push(String(error)));
    page.on('console', (message) => {
      // The browser logs the refused login (HTTP 401) itself: that one is expected.
      if (message.type() === 'error' && !message.text().includes('status of 401')) {
        result.pageErrors.push(message.text());
      }
    });
    await page.goto(base + '/');
    result.secretShownAtFirst = await page.locator('#signin-secret-row').isVisible();
    await page.fill('#signin-name', login);
    await page.click('#signin button[type=submit]');
    await page.waitForSelector('#signin-secret-row:not([hidden])');
    result.refusal = await page.textContent('#signin-error');
    await page.fill('#signin-secret', 'not the password');
    await page.click('#signin button[type=submit]');
    await page.waitForFunction(() => document.querySelector('#signin-error').textContent.length > 0
      && !document.querySelector('#signin button').disabled);
    result.wrongPassword = await page.textContent('#signin-error');
    result.stillSigningIn = await page.locator('#signin').isVisible();
    await page.fill('#signin-secret', password);
    await page.click('#signin button[type=submit]');
    await page.waitForSelector('#connection[data-state="connected"]');
    await page.fill('#new-room-name', 'members only');
    await page.click('#new-room button');
    await page.waitForFunction(() => location.hash.length > 1);
    await page.waitForFunction(() => document.querySelectorAll('#presence li').length === 1);
    await page.waitForFunction(() => !document.querySelector('#composer-text').disabled);
    await page.fill('#composer-text', 'signed in with a password');
    await page.press('#composer-text', 'Enter');
    await page.waitForFunction(() => [...document.querySelectorAll('#messages .text')]
      .some((n) => n.textContent === 'signed in with a password'));
    result.messages = await page.$$eval('#messages .message', (nodes) => nodes.map((n) => ({
      mine: n.classList.contains('mine'),
      sender: n.querySelector('.sender').textContent,
      text: n.querySelector('.text').textContent,
    })));
    result.presence = await page.$$eval('#presence li', (nodes) => nodes.map((n) => n.textContent));
    result.note = await page.textContent('#recovery-note');
    await page.screenshot({ path: path.join(outDir, 'password-signin.png') });
  } finally {
    await browser.close();
  }
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(0));
}

setTimeout(() => {
  process.stderr.write('sign-in scenario did not finish in time\n');
  process.exit(1);
}, 40000);

main().catch((error) => {
  process.stderr.write(`sign-in scenario failed: ${error.stack ?? error}\n`);
  process.exit(1);
});
