// The chat pane: one open conversation, its header, its messages (with date separators,
// grouping and "Seen"), paging back through history, and the composer.

import { $, Where, avatar, el, say, showError } from '/app/dom.js';
import { dayLabel, fmtSize, joinsGroup, sameDay } from '/app/format.js';
import {
  LOAD_OLDER_WITHIN_PX,
  PAGE_SIZE,
  QUICK_REACTIONS,
  QUOTE_CHARS,
  RASTER_TYPES,
  TYPING_EVERY_MS,
  TYPING_SHOWN_MS,
  im,
  keyOf,
  nameOf,
  state,
  titleOf,
} from '/app/state.js';
import { act, leaveGroup, loadGroups, renderConversations, selectTab } from '/app/sidebar.js';
import { maybeNotify } from '/app/account.js';

export async function openConversation(to) {
  const conversation = keyOf(to);
  state.current = { conversation, to, title: titleOf(to) };
  state.oldestLoaded = null;
  state.noMoreHistory = false;
  $('app').classList.add('chat-open');
  $('composer').hidden = false;
  $('messages').replaceChildren();
  $('typing').textContent = '';
  say(Where.chat);
  setComposing(null);
  renderChatHeader();
  selectTab('chats');
  renderConversations();
  const messages = await im.history(conversation, { limit: PAGE_SIZE }).catch((e) => (showError(Where.chat, e), []));
  if (!state.current || state.current.conversation !== conversation) return;
  state.noMoreHistory = messages.length < PAGE_SIZE;
  appendMessages(messages, false);
  state.oldestLoaded = messages.length ? messages[0].id : null;
  scrollToBottom();
  markCurrentRead();
  $('text').focus();
}

export function closeConversation() {
  const was = state.current;
  state.current = null;
  $('app').classList.remove('chat-open');
  $('composer').hidden = true;
  $('messages').replaceChildren();
  say(Where.chat);
  decorate();
  renderChatHeader();
  // Keyboard users land back on the row of the chat they left.
  const row = was && document.querySelector(`#conversations [data-conversation="${was.conversation}"] button`);
  if (row) row.focus();
}

export function renderChatHeader() {
  const cur = state.current;
  $('no-chat').hidden = !!cur;
  $('chat-title').textContent = cur ? titleOf(cur.to) : 'Pick a conversation';
  let status = '';
  if (cur && cur.to.user !== undefined) {
    const f = state.friends.get(cur.to.user);
    status = f ? (f.online ? 'online' : 'offline') : '';
  } else if (cur) {
    const g = state.groups.get(cur.to.group);
    status = g ? g.members.map((m) => m.username).join(', ') : '';
  }
  $('chat-status').textContent = status;
  const group = cur && cur.to.group !== undefined ? state.groups.get(cur.to.group) : null;
  $('group-actions').hidden = !group;
  if (group) {
    // Only an owner or admin may add members, and only friends who are not in yet.
    const me = group.members.find((m) => m.id === state.me.id);
    const manages = !!me && (me.role === 'owner' || me.role === 'admin');
    const inGroup = new Set(group.members.map((m) => m.id));
    const options = manages ? [...state.friends.values()].filter((f) => !inGroup.has(f.id)) : [];
    $('add-member-row').hidden = options.length === 0;
    $('add-member').replaceChildren(
      el('option', { value: '', text: 'Add a member…' }),
      ...options.map((f) => el('option', { value: String(f.id), text: f.username })),
    );
    $('add-member-btn').disabled = true;
  }
}

function messageBody(m) {
  if (m.deleted) return [el('span', { class: 'text deleted', text: 'This message was deleted.' })];
  if (m.kind === 'text') return [el('span', { class: 'text', text: m.body.text })];
  if (m.kind === 'image') {
    const image = el('img', { src: m.body.url, alt: m.body.name || 'image' });
    return [el('a', { href: m.body.url, target: '_blank', rel: 'noopener', title: 'Open full size' }, image)];
  }
  if (m.kind === 'file') {
    return [
      el('a', { href: m.body.url, download: m.body.name || '', text: m.body.name || 'file' }),
      el('span', { class: 'hint', text: ` (${fmtSize(m.body.size || 0)})` }),
    ];
  }
  return [el('span', { class: 'text', text: `[${m.kind}] ${JSON.stringify(m.body)}` })];
}

