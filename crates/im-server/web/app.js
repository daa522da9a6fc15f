// The Web-IM chat app: plain DOM, no framework, no build step. ES modules by concern, each
// served from /app/ (see app/): format (pure helpers), dom, state, sidebar, chat, account and
// events. Every piece of user content goes on the page with textContent or as an attribute
// value, never as HTML.

import { im, state } from '/app/state.js';
import { $ } from '/app/dom.js';
import { showAuth, wireAccount } from '/app/account.js';
import { wireChat } from '/app/chat.js';
import { wireEvents } from '/app/events.js';
import { loadConversations, refreshSocial, wireSidebar } from '/app/sidebar.js';

/** Shows the app for a logged-in user: the stream, then the lists. */
async function enterApp(me) {
  state.me = me;
  state.names.set(me.id, me.username);
  $('auth').hidden = true;
  $('app').hidden = false;
  $('me-name').textContent = me.username;
  im.connect();
  await refreshSocial();
  await loadConversations();
}

async function boot() {
  wireEvents();
  wireAccount(enterApp);
  wireSidebar();
  wireChat();
  let me = null;
  try {
    me = await im.me();
  } catch (e) {
    console.warn('web-im: cannot reach the server', e);
  }
  if (me) enterApp(me);
  else showAuth();
}

boot();
