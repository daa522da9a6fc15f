// The Web-IM chat app: plain DOM, no framework, no build step. Every piece of user content is
// put on the page with textContent or as an attribute value, never as HTML.

import { ImClient, ImError, directConversation } from '/im-client.js';

const im = new ImClient();
const $ = (id) => document.getElementById(id);

const state = {
  me: null,
  names: new Map(), // user id -> username
  friends: new Map(), // user id -> {id, username, online}
  groups: new Map(), // group id -> group
  conversations: new Map(), // key -> {conversation, with, last_message, unread}
  current: null, // {conversation, to, title}
  theirRead: new Map(), // conversation -> highest id the other side has read
  oldestLoaded: null,
  noMoreHistory: false,
  loadingOlder: false, // a page of older history is on its way
  typingTimer: null,
  lastTypingSent: 0,
};

// ----- small DOM helpers -----

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function fmtSize(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function nameOf(id) {
  if (state.me && id === state.me.id) return 'you';
  return state.names.get(id) || `user ${id}`;
}

function titleOf(target) {
  if (target.group !== undefined) return (state.groups.get(target.group) || {}).name || `group ${target.group}`;
  return nameOf(target.user);
}

function preview(m) {
  if (!m) return '';
  const who = m.from === state.me.id ? 'You: ' : '';
  if (m.kind === 'text') return who + m.body.text;
  if (m.kind === 'image') return who + '[image] ' + (m.body.name || '');
  if (m.kind === 'file') return who + '[file] ' + (m.body.name || '');
  return who + `[${m.kind}]`;
}

/** Up to two initials of a name, for its avatar. */
function initials(name) {
  const parts = String(name).split(/[\s._-]+/).filter(Boolean);
  const letters = parts.length > 1 ? parts[0][0] + parts[1][0] : String(name).slice(0, 2);
  return letters.toUpperCase();
}

/** A colour of its own for each user id, the same in every tab and on every visit. */
function colourOf(id) {
  const hue = (Number(id) * 137.508) % 360; // the golden angle spreads neighbours apart
  return `hsl(${hue.toFixed(0)} 55% 38%)`;
}

/** A round badge with a user's initials in their colour (decorative: the name is beside it). */
function avatar(id, name) {
  const node = el('span', { class: 'avatar', 'aria-hidden': 'true', text: initials(name) });
  node.style.setProperty('--avatar', colourOf(id));
  return node;
}

/** "Today", "Yesterday", or the date, for the separator above a day's first message. */
function dayLabel(at, now = new Date()) {
  const day = new Date(at);
  const yesterday = new Date(now);
  yesterday.setDate(now.getDate() - 1);
  if (day.toDateString() === now.toDateString()) return 'Today';
  if (day.toDateString() === yesterday.toDateString()) return 'Yesterday';
  const sameYear = day.getFullYear() === now.getFullYear();
  return day.toLocaleDateString([], { weekday: 'long', month: 'long', day: 'numeric', year: sameYear ? undefined : 'numeric' });
}

/** Messages from one sender this close together are shown as one group. */
const GROUP_WITHIN_MS = 5 * 60 * 1000;

function showError(e) {
  const text = e instanceof ImError ? e.message : String(e);
  $('friend-status').textContent = text;
  console.warn('web-im:', text);
}

// ----- start-up and accounts -----

async function boot() {
  wireStaticHandlers();
  let me = null;
  try {
    me = await im.me();
  } catch (e) {
    console.warn('web-im: cannot reach the server', e);
  }
  if (me) enterApp(me);
  else showAuth();
}

function showAuth() {
  $('app').hidden = true;
  $('auth').hidden = false;
  $('auth-form').username.focus();
}

async function enterApp(me) {
  state.me = me;
  state.names.set(me.id, me.username);
  $('auth').hidden = true;
  $('app').hidden = false;
  $('me-name').textContent = me.username;
  im.connect();
  await Promise.all([loadFriends(), loadRequests(), loadGroups()]);
  await loadConversations();
}

async function onAuthSubmit(ev) {
  ev.preventDefault();
  const form = ev.target;
  const action = ev.submitter ? ev.submitter.value : 'login';
  const username = form.username.value.trim();
  const password = form.password.value;
  $('auth-error').textContent = '';
  try {
    if (action === 'register') await im.register(username, password);
    const me = await im.login(username, password);
    form.password.value = '';
    await enterApp(me);
  } catch (e) {
    $('auth-error').textContent = e.message;
  }
}

// ----- loading -----

async function loadFriends() {
  const friends = await im.friends();
  state.friends = new Map(friends.map((f) => [f.id, f]));
  for (const f of friends) state.names.set(f.id, f.username);
  renderFriends();
  renderGroupForm();
  renderChatHeader();
  // A message may have been listed before its sender's name was known.
  renderConversations();
}

async function loadRequests() {
  const { incoming, outgoing } = await im.requests();
  for (const r of [...incoming, ...outgoing]) {
    state.names.set(r.from, r.from_username);
    state.names.set(r.to, r.to_username);
  }
  renderRequests(incoming, outgoing);
  renderConversations();
}

async function loadGroups() {
  const groups = await im.groups();
  state.groups = new Map(groups.map((g) => [g.id, g]));
  for (const g of groups) for (const m of g.members) state.names.set(m.id, m.username);
  renderGroups();
  renderChatHeader();
  renderConversations();
}

async function loadConversations() {
  const list = await im.conversations();
  state.conversations = new Map(list.map((c) => [c.conversation, c]));
  renderConversations();
}

// ----- sidebar rendering -----

function selectTab(name) {
  for (const t of ['chats', 'friends', 'groups']) {
    $(`tab-btn-${t}`).setAttribute('aria-selected', String(t === name));
    $(`tab-${t}`).hidden = t !== name;
  }
}

function renderConversations() {
  const list = $('conversations');
  const items = [...state.conversations.values()].sort((a, b) => b.last_message.id - a.last_message.id);
  list.replaceChildren(
    ...items.map((c) => {
      const current = state.current && state.current.conversation === c.conversation;
      const title = titleOf(c.with);
      return el(
        'li',
        { class: 'conversation', 'aria-current': current ? 'true' : 'false', dataset: { conversation: c.conversation } },
        c.with.group !== undefined ? avatar(-c.with.group, title) : avatar(c.with.user, title),
        el(
          'button',
          { class: 'open-btn', onclick: () => openConversation(c.with), 'aria-label': `Open ${title}` },
          el('span', { class: 'name' }, el('strong', { text: title }), el('span', { class: 'preview', text: preview(c.last_message) })),
        ),
        c.unread > 0 ? el('span', { class: 'badge unread', 'aria-label': `${c.unread} unread`, text: String(c.unread) }) : null,
      );
    }),
  );
  $('no-conversations').hidden = items.length > 0;
  // The unread total, in the tab's title, so it shows among the browser's other tabs.
  const unread = items.reduce((sum, c) => sum + (c.unread > 0 ? c.unread : 0), 0);
  document.title = unread > 0 ? `(${unread}) Web-IM` : 'Web-IM';
}

function renderFriends() {
  const list = $('friends');
  const friends = [...state.friends.values()].sort((a, b) => a.username.localeCompare(b.username));
  list.replaceChildren(
    ...friends.map((f) =>
      el(
        'li',
        { dataset: { friend: f.username } },
        el('span', { class: f.online ? 'dot online' : 'dot', role: 'img', 'aria-label': f.online ? 'online' : 'offline' }),
        el('button', { class: 'open-btn', onclick: () => openConversation({ user: f.id }), text: f.username, 'aria-label': `Chat with ${f.username}` }),
        el('button', { class: 'danger', text: 'Unfriend', onclick: () => act(() => im.unfriend(f.id), loadFriends) }),
        el('button', { class: 'danger', text: 'Block', onclick: () => act(() => im.block(f.id), loadFriends) }),
      ),
    ),
  );
  if (!friends.length) list.append(el('li', { class: 'hint', text: 'No friends yet.' }));
}

function renderRequests(incoming, outgoing) {
  const list = $('requests');
  const rows = [
    ...incoming.map((r) =>
      el(
        'li',
        { dataset: { request: r.from_username } },
        el('span', { class: 'name', text: `${r.from_username} wants to be friends` }),
        el('button', { text: 'Accept', onclick: () => act(() => im.answerRequest(r.id, true), refreshSocial) }),
        el('button', { class: 'secondary', text: 'Decline', onclick: () => act(() => im.answerRequest(r.id, false), refreshSocial) }),
      ),
    ),
    ...outgoing.map((r) => el('li', {}, el('span', { class: 'name hint', text: `Waiting for ${r.to_username}` }))),
  ];
  list.replaceChildren(...rows);
  if (!rows.length) list.append(el('li', { class: 'hint', text: 'No pending requests.' }));
  $('requests-badge').hidden = incoming.length === 0;
  $('requests-badge').textContent = String(incoming.length);
}

function renderGroups() {
  const list = $('groups');
  const groups = [...state.groups.values()].sort((a, b) => a.name.localeCompare(b.name));
  list.replaceChildren(
    ...groups.map((g) =>
      el(
        'li',
        { dataset: { group: g.name } },
        el('button', { class: 'open-btn', onclick: () => openConversation({ group: g.id }), text: `${g.name} (${g.members.length})` }),
        el('button', { class: 'secondary', text: 'Leave', onclick: () => leaveGroup(g.id) }),
      ),
    ),
  );
  if (!groups.length) list.append(el('li', { class: 'hint', text: 'No groups yet.' }));
}

function renderGroupForm() {
  const box = $('new-group-members');
  const legend = box.querySelector('legend');
  const friends = [...state.friends.values()].sort((a, b) => a.username.localeCompare(b.username));
  box.replaceChildren(
    legend,
    ...friends.map((f) => el('label', {}, el('input', { type: 'checkbox', name: 'member', value: String(f.id) }), ' ' + f.username)),
  );
}

async function act(action, then) {
  try {
    await action();
    $('friend-status').textContent = '';
  } catch (e) {
    showError(e);
  }
  if (then) await then();
}

async function refreshSocial() {
  await Promise.all([loadFriends(), loadRequests(), loadGroups()]);
}

async function leaveGroup(id) {
  await act(() => im.removeMember(id, state.me.id), loadGroups);
  if (state.current && state.current.to.group === id) closeConversation();
  state.conversations.delete(`g${id}`);
  renderConversations();
}

// ----- the chat view -----

function keyOf(to) {
  return to.group !== undefined ? `g${to.group}` : directConversation(state.me.id, to.user);
}

async function openConversation(to) {
  const conversation = keyOf(to);
  state.current = { conversation, to, title: titleOf(to) };
  state.oldestLoaded = null;
  state.noMoreHistory = false;
  $('app').classList.add('chat-open');
  $('composer').hidden = false;
  $('messages').replaceChildren();
  $('typing').textContent = '';
  renderChatHeader();
  selectTab('chats');
  renderConversations();
  const messages = await im.history(conversation, { limit: 50 }).catch((e) => (showError(e), []));
  if (!state.current || state.current.conversation !== conversation) return;
  state.noMoreHistory = messages.length < 50;
  appendMessages(messages, false);
  state.oldestLoaded = messages.length ? messages[0].id : null;
  scrollToBottom();
  markCurrentRead();
  $('text').focus();
}

function closeConversation() {
  state.current = null;
  $('app').classList.remove('chat-open');
  $('composer').hidden = true;
  $('messages').replaceChildren();
  decorate();
  renderChatHeader();
}

function renderChatHeader() {
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

function messageNode(m) {
  const mine = m.from === state.me.id;
  const body = [];
  if (m.kind === 'text') {
    body.push(el('span', { class: 'text', text: m.body.text }));
  } else if (m.kind === 'image') {
    body.push(
      el('a', { href: m.body.url, target: '_blank', rel: 'noopener', title: 'Open full size' }, el('img', { src: m.body.url, alt: m.body.name || 'image' })),
    );
  } else if (m.kind === 'file') {
    body.push(el('a', { href: m.body.url, download: m.body.name || '', text: m.body.name || 'file' }), el('span', { class: 'hint', text: ` (${fmtSize(m.body.size || 0)})` }));
  } else {
    body.push(el('span', { class: 'text', text: `[${m.kind}] ${JSON.stringify(m.body)}` }));
  }
  const time = new Date(m.sent_at).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  const showFrom = !mine && state.current && state.current.to.group !== undefined;
  return el(
    'li',
    { class: mine ? 'msg mine' : 'msg', dataset: { id: String(m.id), from: String(m.from), at: String(m.sent_at) } },
    mine ? null : avatar(m.from, nameOf(m.from)),
    el(
      'div',
      { class: 'bubble' },
      showFrom ? el('span', { class: 'from', text: nameOf(m.from) }) : null,
      ...body,
      el('span', { class: 'meta' }, el('time', { datetime: new Date(m.sent_at).toISOString(), text: time }), el('span', { class: 'seen' })),
    ),
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
    const at = Number(node.dataset.at);
    const newDay = !prev || new Date(Number(prev.dataset.at)).toDateString() !== new Date(at).toDateString();
    if (newDay) list.insertBefore(el('li', { class: 'day', role: 'separator', text: dayLabel(at) }), node);
    const follows = !newDay && prev.dataset.from === node.dataset.from && at - Number(prev.dataset.at) < GROUP_WITHIN_MS;
    node.classList.toggle('follow', follows);
    prev = node;
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
function appendMessages(messages, scroll = true) {
  const list = $('messages');
  for (const m of messages) {
    if (list.querySelector(`[data-id="${m.id}"]`)) continue;
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
    const older = await im.history(cur.conversation, { before: state.oldestLoaded, limit: 50 });
    if (state.current !== cur) return;
    state.noMoreHistory = older.length < 50;
    appendMessages(older, false);
    if (older.length) state.oldestLoaded = older[0].id;
    list.scrollTop += list.scrollHeight - before;
  } finally {
    state.loadingOlder = false;
  }
}

/** Shows "Seen" under my newest message the other side has read (direct chats). */
function renderSeen() {
  const cur = state.current;
  for (const s of document.querySelectorAll('#messages .seen')) s.textContent = '';
  if (!cur || cur.to.user === undefined) return;
  const upTo = state.theirRead.get(cur.conversation) || 0;
  const mine = [...document.querySelectorAll('#messages .msg.mine')].filter((n) => Number(n.dataset.id) <= upTo);
  const last = mine[mine.length - 1];
  if (last) last.querySelector('.seen').textContent = ' · Seen';
}

function markCurrentRead() {
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

// ----- sending -----

async function sendText(ev) {
  ev.preventDefault();
  const box = $('text');
  const text = box.value;
  if (!text.trim() || !state.current) return;
  box.value = '';
  try {
    const m = await im.sendText(state.current.to, text);
    onMessage(m);
  } catch (e) {
    box.value = text;
    showError(e);
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
    const raster = ['image/png', 'image/jpeg', 'image/gif', 'image/webp'].includes(info.content_type);
    const m = await im.send(to, raster ? 'image' : 'file', { file_id: info.id });
    onMessage(m);
  } catch (e) {
    showError(e);
  } finally {
    $('upload').hidden = true;
    $('file-input').value = '';
  }
}

function onTyping() {
  if (!state.current) return;
  const now = Date.now();
  if (now - state.lastTypingSent < 3000) return;
  state.lastTypingSent = now;
  im.typing(state.current.to).catch(() => {});
}

// ----- events from the server -----

function onMessage(m) {
  const isCurrent = state.current && state.current.conversation === m.conversation;
  let c = state.conversations.get(m.conversation);
  if (!c) {
    const withTarget = m.to.group !== undefined ? { group: m.to.group } : { user: m.from === state.me.id ? m.to.user : m.from };
    c = { conversation: m.conversation, with: withTarget, last_message: null, unread: 0 };
    state.conversations.set(m.conversation, c);
  }
  const fresh = !c.last_message || m.id > c.last_message.id;
  if (fresh) c.last_message = m;
  if (isCurrent) {
    appendMessage(m);
    if (m.from !== state.me.id) {
      clearTimeout(state.typingTimer);
      $('typing').textContent = '';
    }
    if (m.from !== state.me.id) markCurrentRead();
  } else if (fresh && m.from !== state.me.id) {
    c.unread += 1;
  }
  if (m.from === state.me.id && isCurrent) state.lastTypingSent = 0;
  renderConversations();
  if (fresh) maybeNotify(m);
}

function wireEvents() {
  im.on('message', (m) => {
    if (state.me) onMessage(m);
  });
  im.on('presence', ({ user, online }) => {
    const f = state.friends.get(user);
    if (f) f.online = online;
    renderFriends();
    renderChatHeader();
  });
  im.on('typing', ({ from, conversation }) => {
    if (!state.current || state.current.conversation !== conversation) return;
    $('typing').textContent = `${nameOf(from)} is typing…`;
    clearTimeout(state.typingTimer);
    state.typingTimer = setTimeout(() => ($('typing').textContent = ''), 4000);
  });
  im.on('read', ({ user, conversation, up_to }) => {
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
  });
  im.on('friend_request', () => refreshSocial());
  im.on('group', ({ change, group }) => {
    loadGroups();
    if (change === 'deleted' || !group.members.some((m) => m.id === state.me.id)) {
      if (state.current && state.current.to.group === group.id) closeConversation();
      state.conversations.delete(`g${group.id}`);
      renderConversations();
    }
  });
  im.on('resync', async () => {
    await loadConversations();
    if (state.current) openConversation(state.current.to);
  });
  im.on('down', () => ($('banner').hidden = false));
  im.on('up', () => ($('banner').hidden = true));
  // Each (re)connection says where it caught up: everything after arrives live, so history
  // loaded now closes any gap (a message committed while the page loaded or was offline).
  // Ephemeral events are not replayed: a friendship or group change made before the stream
  // opened is only in the lists, so they are loaded again too (else a new friend's messages
  // show as from "user 7").
  im.on('ready', async () => {
    await Promise.all([loadConversations(), refreshSocial()]).catch(() => {});
    if (state.current) {
      const cur = state.current;
      const messages = await im.history(cur.conversation, { limit: 50 }).catch(() => []);
      if (state.current === cur) appendMessages(messages);
    }
  });
  im.on('logout', () => location.reload());
}

// ----- the account panel: desktop notifications and sessions -----

/** The opt-in, kept per browser. */
const NOTIFY_KEY = 'web-im.notify';

function notifyWanted() {
  return localStorage.getItem(NOTIFY_KEY) === 'on' && 'Notification' in window && Notification.permission === 'granted';
}

/** Shows a message as a desktop notification when the user opted in and the tab is hidden. */
function maybeNotify(m) {
  if (!document.hidden || m.from === state.me.id || !notifyWanted()) return;
  const c = state.conversations.get(m.conversation);
  const title = c ? titleOf(c.with) : nameOf(m.from);
  const n = new Notification(title, { body: preview(m), tag: m.conversation });
  n.onclick = () => {
    window.focus();
    if (c) openConversation(c.with);
    n.close();
  };
}

async function onNotifyToggle(ev) {
  const box = ev.target;
  if (!box.checked) {
    localStorage.removeItem(NOTIFY_KEY);
    return;
  }
  const permission = 'Notification' in window ? await Notification.requestPermission() : 'denied';
  if (permission === 'granted') {
    localStorage.setItem(NOTIFY_KEY, 'on');
  } else {
    box.checked = false;
    showError(new Error('This browser does not allow notifications for this page.'));
  }
}

async function renderSessions() {
  const list = $('sessions');
  const sessions = await im.sessions().catch((e) => (showError(e), []));
  list.replaceChildren(
    ...sessions.map((s) =>
      el(
        'li',
        { dataset: { session: String(s.id) } },
        el(
          'span',
          { class: 'name' },
          el('strong', { text: s.current ? 'This browser' : s.user_agent || 'Unknown device' }),
          el('span', { class: 'preview', text: `last used ${new Date(s.last_seen_at).toLocaleString()}` }),
        ),
        s.current ? null : el('button', { class: 'danger', text: 'End', 'aria-label': `End the session of ${s.user_agent || 'an unknown device'}`, onclick: () => act(() => im.endSession(s.id), renderSessions) }),
      ),
    ),
  );
}

function wireStaticHandlers() {
  wireEvents();
  $('auth-form').addEventListener('submit', onAuthSubmit);
  $('notify').checked = localStorage.getItem(NOTIFY_KEY) === 'on';
  $('notify').addEventListener('change', onNotifyToggle);
  $('account').addEventListener('toggle', () => {
    if ($('account').open) renderSessions();
  });
  $('logout').addEventListener('click', async () => {
    await im.logout();
    location.reload();
  });
  $('logout-all').addEventListener('click', async () => {
    try {
      await im.logoutAll();
      location.reload();
    } catch (e) {
      showError(e);
    }
  });
  for (const t of ['chats', 'friends', 'groups']) $(`tab-btn-${t}`).addEventListener('click', () => selectTab(t));
  $('add-friend').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const input = ev.target.username;
    const name = input.value.trim();
    try {
      const r = await im.requestFriend(name);
      $('friend-status').textContent = r.state === 'accepted' ? `You and ${name} are now friends.` : `Request sent to ${name}.`;
      input.value = '';
    } catch (e) {
      showError(e);
    }
    await refreshSocial();
  });
  $('new-group').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const form = ev.target;
    const members = [...form.querySelectorAll('input[name=member]:checked')].map((i) => Number(i.value));
    try {
      const g = await im.createGroup(form.name.value, members);
      form.reset();
      await loadGroups();
      openConversation({ group: g.id });
    } catch (e) {
      showError(e);
    }
  });
  $('add-member').addEventListener('change', () => {
    $('add-member-btn').disabled = !$('add-member').value;
  });
  $('add-member-btn').addEventListener('click', () => {
    const uid = Number($('add-member').value);
    if (uid && state.current) act(() => im.addMember(state.current.to.group, uid), loadGroups);
  });
  $('leave-group').addEventListener('click', () => state.current && leaveGroup(state.current.to.group));
  $('back').addEventListener('click', closeConversation);
  $('composer').addEventListener('submit', sendText);
  $('text').addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      $('composer').requestSubmit();
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
    if ($('messages').scrollTop < 40) loadOlder();
  });
  document.addEventListener('visibilitychange', markCurrentRead);
}

boot();
