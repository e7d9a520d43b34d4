/*
 * Parley browser client: plain JS, no build step, no dependencies.
 *
 * How it is laid out:
 *   state / ws      everything the client knows, plus the WebSocket and its reconnect state
 *   api()           REST helper (bearer token, JSON body, {error:{message}} to Error)
 *   auth            login/register forms, session kept in localStorage, logout
 *   socket          connect + join, reconnect with exponential backoff, dispatch to on* handlers
 *   on* handlers    one per server frame type; they update state and then call render*
 *   chat actions    open a chat, load history, send, read receipts, typing
 *   render*         rebuild parts of the DOM from state. User text only goes in via textContent.
 *
 * Own messages are objects that live in state.pending (by ref) until acked, and also in the
 * open chat's message list. Acks and echoed new_message frames update those objects in place.
 */
'use strict';

const $ = (id) => document.getElementById(id);
const PAGE = 50;
const SESSION_KEY = 'parley.session';

const state = freshState();
const ws = {
  sock: null, ready: false, stopped: true, attempts: 0, timer: null,
  refSeq: 0, syncRef: null, syncTimer: null,
};
const typingOut = { lastStart: 0, idle: null, target: null };
const receiptsOut = { timer: null };

function freshState() {
  return {
    token: null, me: null,
    convs: new Map(),     // conversation id -> conversation (as in the API, kept up to date)
    users: new Map(),     // user id -> {id, username, display_name, last_seen}
    status: new Map(),    // user id -> online | away | busy | offline
    lastSeq: {},          // conversation id -> highest seq seen (sent with sync)
    open: null,           // {convId, peerId, messages, hasMore, readSent}
    pending: new Map(),   // ref -> own message waiting for its ack
    typing: new Map(),    // conversation id -> Map(user id -> hide timer)
    receipts: new Map(),  // "mark_delivered|mark_read conversation id" -> up_to_seq, not sent yet
    searchResults: [],
  };
}

/* ---------- helpers ---------- */

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  // randomUUID needs a secure context; getRandomValues does not.
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function formatTime(ms) {
  if (!ms) return '';
  const d = new Date(ms);
  const time = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  return d.toDateString() === new Date().toDateString() ? time : `${d.toLocaleDateString()} ${time}`;
}

function toast(text) {
  const t = $('toast');
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.hidden = true; }, 4000);
}

const isVisible = () => document.visibilityState === 'visible' && document.hasFocus();
const isOpen = (convId) => !!state.open && state.open.convId === convId;
const statusOf = (id) => state.status.get(id) || 'offline';

function userName(id) {
  const u = state.users.get(id);
  return u ? (u.display_name || u.username) : 'Someone';
}

function rememberUser(u) {
  if (u && u.id) state.users.set(u.id, { ...state.users.get(u.id), ...u });
}

function otherMember(conv) {
  return conv.members.find((m) => m.id !== state.me.id) || conv.members[0] || {};
}

function convTitle(conv) {
  if (conv.kind === 'direct') { const o = otherMember(conv); return o ? userName(o.id) : 'Direct chat'; }
  return conv.name || conv.members.map((m) => userName(m.id)).join(', ');
}

function findDirect(peerId) {
  for (const c of state.convs.values()) {
    if (c.kind === 'direct' && otherMember(c) && otherMember(c).id === peerId) return c;
  }
  return null;
}

function bumpLastSeq(convId, seq) {
  if (convId && seq > (state.lastSeq[convId] || 0)) state.lastSeq[convId] = seq;
}

function cursorOf(conv, userId) {
  conv.cursors = conv.cursors || [];
  let c = conv.cursors.find((x) => x.user_id === userId);
  if (!c) { c = { user_id: userId, delivered_seq: 0, read_seq: 0 }; conv.cursors.push(c); }
  return c;
}

/* ---------- REST ---------- */

