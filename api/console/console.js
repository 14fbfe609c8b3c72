/* voxq console: plain JavaScript, no build step, no request to any other host.
   Views (by URL hash): #/calls, #/call/<id>, #/tts, #/batch. Data comes from /v1 only. */
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const STATUSES = ["created", "active", "finished", "failed", "abandoned"];
const TERMINAL = new Set(["finished", "failed", "abandoned"]);
const PAGE_SIZE = 20;
const LIST_LIMIT = 500;
const RENEW_BEFORE_MS = 60_000;
const TOKEN_TTL_SECONDS = 900;

/* ---- access: whoami, sign-in, the browser token (never the key) ---------------------- */

const auth = { on: false, token: null, expiresAt: 0, timer: null, name: "", label: "" };

class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

function withToken(url) {
  if (!auth.token) return url;
  return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(auth.token);
}

function expiryMs(value) {
  if (typeof value === "number") return value * 1000;
  const t = Date.parse(value || "");
  return Number.isNaN(t) ? Date.now() + TOKEN_TTL_SECONDS * 1000 : t;
}

function setToken(answer) {
  auth.token = answer.token;
  auth.expiresAt = expiryMs(answer.expires_at);
  auth.name = answer.name || answer.tenant || "";
  clearTimeout(auth.timer);
  const wait = Math.max(5_000, auth.expiresAt - Date.now() - RENEW_BEFORE_MS);
  auth.timer = setTimeout(renewToken, wait);
  $("#who-name").textContent = "Signed in: " + (auth.label || auth.name || "");
  $("#who").hidden = false;
}

/** The signed-in key's name and tenant in the header (from /v1/whoami with the token). */
async function showWho() {
  try {
    const who = await apiJson("/v1/whoami");
    const label = [who.name, who.tenant && "tenant " + who.tenant].filter(Boolean).join(", ");
    if (label) { auth.label = label; $("#who-name").textContent = "Signed in: " + label; }
  } catch (_) { /* the header keeps what the token said */ }
}

async function renewToken() {
  if (!auth.token) return;
  try {
    const r = await fetch("/v1/tokens", { method: "POST", headers: {
      Authorization: "Bearer " + auth.token, "Content-Type": "application/json" },
      body: JSON.stringify({ ttl_seconds: TOKEN_TTL_SECONDS }) });
    if (r.status === 401 || r.status === 403) return expired();
    if (!r.ok) throw new Error("HTTP " + r.status);
    setToken(await r.json());
  } catch (e) {
    clearTimeout(auth.timer);
    auth.timer = setTimeout(renewToken, 10_000);  // the API may be restarting: try again
  }
}

function expired() {
  auth.token = null;
  clearTimeout(auth.timer);
  $("#who").hidden = true;
  stopLive();
  banner("Session expired, sign in again.", true);
}

function signOut() {
  auth.token = null;
  auth.label = "";
  clearTimeout(auth.timer);
  $("#who").hidden = true;
  stopLive();
  hideBanner();
  show("signin");
}

async function signIn(event) {
  event.preventDefault();
  const input = $("#signin-key");
  let key = input.value.trim();
  input.value = "";  // the key leaves the page at once; only the token stays
  const err = $("#signin-error");
  err.hidden = true;
  try {
    const r = await fetch("/v1/tokens", { method: "POST", headers: {
      Authorization: "Bearer " + key, "Content-Type": "application/json" },
      body: JSON.stringify({ ttl_seconds: TOKEN_TTL_SECONDS }) });
    key = "";
    if (r.status === 404) throw new Error("this API does not issue browser tokens (POST /v1/tokens is missing)");
    if (r.status === 401 || r.status === 403) throw new Error("that key was not accepted");
    if (!r.ok) throw new Error(await detailOf(r));
    auth.label = "";
    setToken(await r.json());
    hideBanner();
    route();
    showWho();
  } catch (e) {
    key = "";
    err.textContent = "Sign-in failed: " + e.message;
    err.hidden = false;
  }
}

async function detailOf(r) {
  try { const d = await r.json(); return typeof d.detail === "string" ? d.detail : JSON.stringify(d.detail); }
  catch (_) { return "HTTP " + r.status; }
}

