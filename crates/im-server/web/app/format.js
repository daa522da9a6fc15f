// Pure helpers of the web app: numbers, names, dates and colours to text, and the merge of a
// loaded conversation list. No DOM and no imports, so `web/tests/unit.mjs` runs them in Node as they run in the page.

/** Messages from one sender this close together are shown as one group. */
export const GROUP_WITHIN_MS = 5 * 60 * 1000;

/** A byte count as people read it. */
export function fmtSize(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

/** Up to two initials of a name, for its avatar: the first letters of its first two words. */
export function initials(name) {
  const parts = String(name).split(/[\s._-]+/).filter(Boolean);
  if (!parts.length) return '?';
  const letters = parts.length > 1 ? [...parts[0]][0] + [...parts[1]][0] : [...parts[0]].slice(0, 2).join('');
  return letters.toUpperCase();
}

/**
 * A colour of its own for each user id, the same in every tab and on every visit. Dark
 * enough at every hue for white initials on it to meet WCAG AA (4.5:1).
 */
export function colourOf(id) {
  const hue = (((Number(id) * 137.508) % 360) + 360) % 360; // the golden angle spreads neighbours apart
  return `hsl(${hue.toFixed(0)} 55% 30%)`;
}

/** Whether two instants (ms since the epoch) fall on the same local calendar day. */
export function sameDay(a, b) {
  return new Date(a).toDateString() === new Date(b).toDateString();
}

/** "Today", "Yesterday", or the date, for the separator above a day's first message. */
export function dayLabel(at, now = new Date()) {
  const yesterday = new Date(now);
  yesterday.setDate(now.getDate() - 1);
  if (sameDay(at, now)) return 'Today';
  if (sameDay(at, yesterday)) return 'Yesterday';
  const day = new Date(at);
  const sameYear = day.getFullYear() === now.getFullYear();
  return day.toLocaleDateString([], { weekday: 'long', month: 'long', day: 'numeric', year: sameYear ? undefined : 'numeric' });
}

/**
 * Whether a message (`{from, at}`) joins the group of the one shown just before it: the same
 * sender, the same day, within `GROUP_WITHIN_MS`.
 */
export function joinsGroup(prev, next) {
  return !!prev && prev.from === next.from && sameDay(prev.at, next.at) && next.at - prev.at < GROUP_WITHIN_MS;
}

/** One line of a message for a list or a notification; `mine` prefixes "You: ". */
export function previewText(m, mine) {
  if (!m) return '';
  const who = mine ? 'You: ' : '';
  if (m.deleted) return who + 'a deleted message';
  if (m.kind === 'text') return who + m.body.text;
  if (m.kind === 'image') return who + '[image] ' + (m.body.name || '');
  if (m.kind === 'file') return who + '[file] ' + (m.body.name || '');
  return who + `[${m.kind}]`;
}

/** The unread total of a conversation list, for the tab's title. */
export function unreadTotal(conversations) {
  let sum = 0;
  for (const c of conversations) if (c.unread > 0) sum += c.unread;
  return sum;
}

/** The page title with the unread total in front, so it shows among the browser's tabs. */
export function titleWithUnread(unread) {
  return unread > 0 ? `(${unread}) Web-IM` : 'Web-IM';
}

/**
 * The conversation list just loaded (`loaded`, a Map by key), with what the page learned
 * while it was on its way: a conversation whose newest message arrived live after the server
 * made the list (or is not in it yet) keeps the page's entry, unread count included.
 */
export function mergeConversations(local, loaded) {
  const merged = new Map(loaded);
  for (const [key, c] of local) {
    const listed = merged.get(key);
    const newer = c.last_message && (!listed || !listed.last_message || c.last_message.id > listed.last_message.id);
    if (newer) merged.set(key, c);
  }
  return merged;
}