async function api(method, path, body) {
  const headers = { 'Content-Type': 'application/json' };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  const res = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined });
  let data = null;
  try { data = await res.json(); } catch (_) { /* empty or non-JSON body */ }
  if (!res.ok) {
    if (res.status === 401 && state.token) logout('Your session has expired. Please log in again.');
    throw new Error((data && data.error && data.error.message) || `Request failed (${res.status})`);
  }
  return data;
}

/* ---------- auth ---------- */

function bindAuth() {
  const toggle = (register) => (e) => {
    e.preventDefault();
    $('login-form').hidden = register;
    $('register-form').hidden = !register;
    $('auth-error').textContent = '';
  };
  $('show-register').onclick = toggle(true);
  $('show-login').onclick = toggle(false);
  $('login-form').onsubmit = (e) => {
    const f = e.target.elements;
    submitAuth(e, '/api/auth/login', { email: f.email.value.trim(), password: f.password.value });
  };
  $('register-form').onsubmit = (e) => {
    const f = e.target.elements;
    submitAuth(e, '/api/auth/register', {
      username: f.username.value.trim(), email: f.email.value.trim(),
      password: f.password.value, displayName: f.displayName.value.trim(),
    });
  };
}

async function submitAuth(e, path, body) {
  e.preventDefault();
  const button = e.target.querySelector('button');
  button.disabled = true;
  $('auth-error').textContent = '';
  try {
    const data = await api('POST', path, body);
    localStorage.setItem(SESSION_KEY, JSON.stringify({ token: data.token, user: data.user }));
    e.target.reset();
    startApp(data.token, data.user);
  } catch (err) {
    $('auth-error').textContent = err.message;
  } finally {
    button.disabled = false;
  }
}

function showAuth(message) {
  $('app').hidden = true;
  $('auth').hidden = false;
  $('auth-error').textContent = message || '';
}

async function startApp(token, user) {
  Object.assign(state, freshState(), { token, me: user });
  rememberUser(user);
  $('auth').hidden = true;
  $('app').hidden = false;
  $('me-name').textContent = user.display_name || user.username;
  showChat(false);
  renderConvs();
  await Promise.all([loadConversations(), searchUsers('')]).catch((err) => toast(err.message));
  if (state.token !== token) return; // logged out while loading
  ws.stopped = false;
  ws.attempts = 0;
  connect();
}

function logout(message) {
  localStorage.removeItem(SESSION_KEY);
  ws.stopped = true;
  ws.ready = false;
  clearTimeout(ws.timer);
  if (ws.sock) { const s = ws.sock; ws.sock = null; s.close(1000); }
  clearTimeout(typingOut.idle);
  clearTimeout(receiptsOut.timer);
  receiptsOut.timer = null;
  typingOut.lastStart = 0;
  for (const m of state.typing.values()) m.forEach(clearTimeout);
  Object.assign(state, freshState());
  document.title = 'Parley';
  showAuth(message);
}

/* ---------- WebSocket ---------- */

function connect() {
  if (ws.stopped) return;
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const sock = new WebSocket(`${proto}//${location.host}/ws`);
  ws.sock = sock;
  setConn('Connecting…');
  sock.onopen = () => sock.send(JSON.stringify({ type: 'join', token: state.token }));
  sock.onmessage = (ev) => {
    let frame;
    try { frame = JSON.parse(ev.data); } catch (_) { return; }
    if (ws.sock === sock && handlers[frame.type]) handlers[frame.type](frame);
  };
  sock.onclose = (ev) => {
    if (ws.sock !== sock) return; // an old socket we already replaced or closed
    ws.sock = null;
    ws.ready = false;
    if (ev.code === 4001) logout('Please log in again.');
    else scheduleReconnect();
  };
}

function scheduleReconnect() {
  if (ws.stopped) return;
  const delay = Math.min(10000, 500 * 2 ** ws.attempts);
  ws.attempts += 1;
  setConn(`Offline, reconnecting in ${Math.round(delay / 1000) || 1}s…`);
  clearTimeout(ws.timer);
  ws.timer = setTimeout(connect, delay);
}

function send(frame) {
  if (!ws.ready || !ws.sock) return false;
  ws.sock.send(JSON.stringify(frame));
  return true;
}