/** fetch on /v1 with the token; ApiError with the API's own reason when not 2xx. */
async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (auth.token) headers.Authorization = "Bearer " + auth.token;
  let r;
  try {
    r = await fetch(path, Object.assign({}, options, { headers }));
  } catch (e) {
    throw new ApiError(0, "The API cannot be reached (" + e.message + ").");
  }
  if (r.status === 401) {
    if (auth.token) expired(); else needSignIn();
    throw new ApiError(401, "Session expired, sign in again.");
  }
  if (!r.ok) throw new ApiError(r.status, await detailOf(r));
  return r;
}

async function apiJson(path, options) { return (await api(path, options)).json(); }

function needSignIn() {
  auth.on = true;
  if (!auth.token) show("signin");
}

/** What the page must do about an error: sign-in states are shown by api(); Redis down and
 *  the rest become the banner. */
function explain(e) {
  if (e.status === 503) return "Redis is unavailable: the API cannot read calls right now. Retrying.";
  if (e.status === 0) return e.message;
  return e.message;
}

/* ---- banner and views ------------------------------------------------------------------ */

function banner(text, signIn = false, info = false) {
  $("#banner-text").textContent = text;
  $("#banner-action").hidden = !signIn;
  $("#banner").classList.toggle("info", info);
  $("#banner").hidden = false;
}
function hideBanner() { $("#banner").hidden = true; }

function show(name) {
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== "view-" + name;
  const nav = name === "call" ? "calls" : name;
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === nav) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

function clock(seconds) {
  const s = Math.max(0, Number(seconds) || 0);
  const m = Math.floor(s / 60);
  return String(m).padStart(2, "0") + ":" + (s - m * 60).toFixed(1).padStart(4, "0");
}
function when(unix) { return unix ? new Date(unix * 1000).toLocaleString() : ""; }
function badge(status) { return el("span", { class: "badge s-" + status, text: status }); }

/* ---- live streams (closed when the view changes or the token goes) ---------------------- */

const live = { firehose: null, session: null, retry: null };

function stopLive() {
  for (const k of ["firehose", "session"]) { if (live[k]) { live[k].close(); live[k] = null; } }
  clearTimeout(live.retry);
}

/* ---- calls: the session index plus the firehose --------------------------------------- */

const calls = { byId: new Map(), page: 0, loaded: false, pending: new Set(), drawQueued: false };

async function openCalls() {
  show("calls");
  stopLive();
  $("#live-state").textContent = "loading…";
  $("#live-state").className = "live";
  try {
    const page = await apiJson("/v1/sessions?limit=" + LIST_LIMIT);
    calls.byId.clear();
    for (const s of page.items) calls.byId.set(s.session_id, s);
    calls.loaded = true;
    hideBanner();
  } catch (e) {
    if (e.status === 401) return;
    calls.loaded = false;
    $("#calls-body").replaceChildren();
    $(".pager").hidden = true;
    showEmpty(explain(e));
    $("#live-state").textContent = "offline";
    $("#live-state").className = "live off";
    live.retry = setTimeout(() => { if (location.hash.startsWith("#/calls") || !location.hash) openCalls(); }, 5000);
    return;
  }
  drawCalls();
  followFirehose();
}

function followFirehose(lastId) {
  const url = withToken("/v1/events" + (lastId ? "?last_event_id=" + encodeURIComponent(lastId) : ""));
  const src = new EventSource(url);
  live.firehose = src;
  let last = lastId;
  src.onopen = () => { $("#live-state").textContent = "live"; $("#live-state").className = "live on"; };
  const onEvent = (ev) => { last = ev.lastEventId || last; lifecycle(JSON.parse(ev.data)); };
  for (const s of STATUSES) src.addEventListener(s, onEvent);
  src.onerror = () => {
    $("#live-state").textContent = "reconnecting…";
    $("#live-state").className = "live off";
    if (src.readyState === EventSource.CLOSED && live.firehose === src) {
      // refused (401, 503…): check why with a plain request, then follow again
      live.firehose = null;
      live.retry = setTimeout(async () => {
        try { await api("/v1/sessions?limit=1"); followFirehose(last); }
        catch (e) { if (e.status !== 401) { banner(explain(e)); followFirehose(last); } }
      }, 3000);
    }
  };
}

