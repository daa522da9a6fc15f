// The web client against a cluster: two im-server nodes on one PostgreSQL database behind
// `cargo xtask balance`, exactly as README's "Cluster" section sets it up. Two people chat in
// two browser contexts while each node in turn is killed with SIGKILL; every browser's event
// stream is cut at least once, reconnects through the balancer to the surviving node, and
// each side still shows every message exactly once. Run by `cargo xtask ci`:
//   E2E_SERVER_BIN=target/debug/im-server E2E_BALANCE_BIN=target/debug/xtask node web/tests/cluster.mjs
// PostgreSQL is reached with psql at $IM_TEST_POSTGRES (default postgres://postgres@127.0.0.1:5432/postgres).

import { chromium } from 'playwright-core';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';

const here = path.dirname(new URL(import.meta.url).pathname);
const root = path.resolve(here, '../..');
const bin = process.env.E2E_SERVER_BIN || path.join(root, 'target/debug/im-server');
const balanceBin = process.env.E2E_BALANCE_BIN || path.join(root, 'target/debug/xtask');
const admin = process.env.IM_TEST_POSTGRES || 'postgres://postgres@127.0.0.1:5432/postgres';
const TIMEOUT = 30_000; // a bound so a broken test fails instead of hanging; not a speed claim

function assertEq(a, b, msg) {
  if (JSON.stringify(a) !== JSON.stringify(b)) throw new Error(`${msg}: expected ${JSON.stringify(b)}, got ${JSON.stringify(a)}`);
}

// ----- the deployment -----

const dbName = `im_test_e2e_${process.pid}_${Date.now()}`;
const dbUrl = admin.replace(/\/[^/]*$/, `/${dbName}`);
const psql = (sql) => execFileSync('psql', [admin, '-qc', sql], { stdio: ['ignore', 'ignore', 'inherit'] });
const work = mkdtempSync(path.join(tmpdir(), 'web-im-cluster-'));

/** A free loopback port (nodes keep theirs across restarts, as behind a real balancer). */
async function freePort() {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Starts (or restarts) node `i` on its port; resolves once it listens. */
async function startNode(i, port) {
  const child = spawn(bin, ['--listen', `127.0.0.1:${port}`, '--data-dir', path.join(work, `node${i}`)], {
    env: {
      ...process.env,
      IM_STORE: 'postgres',
      IM_POSTGRES__URL: dbUrl,
      IM_FILES__DIR: path.join(work, 'files'),
      IM_ARGON2__MEMORY_KIB: '64',
      IM_ARGON2__ITERATIONS: '1',
      IM_LOG: 'error',
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const lines = createInterface({ input: child.stdout });
  await new Promise((resolve, reject) => {
    lines.once('line', resolve);
    child.once('exit', (code) => reject(new Error(`node ${i} exited with ${code}`)));
  });
  return child;
}

async function killNode(child) {
  const gone = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGKILL');
  await gone;
}

psql(`CREATE DATABASE ${dbName}`);
const ports = [await freePort(), await freePort()];
const nodes = [await startNode(0, ports[0]), await startNode(1, ports[1])];
const lbPort = await freePort();
const balancer = spawn(balanceBin, ['balance', `127.0.0.1:${lbPort}`, ...ports.map((p) => `127.0.0.1:${p}`)], {
  stdio: ['ignore', 'pipe', 'inherit'],
});
// However the run ends (a browser that fails to launch included), no node outlives it.
process.on('exit', () => {
  balancer.kill('SIGKILL');
  for (const n of nodes) n.kill('SIGKILL');
});
await new Promise((resolve) => createInterface({ input: balancer.stdout }).once('line', resolve));
const base = `http://127.0.0.1:${lbPort}`;
console.log(`two nodes behind ${base}`);

// ----- the browsers -----

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run', '--disable-quic', '--disable-sync'],
});
async function newPage() {
  const context = await browser.newContext({ viewport: { width: 1000, height: 700 } });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  return page;
}

async function register(page, username) {
  await page.goto(base);
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill(`${username}-password`);
  await page.getByRole('button', { name: 'Register' }).click();
  await page.locator('#me-name', { hasText: username }).waitFor();
}

async function sendText(page, text) {
  await page.locator('#text').fill(text);
  await page.locator('#text').press('Enter');
}

async function seesOnce(page, who, text) {
  await page.locator('#messages .msg .text').filter({ hasText: text }).first().waitFor();
  const n = await page.$$eval('#messages .msg .text', (els, t) => els.filter((e) => e.textContent === t).length, text);
  assertEq(n, 1, `${who} sees "${text}" once`);
}

let failed = false;
const alice = await newPage();
const bob = await newPage();
try {
  await register(alice, 'alice');
  await register(bob, 'bob');
  await alice.getByRole('tab', { name: /Friends/ }).click();
  await alice.getByLabel('Add a friend').fill('bob');
  await alice.getByRole('button', { name: 'Send request' }).click();
  await bob.getByRole('tab', { name: /Friends/ }).click();
  await bob.locator('#requests li[data-request="alice"]').getByRole('button', { name: 'Accept' }).click();
  await alice.locator('#friends li[data-friend="bob"]').waitFor();
  await alice.getByRole('button', { name: 'Chat with bob' }).click();
  await bob.locator('#friends li[data-friend="alice"]').waitFor();
  await bob.getByRole('button', { name: 'Chat with alice' }).click();

  const said = [];
  async function exchange(round) {
    for (const [from, to, fromName, toName] of [[alice, bob, 'alice', 'bob'], [bob, alice, 'bob', 'alice']]) {
      const text = `${fromName} ${round}`;
      await sendText(from, text);
      said.push(text);
      await seesOnce(to, toName, text);
    }
    for (const text of said) {
      await seesOnce(alice, 'alice', text);
      await seesOnce(bob, 'bob', text);
    }
  }

  await exchange('before any kill');
  // Each node dies once, the other serving meanwhile: whichever node a browser's stream was
  // on, it is cut at least once and must come back through the balancer.
  for (const i of [0, 1]) {
    await killNode(nodes[i]);
    await exchange(`while node ${i + 1} is down`);
    nodes[i] = await startNode(i, ports[i]);
    await exchange(`after node ${i + 1} came back`);
  }
  for (const page of [alice, bob]) {
    await page.locator('#banner').waitFor({ state: 'hidden' });
  }
  console.log('ok   two browsers chat across two nodes; each node killed in turn; every message shown once on both sides');
} catch (e) {
  failed = true;
  console.log(`FAIL cluster chat\n     ${(e && e.stack) || e}`);
} finally {
  await browser.close();
  balancer.kill('SIGKILL');
  for (const n of nodes) n.kill('SIGKILL');
  await new Promise((r) => setTimeout(r, 200));
  try {
    psql(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`);
  } catch (e) {
    console.log(`could not drop ${dbName}: ${e}`);
  }
  rmSync(work, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