const nextRef = () => `r${++ws.refSeq}`;

function setConn(text, online) {
  $('conn').textContent = text;
  $('conn').classList.toggle('online', !!online);
}

const handlers = {
  connected: onConnected,
  new_message: (f) => onNewMessage(f.message),
  ack: onAck,
  error: onError,
  message_delivered: (f) => onReceipt(f, 'delivered_seq'),
  message_read: (f) => onReceipt(f, 'read_seq'),
  typing: onTyping,
  user_joined: (f) => setStatus(f.user_id, f.status || 'online'),
  user_left: (f) => setStatus(f.user_id, 'offline', f.last_seen),
  presence: (f) => setStatus(f.user_id, f.status, f.last_seen),
  message_edited: (f) => onChange(f, (m) => Object.assign(m, { body: f.body, edited_at: f.at })),
  message_deleted: (f) => onChange(f, (m) => Object.assign(m, { body: '', deleted: true, reactions: {} })),
  reaction: (f) => onChange(f, (m) => toggleReaction(m, f.emoji, f.by, f.on)),
  conversation_updated: () => refreshConvsSoon(),
  receipt_counts: onReceiptCounts,
};

/* ---------- server frame handlers ---------- */

function onConnected(f) {
  ws.ready = true;
  ws.attempts = 0;
  setConn('Connected', true);
  if (f.user) rememberUser(f.user);
  // Presence may have changed while we were away: user_joined frames follow for online contacts.
  state.status.clear();
  searchUsers($('search').value.trim()).catch(() => {});
  // Fetch what we missed, then refresh the conversation list once it is in.
  const ref = nextRef();
  ws.syncRef = ref;
  send({ type: 'sync', ref, since: { ...state.lastSeq } });
  clearTimeout(ws.syncTimer);
  ws.syncTimer = setTimeout(() => afterSync(ref), 5000);
  for (const msg of state.pending.values()) transmit(msg); // same client_msg_id, safe to resend
  markAllDelivered();
  markOpenRead();
  flushReceipts(); // also those queued while we were offline
}

function afterSync(ref) {
  if (!ref || ref !== ws.syncRef) return;
  ws.syncRef = null;
  clearTimeout(ws.syncTimer);
  loadConversations().catch(() => {});
}

function onNewMessage(m) {
  if (!m) return;
  const mine = m.from === state.me.id;
  const conv = state.convs.get(m.conversation_id);
  bumpLastSeq(m.conversation_id, m.seq);
  if (!mine) queueReceipt('mark_delivered', m.conversation_id, m.seq);
  if (mine) mergeIntoPending(m);
  clearTyping(m.conversation_id, m.from);
  if (!mine && (!conv || conv.kind === 'direct')) adoptConversation(m.conversation_id, m.from);

  if (conv) {
    conv.last_message = m;
    conv.last_seq = Math.max(conv.last_seq || 0, m.seq);
    if (!mine && !(isOpen(conv.id) && isVisible())) conv.unread = (conv.unread || 0) + 1;
    renderConvs();
  } else {
    refreshConvsSoon();
  }
  if (isOpen(m.conversation_id)) {
    addMessages([m]);
    renderMessages();
    markOpenRead();
  } else if (mine) {
    renderMessages(); // a pending message of a not-yet-adopted chat got its seq
  }
}

// An edit, deletion or reaction: a log entry of its own (its seq counts for
// sync) applied to the message it names, if that message is loaded.
function onChange(f, apply) {
  bumpLastSeq(f.conversation_id, f.seq);
  const conv = state.convs.get(f.conversation_id);
  if (conv && conv.last_message && conv.last_message.id === f.message_id) {
    apply(conv.last_message);
    renderConvs();
  }
  const o = state.open;
  const target = o && o.convId === f.conversation_id && o.messages.find((m) => m.id === f.message_id);
  if (target) {
    apply(target);
    renderMessages();
  }
}