function lifecycle(ev) {
  const known = calls.byId.get(ev.session_id);
  if (known) {
    known.status = ev.status;
    known.error = ev.error || "";
    if (ev.vendor) known.vendor = ev.vendor;
    if (TERMINAL.has(ev.status)) refreshCall(ev.session_id);
  } else {
    calls.byId.set(ev.session_id, { session_id: ev.session_id, status: ev.status, error: ev.error || "",
      vendor: ev.vendor || "", language: "", channels: "", created: ev.time || Date.now() / 1000,
      audio_seconds: 0 });
    refreshCall(ev.session_id);
  }
  queueDraw();
}

async function refreshCall(sid) {
  if (calls.pending.has(sid)) return;
  calls.pending.add(sid);
  try {
    const s = await apiJson("/v1/sessions/" + encodeURIComponent(sid));
    const mine = calls.byId.get(sid);
    // the firehose may have moved on while this was read: keep its newer status
    if (mine && TERMINAL.has(mine.status) && !TERMINAL.has(s.status)) { s.status = mine.status; s.error = mine.error; }
    calls.byId.set(sid, s);
    queueDraw();
  } catch (_) { /* the row stays as the event described it */ }
  finally { calls.pending.delete(sid); }
}

function queueDraw() {
  if (calls.drawQueued) return;
  calls.drawQueued = true;
  requestAnimationFrame(() => { calls.drawQueued = false; drawCalls(); });
}

function filtered() {
  const q = $("#f-search").value.trim().toLowerCase();
  const st = $("#f-status").value;
  const vendor = $("#f-vendor").value;
  return [...calls.byId.values()]
    .filter((s) => (!q || s.session_id.toLowerCase().includes(q)) && (!st || s.status === st)
      && (!vendor || s.vendor === vendor))
    .sort((a, b) => (b.created || 0) - (a.created || 0) || (a.session_id < b.session_id ? 1 : -1));
}

function showEmpty(text) {
  $("#calls-empty").textContent = text;
  $("#calls-empty").hidden = !text;
}

function drawCalls() {
  if (!calls.loaded) return;
  const all = [...calls.byId.values()];
  const vendors = [...new Set(all.map((s) => s.vendor).filter(Boolean))].sort();
  const vsel = $("#f-vendor");
  const have = [...vsel.options].map((o) => o.value).slice(1);
  if (have.join() !== vendors.join()) {
    const keep = vsel.value;
    vsel.replaceChildren(el("option", { value: "", text: "any" }), ...vendors.map((v) => el("option", { text: v })));
    vsel.value = vendors.includes(keep) ? keep : "";
  }
  const counts = Object.fromEntries(STATUSES.map((s) => [s, 0]));
  for (const s of all) counts[s.status] = (counts[s.status] || 0) + 1;
  $("#calls-counts").textContent = all.length + " call" + (all.length === 1 ? "" : "s") + ": "
    + STATUSES.filter((s) => counts[s]).map((s) => counts[s] + " " + s).join(", ");
  const rows = filtered();
  const pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
  calls.page = Math.min(calls.page, pages - 1);
  const slice = rows.slice(calls.page * PAGE_SIZE, (calls.page + 1) * PAGE_SIZE);
  // a live redraw keeps the keyboard where it was: on the same call's link
  const focused = document.activeElement && document.activeElement.closest("#calls-body tr");
  $("#calls-body").replaceChildren(...slice.map(callRow));
  if (focused) {
    const again = $('tr[data-session="' + CSS.escape(focused.dataset.session) + '"] a');
    if (again) again.focus();
  }
  $(".pager").hidden = pages <= 1;
  $("#page-info").textContent = "Page " + (calls.page + 1) + " of " + pages;
  $("#page-prev").disabled = calls.page === 0;
  $("#page-next").disabled = calls.page >= pages - 1;
  const q = $("#f-search").value.trim();
  if (!all.length) showEmpty("No calls yet. Start one with `voxq produce FILE` or `voxq demo`; it appears here live.");
  else if (!rows.length) showEmpty("No call matches these filters." + (q ? " Open “" + q + "” directly with its link below." : ""));
  else showEmpty("");
  if (!rows.length && q) {
    const a = el("a", { href: "#/call/" + encodeURIComponent(q), text: "Open call " + q });
    $("#calls-empty").append(el("br"), a);
  }
}