// ----- reactions -----

/** The chips under a message: one per emoji, pressed where the user reacted; a click toggles. */
function reactionsNode(id) {
  const byEmoji = state.reactions.get(id) || new Map();
  const chips = [...byEmoji].map(([emoji, r]) =>
    el('button', {
      type: 'button',
      class: r.me ? 'chip mine' : 'chip',
      'aria-pressed': String(r.me),
      'aria-label': `${emoji} ${r.count}${r.me ? ', including you' : ''}`,
      text: `${emoji} ${r.count}`,
      onclick: () => toggleReaction(id, emoji),
    }),
  );
  return el('span', { class: 'reactions', dataset: { reactions: String(id) } }, ...chips);
}

/** Remembers the reactions a page of history came with (the stream then sends changes). */
function keepReactions(messages) {
  for (const m of messages) {
    if (m.deleted || !m.reactions || !m.reactions.length) continue;
    state.reactions.set(m.id, new Map(m.reactions.map((r) => [r.emoji, { count: r.count, me: r.me }])));
  }
}

async function toggleReaction(id, emoji) {
  const r = (state.reactions.get(id) || new Map()).get(emoji);
  try {
    applyReaction(await im.react(id, emoji, !(r && r.me)));
    say(Where.chat);
  } catch (e) {
    showError(Where.chat, e);
  }
}

/** A reaction changed (the answer to one's own, or a 'reaction' event): counts are absolute. */
export function applyReaction(data) {
  const byEmoji = state.reactions.get(data.message) || new Map();
  const r = byEmoji.get(data.emoji) || { count: 0, me: false };
  r.count = data.count;
  if (data.user === state.me.id) r.me = data.added;
  if (r.count > 0) byEmoji.set(data.emoji, r);
  else byEmoji.delete(data.emoji);
  state.reactions.set(data.message, byEmoji);
  const node = $('messages').querySelector(`[data-reactions="${data.message}"]`);
  if (node) node.replaceWith(reactionsNode(data.message));
}

/** The quote of a message as the server makes it (see Quote in docs/API.md). */
function quoteOf(m) {
  const text = m.deleted || !m.body ? '' : m.body.text || m.body.name || '';
  return { id: m.id, from: m.from, kind: m.kind, preview: [...text].slice(0, QUOTE_CHARS).join(''), deleted: !!m.deleted };
}

/** The quote a reply shows of the message it answers (kept up to date by the server). */
function quoteNode(q) {
  const text = q.deleted ? 'a deleted message' : q.preview || `[${q.kind}]`;
  return el('span', { class: 'quote' }, el('span', { class: 'quote-from', text: nameOf(q.from) }), el('span', { text }));
}

/** Whether I may delete others' messages in the open chat: an owner or admin of its group. */
function moderating() {
  const cur = state.current;
  const group = cur && cur.to.group !== undefined ? state.groups.get(cur.to.group) : null;
  const me = group && group.members.find((x) => x.id === state.me.id);
  return !!me && (me.role === 'owner' || me.role === 'admin');
}

/** A message's actions (reply, edit, delete), those this user may take, in a small menu. */
function actionsMenu(m) {
  if (m.deleted) return null;
  const mine = m.from === state.me.id;
  const act = (label, run, cls) =>
    el('button', {
      type: 'button',
      class: cls,
      text: label,
      onclick: (ev) => {
        ev.target.closest('details').open = false;
        run(m);
      },
    });
  const quick = el(
    'div',
    { class: 'quick' },
    ...QUICK_REACTIONS.map((emoji) =>
      el('button', {
        type: 'button',
        text: emoji,
        'aria-label': `React with ${emoji}`,
        onclick: (ev) => {
          ev.target.closest('details').open = false;
          toggleReaction(m.id, emoji);
        },
      }),
    ),
  );
  const items = [quick, act('Reply', startReply)];
  if (mine && m.kind === 'text') items.push(act('Edit', startEdit));
  if (mine || moderating()) items.push(act('Delete', deleteMessage, 'danger'));
  return el(
    'details',
    { class: 'msg-menu' },
    el('summary', { 'aria-label': `Actions for the message from ${nameOf(m.from)}`, text: '⋯' }),
    el('div', { class: 'menu' }, ...items),
  );
}

