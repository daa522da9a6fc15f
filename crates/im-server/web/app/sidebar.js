// The sidebar: the tabs and their three panels (chats, friends, groups), and the loaders that
// fill `state` from the server and redraw what depends on it.

import { $, Where, avatar, el, fillList, say, showError } from '/app/dom.js';
import { mergeConversations, titleWithUnread, unreadTotal } from '/app/format.js';
import { im, preview, state, titleOf } from '/app/state.js';
import { closeConversation, openConversation, renderChatHeader } from '/app/chat.js';

const TABS = ['chats', 'friends', 'groups'];

// ----- loading -----

export async function loadFriends() {
  const friends = await im.friends();
  state.friends = new Map(friends.map((f) => [f.id, f]));
  for (const f of friends) state.names.set(f.id, f.username);
  renderFriends();
  renderGroupForm();
  renderChatHeader();
  // A message may have been listed before its sender's name was known.
  renderConversations();
}

export async function loadRequests() {
  const { incoming, outgoing } = await im.requests();
  for (const r of [...incoming, ...outgoing]) {
    state.names.set(r.from, r.from_username);
    state.names.set(r.to, r.to_username);
  }
  renderRequests(incoming, outgoing);
  renderConversations();
}

export async function loadGroups() {
  const groups = await im.groups();
  state.groups = new Map(groups.map((g) => [g.id, g]));
  for (const g of groups) for (const m of g.members) state.names.set(m.id, m.username);
  renderGroups();
  renderChatHeader();
  renderConversations();
}

export async function loadConversations() {
  const list = await im.conversations();
  // A message may arrive while the list is on its way; a wholesale replace would drop it.
  state.conversations = mergeConversations(state.conversations, new Map(list.map((c) => [c.conversation, c])));
  renderConversations();
}

/** Friends, requests and groups: everything the social events can change. */
export async function refreshSocial() {
  await Promise.all([loadFriends(), loadRequests(), loadGroups()]);
}

/**
 * Runs a user's action, shows its error in `where` (or clears the region on success), then
 * reloads what it changed with `then`.
 */
export async function act(where, action, then) {
  try {
    await action();
    say(where);
  } catch (e) {
    showError(where, e);
  }
  if (then) await then().catch((e) => showError(where, e));
}

export async function leaveGroup(id, where) {
  await act(where, () => im.removeMember(id, state.me.id), loadGroups);
  if (state.current && state.current.to.group === id) closeConversation();
  state.conversations.delete(`g${id}`);
  renderConversations();
}

// ----- the tabs -----

/** Shows one tab's panel. The selected tab is the one in the page's tab order (a roving tabindex). */
export function selectTab(name, focus = false) {
  for (const t of TABS) {
    const button = $(`tab-btn-${t}`);
    button.setAttribute('aria-selected', String(t === name));
    button.tabIndex = t === name ? 0 : -1;
    $(`tab-${t}`).hidden = t !== name;
  }
  if (focus) $(`tab-btn-${name}`).focus();
}

/** Arrow keys, Home and End move between the tabs, as in every ARIA tab list. */
function onTabKey(ev) {
  const at = TABS.findIndex((t) => $(`tab-btn-${t}`).getAttribute('aria-selected') === 'true');
  const to = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: TABS.length - 1 }[ev.key];
  if (to === undefined) return;
  ev.preventDefault();
  selectTab(TABS[(to + TABS.length) % TABS.length], true);
}

// ----- the panels -----

export function renderConversations() {
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
          { class: 'open-btn', onclick: () => openConversation(c.with) },
          el('span', { class: 'name' }, el('strong', { text: title }), el('span', { class: 'preview', text: preview(c.last_message) })),
        ),
        c.unread > 0 ? el('span', { class: 'badge unread', 'aria-label': `${c.unread} unread`, text: String(c.unread) }) : null,
      );
    }),
  );
  $('no-conversations').hidden = items.length > 0;
  document.title = titleWithUnread(unreadTotal(items));
}

/** The values of a Map sorted by one text field, as people read lists. */
const sortedBy = (map, field) => [...map.values()].sort((a, b) => a[field].localeCompare(b[field]));