function callRow(s) {
  const link = el("a", { href: "#/call/" + encodeURIComponent(s.session_id), text: s.session_id });
  return el("tr", { "data-session": s.session_id, "data-status": s.status },
    el("td", { class: "id", "data-label": "Session" }, link),
    el("td", { "data-label": "Status" }, badge(s.status)),
    el("td", { "data-label": "Vendor", text: s.vendor || "" }),
    el("td", { "data-label": "Language", text: s.language || "" }),
    el("td", { "data-label": "Channels", text: s.channels === 2 ? "2 (agent, customer)" : String(s.channels || "") }),
    el("td", { "data-label": "Started", text: when(s.created) }),
    el("td", { "data-label": "Duration", text: s.audio_seconds ? clock(s.audio_seconds) : "" }),
    el("td", { class: "err", "data-label": "Error", text: s.error || "" }));
}

/* ---- one call: metadata, live transcript, find, downloads ----------------------------- */

const call = { id: "", meta: null, seqs: new Set(), partials: new Map(), finalEnd: new Map(),
  follow: true, matches: [], current: -1, lastId: "" };

function speakerOf(seg) {
  if (call.meta && call.meta.channels === 2) return seg.channel === 1 ? "customer" : "agent";
  if (seg.speaker != null && seg.speaker !== "") return "speaker " + seg.speaker;
  return "";
}

async function openCall(sid) {
  show("call");
  stopLive();
  Object.assign(call, { id: sid, meta: null, seqs: new Set(), partials: new Map(), finalEnd: new Map(),
    follow: true, matches: [], current: -1, lastId: "" });
  $("#call-id").textContent = sid;
  $("#call-meta").replaceChildren();
  $("#transcript").replaceChildren();
  $("#transcript").classList.remove("labelled");
  $("#transcript-empty").hidden = false;
  $("#jump").hidden = true;
  $("#jump").textContent = "Follow live ↓";
  $("#call-error").hidden = true;
  $("#call-body").hidden = false;
  $("#call-live").textContent = "";
  $("#call-live").className = "live";
  $("#find-count").textContent = "";
  for (const a of document.querySelectorAll(".downloads a")) {
    const f = a.dataset.format;
    a.dataset.path = "/v1/sessions/" + encodeURIComponent(sid) + "/transcript?format=" + f;
    a.href = a.dataset.path;
    a.setAttribute("download", sid.replace(/[^\w.-]+/g, "_") + "." + f);
  }
  try {
    call.meta = await apiJson("/v1/sessions/" + encodeURIComponent(sid));
  } catch (e) {
    $("#call-body").hidden = true;  // nothing of another call stays on the page
    if (e.status === 401) return;
    $("#call-error").textContent = e.status === 404 ? "No call with the id “" + sid + "” (unknown, or expired)."
      : e.status === 422 ? "“" + sid + "” is not a valid session id: " + e.message : explain(e);
    $("#call-error").hidden = false;
    return;
  }
  $("#transcript").classList.toggle("labelled", call.meta.channels === 2);
  drawMeta();
  followCall();
}

let metaQueued = false;
function queueMeta() {
  if (metaQueued) return;
  metaQueued = true;
  requestAnimationFrame(() => { metaQueued = false; if (call.meta) drawMeta(); });
}

function drawMeta() {
  const m = call.meta;
  const items = [["Status", badge(m.status)], ["Vendor", m.vendor], ["Language", m.language],
    ["Rate", m.rate ? m.rate + " Hz" : ""], ["Channels", m.channels === 2 ? "2 (agent, customer)" : String(m.channels)],
    ["Duration", clock(m.audio_seconds)], ["Final segments", String(m.finals)], ["Started", when(m.created)]];
  const dl = $("#call-meta");
  dl.replaceChildren(...items.map(([k, v]) => el("div", {}, el("dt", { text: k }), el("dd", {}, v))));
  if (m.error) dl.append(el("div", { class: "wide" }, el("dt", { text: "Error" }), el("dd", { class: "error", text: m.error })));
}

