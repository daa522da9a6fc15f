// im-client.js: a small client for the Web-IM HTTP API and its event stream.
//
// Plain ES module, no dependencies, no build step. It runs in any modern browser on a page
// served by the same origin as the server (the session cookie does the authentication):
//
//   import { ImClient } from '/im-client.js';
//   const im = new ImClient();
//   await im.login('alice', 'correct horse');
//   im.on('message', (m) => console.log(m.from, m.body));
//   im.connect();
//   await im.sendText({ user: 2 }, 'hi bob');
//
// Guarantees it adds on top of the server's:
// - every durable event is delivered once: a message to `on('message')`, an edit to
//   `on('message_edited')` and a deletion to `on('message_deleted')` (each with the message
//   as it then is), a reaction to `on('reaction')`; duplicates are dropped by their log
//   position (the event id);
// - a dropped connection resumes from the last id (EventSource sends Last-Event-ID);
// - `resync` (the server could not replay) is passed on so the app reloads history;
// - every send carries a `client_id`, and a retried send never duplicates a message;
// - one event stream per browser, shared by all its tabs (see "One stream for all tabs").
//
// One stream for all tabs. Browsers allow six HTTP/1.1 connections per origin, and every
// open EventSource holds one, so a seventh tab of the app would hang. So the tabs of one user
// share a single stream: they all ask for the Web Lock `im-stream:<user id>`; the tab that
// holds it (the leader) opens the EventSource and relays every event on the
// BroadcastChannel of the same name, and the others (followers) take their events from the
// channel. When the leader closes (or crashes), the browser hands the lock to a waiting tab,
// which opens the stream resuming after the last id it saw, so nothing is missed; ids keep
// the duplicates out. A tab that joins asks the leader where the stream stands and gets its
// 'up' and 'ready' events, so it loads history as a leader would. Where Web Locks or
// BroadcastChannel are missing, or with `new ImClient({ shareStream: false })`, each tab has
// its own stream.

/** An API error: `status`, `code` (snake_case, see docs/API.md) and a human `message`. */
export class ImError extends Error {
  constructor(status, code, message) {
    super(message || code);
    this.status = status;
    this.code = code;
  }
}

const EPHEMERAL = ['presence', 'typing', 'read', 'friend_request', 'group'];
/** Durable events that change a message already sent; each has a log position of its own. */
const AMENDMENTS = ['message_edited', 'message_deleted', 'reaction'];

/** A Web-IM client bound to one server origin. */
export class ImClient {
  /**
   * @param {object} [options]
   * @param {string} [options.base] URL prefix of the server ('' for the page's own origin).
   * @param {number} [options.retries] How often a send is retried on network errors or 503.
   */
  constructor({ base = '', retries = 4, shareStream = true } = {}) {
    this.base = base;
    this.retries = retries;
    this.shareStream = shareStream;
    this.user = null;
    this.connected = false;
    this._handlers = new Map();
    this._seen = new Set();
    this._seenOrder = [];
    this._source = null;
    this._reconnectTimer = null;
    this._lastId = null;
    // The shared stream: the channel to the other tabs, whether this tab leads, how to give
    // the lock back, and the last 'ready' it saw (for tabs that join later).
    this._channel = null;
    this._leader = false;
    this._releaseLock = null;
    this._lockAbort = null;
    this._readyData = null;
  }

  // ----- events -----

  /**
   * Subscribes to an event: 'message', 'message_edited' and 'message_deleted' (the message
   * as it now is: replace the one with its id), 'reaction' ({message, emoji, user, added,
   * count}), 'presence', 'typing', 'read', 'friend_request',
   * 'group', 'resync' (reload history), 'ready' (the stream is caught up; load or reload
   * history now), 'up' (stream open), 'down' (stream lost, reconnecting) and 'logout' (the
   * session ended elsewhere).
   * Returns a function that unsubscribes.
   */
  on(type, handler) {
    if (!this._handlers.has(type)) this._handlers.set(type, new Set());
    this._handlers.get(type).add(handler);
    return () => this._handlers.get(type).delete(handler);
  }

  _emit(type, data) {
    for (const h of this._handlers.get(type) || []) {
      try {
        h(data);
      } catch (e) {
        console.error(`im-client: a '${type}' handler failed`, e);
      }
    }
  }

  /** Remembers a message id; false if it was seen before (a duplicate). */
  _firstSight(id) {
    if (this._seen.has(id)) return false;
    this._seen.add(id);
    this._seenOrder.push(id);
    if (this._seenOrder.length > 5000) this._seen.delete(this._seenOrder.shift());
    return true;
  }

  /** Marks messages loaded by other means (history) as seen, so the stream skips them. */
  markSeen(messages) {
    for (const m of messages) this._firstSight(m.id);
  }