function toggleReaction(m, emoji, by, on) {
  const reactions = m.reactions || (m.reactions = {});
  const users = (reactions[emoji] || []).filter((u) => u !== by);
  if (on) users.push(by);
  if (users.length) reactions[emoji] = users;
  else delete reactions[emoji];
}

// A group's receipts come as counts: how many members are at or past each position.
function onReceiptCounts(f) {
  const conv = state.convs.get(f.conversation_id);
  if (!conv) return;
  conv.counts = f;
  if (isOpen(conv.id)) renderMessages();
}

function onAck(f) {
  if (f.ref && f.ref === ws.syncRef) return afterSync(f.ref);
  const msg = state.pending.get(f.ref);
  if (!msg || !f.message) return; // e.g. the ack of a sync
  state.pending.delete(f.ref);
  Object.assign(msg, { id: f.message.id, conversation_id: f.message.conversation_id, state: 'sent' });
  if (f.message.sent_at) msg.sent_at = f.message.sent_at;
  if (msg.to) adoptConversation(msg.conversation_id, msg.to);
  if (!state.convs.has(msg.conversation_id)) refreshConvsSoon();
  renderMessages();
}

function onError(f) {
  if (f.ref && f.ref === ws.syncRef) afterSync(f.ref);
  const msg = f.ref && state.pending.get(f.ref);
  if (msg) {
    state.pending.delete(f.ref);
    msg.state = 'failed';
    msg.error = f.message || f.code;
    renderMessages();
  }
  toast(f.message || `Error: ${f.code}`);
}

function onReceipt(f, field) {
  const conv = state.convs.get(f.conversation_id);
  if (!conv) { refreshConvsSoon(); return; } // a new conversation: its cursors come with the list
  const c = cursorOf(conv, f.by);
  c[field] = Math.max(c[field] || 0, f.up_to_seq);
  if (field === 'read_seq') c.delivered_seq = Math.max(c.delivered_seq || 0, f.up_to_seq);
  if (f.by === state.me.id && field === 'read_seq' && f.up_to_seq >= (conv.last_seq || 0)) {
    conv.unread = 0; // read on another of my sessions
    renderConvs();
  }
  if (isOpen(conv.id)) renderMessages();
}

function onTyping(f) {
  if (f.from === state.me.id || !f.conversation_id) return;
  // Typing before the first message: the frame carries the 1:1 id the chat will have.
  if (!state.convs.has(f.conversation_id)) adoptConversation(f.conversation_id, f.from);
  clearTyping(f.conversation_id, f.from);
  if (f.state === 'start') {
    if (!state.typing.has(f.conversation_id)) state.typing.set(f.conversation_id, new Map());
    const timer = setTimeout(() => clearTyping(f.conversation_id, f.from), 5000);
    state.typing.get(f.conversation_id).set(f.from, timer);
  }
  renderTyping();
  renderConvs();
}

function clearTyping(convId, userId) {
  const m = state.typing.get(convId);
  if (!m || !m.has(userId)) return;
  clearTimeout(m.get(userId));
  m.delete(userId);
  renderTyping();
  renderConvs();
}

function setStatus(userId, status, lastSeen) {
  if (!userId) return;
  state.status.set(userId, status || 'offline');
  if (lastSeen) rememberUser({ id: userId, last_seen: lastSeen });
  renderUsers();
  renderConvs();
  renderChatHeader();
}

/* ---------- conversations, users, history ---------- */

async function loadConversations() {
  const data = await api('GET', '/api/conversations');
  const old = state.convs;
  state.convs = new Map();
  for (const c of data.conversations || []) {
    // Receipts pushed while the request was in flight can be newer than the response.
    for (const oc of (old.get(c.id) || {}).cursors || []) {
      const nc = cursorOf(c, oc.user_id);
      nc.delivered_seq = Math.max(nc.delivered_seq, oc.delivered_seq);
      nc.read_seq = Math.max(nc.read_seq, oc.read_seq);
    }
    state.convs.set(c.id, c);
    c.members.forEach(rememberUser);
    bumpLastSeq(c.id, c.last_seq);
  }
  const o = state.open;
  if (o && !o.convId && o.peerId) { // a pending 1:1 chat that now exists on the server
    const c = findDirect(o.peerId);
    if (c) { o.convId = c.id; loadMessages(false).catch(() => {}); }
  }
  markAllDelivered();
  markOpenRead();
  renderConvs();
  renderChatHeader();
  renderMessages();
}

