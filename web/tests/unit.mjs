// Unit tests of the web app's pure helpers (crates/im-server/web/app/format.js), in Node with
// no browser: `node --test unit.mjs`. Run by `cargo xtask ci` before the browser tests.
//
// format.js is a module of the page, served as /app/format.js; it has no imports, so it is
// loaded here from its source as it is, without a package.json to make Node read it as ESM.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';

const here = path.dirname(new URL(import.meta.url).pathname);
const source = readFileSync(path.resolve(here, '../../crates/im-server/web/app/format.js'), 'utf8');
const f = await import(`data:text/javascript,${encodeURIComponent(source)}`);

const MINUTE = 60 * 1000;

test('fmtSize: bytes, KiB and MiB', () => {
  assert.equal(f.fmtSize(0), '0 B');
  assert.equal(f.fmtSize(1023), '1023 B');
  assert.equal(f.fmtSize(1024), '1.0 KiB');
  assert.equal(f.fmtSize(1536), '1.5 KiB');
  assert.equal(f.fmtSize(3 * 1024 * 1024), '3.0 MiB');
});

test('initials: the first letters of the first two words, or the first two letters', () => {
  assert.equal(f.initials('hana'), 'HA');
  assert.equal(f.initials('ivan petrov'), 'IP');
  assert.equal(f.initials('jo_with_a_rather_long_name'), 'JW');
  assert.equal(f.initials('a.b'), 'AB');
  assert.equal(f.initials('x'), 'X');
  assert.equal(f.initials('--'), '?', 'a name of separators only');
  assert.equal(f.initials('__x'), 'X', 'separators alone are no word');
  // A letter outside the BMP is one letter, not half of a surrogate pair.
  assert.equal(f.initials('𝒜lice 𝒷ob'), '𝒜𝒷');
  assert.equal(f.initials('𝒜'), '𝒜');
});