  // ----- the event stream -----

  /**
   * Opens the event stream, shared with the user's other tabs where the browser can. It
   * reconnects by itself and resumes without gaps.
   */
  connect() {
    this.disconnect();
    const canShare =
      this.shareStream &&
      this.user &&
      typeof BroadcastChannel === 'function' &&
      globalThis.navigator &&
      navigator.locks;
    if (!canShare) {
      this._open();
      return;
    }
    const name = `im-stream:${this.user.id}`;
    const channel = new BroadcastChannel(name);
    this._channel = channel;
    channel.onmessage = (e) => this._fromChannel(e.data);
    const abort = new AbortController();
    this._lockAbort = abort;
    navigator.locks
      .request(name, { signal: abort.signal }, () => {
        if (this._channel !== channel) return undefined;
        // This tab leads now: open the stream (resuming after what the channel brought)
        // and hold the lock until disconnect() or the tab's end.
        this._leader = true;
        this._open();
        return new Promise((resolve) => {
          this._releaseLock = resolve;
        });
      })
      .catch(() => {}); // aborted by disconnect()
    channel.postMessage({ t: 'hello' });
  }

  /** Whether this tab holds the shared stream (or its own); false while it follows another. */
  get leads() {
    return this._leader || (!this._channel && !!this._source);
  }

  /** Opens this tab's own EventSource; as the leader, everything it gets is relayed. */
  _open() {
    // The browser resumes by itself after a drop (Last-Event-ID); when we reconnect by hand,
    // the position goes in the query instead.
    const resume = this._lastId ? `?last_event_id=${encodeURIComponent(this._lastId)}` : '';
    const source = new EventSource(`${this.base}/api/v1/events${resume}`);
    this._source = source;
    source.onopen = () => this._dispatch('up', null, null);
    source.onerror = () => {
      if (this.connected) this._dispatch('down', null, null);
      // CLOSED means the browser gave up (the server answered 401 or 503, or is gone):
      // retry ourselves, unless the session ended (logout in another tab).
      if (source.readyState === EventSource.CLOSED && this._source === source) {
        clearTimeout(this._reconnectTimer);
        this._reconnectTimer = setTimeout(async () => {
          if (this._source !== source) return;
          const me = await this.me().catch(() => undefined);
          if (me === null) {
            this._dispatch('logout', null, null);
            this.disconnect();
          } else if (this._source === source) {
            source.close();
            this._open();
          }
        }, 3000);
      }
    };
    for (const type of ['message', ...AMENDMENTS]) {
      source.addEventListener(type, (e) => {
        const m = safeJson(e.data);
        if (m) this._dispatch(type, m, e.lastEventId);
      });
    }
    // 'ready': the stream is caught up to this position; history loaded from now on covers
    // the rest. 'resync': the server could not replay; reload.
    for (const type of ['resync', 'ready', ...EPHEMERAL]) {
      source.addEventListener(type, (e) => {
        const data = safeJson(e.data);
        const control = type === 'ready' || type === 'resync';
        if (data || control) this._dispatch(type, data || {}, e.lastEventId);
      });
    }
  }

  /** Handles one event of the stream here, and relays it to the other tabs if this leads. */
  _dispatch(type, data, lastId) {
    if (this._leader && this._channel) {
      this._channel.postMessage({ t: 'event', type, data, id: lastId || null });
    }
    this._receive(type, data, lastId);
  }

  /** One event, from this tab's stream or the leader's. */
  _receive(type, data, lastId) {
    if (lastId) this._lastId = lastId;
    switch (type) {
      case 'up':
        this.connected = true;
        return this._emit('up');
      case 'down':
        this.connected = false;
        return this._emit('down');
      case 'ready':
        this._readyData = data;
        return this._emit('ready', data);
      case 'message':
        if (this._firstSight(data.id)) this._emit('message', data);
        return undefined;
      case 'message_edited':
      case 'message_deleted':
      case 'reaction':
        // The data is the message (its own id); the event's id is the amendment's position.
        if (!lastId || this._firstSight(Number(lastId))) this._emit(type, data);
        return undefined;
      case 'logout':
        return this._emit('logout');
      default:
        return this._emit(type, data);
    }
  }

  /** A note from another tab on the channel. */
  _fromChannel(note) {
    if (!note || typeof note !== 'object') return;
    if (note.t === 'event') {
      if (!this._leader) this._receive(note.type, note.data, note.id);
    } else if (note.t === 'hello' && this._leader) {
      // A tab joined: tell it where the stream stands, so it loads history as we did.
      this._channel.postMessage({
        t: 'state',
        connected: this.connected,
        ready: this._readyData,
        id: this._lastId,
      });
    } else if (note.t === 'state' && !this._leader) {
      if (note.id && !this._lastId) this._lastId = note.id;
      if (note.connected && !this.connected) this._receive('up', null, null);
      if (note.ready) this._receive('ready', note.ready, null);
    }
  }