function refreshConvsSoon() {
  clearTimeout(refreshConvsSoon.timer);
  refreshConvsSoon.timer = setTimeout(() => loadConversations().catch(() => {}), 300);
}

// Tell the server about messages that reached us while we were offline.
function markAllDelivered() {
  for (const c of state.convs.values()) {
    const lm = c.last_message;
    if (!lm || lm.from === state.me.id) continue;
    const mine = cursorOf(c, state.me.id);
    if (mine.delivered_seq < c.last_seq) {
      queueReceipt('mark_delivered', c.id, c.last_seq);
      mine.delivered_seq = c.last_seq;
    }
  }
}

// Receipts are coalesced per conversation and sent shortly after: a burst of messages (a sync
// after reconnecting) then costs one frame, not one per message, which would exceed the
// server's rate limit (30 frames/s). Kept until the socket is ready.
function queueReceipt(type, convId, seq) {
  const key = `${type} ${convId}`;
  if (seq <= (state.receipts.get(key) || 0)) return;
  state.receipts.set(key, seq);
  if (!receiptsOut.timer) receiptsOut.timer = setTimeout(flushReceipts, 100);
}

function flushReceipts() {
  clearTimeout(receiptsOut.timer);
  receiptsOut.timer = null;
  if (!ws.ready) return;
  for (const [key, seq] of state.receipts) {
    const [type, convId] = key.split(' ');
    send({ type, conversation_id: convId, up_to_seq: seq });
  }
  state.receipts.clear();
}

async function searchUsers(q) {
  const seq = (searchUsers.seq = (searchUsers.seq || 0) + 1);
  const data = await api('GET', `/api/users?q=${encodeURIComponent(q)}`);
  if (seq !== searchUsers.seq) return; // a newer search already started
  state.searchResults = (data.users || []).filter((u) => u.id !== state.me.id);
  for (const u of state.searchResults) { rememberUser(u); state.status.set(u.id, u.status || 'offline'); }
  renderUsers();
}

async function loadMessages(older) {
  const o = state.open;
  if (!o || !o.convId) return;
  let path = `/api/conversations/${encodeURIComponent(o.convId)}/messages?limit=${PAGE}`;
  const first = o.messages.find((m) => m.seq != null);
  if (older && first) path += `&before_seq=${first.seq}`;
  const data = await api('GET', path);
  if (state.open !== o) return; // switched chats meanwhile
  addMessages((data.messages || []).filter((m) => !m.kind)); // messages come as they are now
  o.hasMore = !!data.has_more;
  for (const m of data.messages || []) bumpLastSeq(m.conversation_id, m.seq);
  renderMessages(older ? { keepPosition: true } : { bottom: true });
  markOpenRead();
}

// Merge server messages into the open chat, deduplicating by id and own client_msg_id.
function addMessages(list) {
  const msgs = state.open.messages;
  for (const m of list) {
    const same = msgs.find((x) => (m.id && x.id === m.id) ||
      (m.client_msg_id && x.client_msg_id === m.client_msg_id && x.from === m.from));
    if (same) Object.assign(same, m, { state: 'sent' });
    else msgs.push({ ...m, state: 'sent' });
  }
  const key = (m) => (m.seq == null ? Number.MAX_SAFE_INTEGER : m.seq);
  msgs.sort((a, b) => key(a) - key(b));
}

function mergeIntoPending(m) {
  for (const p of state.pending.values()) {
    if (p.client_msg_id === m.client_msg_id) Object.assign(p, { id: m.id, seq: m.seq, conversation_id: m.conversation_id, sent_at: m.sent_at, state: 'sent' });
  }
}

