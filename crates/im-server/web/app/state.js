// What the app knows: one client, one state object, and the names it derives from them.
// Views read and write `state`; only the loaders in sidebar.js replace its maps wholesale.

import { ImClient, directConversation } from '/im-client.js';
import { previewText } from '/app/format.js';

/** The one connection to the server for this page (its stream is shared with other tabs). */
export const im = new ImClient();

/** Messages per page of history, on opening a chat and on scrolling up. */
export const PAGE_SIZE = 50;
/** A typing notice is sent at most this often while the user types. */
export const TYPING_EVERY_MS = 3000;
/** How long "… is typing" stays without a new notice (a little over `TYPING_EVERY_MS`). */
export const TYPING_SHOWN_MS = 4000;
/** Scrolled this close to the top of a chat, the next older page is loaded. */
export const LOAD_OLDER_WITHIN_PX = 40;
/** The reactions a message's menu offers at one click. */
export const QUICK_REACTIONS = Object.freeze(['👍', '❤️', '😂', '😮', '😢', '🎉']);
/** A reply's quote shows at most this many characters of the original (as the server's). */
export const QUOTE_CHARS = 140;
/** Uploads of these types are sent as images (shown inline); anything else as a file. */
export const RASTER_TYPES = Object.freeze(['image/png', 'image/jpeg', 'image/gif', 'image/webp']);

export const state = {
  me: null,
  names: new Map(), // user id -> username
  friends: new Map(), // user id -> {id, username, online}
  groups: new Map(), // group id -> group
  conversations: new Map(), // key -> {conversation, with, last_message, unread}
  current: null, // {conversation, to, title}
  theirRead: new Map(), // conversation -> highest id the other side has read
  oldestLoaded: null, // id of the oldest message shown in the open chat
  noMoreHistory: false, // the open chat's first message is shown
  loadingOlder: false, // a page of older history is on its way
  typingTimer: null, // clears "… is typing"
  lastTypingSent: 0, // when this tab last sent a typing notice (ms)
  reactions: new Map(), // message id -> Map(emoji -> {count, me})
  replyTo: null, // the message the composer's next message replies to
  editing: null, // the message of mine the composer is editing
};

/** A user's name as this user knows it ("you" for oneself). */
export function nameOf(id) {
  if (state.me && id === state.me.id) return 'you';
  return state.names.get(id) || `user ${id}`;
}

/** The title of a conversation target (`{user}` or `{group}`). */
export function titleOf(target) {
  if (target.group !== undefined) return (state.groups.get(target.group) || {}).name || `group ${target.group}`;
  return nameOf(target.user);
}

/** The conversation key of a target, as the server names it. */
export function keyOf(to) {
  return to.group !== undefined ? `g${to.group}` : directConversation(state.me.id, to.user);
}

/** One line of a message, "You: " first when it is one's own. */
export function preview(m) {
  return previewText(m, !!m && m.from === state.me.id);
}