  /** Closes the event stream; a leader hands it to another tab of the user. */
  disconnect() {
    clearTimeout(this._reconnectTimer);
    if (this._source) this._source.close();
    this._source = null;
    this.connected = false;
    this._leader = false;
    if (this._releaseLock) this._releaseLock();
    this._releaseLock = null;
    if (this._lockAbort) this._lockAbort.abort();
    this._lockAbort = null;
    if (this._channel) this._channel.close();
    this._channel = null;
  }

  // ----- HTTP -----

  /** Calls the API; resolves with the parsed JSON (or null), rejects with an ImError. */
  async call(method, path, body) {
    const init = { method, credentials: 'same-origin', headers: {} };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(`${this.base}/api/v1${path}`, init);
    } catch (e) {
      throw new ImError(0, 'network', 'the server cannot be reached');
    }
    const text = await res.text();
    const data = text ? safeJson(text) : null;
    if (!res.ok) {
      const err = (data && data.error) || {};
      throw new ImError(res.status, err.code || 'http_' + res.status, err.message || res.statusText);
    }
    return data;
  }

  // ----- accounts -----

  /** Creates an account. */
  async register(username, password) {
    return (await this.call('POST', '/auth/register', { username, password })).user;
  }

  /** Logs in; the server sets the HttpOnly session cookie. */
  async login(username, password) {
    const data = await this.call('POST', '/auth/login', { username, password });
    this.user = data.user;
    return this.user;
  }

  /** Logs out, closes the stream and forgets the stream position. */
  async logout() {
    this.disconnect();
    await this.call('POST', '/auth/logout').catch(() => {});
    this._forget();
  }

  /**
   * Logs out everywhere: every session of this account ends (other tabs and devices too,
   * whose clients emit 'logout'), this one included.
   */
  async logoutAll() {
    this.disconnect();
    await this.call('POST', '/auth/logout-all');
    this._forget();
  }

  /**
   * This account's sessions, oldest first:
   * [{id, created_at, last_seen_at, expires_at, user_agent, current}].
   */
  async sessions() {
    return (await this.call('GET', '/auth/sessions')).sessions;
  }

  /** Ends one of this account's sessions; ending the current one is a logout. */
  async endSession(id) {
    const current = (await this.sessions()).some((s) => s.id === id && s.current);
    if (current) this.disconnect();
    await this.call('DELETE', `/auth/sessions/${encodeURIComponent(id)}`);
    if (current) this._forget();
  }

  /** Changes the password; this session stays, every other one ends. */
  changePassword(currentPassword, newPassword) {
    return this.call('POST', '/auth/password', {
      current_password: currentPassword,
      new_password: newPassword,
    });
  }

  /** Forgets who is logged in and what the stream saw (the session is gone). */
  _forget() {
    this.user = null;
    this._lastId = null;
    this._seen.clear();
    this._seenOrder = [];
  }

  /** The logged-in user, or null (no valid session cookie). */
  async me() {
    this.user = (await this.call('GET', '/auth/session')).user;
    return this.user;
  }

  // ----- messages -----

  /**
   * Sends a message to `to` ({user: id} or {group: id}). Network failures and 503 are
   * retried with the same client_id, so the message is stored at most once.
   */
  async send(to, kind, body, clientId = newClientId(), { replyTo } = {}) {
    let delay = 500;
    const draft = { to, kind, body, client_id: clientId };
    if (replyTo) draft.reply_to = replyTo;
    for (let attempt = 0; ; attempt++) {
      try {
        const data = await this.call('POST', '/messages', draft);
        this._firstSight(data.message.id);
        return data.message;
      } catch (e) {
        const retriable = e.status === 0 || e.status === 503;
        if (!retriable || attempt >= this.retries) throw e;
        await new Promise((r) => setTimeout(r, delay));
        delay *= 2;
      }
    }
  }

  /** Sends a text message; `{ replyTo: id }` makes it a reply that quotes message `id`. */
  sendText(to, text, { replyTo } = {}) {
    return this.send(to, 'text', { text }, newClientId(), { replyTo });
  }

  /**
   * Replaces the text of one's own text message. Resolves to the message as edited
   * (`edited_at` set); every stream of the conversation gets it as 'message_edited'.
   */
  async editText(id, text) {
    return (await this.call('PATCH', `/messages/${id}`, { body: { text } })).message;
  }

  /**
   * Deletes a message: one's own, or any in a group one owns or administers. Resolves to its
   * tombstone (`deleted: true`, `body: null`); streams get it as 'message_deleted'.
   */
  async deleteMessage(id) {
    return (await this.call('DELETE', `/messages/${id}`)).message;
  }

  /**
   * Adds (`add`, the default) or takes back this user's reaction with `emoji` to message
   * `id`. Resolves to {message, conversation, emoji, user, added, count}; streams get it as
   * 'reaction' (unless nothing changed).
   */
  async react(id, emoji, add = true) {
    const path = `/messages/${id}/reactions/${encodeURIComponent(emoji)}`;
    return (await this.call(add ? 'PUT' : 'DELETE', path)).reaction;
  }

  /** The user's conversations, newest first, with unread counts. */
  async conversations() {
    return (await this.call('GET', '/conversations')).conversations;
  }

  /** Up to `limit` messages of a conversation before id `before`, oldest first. */
  async history(conversation, { before, limit = 50 } = {}) {
    const q = new URLSearchParams({ limit: String(limit) });
    if (before) q.set('before', String(before));
    const data = await this.call('GET', `/conversations/${encodeURIComponent(conversation)}/messages?${q}`);
    this.markSeen(data.messages);
    return data.messages;
  }

  /** Stores the read position and tells the other party. */
  markRead(conversation, upTo) {
    return this.call('POST', `/conversations/${encodeURIComponent(conversation)}/read`, { up_to: upTo });
  }

  /** Tells the other party (or group) that the user is typing. */
  typing(to) {
    return this.call('POST', '/typing', { to });
  }

  /**
   * Uploads a File or Blob; `onProgress(fraction)` is called as bytes go out.
   * Resolves with `{id, name, size, content_type, url, expires_at}`.
   */
  upload(file, { onProgress, name } = {}) {
    return new Promise((resolve, reject) => {
      const form = new FormData();
      form.append('file', file, name || file.name || 'file');
      const xhr = new XMLHttpRequest();
      xhr.open('POST', `${this.base}/api/v1/files`);
      xhr.withCredentials = true;
      xhr.upload.onprogress = (e) => e.lengthComputable && onProgress && onProgress(e.loaded / e.total);
      xhr.onerror = () => reject(new ImError(0, 'network', 'the upload failed'));
      xhr.onload = () => {
        const data = safeJson(xhr.responseText) || {};
        if (xhr.status === 201) return resolve(data.file);
        const err = data.error || {};
        reject(new ImError(xhr.status, err.code || 'http_' + xhr.status, err.message));
      };
      xhr.send(form);
    });
  }

  // ----- friends, blocks, groups -----

  /** Friends with their online flag. */
  async friends() {
    return (await this.call('GET', '/friends')).friends;
  }
  /** Pending requests: {incoming, outgoing}. */
  requests() {
    return this.call('GET', '/friends/requests');
  }
  /** Asks `username` to be friends. */
  async requestFriend(username) {
    return (await this.call('POST', '/friends/requests', { username })).request;
  }
  /** Accepts (true) or declines (false) a request addressed to the user. */
  async answerRequest(id, accept) {
    return (await this.call('POST', `/friends/requests/${id}/${accept ? 'accept' : 'decline'}`)).request;
  }
  /** Ends a friendship. */
  unfriend(userId) {
    return this.call('DELETE', `/friends/${userId}`);
  }
  /** Blocks a user. */
  block(userId) {
    return this.call('POST', '/blocks', { user_id: userId });
  }
  /** Lifts a block. */
  unblock(userId) {
    return this.call('DELETE', `/blocks/${userId}`);
  }
  /** The user's groups. */
  async groups() {
    return (await this.call('GET', '/groups')).groups;
  }
  /** Creates a group with friends as members. */
  async createGroup(name, members) {
    return (await this.call('POST', '/groups', { name, members })).group;
  }
  /** Adds a friend to a group (owner or admin). */
  async addMember(groupId, userId) {
    return (await this.call('POST', `/groups/${groupId}/members`, { user_id: userId })).group;
  }
  /** Removes a member, or leaves when `userId` is the user. */
  removeMember(groupId, userId) {
    return this.call('DELETE', `/groups/${groupId}/members/${userId}`);
  }
}

function safeJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

/** A random idempotency key. */
export function newClientId() {
  if (globalThis.crypto && crypto.randomUUID) return crypto.randomUUID();
  return Date.now().toString(36) + Math.random().toString(36).slice(2);
}

/** The conversation key of a direct chat between two user ids (as the server makes it). */
export function directConversation(a, b) {
  return a <= b ? `d${a}-${b}` : `d${b}-${a}`;
}