// A chat opened with a user who had no conversation yet learns its conversation id.
function adoptConversation(convId, peerId) {
  const o = state.open;
  if (o && !o.convId && o.peerId === peerId && convId) {
    o.convId = convId;
    if (!state.convs.has(convId)) refreshConvsSoon();
    loadMessages(false).catch(() => {}); // merged by id, so messages already shown are kept
    renderConvs();
    renderUsers();
    renderTyping();
  }
}

/* ---------- chat actions ---------- */

function openConversation(convId) {
  const conv = state.convs.get(convId);
  const peerId = conv && conv.kind === 'direct' ? otherMember(conv).id : null;
  openChat(convId, peerId);
  loadMessages(false).catch((err) => toast(err.message));
}

function openUser(userId) {
  const conv = findDirect(userId);
  if (conv) openConversation(conv.id);
  else openChat(null, userId);
}

function openChat(convId, peerId) {
  stopTyping();
  state.open = { convId, peerId, messages: [], hasMore: false, readSent: 0 };
  const mine = [...state.pending.values()].filter((m) =>
    (convId && m.conversation_id === convId) || (!m.conversation_id && m.to === peerId));
  state.open.messages.push(...mine);
  showChat(true);
  renderConvs();
  renderUsers();
  renderChatHeader();
  renderMessages({ bottom: true });
  renderTyping();
  $('input').focus();
}

function showChat(show) {
  $('chat').hidden = !show;
  $('chat-empty').hidden = show;
  document.body.classList.toggle('chat-open', show);
}

function sendMessage(body) {
  const o = state.open;
  if (!o || !body) return;
  stopTyping();
  const msg = {
    ref: nextRef(), client_msg_id: uuid(), body, from: state.me.id, sent_at: Date.now(),
    state: 'pending', conversation_id: o.convId, to: o.convId ? null : o.peerId,
  };
  state.pending.set(msg.ref, msg);
  o.messages.push(msg);
  renderMessages({ bottom: true });
  transmit(msg); // if offline it is sent again from onConnected
}

function transmit(msg) {
  const frame = { type: 'send_message', ref: msg.ref, client_msg_id: msg.client_msg_id, body: msg.body };
  if (msg.conversation_id) frame.conversation_id = msg.conversation_id;
  else frame.to = msg.to;
  send(frame);
}

function retry(msg) {
  msg.state = 'pending';
  msg.ref = nextRef();
  state.pending.set(msg.ref, msg);
  transmit(msg);
  renderMessages();
}

function markOpenRead() {
  const o = state.open;
  if (!o || !o.convId || !isVisible()) return;
  const conv = state.convs.get(o.convId);
  const seq = Math.max(state.lastSeq[o.convId] || 0, (conv && conv.last_seq) || 0);
  if (conv && conv.unread) { conv.unread = 0; renderConvs(); }
  const mine = conv ? cursorOf(conv, state.me.id) : { read_seq: 0 };
  if (!seq || seq <= o.readSent || seq <= mine.read_seq) return;
  queueReceipt('mark_read', o.convId, seq);
  o.readSent = seq;
  mine.read_seq = Math.max(mine.read_seq, seq);
}

function typingTarget() {
  const o = state.open;
  if (!o) return null;
  return o.convId ? { conversation_id: o.convId } : (o.peerId ? { to: o.peerId } : null);
}

function onComposerInput() {
  const input = $('input');
  input.style.height = 'auto';
  input.style.height = `${Math.min(input.scrollHeight, 140)}px`;
  const target = typingTarget();
  if (!target) return;
  const now = Date.now();
  if (now - typingOut.lastStart > 2000 && send({ type: 'typing', ...target, state: 'start' })) {
    typingOut.lastStart = now;
    typingOut.target = target;
  }
  clearTimeout(typingOut.idle);
  typingOut.idle = setTimeout(stopTyping, 3000);
}

function stopTyping() {
  clearTimeout(typingOut.idle);
  if (typingOut.lastStart && typingOut.target) send({ type: 'typing', ...typingOut.target, state: 'stop' });
  typingOut.lastStart = 0;
  typingOut.target = null;
}