function followCall() {
  const sid = call.id;
  let url = "/v1/sessions/" + encodeURIComponent(sid) + "/events";
  if (call.lastId) url += "?last_event_id=" + encodeURIComponent(call.lastId);
  const src = new EventSource(withToken(url));
  live.session = src;
  src.onopen = () => { $("#call-live").textContent = "live"; $("#call-live").className = "live on"; };
  const track = (ev) => { if (ev.lastEventId) call.lastId = ev.lastEventId; };
  src.addEventListener("partial", (ev) => { track(ev); onPartial(JSON.parse(ev.data)); });
  src.addEventListener("final", (ev) => { track(ev); onFinal(JSON.parse(ev.data)); });
  src.addEventListener("status", (ev) => {
    track(ev);
    src.close();  // the stream's last event: nothing follows it
    live.session = null;
    const d = JSON.parse(ev.data);
    for (const row of call.partials.values()) row.remove();  // no partial outlives the call
    call.partials.clear();
    refreshMeta(d);
    $("#call-live").textContent = "ended: " + d.status;
    $("#jump").textContent = "Back to the end ↓";
    $("#call-live").className = "live";
  });
  src.addEventListener("error", (ev) => {
    if (ev.data) {  // the server cut a slow reader off: resume from the last id
      src.close(); live.session = null; live.retry = setTimeout(followCall, 1000); return;
    }
    $("#call-live").textContent = "reconnecting…";
    $("#call-live").className = "live off";
    if (src.readyState === EventSource.CLOSED && live.session === src) {
      live.session = null;
      live.retry = setTimeout(async () => {
        try { await api("/v1/sessions/" + encodeURIComponent(sid)); if (call.id === sid) followCall(); }
        catch (e) { if (e.status !== 401) { banner(explain(e)); if (call.id === sid) followCall(); } }
      }, 3000);
    }
  });
}

async function refreshMeta(status) {
  try { call.meta = await apiJson("/v1/sessions/" + encodeURIComponent(call.id)); }
  catch (_) { if (status) { call.meta.status = status.status; call.meta.error = status.error || ""; } }
  drawMeta();
}

function segRow(seg, final) {
  if (speakerOf(seg)) $("#transcript").classList.add("labelled");
  const ch = Number(seg.channel) || 0;
  const li = el("li", { class: "seg ch" + ch + (final ? " final" : " partial") });
  li.append(el("span", { class: "who", text: speakerOf(seg) }),
    el("span", { class: "time", text: clock(seg.start) + "–" + clock(seg.end) }),
    el("span", { class: "text" }));
  fillSeg(li, seg, final);
  return li;
}

function fillSeg(li, seg, final) {
  li.className = "seg ch" + (Number(seg.channel) || 0) + (final ? " final" : " partial");
  li.dataset.start = seg.start;
  if (final) { li.dataset.seq = seg.seq; li.removeAttribute("aria-label"); }
  else li.setAttribute("aria-label", "provisional");
  $(".who", li).textContent = speakerOf(seg);
  $(".time", li).textContent = clock(seg.start) + "–" + clock(seg.end);
  li._text = seg.text;
  highlight(li);
}

function onPartial(seg) {
  const ch = Number(seg.channel) || 0;
  // a partial that arrives after its final (or an older one) never replaces text already final
  if (seg.end <= (call.finalEnd.get(ch) ?? -1)) return;
  const pinned = atBottom();
  let li = call.partials.get(ch);
  if (li) fillSeg(li, seg, false);
  else {
    li = segRow(seg, false);
    call.partials.set(ch, li);
    $("#transcript").append(li);
  }
  $("#transcript-empty").hidden = true;
  if (pinned) scrollToEnd();
}

function onFinal(seg) {
  if (call.seqs.has(seg.seq)) return;  // a replay after a reconnect
  call.seqs.add(seg.seq);
  if (call.meta) {  // the durable progress, as the API will report it
    call.meta.finals = Math.max(call.meta.finals || 0, call.seqs.size);
    call.meta.audio_seconds = Math.max(call.meta.audio_seconds || 0, seg.end);
    queueMeta();
  }
  const ch = Number(seg.channel) || 0;
  call.finalEnd.set(ch, Math.max(call.finalEnd.get(ch) ?? -1, seg.end));
  const pinned = atBottom();
  const list = $("#transcript");
  // the channel's provisional line becomes this final in place (no jump), or a new line
  let li = call.partials.get(ch);
  if (li) { call.partials.delete(ch); li.remove(); fillSeg(li, seg, true); }
  else li = segRow(seg, true);
  // one timeline: finals by start time, provisional lines after them
  let before = null;
  for (const other of list.children) {
    if (other.classList.contains("partial") || Number(other.dataset.start) > seg.start) { before = other; break; }
  }
  list.insertBefore(li, before);
  $("#transcript-empty").hidden = true;
  if ($("#find").value) findMatches(false);
  if (pinned) scrollToEnd();
}

