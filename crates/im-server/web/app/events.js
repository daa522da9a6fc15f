// What the server's event stream changes on the page. The stream itself (one per browser,
// shared by the tabs, resumed by id) is im-client.js's business.

import { PAGE_SIZE, im, state } from '/app/state.js';
import { appendMessages, applyReaction, closeConversation, onAmended, onMessage, openConversation, renderSeen, showTyping } from '/app/chat.js';
import { loadConversations, loadGroups, refreshSocial, renderConversations, renderPresence } from '/app/sidebar.js';
import { $ } from '/app/dom.js';

/** A read receipt: mine clears the unread count (another tab read it); theirs moves "Seen". */
function onRead({ user, conversation, up_to }) {
  if (user === state.me.id) {
    const c = state.conversations.get(conversation);
    if (c && c.last_message && up_to >= c.last_message.id && c.unread) {
      c.unread = 0;
      renderConversations();
    }
    return;
  }
  state.theirRead.set(conversation, Math.max(up_to, state.theirRead.get(conversation) || 0));
  renderSeen();
}

/** A group was changed: reload the groups, and close the chat of one I am no longer in. */
function onGroup({ change, group }) {
  loadGroups().catch((e) => console.warn('web-im:', e));
  if (change === 'deleted' || !group.members.some((m) => m.id === state.me.id)) {
    if (state.current && state.current.to.group === group.id) closeConversation();
    state.conversations.delete(`g${group.id}`);
    renderConversations();
  }
}

/**
 * Each (re)connection says where it caught up: everything after arrives live, so history
 * loaded now closes any gap (a message committed while the page loaded or was offline).
 * Ephemeral events are not replayed: a friendship or group change made before the stream
 * opened is only in the lists, so they are loaded again too (else a new friend's messages
 * show as from "user 7").
 */
async function onReady() {
  await Promise.all([loadConversations(), refreshSocial()]).catch((e) => console.warn('web-im:', e));
  const cur = state.current;
  if (!cur) return;
  const messages = await im.history(cur.conversation, { limit: PAGE_SIZE }).catch(() => []);
  if (state.current === cur) appendMessages(messages);
}

/** Subscribes the page to the stream's events, once. */
export function wireEvents() {
  im.on('message', (m) => state.me && onMessage(m));
  im.on('message_edited', (m) => state.me && onAmended(m));
  im.on('message_deleted', (m) => state.me && onAmended(m));
  im.on('reaction', (r) => state.me && applyReaction(r));
  im.on('presence', ({ user, online }) => renderPresence(user, online));
  im.on('typing', ({ from, conversation }) => showTyping(from, conversation));
  im.on('read', onRead);
  im.on('friend_request', () => refreshSocial().catch((e) => console.warn('web-im:', e)));
  im.on('group', onGroup);
  im.on('resync', async () => {
    await loadConversations().catch((e) => console.warn('web-im:', e));
    if (state.current) openConversation(state.current.to);
  });
  im.on('down', () => ($('banner').hidden = false));
  im.on('up', () => ($('banner').hidden = true));
  im.on('ready', onReady);
  im.on('logout', () => location.reload());
}