/* ---------- rendering ---------- */

function dot(status) {
  const d = el('span', `dot ${status}`);
  d.title = status;
  return d;
}

function renderConvs() {
  const ul = $('conv-list');
  if (!state.me) return;
  const time = (c) => (c.last_message ? c.last_message.sent_at : 0);
  const convs = [...state.convs.values()].sort((a, b) => time(b) - time(a));
  ul.replaceChildren();
  if (!convs.length) ul.append(el('li', 'empty', 'No conversations yet'));
  let unread = 0;
  for (const c of convs) {
    const li = el('li', `item${isOpen(c.id) ? ' active' : ''}`);
    li.append(c.kind === 'direct' ? dot(statusOf(otherMember(c).id)) : el('span', 'group-icon', '#'));
    const text = el('div', 'text');
    text.append(el('div', 'name', convTitle(c)), el('div', 'preview', preview(c)));
    li.append(text);
    if (c.unread > 0) li.append(el('span', 'badge', String(c.unread)));
    unread += c.unread || 0;
    li.onclick = () => openConversation(c.id);
    ul.append(li);
  }
  document.title = unread ? `(${unread}) Parley` : 'Parley';
}

function preview(conv) {
  const typing = state.typing.get(conv.id);
  if (typing && typing.size) return 'typing…';
  const m = conv.last_message;
  if (!m) return 'No messages yet';
  if (m.from === state.me.id) return `You: ${m.body}`;
  return conv.kind === 'group' ? `${userName(m.from)}: ${m.body}` : m.body;
}

function renderUsers() {
  const ul = $('user-list');
  ul.replaceChildren();
  if (!state.searchResults.length) ul.append(el('li', 'empty', 'No people found'));
  for (const u of state.searchResults) {
    const li = el('li', `item${state.open && !state.open.convId && state.open.peerId === u.id ? ' active' : ''}`);
    const text = el('div', 'text');
    text.append(el('div', 'name', u.display_name || u.username), el('div', 'preview', `@${u.username}`));
    li.append(dot(statusOf(u.id)), text);
    li.onclick = () => openUser(u.id);
    ul.append(li);
  }
}

function renderChatHeader() {
  const o = state.open;
  if (!o) return;
  const conv = o.convId && state.convs.get(o.convId);
  const peerId = o.peerId || (conv && conv.kind === 'direct' ? otherMember(conv).id : null);
  $('chat-title').textContent = conv ? convTitle(conv) : userName(peerId);
  $('chat-dot').hidden = !peerId;
  if (peerId) {
    const status = statusOf(peerId);
    const seen = (state.users.get(peerId) || {}).last_seen;
    $('chat-dot').className = `dot ${status}`;
    $('chat-sub').textContent = status === 'offline' && seen ? `last seen ${formatTime(seen)}` : status;
  } else {
    $('chat-sub').textContent = conv ? `${conv.members.length} members` : '';
  }
}

function renderMessages(opts = {}) {
  const o = state.open;
  if (!o) return;
  const box = $('messages');
  const nearBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
  const prevHeight = box.scrollHeight;
  const prevTop = box.scrollTop;
  const conv = o.convId && state.convs.get(o.convId);
  const list = $('msg-list');
  list.replaceChildren(...o.messages.map((m) => messageEl(m, conv)));
  if (!o.messages.length) list.append(el('div', 'empty', 'No messages yet. Say hello!'));
  $('load-older').hidden = !o.hasMore;
  if (opts.keepPosition) box.scrollTop = box.scrollHeight - prevHeight + prevTop;
  else if (opts.bottom || nearBottom) box.scrollTop = box.scrollHeight;
}