function renderFriends() {
  const rows = sortedBy(state.friends, 'username').map((f) =>
    el(
      'li',
      { dataset: { friend: f.username } },
      el('span', { class: f.online ? 'dot online' : 'dot', role: 'img', 'aria-label': f.online ? 'online' : 'offline' }),
      el('button', { class: 'open-btn', onclick: () => openConversation({ user: f.id }), text: f.username, 'aria-label': `Chat with ${f.username}` }),
      el('button', { class: 'danger', text: 'Unfriend', 'aria-label': `Unfriend ${f.username}`, onclick: () => act(Where.friends, () => im.unfriend(f.id), loadFriends) }),
      el('button', { class: 'danger', text: 'Block', 'aria-label': `Block ${f.username}`, onclick: () => act(Where.friends, () => im.block(f.id), loadFriends) }),
    ),
  );
  fillList($('friends'), rows, 'No friends yet.');
}

export function renderPresence(user, online) {
  const f = state.friends.get(user);
  if (f) f.online = online;
  renderFriends();
  renderChatHeader();
}

function renderRequests(incoming, outgoing) {
  const answer = (r, yes) => act(Where.friends, () => im.answerRequest(r.id, yes), refreshSocial);
  const rows = [
    ...incoming.map((r) =>
      el(
        'li',
        { dataset: { request: r.from_username } },
        el('span', { class: 'name', text: `${r.from_username} wants to be friends` }),
        el('button', { text: 'Accept', 'aria-label': `Accept ${r.from_username}`, onclick: () => answer(r, true) }),
        el('button', { class: 'secondary', text: 'Decline', 'aria-label': `Decline ${r.from_username}`, onclick: () => answer(r, false) }),
      ),
    ),
    ...outgoing.map((r) => el('li', {}, el('span', { class: 'name hint', text: `Waiting for ${r.to_username}` }))),
  ];
  fillList($('requests'), rows, 'No pending requests.');
  $('requests-badge').hidden = incoming.length === 0;
  $('requests-badge').textContent = String(incoming.length);
}

function renderGroups() {
  const rows = sortedBy(state.groups, 'name').map((g) =>
    el(
      'li',
      { dataset: { group: g.name } },
      el('button', { class: 'open-btn', onclick: () => openConversation({ group: g.id }), text: `${g.name} (${g.members.length})` }),
      el('button', { class: 'secondary', text: 'Leave', 'aria-label': `Leave ${g.name}`, onclick: () => leaveGroup(g.id, Where.groups) }),
    ),
  );
  fillList($('groups'), rows, 'No groups yet.');
}

function renderGroupForm() {
  const box = $('new-group-members');
  const legend = box.querySelector('legend');
  box.replaceChildren(
    legend,
    ...sortedBy(state.friends, 'username').map((f) => el('label', {}, el('input', { type: 'checkbox', name: 'member', value: String(f.id) }), ' ' + f.username)),
  );
}

async function onAddFriend(ev) {
  ev.preventDefault();
  const input = ev.target.username;
  const name = input.value.trim();
  try {
    const r = await im.requestFriend(name);
    say(Where.friends, r.state === 'accepted' ? `You and ${name} are now friends.` : `Request sent to ${name}.`);
    input.value = '';
  } catch (e) {
    showError(Where.friends, e);
  }
  await refreshSocial().catch((e) => showError(Where.friends, e));
}

async function onNewGroup(ev) {
  ev.preventDefault();
  const form = ev.target;
  const members = [...form.querySelectorAll('input[name=member]:checked')].map((i) => Number(i.value));
  try {
    const g = await im.createGroup(form.name.value, members);
    form.reset();
    say(Where.groups);
    await loadGroups();
    openConversation({ group: g.id });
  } catch (e) {
    showError(Where.groups, e);
  }
}

/** Hooks the sidebar's own controls up, once. */
export function wireSidebar() {
  for (const t of TABS) {
    const button = $(`tab-btn-${t}`);
    button.addEventListener('click', () => selectTab(t));
    button.addEventListener('keydown', onTabKey);
  }
  selectTab('chats');
  $('add-friend').addEventListener('submit', onAddFriend);
  $('new-group').addEventListener('submit', onNewGroup);
}