function atBottom() {
  const t = $("#transcript");
  return call.follow && t.scrollHeight - t.scrollTop - t.clientHeight < 40;
}
function scrollToEnd() { const t = $("#transcript"); t.scrollTop = t.scrollHeight; }

function onTranscriptScroll() {
  const t = $("#transcript");
  const bottom = t.scrollHeight - t.scrollTop - t.clientHeight < 40;
  call.follow = bottom;
  $("#jump").hidden = bottom;
}

/* A transcript download: a plain link with auth off; with a token, fetched with the token in
   the Authorization header and handed to the browser as a file (no token in any URL). */
async function downloadTranscript(event) {
  if (!auth.token) return;
  event.preventDefault();
  const a = event.currentTarget;
  try {
    const r = await api(a.dataset.path);
    const url = URL.createObjectURL(await r.blob());
    const save = el("a", { href: url, download: a.getAttribute("download") });
    document.body.append(save);
    save.click();
    save.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60_000);
  } catch (e) {
    if (e.status !== 401) banner("Download failed: " + explain(e));
  }
}

/* find: every line whose text holds the query is marked; Enter / ↓ / ↑ walk the matches */
function highlight(li) {
  const q = $("#find").value.trim().toLowerCase();
  const span = $(".text", li);
  const text = li._text || "";
  if (!q) { span.textContent = text; return; }
  const parts = [];
  let i = 0;
  const low = text.toLowerCase();
  for (let j = low.indexOf(q); j >= 0; j = low.indexOf(q, i)) {
    parts.push(text.slice(i, j), el("mark", { text: text.slice(j, j + q.length) }));
    i = j + q.length;
  }
  parts.push(text.slice(i));
  span.replaceChildren(...parts);
}

function findMatches(jump) {
  const rows = [...$("#transcript").children];
  for (const li of rows) highlight(li);
  const q = $("#find").value.trim();
  call.matches = q ? rows.filter((li) => li.querySelector("mark")) : [];
  if (!q) { $("#find-count").textContent = ""; call.current = -1; return; }
  if (call.current >= call.matches.length) call.current = call.matches.length - 1;
  if (jump && call.matches.length) step(0);
  else $("#find-count").textContent = count();
}

function count() {
  const n = call.matches.length;
  if (!n) return "no match";
  return (call.current >= 0 ? (call.current + 1) + " of " : "") + n + " line" + (n === 1 ? "" : "s");
}

function step(delta) {
  const n = call.matches.length;
  if (!n) return;
  for (const li of call.matches) li.classList.remove("current");
  call.current = ((call.current < 0 ? (delta < 0 ? 0 : -1) : call.current) + delta + n) % n;
  if (delta === 0 && call.current < 0) call.current = 0;
  const li = call.matches[call.current];
  li.classList.add("current");
  call.follow = false;  // reading a match: stop following
  $("#jump").hidden = false;
  li.scrollIntoView({ block: "center" });
  $("#find-count").textContent = count();
}

/* ---- text to speech: vendors, one job, a batch ----------------------------------------- */

const tts = { vendors: null, default: "local", jobTimer: null, batchTimer: null };

async function loadVendors() {
  if (tts.vendors) return tts.vendors;
  const d = await apiJson("/v1/tts/vendors");
  tts.vendors = d.vendors.filter((v) => !v.error && v.voices.length);
  tts.default = d.default;
  return tts.vendors;
}