test('colourOf: stable per id, neighbours far apart, group ids (negative) valid', () => {
  assert.equal(f.colourOf(7), f.colourOf(7));
  assert.equal(f.colourOf('7'), f.colourOf(7), 'ids from data attributes are strings');
  const hue = (id) => Number(/^hsl\((\d+) /.exec(f.colourOf(id))[1]);
  for (let id = -50; id <= 50; id++) {
    assert.ok(hue(id) >= 0 && hue(id) < 360, `hue of ${id} is ${hue(id)}`);
    const apart = Math.abs(hue(id) - hue(id + 1));
    assert.ok(Math.min(apart, 360 - apart) >= 30, `ids ${id} and ${id + 1} look alike`);
  }
});

/** WCAG 2 contrast of white on an `hsl(h s% l%)` colour. */
function contrastWithWhite(hsl) {
  const [h, sat, light] = /^hsl\((\d+) (\d+)% (\d+)%\)$/.exec(hsl).slice(1).map(Number);
  const s = sat / 100;
  const l = light / 100;
  const k = (n) => (n + h / 30) % 12;
  const a = s * Math.min(l, 1 - l);
  const channel = (n) => l - a * Math.max(-1, Math.min(k(n) - 3, 9 - k(n), 1));
  const linear = (c) => (c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4);
  const lum = 0.2126 * linear(channel(0)) + 0.7152 * linear(channel(8)) + 0.0722 * linear(channel(4));
  return 1.05 / (lum + 0.05);
}

test('colourOf: white initials are readable (WCAG AA) on every colour', () => {
  for (let id = -400; id <= 400; id++) {
    const ratio = contrastWithWhite(f.colourOf(id));
    assert.ok(ratio >= 4.5, `${f.colourOf(id)} (id ${id}) gives ${ratio.toFixed(2)}:1`);
  }
});

test('dayLabel: Today, Yesterday (across a month and a year), then dates', () => {
  const now = new Date(2026, 2, 1, 0, 30); // 1 March, just after midnight
  assert.equal(f.dayLabel(new Date(2026, 2, 1, 0, 0).getTime(), now), 'Today');
  assert.equal(f.dayLabel(new Date(2026, 1, 28, 23, 59).getTime(), now), 'Yesterday');
  const older = f.dayLabel(new Date(2026, 1, 27, 12, 0).getTime(), now);
  assert.ok(!['Today', 'Yesterday'].includes(older) && /27/.test(older) && !/2026/.test(older), older);
  const lastYear = f.dayLabel(new Date(2025, 11, 31, 12, 0).getTime(), new Date(2026, 0, 2, 9, 0));
  assert.ok(/2025/.test(lastYear) && /31/.test(lastYear), lastYear);
  assert.equal(f.dayLabel(new Date(2025, 11, 31, 12, 0).getTime(), new Date(2026, 0, 1, 9, 0)), 'Yesterday');
});

test('joinsGroup: same sender, same day, within five minutes', () => {
  const at = new Date(2026, 5, 10, 12, 0).getTime();
  const a = { from: '1', at };
  assert.equal(f.joinsGroup(null, a), false, 'the first message starts a group');
  assert.equal(f.joinsGroup(a, { from: '1', at: at + MINUTE }), true);
  assert.equal(f.joinsGroup(a, { from: '1', at: at + f.GROUP_WITHIN_MS - 1 }), true);
  assert.equal(f.joinsGroup(a, { from: '1', at: at + f.GROUP_WITHIN_MS }), false);
  assert.equal(f.joinsGroup(a, { from: '2', at: at + MINUTE }), false, 'another sender');
  const late = new Date(2026, 5, 10, 23, 58).getTime();
  const afterMidnight = { from: '1', at: late + 3 * MINUTE };
  assert.equal(f.joinsGroup({ from: '1', at: late }, afterMidnight), false, 'a new day starts a group');
});

test('previewText: each kind in one line, "You: " for mine', () => {
  assert.equal(f.previewText(null, false), '');
  assert.equal(f.previewText({ kind: 'text', body: { text: 'hi' } }, false), 'hi');
  assert.equal(f.previewText({ kind: 'text', body: { text: 'hi' } }, true), 'You: hi');
  assert.equal(f.previewText({ kind: 'image', body: { name: 'a.png' } }, false), '[image] a.png');
  assert.equal(f.previewText({ kind: 'file', body: {} }, true), 'You: [file] ');
  assert.equal(f.previewText({ kind: 'poll', body: {} }, false), '[poll]');
  assert.equal(f.previewText({ kind: 'text', body: null, deleted: true }, true), 'You: a deleted message');
});

test('the title counts unread messages', () => {
  assert.equal(f.unreadTotal([]), 0);
  assert.equal(f.unreadTotal([{ unread: 2 }, { unread: 0 }, { unread: 3 }]), 5);
  assert.equal(f.titleWithUnread(0), 'Web-IM');
  assert.equal(f.titleWithUnread(5), '(5) Web-IM');
});

test('mergeConversations: a loaded list keeps what arrived live while it was on its way', () => {
  const entry = (key, id, unread) => [key, { conversation: key, last_message: { id }, unread }];
  const local = new Map([entry('d1-2', 10, 1), entry('g5', 3, 0), entry('d1-3', 7, 2)]);
  const loaded = new Map([entry('d1-2', 9, 0), entry('g5', 4, 1), entry('g6', 1, 0)]);
  const merged = f.mergeConversations(local, loaded);
  assert.deepEqual([...merged.keys()].sort(), ['d1-2', 'd1-3', 'g5', 'g6']);
  assert.equal(merged.get('d1-2').last_message.id, 10, 'a message newer than the list stays');
  assert.equal(merged.get('d1-2').unread, 1, 'with its unread count');
  assert.equal(merged.get('g5').last_message.id, 4, 'the list wins where it is newer');
  assert.equal(merged.get('d1-3').unread, 2, 'a conversation the list does not have yet stays');
  assert.equal(f.mergeConversations(new Map(), loaded).size, 3);
  assert.deepEqual(f.mergeConversations(local, loaded).get('g6'), loaded.get('g6'));
});