function messageNode(m) {
  const mine = m.from === state.me.id;
  const time = new Date(m.sent_at).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  const showFrom = !mine && state.current && state.current.to.group !== undefined;
  return el(
    'li',
    { class: mine ? 'msg mine' : 'msg', dataset: { id: String(m.id), from: String(m.from), at: String(m.sent_at), replyTo: m.reply_to ? String(m.reply_to.id) : undefined } },
    mine ? null : avatar(m.from, nameOf(m.from)),
    el(
      'div',
      { class: 'bubble' },
      showFrom ? el('span', { class: 'from', text: nameOf(m.from) }) : null,
      m.reply_to ? quoteNode(m.reply_to) : null,
      ...messageBody(m),
      el(
        'span',
        { class: 'meta' },
        m.edited_at && !m.deleted ? el('span', { class: 'edited', text: 'edited · ' }) : null,
        el('time', { datetime: new Date(m.sent_at).toISOString(), text: time }),
        el('span', { class: 'seen' }),
      ),
      reactionsNode(m.id),
    ),
    actionsMenu(m),
  );
}

/**
 * Puts a date separator above each day's first message, and marks a message that follows
 * one from the same sender within minutes (`follow`: no name, no avatar, less space).
 */
function decorate() {
  const list = $('messages');
  for (const sep of list.querySelectorAll(':scope > .day')) sep.remove();
  let prev = null;
  for (const node of list.querySelectorAll(':scope > .msg')) {
    const here = { from: node.dataset.from, at: Number(node.dataset.at) };
    if (!prev || !sameDay(prev.at, here.at)) {
      list.insertBefore(el('li', { class: 'day', text: dayLabel(here.at) }), node);
    }
    node.classList.toggle('follow', joinsGroup(prev, here));
    prev = here;
  }
  $('empty-chat').hidden = !state.current || !!prev;
}

/** The newest message shown in the open chat, or null. */
function lastMessageNode() {
  const all = $('messages').querySelectorAll(':scope > .msg');
  return all[all.length - 1] || null;
}

/** Adds a message to the open chat once, in id order. */
function appendMessage(m, scroll = true) {
  appendMessages([m], scroll);
}

/**
 * Adds messages to the open chat, each once and in id order, then redraws the separators,
 * grouping and "Seen" once for the whole batch (a page of history is one walk, not fifty).
 */
export function appendMessages(messages, scroll = true) {
  keepReactions(messages);
  const list = $('messages');
  for (const m of messages) {
    if (list.querySelector(`[data-id="${m.id}"]`)) {
      // Shown already; a reload may still bring reactions the stream missed.
      const chips = list.querySelector(`[data-reactions="${m.id}"]`);
      if (chips && m.reactions) chips.replaceWith(reactionsNode(m.id));
      continue;
    }
    const after = [...list.querySelectorAll(':scope > .msg')].find((c) => Number(c.dataset.id) > m.id);
    list.insertBefore(messageNode(m), after || null);
  }
  decorate();
  if (scroll) scrollToBottom();
  renderSeen();
}

function scrollToBottom() {
  const list = $('messages');
  list.scrollTop = list.scrollHeight;
}

async function loadOlder() {
  const cur = state.current;
  if (!cur || state.noMoreHistory || !state.oldestLoaded || state.loadingOlder) return;
  state.loadingOlder = true;
  const list = $('messages');
  const before = list.scrollHeight;
  try {
    const older = await im.history(cur.conversation, { before: state.oldestLoaded, limit: PAGE_SIZE });
    if (state.current !== cur) return;
    state.noMoreHistory = older.length < PAGE_SIZE;
    appendMessages(older, false);
    if (older.length) state.oldestLoaded = older[0].id;
    list.scrollTop += list.scrollHeight - before;
  } catch (e) {
    showError(Where.chat, e);
  } finally {
    state.loadingOlder = false;
  }
}