function vendorForm(form) {
  const pick = $(".voice-pick", form);
  const ctrl = $(".controls", form);
  const id = form.id;
  const vendorSel = el("select", { id: id + "-vendor", name: "vendor" },
    ...tts.vendors.map((v) => el("option", { value: v.name, text: v.name })));
  vendorSel.value = tts.vendors.some((v) => v.name === tts.default) ? tts.default : tts.vendors[0].name;
  const voiceSel = el("select", { id: id + "-voice", name: "voice" });
  pick.replaceChildren(
    el("div", {}, el("label", { for: vendorSel.id, text: "Vendor" }), vendorSel),
    el("div", {}, el("label", { for: voiceSel.id, text: "Voice" }), voiceSel));
  const refresh = () => {
    const v = tts.vendors.find((x) => x.name === vendorSel.value);
    voiceSel.replaceChildren(...v.voices.map((n) => el("option", { value: n, text: n })));
    ctrl.replaceChildren(...Object.entries(v.controls).map(([name, c]) => {
      const input = el("input", { type: "range", id: id + "-" + name, name, min: c.min, max: c.max,
        step: "0.05", value: c.default });
      const out = el("output", { for: input.id, text: Number(c.default).toFixed(2) + "×" });
      input.addEventListener("input", () => { out.textContent = Number(input.value).toFixed(2) + "×"; });
      return el("div", { class: "control" },
        el("label", { for: input.id }, name[0].toUpperCase() + name.slice(1), out), input);
    }));
  };
  vendorSel.addEventListener("change", refresh);
  refresh();
}

function formRequest(form, text) {
  const req = { text, vendor: $("select[name=vendor]", form).value, voice: $("select[name=voice]", form).value };
  for (const input of form.querySelectorAll(".controls input")) req[input.name] = Number(input.value);
  return req;
}

async function openTts(name) {
  show(name);
  stopLive();
  const form = $(name === "tts" ? "#tts-form" : "#batch-form");
  const err = $(".error", form);
  err.hidden = true;
  if ($(".voice-pick select", form)) return;
  try {
    await loadVendors();
    if (!tts.vendors.length) throw new Error("No speech vendor is configured on this API.");
    vendorForm(form);
  } catch (e) {
    if (e.status === 401) return;
    err.textContent = explain(e);
    err.hidden = false;
  }
}

async function submitTts(event) {
  event.preventDefault();
  const form = event.target;
  const err = $(".error", form);
  err.hidden = true;
  clearTimeout(tts.jobTimer);
  try {
    const job = await apiJson("/v1/tts", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(formRequest(form, $("#tts-text").value)) });
    $("#tts-job").hidden = false;
    $("#tts-job-id").textContent = job.job_id;
    $("#tts-result").hidden = true;
    $("#tts-error").hidden = true;
    $("#tts-audio").removeAttribute("src");
    pollJob(job.job_id);
  } catch (e) {
    if (e.status === 401) return;
    err.textContent = explain(e);
    err.hidden = false;
  }
}

async function pollJob(id) {
  let j;
  try { j = await apiJson("/v1/tts/" + id); }
  catch (e) {
    if (e.status === 401) return;
    $("#tts-error").textContent = explain(e); $("#tts-error").hidden = false;
    tts.jobTimer = setTimeout(() => pollJob(id), 2000);
    return;
  }
  $("#tts-status").replaceChildren(badge(j.status), " " + (j.parts_total ? (j.parts_done || 0) + " of " + j.parts_total + " parts" : "")
    + (j.cached ? " (from the cache)" : ""));
  $("#tts-progress").value = j.status === "finished" ? 1 : (j.progress || 0);
  if (j.status === "failed") { $("#tts-error").textContent = j.error || "failed"; $("#tts-error").hidden = false; return; }
  if (j.status !== "finished") { tts.jobTimer = setTimeout(() => pollJob(id), 400); return; }
  const url = withToken("/v1/tts/" + id + "/audio");
  $("#tts-audio").src = url;
  $("#tts-download").href = url;
  $("#tts-download").setAttribute("download", id + ".mp3");
  $("#tts-duration").textContent = j.duration ? clock(j.duration) + " of audio" : "";
  $("#tts-result").hidden = false;
}

async function batchLines() {
  const file = $("#batch-file").files[0];
  const text = file ? await file.text() : $("#batch-lines").value;
  return text.split(/\r?\n/).map((l) => l.trim()).filter(Boolean);
}

async function submitBatch(event) {
  event.preventDefault();
  const form = event.target;
  const err = $(".error", form);
  err.hidden = true;
  clearTimeout(tts.batchTimer);
  const lines = await batchLines();
  if (!lines.length) { err.textContent = "Paste at least one line, or choose a text file."; err.hidden = false; return; }
  try {
    const b = await apiJson("/v1/tts/batch", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ items: lines.map((l) => formRequest(form, l)) }) });
    $("#batch-job").hidden = false;
    $("#batch-id").textContent = b.batch_id;
    $("#batch-zip").hidden = true;
    $("#batch-body").replaceChildren(...lines.map((l, i) => el("tr", { "data-index": i },
      el("td", { "data-label": "#", text: String(i + 1) }), el("td", { "data-label": "Text", text: l }),
      el("td", { "data-label": "Status" }, badge("queued")), el("td", { "data-label": "Audio" }))));
    pollBatch(b.batch_id);
  } catch (e) {
    if (e.status === 401) return;
    err.textContent = explain(e);
    err.hidden = false;
  }
}

