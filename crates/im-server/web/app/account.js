// Accounts: the log-in form, and the Account panel (desktop notifications, sessions, log out).

import { $, Where, el, say, showError } from '/app/dom.js';
import { im, nameOf, preview, state, titleOf } from '/app/state.js';
import { act } from '/app/sidebar.js';
import { openConversation } from '/app/chat.js';

/** The opt-in to desktop notifications, kept per browser. */
const NOTIFY_KEY = 'web-im.notify';

export function showAuth() {
  $('app').hidden = true;
  $('auth').hidden = false;
  $('auth-form').username.focus();
}

/** Logs in (registering first for the Register button), then hands the user to `enter`. */
async function onAuthSubmit(ev, enter) {
  ev.preventDefault();
  const form = ev.target;
  const action = ev.submitter ? ev.submitter.value : 'login';
  const username = form.username.value.trim();
  const password = form.password.value;
  say(Where.auth);
  try {
    if (action === 'register') await im.register(username, password);
    const me = await im.login(username, password);
    form.password.value = '';
    await enter(me);
  } catch (e) {
    showError(Where.auth, e);
  }
}

function notifyWanted() {
  return localStorage.getItem(NOTIFY_KEY) === 'on' && 'Notification' in window && Notification.permission === 'granted';
}

/** Shows a message as a desktop notification when the user opted in and the tab is hidden. */
export function maybeNotify(m) {
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
  say(Where.account);
  if (!box.checked) {
    localStorage.removeItem(NOTIFY_KEY);
    return;
  }
  const permission = 'Notification' in window ? await Notification.requestPermission() : 'denied';
  if (permission === 'granted') {
    localStorage.setItem(NOTIFY_KEY, 'on');
  } else {
    box.checked = false;
    showError(Where.account, new Error('This browser does not allow notifications for this page.'));
  }
}

async function renderSessions() {
  const list = $('sessions');
  const sessions = await im.sessions().catch((e) => (showError(Where.account, e), []));
  list.replaceChildren(
    ...sessions.map((s) => {
      const device = s.user_agent || 'Unknown device';
      const end = () => act(Where.account, () => im.endSession(s.id), renderSessions);
      return el(
        'li',
        { dataset: { session: String(s.id) } },
        el(
          'span',
          { class: 'name' },
          el('strong', { text: s.current ? 'This browser' : device }),
          el('span', { class: 'preview', text: `last used ${new Date(s.last_seen_at).toLocaleString()}` }),
        ),
        s.current ? null : el('button', { class: 'danger', text: 'End', 'aria-label': `End the session of ${device}`, onclick: end }),
      );
    }),
  );
}

/** Hooks the log-in form and the Account panel up, once; `enter` starts the app for a user. */
export function wireAccount(enter) {
  $('auth-form').addEventListener('submit', (ev) => onAuthSubmit(ev, enter));
  $('notify').checked = localStorage.getItem(NOTIFY_KEY) === 'on';
  $('notify').addEventListener('change', onNotifyToggle);
  $('account').addEventListener('toggle', () => {
    if ($('account').open) renderSessions();
  });
  $('account').addEventListener('keydown', (ev) => {
    if (ev.key !== 'Escape' || !$('account').open) return;
    $('account').open = false;
    $('account').querySelector('summary').focus();
  });
  $('logout').addEventListener('click', async () => {
    await im.logout().catch(() => {});
    location.reload();
  });
  $('logout-all').addEventListener('click', async () => {
    try {
      await im.logoutAll();
      location.reload();
    } catch (e) {
      showError(Where.account, e);
    }
  });
}
