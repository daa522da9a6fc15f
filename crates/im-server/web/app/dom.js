// Small DOM helpers. Every piece of user content goes on the page as textContent or as an
// attribute value, never as HTML: `el` has no way to set innerHTML.

import { ImError } from '/im-client.js';
import { colourOf, initials } from '/app/format.js';

/** The element with this id. */
export const $ = (id) => document.getElementById(id);

/**
 * A new element: `class`, `text`, `dataset`, `on<event>` handlers, and any other prop as an
 * attribute (`true` is an empty attribute; `false`, null and undefined are left out).
 */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k === 'dataset') {
      for (const [name, value] of Object.entries(v)) if (value !== undefined) node.dataset[name] = value;
    }
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

/** Fills a list with its rows, or with one hint row saying it is empty. */
export function fillList(list, rows, emptyText) {
  list.replaceChildren(...rows);
  if (!rows.length) list.append(el('li', { class: 'hint', text: emptyText }));
}

/** A round badge with a user's initials in their colour (decorative: the name is beside it). */
export function avatar(id, name) {
  const node = el('span', { class: 'avatar', 'aria-hidden': 'true', text: initials(name) });
  node.style.setProperty('--avatar', colourOf(id));
  return node;
}

/**
 * Where each kind of outcome is shown: next to what the user just did, never in another
 * panel. Each is a live region in index.html.
 */
export const Where = Object.freeze({
  auth: 'auth-error',
  friends: 'friend-status',
  groups: 'group-status',
  chat: 'chat-error',
  account: 'account-status',
});

/** Shows a short outcome (`text`, or nothing to clear it) in one of the `Where` regions. */
export function say(where, text = '', isError = false) {
  const node = $(where);
  node.textContent = text;
  node.classList.toggle('error', isError && !!text);
}

/** Shows an error where the action that failed was taken, and logs it for the developer. */
export function showError(where, e) {
  const text = e instanceof ImError || e instanceof Error ? e.message : String(e);
  say(where, text, true);
  console.warn('web-im:', text);
}