/**
 * A message changed (an edit or a deletion, from the stream or an answer): its bubble in the
 * open chat and its line in the list show it as it now is.
 */
export function onAmended(m) {
  if (m.deleted) state.reactions.delete(m.id);
  const list = $('messages');
  const node = list.querySelector(`:scope > .msg[data-id="${m.id}"]`);
  if (node && state.current && state.current.conversation === m.conversation) {
    node.replaceWith(messageNode(m));
    decorate();
    renderSeen();
  }
  // Replies shown here quote it: their quotes change as the server's stored ones did.
  for (const reply of list.querySelectorAll(`:scope > .msg[data-reply-to="${m.id}"] .quote`)) {
    reply.replaceWith(quoteNode(quoteOf(m)));
  }
  const c = state.conversations.get(m.conversation);
  if (c && c.last_message && c.last_message.id === m.id) {
    c.last_message = m;
    renderConversations();
  }
}

/** Shows "Seen" under my newest message the other side has read (direct chats). */
export function renderSeen() {
  const cur = state.current;
  for (const s of document.querySelectorAll('#messages .seen')) s.textContent = '';
  if (!cur || cur.to.user === undefined) return;
  const upTo = state.theirRead.get(cur.conversation) || 0;
  const mine = [...document.querySelectorAll('#messages .msg.mine')].filter((n) => Number(n.dataset.id) <= upTo);
  const last = mine[mine.length - 1];
  if (last) last.querySelector('.seen').textContent = ' · Seen';
}

export function markCurrentRead() {
  const cur = state.current;
  if (!cur || document.hidden) return;
  const c = state.conversations.get(cur.conversation);
  const last = lastMessageNode();
  const upTo = last ? Number(last.dataset.id) : 0;
  if (c && c.unread > 0) {
    c.unread = 0;
    renderConversations();
  }
  if (upTo > 0) im.markRead(cur.conversation, upTo).catch(() => {});
}

/** Shows "… is typing" for the open chat until the next message or a quiet while. */
export function showTyping(from, conversation) {
  if (!state.current || state.current.conversation !== conversation) return;
  $('typing').textContent = `${nameOf(from)} is typing…`;
  clearTimeout(state.typingTimer);
  state.typingTimer = setTimeout(() => ($('typing').textContent = ''), TYPING_SHOWN_MS);
}

// ----- replying, editing, deleting -----

/** What the composer does next: a reply to a message, or an edit of one (else a new message). */
function setComposing(mode, m) {
  state.replyTo = mode === 'reply' ? m : null;
  state.editing = mode === 'edit' ? m : null;
  const shown = !!(state.replyTo || state.editing);
  $('compose-context').hidden = !shown;
  if (state.replyTo) $('compose-context-text').textContent = `Replying to ${nameOf(m.from)}: ${m.body.text || m.body.name || m.kind}`;
  if (state.editing) $('compose-context-text').textContent = 'Editing your message';
  if (!shown) return;
  if (state.editing) $('text').value = m.body.text;
  $('text').focus();
}

function startReply(m) {
  setComposing('reply', m);
}

function startEdit(m) {
  setComposing('edit', m);
}

async function deleteMessage(m) {
  if (!window.confirm('Delete this message for everyone?')) return;
  try {
    onAmended(await im.deleteMessage(m.id));
    say(Where.chat);
  } catch (e) {
    showError(Where.chat, e);
  }
}

// ----- sending -----

async function sendText(ev) {
  ev.preventDefault();
  const box = $('text');
  const text = box.value;
  if (!text.trim() || !state.current) return;
  box.value = '';
  const { editing, replyTo } = state;
  try {
    if (editing) {
      onAmended(await im.editText(editing.id, text));
    } else {
      onMessage(await im.sendText(state.current.to, text, { replyTo: replyTo && replyTo.id }));
    }
    setComposing(null);
    say(Where.chat);
  } catch (e) {
    box.value = text;
    showError(Where.chat, e);
  }
}

