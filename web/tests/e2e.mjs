// End-to-end tests of the web client: two people in two browser contexts of headless Debian
// chromium, against a real im-server with a fresh data dir. Run by `cargo xtask ci`:
//   E2E_SERVER_BIN=target/debug/im-server node web/tests/e2e.mjs
// Screenshots of both sides go to $E2E_SCREENSHOTS (default target/browser).

import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { X509Certificate, createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { deflateSync } from 'node:zlib';
import { createInterface } from 'node:readline';

const here = path.dirname(new URL(import.meta.url).pathname);
const root = path.resolve(here, '../..');
const bin = process.env.E2E_SERVER_BIN || path.join(root, 'target/debug/im-server');
const shots = process.env.E2E_SCREENSHOTS || path.join(root, 'target/browser');
const TIMEOUT = 30_000; // a bound so a broken test fails instead of hanging; not a speed claim

// ----- a tiny runner -----

const results = [];
async function test(name, fn) {
  const started = Date.now();
  try {
    await fn();
    results.push({ name, ok: true });
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (e) {
    results.push({ name, ok: false });
    console.log(`FAIL ${name}\n     ${(e && e.stack) || e}`);
  }
}
function assert(cond, msg) {
  if (!cond) throw new Error(`assertion failed: ${msg}`);
}
function assertEq(a, b, msg) {
  if (JSON.stringify(a) !== JSON.stringify(b)) throw new Error(`${msg}: expected ${JSON.stringify(b)}, got ${JSON.stringify(a)}`);
}

// ----- a PNG made here, so the test needs no fixture file -----

function crc32(buf) {
  let c = ~0;
  for (const b of buf) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
  }
  return ~c >>> 0;
}
function chunk(type, data) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const td = Buffer.concat([Buffer.from(type), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(td));
  return Buffer.concat([len, td, crc]);
}
function gradientPng(w, h) {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  const rows = [];
  for (let y = 0; y < h; y++) {
    const row = Buffer.alloc(1 + w * 3);
    for (let x = 0; x < w; x++) {
      row[1 + x * 3] = Math.round((255 * x) / w);
      row[2 + x * 3] = Math.round((255 * y) / h);
      row[3 + x * 3] = 200;
    }
    rows.push(row);
  }
  const sig = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  return Buffer.concat([sig, chunk('IHDR', ihdr), chunk('IDAT', deflateSync(Buffer.concat(rows))), chunk('IEND', Buffer.alloc(0))]);
}

// ----- the server -----

// Every server started here, killed however the run ends (a failed launch or a thrown
// setup step included), so none outlives the test and holds its caller's pipe open.
const children = new Set();
process.on('exit', () => {
  for (const child of children) child.kill('SIGTERM');
});

async function startServer(extraArgs = [], extraEnv = {}) {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'web-im-e2e-'));
  const child = spawn(bin, ['--listen', '127.0.0.1:0', '--data-dir', dataDir, ...extraArgs], {
    env: { ...process.env, IM_ARGON2__MEMORY_KIB: '64', IM_ARGON2__ITERATIONS: '1', IM_LOG: 'warn', IM_PRESENCE_GRACE_MS: '1000', ...extraEnv },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.add(child);
  child.once('exit', () => children.delete(child));
  const lines = createInterface({ input: child.stdout });
  const url = await new Promise((resolve, reject) => {
    lines.once('line', (l) => resolve(l.replace('im-server listening on ', '').trim()));
    child.once('exit', (code) => reject(new Error(`im-server exited with ${code}`)));
  });
  return { url, child, dataDir };
}

// An API client for a third user, straight over fetch with a bearer token.
async function apiUser(base, username) {
  const call = async (method, p, body, token) => {
    const res = await fetch(`${base}/api/v1${p}`, {
      method,
      headers: { 'Content-Type': 'application/json', ...(token ? { Authorization: `Bearer ${token}` } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${text}`);
    return text ? JSON.parse(text) : null;
  };
  const password = `${username}-password`;
  await call('POST', '/auth/register', { username, password });
  const { token, user } = await call('POST', '/auth/login', { username, password });
  return { user, call: (m, p, b) => call(m, p, b, token) };
}

// ----- page helpers -----

async function register(page, base, username) {
  await page.goto(base);
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill(`${username}-password`);
  await page.getByRole('button', { name: 'Register' }).click();
  await page.locator('#me-name', { hasText: username }).waitFor();
}

async function openChatWith(page, name) {
  await page.locator('#conversations li', { hasText: name }).first().click();
  await page.locator('#chat-title', { hasText: name }).waitFor();
}

async function sendText(page, text) {
  await page.locator('#text').fill(text);
  await page.locator('#text').press('Enter');
}

function messageText(page, text) {
  return page.locator('#messages .msg .text').filter({ hasText: text });
}

async function countExact(page, text) {
  return page.$$eval('#messages .msg .text', (nodes, t) => nodes.filter((n) => n.textContent === t).length, text);
}

/** Accepts friend request `id` as the user logged in on `page`, through the page's cookie. */
async function acceptIn(page, id) {
  await page.evaluate(async (requestId) => {
    const res = await fetch(`/api/v1/friends/requests/${requestId}/accept`, { method: 'POST' });
    if (!res.ok) throw new Error(`accept: ${res.status}`);
  }, id);
}

/**
 * Runs `fn(context, server)` with a server of its own (no rate limits: the main server's
 * per-address registration budget is spent) and a fresh browser context, and removes both
 * however `fn` ends.
 */
async function withOwnServer(contextOptions, fn) {
  const own = await startServer([], { IM_RATE_LIMITS__ENABLED: 'false' });
  const context = await browser.newContext(contextOptions);
  try {
    return await fn(context, own);
  } finally {
    await context.close();
    own.child.kill('SIGTERM');
    rmSync(own.dataDir, { recursive: true, force: true });
  }
}

// ----- accessibility -----

const axeSource = readFileSync(path.join(here, 'node_modules/axe-core/axe.min.js'), 'utf8');

/**
 * The serious and critical axe-core violations on the page as it is now, each named with
 * `where`. axe is evaluated through the DevTools protocol, which the page's CSP (no inline
 * script) does not apply to, so the page under test is the one users get.
 */
async function accessibilityProblems(page, where) {
  if (!(await page.evaluate(() => 'axe' in window))) await page.evaluate(axeSource);
  const found = await page.evaluate(async () => {
    const { violations } = await window.axe.run(document, { resultTypes: ['violations'] });
    return violations
      .filter((v) => v.impact === 'serious' || v.impact === 'critical')
      .map((v) => `${v.id} (${v.impact}) at ${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(', ')}: ${v.help}`);
  });
  return found.map((v) => `${where}: ${v}`);
}

// ----- the run -----

const server = await startServer();
console.log(`im-server at ${server.url}`);
const BROWSER_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run', '--disable-quic', '--disable-sync'];
function launch(extraArgs = []) {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [...BROWSER_ARGS, ...extraArgs],
  });
}
const browser = await launch();
const consoleErrors = [];
async function newPage(label) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 700 } });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on('console', (m) => m.type() === 'error' && consoleErrors.push(`${label}: ${m.text()}`));
  page.on('pageerror', (e) => consoleErrors.push(`${label}: ${e.message}`));
  return page;
}
const alice = await newPage('alice');
const bob = await newPage('bob');
mkdirSync(shots, { recursive: true });

try {
  await test('the log-in screen has no serious accessibility problem', async () => {
    await alice.goto(server.url);
    await alice.getByLabel('Username').waitFor();
    assertEq(await accessibilityProblems(alice, 'log-in'), [], 'axe-core violations');
  });

  await test('alice and bob register and become friends', async () => {
    await register(alice, server.url, 'alice');
    await register(bob, server.url, 'bob');
    await alice.getByRole('tab', { name: /Friends/ }).click();
    await alice.getByLabel('Add a friend').fill('bob');
    await alice.getByRole('button', { name: 'Send request' }).click();
    await alice.locator('#requests li', { hasText: 'Waiting for bob' }).waitFor();
    await bob.getByRole('tab', { name: /Friends/ }).click();
    const request = bob.locator('#requests li[data-request="alice"]');
    await request.getByRole('button', { name: 'Accept' }).click();
    await bob.locator('#friends li[data-friend="alice"]').waitFor();
    await alice.locator('#friends li[data-friend="bob"]').waitFor();
    // Both are online now: each sees the other's dot turn green.
    await alice.locator('#friends li[data-friend="bob"] .dot.online').waitFor();
  });

  await test('text both ways, each message exactly once on both sides', async () => {
    await alice.getByRole('button', { name: 'Chat with bob' }).click();
    await sendText(alice, 'hello bob');
    await bob.getByRole('tab', { name: 'Chats' }).click();
    await openChatWith(bob, 'alice');
    await messageText(bob, 'hello bob').waitFor();
    await sendText(bob, 'hi alice');
    await messageText(alice, 'hi alice').waitFor();
    await sendText(alice, 'how are you?');
    await messageText(bob, 'how are you?').waitFor();
    for (const [page, who] of [[alice, 'alice'], [bob, 'bob']]) {
      for (const t of ['hello bob', 'hi alice', 'how are you?']) assertEq(await countExact(page, t), 1, `${who} sees "${t}" once`);
    }
    // Bob has the chat open, so alice's message shows as seen.
    await alice.locator('#messages .msg.mine .seen', { hasText: 'Seen' }).waitFor();
  });

  await test('a PNG sent by alice renders in bob\'s view', async () => {
    await alice.locator('#file-input').setInputFiles({ name: 'gradient.png', mimeType: 'image/png', buffer: gradientPng(160, 100) });
    const img = bob.locator('#messages img[alt="gradient.png"]');
    await img.waitFor();
    await bob.waitForFunction(() => {
      const i = document.querySelector('#messages img[alt="gradient.png"]');
      return i && i.complete && i.naturalWidth > 0;
    });
    assertEq(await img.evaluate((i) => i.naturalWidth), 160, 'natural width of the decoded image');
    await alice.locator('#messages img[alt="gradient.png"]').waitFor();
  });

  await test('a message with <script> in it renders as text', async () => {
    const evil = '<script>window.pwned = 1</script><b>bold?</b><img src=x onerror="window.pwned=2">';
    await sendText(alice, evil);
    await messageText(bob, 'bold?').waitFor();
    assertEq(await countExact(bob, evil), 1, 'the text is shown verbatim');
    assertEq(await bob.evaluate(() => window.pwned), undefined, 'no script ran');
    assertEq(await bob.locator('#messages script, #messages b, #messages img[src="x"]').count(), 0, 'no markup was created');
  });

  await test('screenshots of both sides', async () => {
    await alice.screenshot({ path: path.join(shots, 'alice.png') });
    await bob.screenshot({ path: path.join(shots, 'bob.png') });
  });

  await test('bob reloads while alice sends 5 messages, then sees each once', async () => {
    const reload = bob.reload();
    for (let i = 1; i <= 5; i++) await sendText(alice, `during reload ${i}`);
    await messageText(alice, 'during reload 5').waitFor();
    await reload;
    await bob.locator('#me-name', { hasText: 'bob' }).waitFor();
    await openChatWith(bob, 'alice');
    for (let i = 1; i <= 5; i++) await messageText(bob, `during reload ${i}`).waitFor();
    // Live delivery continues after the reload.
    await sendText(alice, 'after reload');
    await messageText(bob, 'after reload').waitFor();
    for (let i = 1; i <= 5; i++) assertEq(await countExact(bob, `during reload ${i}`), 1, `message ${i} once`);
    assertEq(await countExact(bob, 'after reload'), 1, 'live message once');
  });

  await test('unread badges update, and clear when the chat is opened', async () => {
    const carol = await apiUser(server.url, 'carol');
    await carol.call('POST', '/friends/requests', { username: 'bob' });
    await bob.getByRole('tab', { name: /Friends/ }).click();
    await bob.locator('#requests li[data-request="carol"]').getByRole('button', { name: 'Accept' }).click();
    await bob.locator('#friends li[data-friend="carol"]').waitFor();
    await bob.getByRole('tab', { name: 'Chats' }).click();
    // Bob has alice's chat open; carol's messages count as unread.
    const bobId = (await carol.call('GET', '/friends')).friends[0].id;
    await carol.call('POST', '/messages', { to: { user: bobId }, kind: 'text', body: { text: 'psst' } });
    const badge = bob.locator('#conversations li', { hasText: 'carol' }).locator('.unread');
    await badge.filter({ hasText: '1' }).waitFor();
    await carol.call('POST', '/messages', { to: { user: bobId }, kind: 'text', body: { text: 'bob?' } });
    await badge.filter({ hasText: '2' }).waitFor();
    // Messages in the open chat do not raise a badge.
    await sendText(alice, 'are you there?');
    await messageText(bob, 'are you there?').waitFor();
    assertEq(await bob.locator('#conversations li', { hasText: 'alice' }).locator('.unread').count(), 0, 'no badge for the open chat');
    await openChatWith(bob, 'carol');
    await messageText(bob, 'bob?').waitFor();
    await bob.locator('#conversations li', { hasText: 'carol' }).locator('.unread').waitFor({ state: 'detached' });
    // The read position is stored: after a reload the badge stays cleared.
    await bob.reload();
    await bob.locator('#conversations li', { hasText: 'carol' }).waitFor();
    assertEq(await bob.locator('#conversations li', { hasText: 'carol' }).locator('.unread').count(), 0, 'still read after reload');
  });

  // Edit, reply and delete through each message's menu, seen live on the other side.
  await test('edit, reply, react and delete through the message menu, in two browsers', async () => {
    for (const [page, other] of [[alice, 'bob'], [bob, 'alice']]) {
      if (await page.locator('#back').isVisible()) await page.locator('#back').click();
      await page.getByRole('tab', { name: 'Chats' }).click();
      await openChatWith(page, other);
    }
    // The message whose own text this is (a reply's quote may hold the same words).
    const menu = (page, text) => page.locator('#messages .msg').filter({ has: page.locator('.text', { hasText: text }) }).last().locator('.msg-menu');
    await sendText(alice, 'see you at noom');
    await messageText(bob, 'see you at noom').waitFor();
    // Alice fixes her typo: the composer takes the text, Enter saves it.
    await menu(alice, 'see you at noom').locator('summary').click();
    await menu(alice, 'see you at noom').getByRole('button', { name: 'Edit' }).click();
    assertEq(await alice.locator('#text').inputValue(), 'see you at noom', 'the composer holds the text');
    await alice.locator('#text').fill('see you at noon');
    await alice.locator('#text').press('Enter');
    await messageText(bob, 'see you at noon').waitFor();
    assertEq(await countExact(bob, 'see you at noom'), 0, 'the old text is gone');
    await bob.locator('#messages .msg', { hasText: 'see you at noon' }).locator('.edited').waitFor();
    // Bob's menu has no Edit or Delete for alice's message; he replies.
    await menu(bob, 'see you at noon').locator('summary').click();
    assertEq(await menu(bob, 'see you at noon').locator('.menu > button').allTextContents(), ['Reply'], 'no Edit or Delete on another\'s message');
    await menu(bob, 'see you at noon').getByRole('button', { name: 'Reply' }).click();
    await bob.locator('#compose-context', { hasText: 'Replying to alice' }).waitFor();
    await sendText(bob, 'noon it is');
    await alice.locator('#messages .msg', { hasText: 'noon it is' }).locator('.quote', { hasText: 'see you at noon' }).waitFor();
    await bob.locator('#compose-context').waitFor({ state: 'hidden' }); // the reply bar goes once sent
    // Bob reacts from the menu; alice sees it live and adds hers with a click on the chip.
    await menu(bob, 'see you at noon').locator('summary').click();
    await menu(bob, 'see you at noon').getByRole('button', { name: 'React with 👍' }).click();
    const chip = (page) => page.locator('#messages .msg').filter({ has: page.locator('.text', { hasText: 'see you at noon' }) }).locator('.chip');
    await chip(alice).filter({ hasText: '👍 1' }).waitFor();
    assertEq(await chip(bob).getAttribute('aria-pressed'), 'true', 'bob\'s own reaction shows pressed');
    await chip(alice).click();
    for (const page of [alice, bob]) await chip(page).filter({ hasText: '👍 2' }).waitFor();
    assertEq(await chip(alice).getAttribute('aria-pressed'), 'true', 'alice\'s too, after her click');
    // Alice deletes her message: both sides show a tombstone, and the reply's quote says so.
    alice.once('dialog', (d) => d.accept());
    await menu(alice, 'see you at noon').locator('summary').click();
    await menu(alice, 'see you at noon').getByRole('button', { name: 'Delete' }).click();
    for (const page of [alice, bob]) {
      await page.locator('#messages .msg .deleted', { hasText: 'This message was deleted.' }).waitFor();
      await page.locator('#messages .msg', { hasText: 'noon it is' }).locator('.quote', { hasText: 'a deleted message' }).waitFor();
      assertEq(await countExact(page, 'see you at noon'), 0, 'the deleted text is gone');
      assertEq(await page.locator('#messages .msg .deleted').locator('xpath=../..').locator('.chip').count(), 0, 'a tombstone has no reactions');
    }
  });

  await test('groups: create, talk, leave', async () => {
    await alice.getByRole('tab', { name: 'Groups' }).click();
    // A refused action says why beside the form it came from, not in another panel.
    // (The browser logs the 400 to the console; that one entry is expected.)
    const logged = consoleErrors.length;
    await alice.getByLabel('New group').fill('   ');
    await alice.getByRole('button', { name: 'Create group' }).click();
    await alice.locator('#group-status.error', { hasText: 'group names' }).waitFor();
    assert(!(await alice.locator('#friend-status').textContent()).includes('group names'), 'nothing in the friends panel');
    await until('the browser logs the refusal', async () => consoleErrors.length > logged);
    const refused = consoleErrors.splice(logged);
    assert(refused.length === 1 && refused[0].includes('400'), `one logged 400, not ${JSON.stringify(refused)}`);
    await alice.getByLabel('New group').fill('weekend');
    await alice.locator('#new-group-members label', { hasText: 'bob' }).locator('input').check();
    await alice.getByRole('button', { name: 'Create group' }).click();
    await alice.locator('#chat-title', { hasText: 'weekend' }).waitFor();
    await sendText(alice, 'group hello');
    await bob.getByRole('tab', { name: 'Chats' }).click();
    await openChatWith(bob, 'weekend');
    await messageText(bob, 'group hello').waitFor();
    await bob.locator('#leave-group').click();
    await bob.getByRole('tab', { name: 'Groups' }).click();
    await bob.locator('#groups li', { hasText: 'No groups yet.' }).waitFor();
  });

  await test('a phone-width layout shows the list, then the chat', async () => {
    await alice.setViewportSize({ width: 390, height: 760 });
    assert(!(await alice.locator('.sidebar').isVisible()), 'the open chat fills a phone screen');
    await alice.locator('#back').click();
    await alice.getByRole('tab', { name: 'Chats' }).click();
    await openChatWith(alice, 'bob');
    assert(!(await alice.locator('.sidebar').isVisible()), 'the list gives way to the chat');
    assert(await alice.locator('#back').isVisible(), 'a back button on phones');
    await alice.screenshot({ path: path.join(shots, 'alice-phone.png') });
    await alice.setViewportSize({ width: 1000, height: 700 });
  });

  // At the four sizes the app is made for, nothing overflows its panel sideways on any screen
  // (an element's content wider than its box), and the group header shows member-only
  // controls to those who may use them.
  await test('every screen at 1280, 1024, 390 and 360 px: nothing overflows sideways, and axe-core finds no serious problem', async () => {
    await withOwnServer({}, async (context, own) => {
      const hana = await context.newPage();
      hana.setDefaultTimeout(TIMEOUT);
      const ivan = await apiUser(own.url, 'ivan');
      const jo = await apiUser(own.url, 'jo_with_a_rather_long_name');
      await register(hana, own.url, 'hana');
      for (const friend of [ivan, jo]) {
        const { request } = await friend.call('POST', '/friends/requests', { username: 'hana' });
        await acceptIn(hana, request.id);
      }
      const hanaId = (await jo.call('GET', '/friends')).friends[0].id;
      // jo is in ivan's group too, so its header lists a long member name.
      const { request: joRequest } = await ivan.call('POST', '/friends/requests', { username: jo.user.username });
      await jo.call('POST', `/friends/requests/${joRequest.id}/accept`);
      const members = [hanaId, jo.user.id];
      const { group } = await ivan.call('POST', '/groups', { name: 'a group with a fairly long name for a header', members });
      await ivan.call('POST', '/messages', { to: { group: group.id }, kind: 'text', body: { text: 'hello from ivan' } });
      await ivan.call('POST', '/messages', { to: { group: group.id }, kind: 'text', body: { text: 'and a second line' } });
      await jo.call('POST', '/messages', { to: { user: hanaId }, kind: 'text', body: { text: 'hi hana' } });
      // A group hana owns, with ivan in it and jo not yet: she sees the add-member row.
      await hana.evaluate(async (ivanId) => {
        const body = JSON.stringify({ name: 'hana owns this one', members: [ivanId] });
        const res = await fetch('/api/v1/groups', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body });
        if (!res.ok) throw new Error(`create group: ${res.status}`);
      }, ivan.user.id);
      await hana.reload();
      await hana.locator('#conversations li', { hasText: 'a group with' }).first().waitFor();
      // The comforts: the unread total in the title, a helpful empty pane, initials avatars, a
      // date separator, and a sender's consecutive messages grouped.
      assertEq(await hana.title(), '(3) Web-IM', 'the unread total in the title');
      assert(await hana.locator('#no-chat').isVisible(), 'an empty pane says what to do');
      await openChatWith(hana, 'a group with');
      assert(!(await hana.locator('#no-chat').isVisible()), 'the hint gives way to the chat');
      await messageText(hana, 'and a second line').waitFor();
      assertEq(await hana.locator('#messages .day').allTextContents(), ['Today'], 'one separator, for today');
      assertEq(await hana.locator('#messages .msg').first().locator('.avatar').textContent(), 'IV', 'ivan\'s initials');
      assertEq(await hana.locator('#messages .msg.follow').count(), 1, 'the second message joins the first');
      assertEq(await hana.title(), '(1) Web-IM', 'read messages leave the title count');
      const overflowing = () => hana.evaluate(() => {
        const bad = [];
        for (const node of document.querySelectorAll('body *')) {
          const cs = getComputedStyle(node);
          const shown = node.getClientRects().length > 0 && cs.visibility !== 'hidden';
          const own = ['INPUT', 'TEXTAREA', 'SELECT', 'svg', 'path'].includes(node.tagName) || node.classList.contains('sr');
          const folded = node.closest('details:not([open])') && node.tagName !== 'SUMMARY' && node.tagName !== 'DETAILS';
          if (folded) continue;
          if (!shown || own || cs.textOverflow === 'ellipsis' || node.clientWidth === 0) continue;
          if (node.scrollWidth > node.clientWidth + 1) {
            bad.push(`${node.tagName.toLowerCase()}${node.id ? '#' + node.id : ''}.${node.className} (${node.scrollWidth} > ${node.clientWidth})`);
          }
        }
        return bad;
      });
      const screens = {
        chats: async () => hana.getByRole('tab', { name: 'Chats' }).click(),
        friends: async () => hana.getByRole('tab', { name: 'Friends' }).click(),
        groups: async () => hana.getByRole('tab', { name: 'Groups' }).click(),
        direct: async () => {
          await hana.getByRole('tab', { name: 'Chats' }).click();
          await openChatWith(hana, 'jo_with');
        },
        account: async () => {
          await hana.locator('#account summary').click();
          await hana.locator('#sessions li').first().waitFor();
        },
        owned: async () => {
          await hana.getByRole('tab', { name: 'Groups' }).click();
          await hana.locator('#groups li', { hasText: 'hana owns this one' }).locator('.open-btn').click();
          await hana.locator('#add-member-row').waitFor();
        },
        group: async () => {
          await hana.getByRole('tab', { name: 'Chats' }).click();
          await openChatWith(hana, 'a group with');
        },
      };
      // How many lines a group header's member list takes (it stays on one, cut with an ellipsis).
      const statusLines = () => hana.evaluate(() => {
        const range = document.createRange();
        range.selectNodeContents(document.getElementById('chat-status'));
        return new Set([...range.getClientRects()].map((r) => Math.round(r.top))).size;
      });
      const problems = [];
      const inaccessible = [];
      for (const [width, height] of [[1280, 800], [1024, 768], [390, 844], [360, 640]]) {
        await hana.setViewportSize({ width, height });
        for (const [name, show] of Object.entries(screens)) {
          if (await hana.locator('#back').isVisible()) await hana.locator('#back').click();
          if (await hana.locator('#account[open]').count()) await hana.locator('#account summary').click();
          try {
            await show();
          } catch (e) {
            throw new Error(`${width}px, screen ${name}: ${e.message}`);
          }
          for (const b of await overflowing()) problems.push(`${width}px ${name}: ${b}`);
          if (['owned', 'group'].includes(name) && (await statusLines()) !== 1) problems.push(`${width}px ${name}: the member list wraps`);
          inaccessible.push(...(await accessibilityProblems(hana, `${width}px ${name}`)));
        }
      }
      assertEq(problems, [], 'elements wider than their box');
      assertEq(inaccessible, [], 'axe-core violations (serious or critical)');
      // The last screen is ivan's group, where hana is a plain member: she may leave, and sees
      // no control to add members.
      await hana.locator('#chat-title', { hasText: 'a group with' }).waitFor();
      assert(await hana.locator('#leave-group').isVisible(), 'a member can leave');
      assert(!(await hana.locator('#add-member').isVisible()), 'a plain member sees no add-member control');
      await hana.screenshot({ path: path.join(shots, 'group-phone-360.png') });
      // In her own group, hana may add a friend who is not in yet: the list names what it is
      // for, and Add looks disabled until one is picked. The group has no message yet, and
      // the pane says so.
      await hana.setViewportSize({ width: 1280, height: 800 });
      await screens.owned();
      await hana.locator('#empty-chat').waitFor(); // an empty chat says so
      assertEq(await hana.locator('#add-member option').allTextContents(), ['Add a member…', 'jo_with_a_rather_long_name'], 'only friends not in the group');
      const add = hana.locator('#add-member-btn');
      assert(await add.isDisabled(), 'Add waits for a pick');
      assert(Number(await add.evaluate((b) => getComputedStyle(b).opacity)) < 0.6, 'and looks it');
      await hana.getByLabel('Add a member').selectOption({ label: 'jo_with_a_rather_long_name' });
      assert(await add.isEnabled(), 'a pick enables Add');
      await add.click();
      await hana.locator('#chat-status', { hasText: 'jo_with_a_rather_long_name' }).waitFor();
      await hana.locator('#add-member-row').waitFor({ state: 'hidden' });
    });
  });

  // Everything from the keyboard alone: register, accept a request, open the chat, send,
  // switch tabs with the arrow keys, open and close the Account panel, and on a phone go back
  // to the list. Each stop on the way must show where the focus is.
  await test('everything works from the keyboard, with the focus always visible', async () => {
    await withOwnServer({ viewport: { width: 1024, height: 768 } }, async (context, own) => {
      const kim = await context.newPage();
      kim.setDefaultTimeout(TIMEOUT);
      const unmarked = [];
      // Presses Tab (or Shift+Tab) until the focus is on `selector`; every element it passes
      // must show a focus ring.
      const tabTo = async (selector, back = false) => {
        for (let i = 0; i < 60; i++) {
          await kim.keyboard.press(back ? 'Shift+Tab' : 'Tab');
          const at = await kim.evaluate((sel) => {
            const node = document.activeElement;
            const cs = getComputedStyle(node);
            const ring = cs.outlineStyle !== 'none' && parseFloat(cs.outlineWidth) > 0;
            const name = `${node.tagName.toLowerCase()}${node.id ? '#' + node.id : ''} "${(node.textContent || node.value || '').trim().slice(0, 30)}"`;
            return { here: node.matches(sel), ring: ring || node.tagName === 'BODY', name };
          }, selector);
          if (!at.ring) unmarked.push(at.name);
          if (at.here) return;
        }
        throw new Error(`Tab never reached ${selector}`);
      };
      await kim.goto(own.url);
      await kim.locator('#auth-form input[name=username]').waitFor();
      assert(await kim.evaluate(() => document.activeElement.name === 'username'), 'the log-in form has the focus');
      await kim.keyboard.type('kim');
      await kim.keyboard.press('Tab');
      await kim.keyboard.type('kim-password');
      await tabTo('button[value=register]');
      await kim.keyboard.press('Enter');
      await kim.locator('#me-name', { hasText: 'kim' }).waitFor();
      const lee = await apiUser(own.url, 'lee');
      await lee.call('POST', '/friends/requests', { username: 'kim' });
      // The tab list is one stop; the arrow keys move within it.
      await tabTo('#tab-btn-chats');
      await kim.keyboard.press('ArrowRight');
      assert(await kim.locator('#tab-friends').isVisible(), 'ArrowRight shows the Friends tab');
      assert(await kim.evaluate(() => document.activeElement.id === 'tab-btn-friends'), 'and moves the focus to it');
      await kim.locator('#requests li', { hasText: 'lee wants to be friends' }).waitFor();
      await tabTo('#requests button:not(.secondary)');
      await kim.keyboard.press('Enter');
      await kim.locator('#friends li', { hasText: 'lee' }).waitFor();
      await tabTo('#friends .open-btn');
      await kim.keyboard.press('Enter');
      await kim.locator('#chat-title', { hasText: 'lee' }).waitFor();
      await until('opening a chat puts the focus in the composer', () => kim.evaluate(() => document.activeElement.id === 'text'));
      await kim.keyboard.type('typed, not clicked');
      await kim.keyboard.press('Enter');
      await messageText(kim, 'typed, not clicked').waitFor();
      const sent = await lee.call('GET', `/conversations/${await kim.evaluate(() => document.querySelector('#conversations li').dataset.conversation)}/messages`);
      assert(sent.messages.some((m) => m.body.text === 'typed, not clicked'), 'lee has the message');
      // The message list is a stop of its own, so its history can be scrolled by key.
      await tabTo('#messages', true);
      // The Account panel opens with Enter and closes with Escape, back on its summary.
      await tabTo('#account summary', true);
      await kim.keyboard.press('Enter');
      await kim.locator('#sessions li').first().waitFor();
      await tabTo('#notify');
      await kim.keyboard.press('Escape');
      assert(!(await kim.locator('#account[open]').count()), 'Escape closes the Account panel');
      assert(await kim.evaluate(() => document.activeElement.matches('#account summary')), 'and the focus is back on it');
      // On a phone, the back button returns to the list, with the focus on the chat just left.
      await kim.setViewportSize({ width: 390, height: 844 });
      await kim.locator('#back').waitFor();
      await tabTo('#back');
      await kim.keyboard.press('Enter');
      assert(await kim.locator('#conversations').isVisible(), 'the list is back');
      assert(await kim.evaluate(() => document.activeElement.matches('#conversations .open-btn')), 'with the focus on the chat just left');
      assertEq(unmarked, [], 'focused elements without a visible focus ring');
    });
  });

  // The opt-in desktop notification: shown for a message that arrives while the tab is
  // hidden, and only then. The browser's Notification and the page's visibility are stood in
  // for (headless chromium shows no notifications and never hides a page).
  await test('an opted-in tab shows a desktop notification only while hidden', async () => {
    await withOwnServer({ viewport: { width: 1024, height: 768 } }, async (context, own) => {
      await context.addInitScript(() => {
        window.shown = [];
        window.pageHidden = false;
        Object.defineProperty(Document.prototype, 'hidden', { get: () => window.pageHidden });
        window.Notification = class {
          static permission = 'default';
          static async requestPermission() {
            this.permission = 'granted';
            return 'granted';
          }
          constructor(title, options) {
            window.shown.push({ title, body: options.body });
          }
          close() {}
        };
      });
      const mia = await context.newPage();
      mia.setDefaultTimeout(TIMEOUT);
      const ned = await apiUser(own.url, 'ned');
      await register(mia, own.url, 'mia');
      const { request } = await ned.call('POST', '/friends/requests', { username: 'mia' });
      await acceptIn(mia, request.id);
      const to = { user: request.to };
      const send = (text) => ned.call('POST', '/messages', { to, kind: 'text', body: { text } });
      const hide = (hidden) => mia.evaluate((h) => {
        window.pageHidden = h;
        document.dispatchEvent(new Event('visibilitychange'));
      }, hidden);
      await hide(true);
      await send('before opting in');
      await mia.locator('#conversations li', { hasText: 'before opting in' }).waitFor();
      await mia.locator('#account summary').click();
      await mia.getByLabel('Notify me of messages while this tab is hidden').check();
      await until('the opt-in is kept', async () => (await mia.evaluate(() => localStorage.getItem('web-im.notify'))) === 'on');
      await send('while hidden');
      await mia.locator('#conversations li', { hasText: 'while hidden' }).waitFor();
      await hide(false);
      await send('while shown');
      await mia.locator('#conversations li', { hasText: 'while shown' }).waitFor();
      assertEq(await mia.evaluate(() => window.shown), [{ title: 'ned', body: 'while hidden' }], 'notifications shown');
    });
  });

  await test('no console errors on either side', async () => {
    assertEq(consoleErrors, [], 'console errors');
  });

  // Last: it logs alice out. A refused stream logs a 401 in the console, which is expected here.
  await test('"Log out everywhere" in one browser ends the session of another', async () => {
    const context = await browser.newContext({ viewport: { width: 1000, height: 700 } });
    const other = await context.newPage();
    other.setDefaultTimeout(TIMEOUT);
    await other.goto(server.url);
    await other.getByLabel('Username').fill('alice');
    await other.getByLabel('Password').fill('alice-password');
    await other.getByRole('button', { name: 'Log in' }).click();
    await other.locator('#me-name', { hasText: 'alice' }).waitFor();
    // The account panel lists both sessions; then alice ends them all.
    await alice.locator('#account summary').click();
    await until('both sessions in the list', async () => (await alice.locator('#sessions li').count()) === 2);
    await alice.locator('#sessions li', { hasText: 'This browser' }).waitFor();
    await alice.getByRole('button', { name: 'Log out everywhere' }).click();
    await alice.locator('#auth').waitFor();
    // The other browser's stream ends; its client finds no session and shows the login form.
    await other.locator('#auth').waitFor();
    const status = await other.evaluate(async () => (await fetch('/api/v1/me')).status);
    assertEq(status, 401, 'the other browser\'s next call');
    await context.close();
  });
} finally {
  await browser.close();
  server.child.kill('SIGTERM');
  rmSync(server.dataDir, { recursive: true, force: true });
}

// ----- over plain HTTP/1.1: one user's seven tabs share one event stream -----
// A browser opens at most six HTTP/1.1 connections to an origin. With a stream per tab, the
// seventh tab never loaded; im-client.js now shares one stream among a user's tabs (a Web Lock
// picks the tab that holds it, a BroadcastChannel carries its events to the others). The
// server's own gauge counts the streams.

const METRICS_TOKEN = 'e2e-metrics-token-0123456789';
const h1Server = await startServer([], { IM_METRICS__TOKEN: METRICS_TOKEN });
const h1Browser = await launch();

async function streamsOpen() {
  const res = await fetch(`${h1Server.url}/metrics`, { headers: { Authorization: `Bearer ${METRICS_TOKEN}` } });
  const line = (await res.text()).split('\n').find((l) => l.startsWith('im_streams_open '));
  return line ? Number(line.split(' ')[1]) : NaN;
}

// Waits until `cond()` holds, failing after TIMEOUT (a bound, not a speed claim).
async function until(what, cond) {
  const end = Date.now() + TIMEOUT;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

try {
  await test('over plain HTTP/1.1, seven tabs of one user load and share one event stream', async () => {
    const fay = await h1Browser.newContext({ viewport: { width: 1000, height: 700 } });
    const first = await fay.newPage();
    first.setDefaultTimeout(TIMEOUT);
    await register(first, h1Server.url, 'fay');
    assertEq(await first.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol), 'http/1.1', 'the page came over HTTP/1.1');
    const tabs = [first];
    for (let i = 2; i <= 7; i++) {
      const tab = await fay.newPage();
      tab.setDefaultTimeout(TIMEOUT);
      await tab.goto(h1Server.url);
      await tab.locator('#me-name', { hasText: 'fay' }).waitFor();
      tabs.push(tab);
    }
    await until('one event stream on the server', async () => (await streamsOpen()) === 1);
    const gus = await apiUser(h1Server.url, 'gus');
    const { request } = await gus.call('POST', '/friends/requests', { username: 'fay' });
    await acceptIn(first, request.id);
    const toFay = (text) => gus.call('POST', '/messages', { to: { user: request.to }, kind: 'text', body: { text } });
    await toFay('to all seven tabs');
    for (const tab of tabs) {
      await tab.locator('#conversations li', { hasText: 'gus' }).locator('.unread').filter({ hasText: '1' }).waitFor();
    }
    assertEq(await streamsOpen(), 1, 'event streams on the server with seven tabs open');
    // The first tab holds the stream. It closes, and a message sent at once reaches the six
    // others once: a waiting tab takes the stream over and resumes after the last id.
    await first.close();
    await toFay('after the handover');
    for (const [i, tab] of tabs.slice(1).entries()) {
      try {
        await tab.locator('#conversations li', { hasText: 'gus' }).locator('.unread').filter({ hasText: '2' }).waitFor();
      } catch (e) {
        // Say what every tab shows, to tell a missed message from a stalled tab.
        const seen = await Promise.all(tabs.slice(1).map((t) => t.locator('#conversations').textContent().catch(() => '?')));
        throw new Error(`tab ${i + 2} did not show the second message: ${e.message}; the tabs show ${JSON.stringify(seen)}; streams open ${await streamsOpen()}`);
      }
    }
    await until('one event stream again', async () => (await streamsOpen()) === 1);
    const last = tabs[6];
    await openChatWith(last, 'gus');
    await messageText(last, 'after the handover').waitFor();
    assertEq(await countExact(last, 'to all seven tabs'), 1, 'the first message, once');
    assertEq(await countExact(last, 'after the handover'), 1, 'the second message, once');
    await fay.close();
  });
} finally {
  await h1Browser.close();
  h1Server.child.kill('SIGTERM');
  rmSync(h1Server.dataDir, { recursive: true, force: true });
}

// ----- over HTTPS with HTTP/2: one user's seven tabs -----
// Over HTTP/1.1 a browser opens at most six connections to an origin and each tab's event
// stream holds one, so a seventh tab never loaded. The server's own self-signed certificate is
// passed to Chromium by its public key hash, as an operator would trust a private CA.

const tlsServer = await startServer(['--self-signed']);
const https = tlsServer.url.replace('https://127.0.0.1', 'https://localhost');
const spki = new X509Certificate(readFileSync(path.join(tlsServer.dataDir, 'tls/self-signed.crt'))).publicKey.export({ type: 'spki', format: 'der' });
const tlsBrowser = await launch([`--ignore-certificate-errors-spki-list=${createHash('sha256').update(spki).digest('base64')}`]);
try {
  await test('over HTTPS and HTTP/2, seven tabs of one user all load and all get a message', async () => {
    assert(tlsServer.url.startsWith('https://'), `the server says https: ${tlsServer.url}`);
    const dana = await tlsBrowser.newContext({ viewport: { width: 1000, height: 700 } });
    const first = await dana.newPage();
    first.setDefaultTimeout(TIMEOUT);
    await register(first, https, 'dana');
    assertEq(await first.evaluate(() => performance.getEntriesByType('navigation')[0].nextHopProtocol), 'h2', 'the page came over HTTP/2');
    const tabs = [first];
    for (let i = 2; i <= 7; i++) {
      const tab = await dana.newPage();
      tab.setDefaultTimeout(TIMEOUT);
      await tab.goto(https);
      await tab.locator('#me-name', { hasText: 'dana' }).waitFor();
      tabs.push(tab);
    }
    // A friend writes from another browser context, through the API over the same HTTPS.
    const erin = await (await tlsBrowser.newContext()).newPage();
    erin.setDefaultTimeout(TIMEOUT);
    await erin.goto(https);
    const api = async (page, method, p, body) => page.evaluate(async ([method, p, body]) => {
      const res = await fetch(`/api/v1${p}`, { method, headers: { 'Content-Type': 'application/json' }, body: body && JSON.stringify(body) });
      const text = await res.text();
      if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${text}`);
      return text ? JSON.parse(text) : null;
    }, [method, p, body]);
    await api(erin, 'POST', '/auth/register', { username: 'erin', password: 'erin-password' });
    await api(erin, 'POST', '/auth/login', { username: 'erin', password: 'erin-password' });
    const { request } = await api(erin, 'POST', '/friends/requests', { username: 'dana' });
    await api(first, 'POST', `/friends/requests/${request.id}/accept`);
    await api(erin, 'POST', '/messages', { to: { user: request.to }, kind: 'text', body: { text: 'to all seven tabs' } });
    // Each tab's own event stream brings the message: its conversation list shows it unread.
    for (const tab of tabs) {
      await tab.locator('#conversations li', { hasText: 'erin' }).locator('.unread').filter({ hasText: '1' }).waitFor();
    }
    await dana.close();
  });
} finally {
  await tlsBrowser.close();
  tlsServer.child.kill('SIGTERM');
  rmSync(tlsServer.dataDir, { recursive: true, force: true });
}

const passed = results.filter((r) => r.ok).length;
const failed = results.length - passed;
console.log(`\n${passed} passed, ${failed} failed`);
process.exit(failed === 0 && results.length > 0 ? 0 : 1);