function messageEl(m, conv) {
  const mine = m.from === state.me.id;
  const row = el('div', `msg ${mine ? 'mine' : 'theirs'}`);
  const bubble = el('div', 'bubble');
  if (!mine && conv && conv.kind === 'group') bubble.append(el('div', 'author', userName(m.from)));
  if (m.deleted) bubble.append(el('div', 'body deleted', 'This message was deleted'));
  else bubble.append(el('div', 'body', m.body));
  const reactions = Object.entries(m.reactions || {})
    .map(([emoji, users]) => `${emoji} ${users.length}`)
    .join('  ');
  if (reactions) bubble.append(el('div', 'reactions', reactions));
  const meta = el('div', 'meta', formatTime(m.sent_at) + (m.edited_at ? ' · edited' : ''));
  if (mine) meta.append(markEl(m, conv));
  bubble.append(meta);
  row.append(bubble);
  return row;
}

function markEl(m, conv) {
  const s = receiptState(m, conv);
  const span = el('span', `mark ${s}`, { pending: '…', failed: '!', sent: '✓', delivered: '✓✓', read: '✓✓' }[s]);
  span.title = s === 'failed' ? `${m.error || 'Not sent'}. Click to retry.` : s;
  if (s === 'failed') span.onclick = () => retry(m);
  return span;
}

function receiptState(m, conv) {
  if (m.state === 'failed' || m.state === 'pending') return m.state;
  if (m.seq == null || !conv) return 'sent';
  const others = conv.members.filter((u) => u.id !== state.me.id);
  if (!others.length) return 'sent';
  if (conv.kind === 'group') return groupReceiptState(m, conv, others.length);
  const cursors = others.map((u) => cursorOf(conv, u.id));
  if (cursors.every((c) => c.read_seq >= m.seq)) return 'read';
  if (cursors.every((c) => c.delivered_seq >= m.seq)) return 'delivered';
  return 'sent';
}

// "Read by N of M" from the group's counts: N members at or past the
// message's seq, not counting me (the sender).
function groupReceiptState(m, conv, others) {
  const c = conv.counts;
  if (!c) return 'sent';
  const own = cursorOf(conv, state.me.id);
  const reached = (list, mine) => {
    const at = (list || []).filter((e) => e.up_to_seq >= m.seq);
    const n = at.length ? at[at.length - 1].count : 0;
    return n - (mine >= m.seq ? 1 : 0);
  };
  if (reached(c.read, own.read_seq) >= others) return 'read';
  if (reached(c.delivered, own.delivered_seq) >= others) return 'delivered';
  return 'sent';
}

function renderTyping() {
  const o = state.open;
  const who = o && o.convId && state.typing.get(o.convId);
  const names = who ? [...who.keys()].map(userName) : [];
  $('typing').textContent = !names.length ? ''
    : names.length === 1 ? `${names[0]} is typing…` : `${names.join(', ')} are typing…`;
}

/* ---------- wiring ---------- */

function bindApp() {
  $('logout').onclick = () => logout();
  $('back').onclick = () => { stopTyping(); state.open = null; showChat(false); renderConvs(); renderUsers(); };
  $('search').oninput = (e) => {
    clearTimeout(bindApp.searchTimer);
    bindApp.searchTimer = setTimeout(() => searchUsers(e.target.value.trim()).catch((err) => toast(err.message)), 250);
  };
  $('load-older').onclick = () => loadMessages(true).catch((err) => toast(err.message));
  const input = $('input');
  input.oninput = onComposerInput;
  input.onkeydown = (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); submitComposer(); }
  };
  $('composer').onsubmit = (e) => { e.preventDefault(); submitComposer(); };
  window.addEventListener('focus', markOpenRead);
  document.addEventListener('visibilitychange', markOpenRead);
}

function submitComposer() {
  const input = $('input');
  const body = input.value.trim();
  if (!body) return;
  input.value = '';
  input.style.height = 'auto';
  sendMessage(body);
}

function init() {
  bindAuth();
  bindApp();
  let saved = null;
  try { saved = JSON.parse(localStorage.getItem(SESSION_KEY)); } catch (_) { /* corrupt */ }
  if (saved && saved.token && saved.user) startApp(saved.token, saved.user);
  else showAuth();
}

init();