async function sendFile(file) {
  if (!file || !state.current) return;
  const to = state.current.to;
  $('upload').hidden = false;
  $('upload-name').textContent = file.name || 'file';
  $('upload-progress').value = 0;
  try {
    const info = await im.upload(file, { onProgress: (f) => ($('upload-progress').value = f) });
    const m = await im.send(to, RASTER_TYPES.includes(info.content_type) ? 'image' : 'file', { file_id: info.id });
    say(Where.chat);
    onMessage(m);
  } catch (e) {
    showError(Where.chat, e);
  } finally {
    $('upload').hidden = true;
    $('file-input').value = '';
  }
}

function onTyping() {
  if (!state.current) return;
  const now = Date.now();
  if (now - state.lastTypingSent < TYPING_EVERY_MS) return;
  state.lastTypingSent = now;
  im.typing(state.current.to).catch(() => {});
}

/** A message from the stream or just sent: into its conversation, the list and the title. */
export function onMessage(m) {
  const isCurrent = state.current && state.current.conversation === m.conversation;
  const theirs = m.from !== state.me.id;
  let c = state.conversations.get(m.conversation);
  if (!c) {
    const withTarget = m.to.group !== undefined ? { group: m.to.group } : { user: theirs ? m.from : m.to.user };
    c = { conversation: m.conversation, with: withTarget, last_message: null, unread: 0 };
    state.conversations.set(m.conversation, c);
  }
  const fresh = !c.last_message || m.id > c.last_message.id;
  if (fresh) c.last_message = m;
  if (isCurrent) {
    appendMessage(m);
    if (theirs) {
      clearTimeout(state.typingTimer);
      $('typing').textContent = '';
      markCurrentRead();
    } else {
      state.lastTypingSent = 0;
    }
  } else if (fresh && theirs) {
    c.unread += 1;
  }
  renderConversations();
  if (fresh) maybeNotify(m);
}

/** Hooks the chat pane's own controls up, once. */
export function wireChat() {
  $('add-member').addEventListener('change', () => {
    $('add-member-btn').disabled = !$('add-member').value;
  });
  $('add-member-btn').addEventListener('click', () => {
    const uid = Number($('add-member').value);
    if (uid && state.current) act(Where.chat, () => im.addMember(state.current.to.group, uid), loadGroups);
  });
  $('leave-group').addEventListener('click', () => state.current && leaveGroup(state.current.to.group, Where.chat));
  $('back').addEventListener('click', closeConversation);
  $('compose-cancel').addEventListener('click', () => {
    if (state.editing) $('text').value = '';
    setComposing(null);
    $('text').focus();
  });
  $('composer').addEventListener('submit', sendText);
  $('text').addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      $('composer').requestSubmit();
    } else if (ev.key === 'Escape' && (state.editing || state.replyTo)) {
      $('compose-cancel').click();
    }
  });
  $('text').addEventListener('input', onTyping);
  $('file-input').addEventListener('change', (ev) => sendFile(ev.target.files[0]));
  $('text').addEventListener('paste', (ev) => {
    const file = [...(ev.clipboardData ? ev.clipboardData.files : [])][0];
    if (file) {
      ev.preventDefault();
      sendFile(file);
    }
  });
  const chat = $('chat');
  chat.addEventListener('dragover', (ev) => {
    if (!state.current) return;
    ev.preventDefault();
    chat.classList.add('drop');
  });
  chat.addEventListener('dragleave', () => chat.classList.remove('drop'));
  chat.addEventListener('drop', (ev) => {
    ev.preventDefault();
    chat.classList.remove('drop');
    const file = ev.dataTransfer && ev.dataTransfer.files[0];
    if (file) sendFile(file);
  });
  $('messages').addEventListener('scroll', () => {
    if ($('messages').scrollTop < LOAD_OLDER_WITHIN_PX) loadOlder();
  });
  document.addEventListener('visibilitychange', markCurrentRead);
}