async function pollBatch(id) {
  let b;
  try { b = await apiJson("/v1/tts/batches/" + id); }
  catch (e) {
    if (e.status === 401) return;
    $("#batch-summary").textContent = explain(e);
    tts.batchTimer = setTimeout(() => pollBatch(id), 2000);
    return;
  }
  const rows = $("#batch-body").children;
  for (const item of b.items) {
    const tr = rows[item.index];
    if (!tr || tr.dataset.status === item.status) continue;
    tr.dataset.status = item.status;
    tr.children[2].replaceChildren(badge(item.status));
    if (item.error) tr.children[2].append(el("span", { class: "error", text: " " + item.error }));
    if (item.status === "finished") {
      tr.children[3].replaceChildren(el("a", { href: withToken("/v1/tts/" + item.job_id + "/audio"),
        download: item.job_id + ".mp3", text: "MP3" }));
    }
  }
  const c = b.counts;
  $("#batch-summary").textContent = b.total + " items: " + Object.entries(c).filter(([, n]) => n).map(([s, n]) => n + " " + s).join(", ");
  if (c.finished) {
    $("#batch-zip").href = withToken("/v1/tts/batches/" + id + "/zip");
    $("#batch-zip").hidden = false;
  }
  if (b.status !== "finished") tts.batchTimer = setTimeout(() => pollBatch(id), 700);
}

/* ---- routing and start ----------------------------------------------------------------- */

function route() {
  if (auth.on && !auth.token) { stopLive(); show("signin"); $("#signin-key").focus(); return; }
  const hash = location.hash.startsWith("#/") ? location.hash : "#/calls";
  if (hash.startsWith("#/call/")) openCall(decodeURIComponent(hash.slice(7)));
  else if (hash === "#/tts") openTts("tts");
  else if (hash === "#/batch") openTts("batch");
  else openCalls();
}

async function start() {
  $(".skip").addEventListener("click", (e) => { e.preventDefault(); $("#main").focus(); });
  $("#signin-form").addEventListener("submit", signIn);
  $("#sign-out").addEventListener("click", signOut);
  $("#banner-action").addEventListener("click", () => {
    $("#banner-action").hidden = true;  // the reason stays above the form until sign-in
    show("signin");
    $("#signin-key").focus();
  });
  for (const id of ["#f-search", "#f-status", "#f-vendor"]) {
    $(id).addEventListener("input", () => { calls.page = 0; drawCalls(); });
  }
  $("#calls-filters").addEventListener("submit", (e) => e.preventDefault());
  $("#page-prev").addEventListener("click", () => { calls.page -= 1; drawCalls(); });
  $("#page-next").addEventListener("click", () => { calls.page += 1; drawCalls(); });
  $("#transcript").addEventListener("scroll", onTranscriptScroll, { passive: true });
  $("#jump").addEventListener("click", () => { call.follow = true; scrollToEnd(); $("#jump").hidden = true; });
  $("#find").addEventListener("input", () => { call.current = -1; findMatches(false); });
  $("#find").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); step(e.shiftKey ? -1 : 1); } });
  $("#find-next").addEventListener("click", () => step(1));
  $("#find-prev").addEventListener("click", () => step(-1));
  for (const a of document.querySelectorAll(".downloads a")) a.addEventListener("click", downloadTranscript);
  $("#tts-form").addEventListener("submit", submitTts);
  $("#batch-form").addEventListener("submit", submitBatch);
  window.addEventListener("hashchange", route);
  try {
    const r = await fetch("/v1/whoami");
    if (r.status === 401) auth.on = true;
    else if (r.ok) auth.on = Boolean((await r.json()).auth);
    // 404: an API without access control; a 401 on /v1 later still asks for sign-in
  } catch (_) {
    banner("The API cannot be reached.");
  }
  route();
}

document.addEventListener("DOMContentLoaded", start);
