// The pharox operator dashboard. It polls the JSON API once a second with
// the operator's admin or viewer key and renders pools, proxies, active
// leases, health sweeps, charts, the last day's traffic and the quotas; a
// viewer sees everything without the write controls, an admin also
// manages API keys and reads the audit log.
// All data is rendered as text (see dom.js).

import { $, el, text, clear } from "./dom.js";
import { api, ApiError, getKey, setKey, forgetKey } from "./api.js";
import { bars, stacked, usageBars } from "./charts.js";

const POLL_MS = 1000;
const STALE_MS = 5000;
const MAX_PROXY_ROWS = 500;
const LEASE_LIMIT = 1000;
const MAX_TARGET_ROWS = 100;
const STATUSES = ["active", "slow", "inactive", "banned"];
const ADMIN_EVERY = 5; // rounds between reloads of keys and the audit log
const AUDIT_LIMIT = 50;
const USAGE_EVERY = 5; // rounds between reloads of usage and quotas: totals change at releases
const USAGE_HOURS = 24;
const MAX_USAGE_ROWS = 12;

const state = {
  timer: 0,
  inflight: false,
  again: false,
  paused: false,
  running: false,
  lastOK: 0,
  clockOffset: 0, // server clock minus browser clock, in ms
  dash: null,
  proxies: [], // of the pools fetched this round
  proxyByID: new Map(),
  leases: [],
  targets: [], // per-site health of the pools fetched this round, with pool_id
  targetsUnsupported: false, // the store keeps no per-site health (501)
  sweeping: new Set(), // pool ids with a sweep requested from this page
  poolKey: "",
  countryKey: "",
  self: null, // GET /v1/keys/self of the key in use
  round: 0,
  keys: [],
  audit: [],
  usage: null, // GET /v1/usage of the last 24 hours, by state.usageGroup
  usageGroup: "",
  quotas: [],
  usageRound: 0,
};

// readonly is true for a viewer key: no write controls.
function readonly() {
  return !!state.self && state.self.role !== "admin";
}

// managesKeys is true for an admin key on a server that keeps keys.
function managesKeys() {
  return !!state.self && state.self.role === "admin" && state.self.manages_keys;
}

const rows = {
  pools: new Map(),
  proxies: new Map(),
  leases: new Map(),
  targets: new Map(),
};

// ---- formatting ----

// bytes prints a byte count in SI units, as pharox usage does.
function bytes(n) {
  if (n < 1000) return `${n} B`;
  let v = n;
  for (const unit of ["kB", "MB", "GB", "TB", "PB", "EB"]) {
    v /= 1000;
    if (v < 999.5 || unit === "EB") return `${v < 9.995 ? v.toFixed(2) : v < 99.95 ? v.toFixed(1) : v.toFixed(0)} ${unit}`;
  }
  return `${n} B`;
}

function serverNow() {
  return Date.now() + state.clockOffset;
}

function duration(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${String(m % 60).padStart(2, "0")}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

function ago(iso) {
  if (!iso) return "";
  return duration(serverNow() - Date.parse(iso)) + " ago";
}

// ---- feedback ----

let toastTimer = 0;
function toast(message, bad = false) {
  const t = $("toast");
  text(t, message);
  t.classList.toggle("bad", bad);
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (t.hidden = true), bad ? 8000 : 4000);
}

function banner(message) {
  const b = $("banner");
  text(b, message || "");
  b.hidden = !message;
}

function describe(err) {
  if (err instanceof ApiError) return `${err.detail} (HTTP ${err.status})`;
  return err && err.message ? err.message : String(err);
}

// confirmAction asks the operator before an action; resolves true to go on.
let confirmResolve = null;
// confirmAction asks a question in the dialog; with askURL it also asks
// for a URL (read it from #confirm-target once confirmed).
function confirmAction(title, message, okLabel, askURL) {
  const dlg = $("confirm");
  if (confirmResolve) confirmResolve(false);
  text($("confirm-title"), title);
  text($("confirm-text"), message);
  text($("confirm-ok"), okLabel);
  const target = $("confirm-target");
  $("confirm-target-field").hidden = !askURL;
  target.required = !!askURL;
  target.value = "";
  dlg.returnValue = "";
  return new Promise((resolve) => {
    confirmResolve = resolve;
    dlg.showModal();
    (askURL ? target : $("confirm-cancel")).focus();
  });
}

function confirmClosed() {
  const dlg = $("confirm");
  // The close event is queued: one from an earlier question can arrive
  // after the dialog opened again, and must not answer the new one.
  if (dlg.open || !confirmResolve) return;
  const resolve = confirmResolve;
  confirmResolve = null;
  resolve(dlg.returnValue === "ok");
}

// ---- sign in ----

function showLogin(message) {
  stop();
  $("app").hidden = true;
  $("live").hidden = true;
  $("pause").hidden = true;
  $("signout").hidden = true;
  $("whoami").hidden = true;
  $("admin-panels").hidden = true;
  document.body.classList.remove("readonly");
  state.self = null;
  hideSecret();
  banner("");
  $("login").hidden = false;
  text($("login-error"), message || "");
  $("key").focus();
}

function showApp() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("live").hidden = false;
  $("pause").hidden = false;
  $("signout").hidden = false;
}

// applyRole shows who the key is and what the page lets it do.
function applyRole() {
  const self = state.self;
  const who = $("whoami");
  who.hidden = !self;
  if (!self) return;
  text(who, `${self.name} · ${self.role}${readonly() ? " · read-only" : ""}`);
  who.className = "whoami " + self.role;
  document.body.classList.toggle("readonly", readonly());
  $("admin-panels").hidden = !managesKeys();
}

// refusal explains why the API turned a key away.
function refusal(err) {
  if (err instanceof ApiError && err.status === 403) {
    return "Refused: this is a consumer key, which may only lease proxies. The dashboard needs an admin API key.";
  }
  if (err instanceof ApiError && err.status === 401) {
    return "Refused: " + err.detail + ".";
  }
  return "";
}

async function signIn(ev) {
  ev.preventDefault();
  const input = $("key");
  const key = input.value.trim();
  if (!key) return;
  $("login-submit").disabled = true;
  try {
    const dash = await api.dashboard(key);
    const self = await api.self(key);
    input.value = "";
    setKey(key);
    text($("login-error"), "");
    state.self = self;
    showApp();
    applyRole();
    state.dash = dash;
    start();
  } catch (err) {
    const why = refusal(err);
    if (why) input.value = "";
    text($("login-error"), why || "Could not reach the server: " + describe(err));
  } finally {
    $("login-submit").disabled = false;
  }
}

function signOut(message) {
  forgetKey();
  showLogin(message);
}

// ---- polling ----

function start() {
  state.running = true;
  state.paused = false;
  text($("pause"), "Pause");
  refreshNow();
}

function stop() {
  state.running = false;
  clearTimeout(state.timer);
}

function refreshNow() {
  if (!state.running) return;
  if (state.inflight) {
    state.again = true;
    return;
  }
  clearTimeout(state.timer);
  poll();
}

async function poll() {
  state.inflight = true;
  try {
    await load();
    state.lastOK = Date.now();
    banner("");
    render();
  } catch (err) {
    const why = refusal(err);
    if (why) {
      state.inflight = false;
      signOut(why);
      return;
    }
    banner("Live updates interrupted: " + describe(err) + ". Retrying…");
  }
  state.inflight = false;
  renderLive();
  if (!state.running) return;
  if (state.again) {
    state.again = false;
    poll();
    return;
  }
  if (!state.paused) state.timer = setTimeout(poll, POLL_MS);
}

async function load() {
  if (!state.self) {
    state.self = await api.self();
    applyRole();
  }
  if (managesKeys() && state.round++ % ADMIN_EVERY === 0) await loadAdmin();
  const group = $("u-group").value;
  if (state.usageRound++ % USAGE_EVERY === 0 || group !== state.usageGroup) await loadUsage(group);
  const sent = Date.now();
  const dash = await api.dashboard();
  const received = Date.now();
  state.clockOffset = Date.parse(dash.collected_at) - (sent + received) / 2;
  const poolFilter = $("f-pool").value;
  const pools = dash.pools.filter((p) => !poolFilter || p.pool.id === poolFilter);
  const [lists, leases, targets] = await Promise.all([
    Promise.all(
      pools.map((p) =>
        api.proxies(p.pool.id).catch((err) => {
          if (err instanceof ApiError && err.status === 404) return []; // deleted meanwhile
          throw err;
        }),
      ),
    ),
    api.activeLeases(LEASE_LIMIT),
    loadTargets(pools),
  ]);
  state.dash = dash;
  state.targets = targets;
  state.proxies = lists.flat();
  state.proxyByID = new Map(state.proxies.map((p) => [p.id, p]));
  state.leases = leases;
}

// loadTargets reads the per-site health of pools, each entry with its
// pool's id. A store without per-site health answers 501 once; the page
// then stops asking.
async function loadTargets(pools) {
  if (state.targetsUnsupported) return [];
  const lists = await Promise.all(
    pools.map((p) =>
      api.targets(p.pool.id).then(
        (list) => list.map((t) => ({ ...t, pool_id: p.pool.id })),
        (err) => {
          if (err instanceof ApiError && err.status === 501) {
            state.targetsUnsupported = true;
            return [];
          }
          if (err instanceof ApiError && err.status === 404) return []; // deleted meanwhile
          throw err;
        },
      ),
    ),
  );
  return lists.flat();
}

function renderLive() {
  const live = $("live");
  const stale = Date.now() - state.lastOK > STALE_MS;
  live.classList.toggle("stale", stale && !state.paused);
  live.classList.toggle("paused", state.paused);
  text($("live-text"), state.paused ? "paused" : stale ? "not updating" : "live");
  if (state.lastOK) text($("updated"), "updated " + new Date(state.lastOK).toLocaleTimeString());
}

// ---- rendering ----

function poolNames() {
  const m = new Map();
  for (const p of state.dash ? state.dash.pools : []) m.set(p.pool.id, p.pool.name);
  return m;
}

// loadUsage reads the traffic of the last 24 hours by group and the
// quotas; viewers read both.
async function loadUsage(group) {
  const since = new Date(serverNow() - USAGE_HOURS * 3600 * 1000).toISOString();
  const [usage, quotas] = await Promise.all([api.usage(group, since), api.quotas()]);
  state.usage = usage;
  state.usageGroup = group;
  state.quotas = quotas;
}

async function loadAdmin() {
  const [keys, audit] = await Promise.all([api.keys(), api.audit(AUDIT_LIMIT)]);
  state.keys = keys;
  state.audit = audit;
}

function render() {
  renderFilters();
  renderPools();
  renderCharts();
  renderTargets();
  renderUsage();
  renderQuotas();
  renderProxies();
  renderLeases();
  if (managesKeys()) {
    renderKeys();
    renderAudit();
  }
}

function keyState(k) {
  if (k.revoked_at) return "revoked";
  if (k.expires_at && Date.parse(k.expires_at) <= serverNow()) return "expired";
  return k.expires_at ? "expires in " + duration(Date.parse(k.expires_at) - serverNow()) : "active";
}

function renderKeys() {
  const body = $("keys").tBodies[0];
  clear(body);
  for (const k of state.keys) {
    const usable = !k.revoked_at;
    const rotate = el("button", { type: "button", class: "rotate-btn" }, "Rotate");
    const revoke = el("button", { type: "button", class: "danger revoke-btn" }, "Revoke");
    rotate.disabled = revoke.disabled = !usable;
    rotate.addEventListener("click", () => rotateKey(k));
    revoke.addEventListener("click", () => revokeKey(k));
    body.append(el("tr", { "data-name": k.name, "data-id": k.id, class: usable ? "" : "muted" },
      el("td", {}, k.name),
      el("td", {}, k.role),
      el("td", { class: "mono" }, k.hint + "…"),
      el("td", {}, k.consumers.join(", ") || (k.role === "consumer" ? "(" + k.name + ")" : "")),
      el("td", {}, k.pools.join(", ") || (k.role === "consumer" ? "every pool" : "")),
      el("td", { class: "state" }, keyState(k)),
      el("td", {}, k.last_used_at ? ago(k.last_used_at) : "never"),
      el("td", {}, rotate, " ", revoke)));
  }
  text($("keys-count"), `(${state.keys.length})`);
  $("keys-empty").hidden = state.keys.length > 0;
}

function renderAudit() {
  const body = $("audit").tBodies[0];
  clear(body);
  for (const e of state.audit) {
    body.append(el("tr", {},
      el("td", { title: new Date(e.at).toLocaleString() }, ago(e.at)),
      el("td", {}, e.actor),
      el("td", { class: "mono" }, e.action),
      el("td", { title: `${e.target_kind} ${e.target_id}` }, e.detail)));
  }
  $("audit-empty").hidden = state.audit.length > 0;
}

// syncOptions replaces a select's options after the first (the "all"
// option) when the set changed, keeping the selection if it still exists.
function syncOptions(select, items, key) {
  if (state[key] === JSON.stringify(items)) return;
  state[key] = JSON.stringify(items);
  const keep = select.value;
  while (select.options.length > 1) select.remove(1);
  for (const [value, label] of items) select.append(el("option", { value }, label));
  select.value = items.some(([v]) => v === keep) ? keep : "";
}

function renderFilters() {
  syncOptions($("f-pool"), state.dash.pools.map((p) => [p.pool.id, p.pool.name]), "poolKey");
  const countries = [...new Set(state.proxies.map((p) => p.country || ""))].filter(Boolean).sort();
  syncOptions($("f-country"), countries.map((c) => [c, c]), "countryKey");
}

function healthBar(byStatus, total) {
  const bar = el("span", { class: "bar", title: STATUSES.map((s) => `${s} ${byStatus[s] || 0}`).join(", ") });
  for (const s of STATUSES) {
    const n = byStatus[s] || 0;
    if (n <= 0 || total <= 0) continue;
    const part = el("span", { class: "st-" + s });
    // Widths go through the style property (CSSOM), which the content
    // security policy allows, never through markup.
    part.style.width = `${(100 * n) / total}%`;
    bar.append(part);
  }
  return bar;
}

function sweepCell(poolName) {
  const sweeps = state.dash.sweeps.filter((s) => s.pool === poolName);
  const run = sweeps.find((s) => s.running);
  if (run) {
    const pct = run.total ? Math.round((100 * run.probed) / run.total) : 0;
    const bar = el("span", { class: "progress" }, el("span"));
    bar.firstChild.style.width = pct + "%";
    return el("span", { class: "sweep running", title: "started " + ago(run.started_at) },
      bar, `${run.probed}/${run.total} probed`);
  }
  const last = sweeps.find((s) => !s.running);
  if (!last) return el("span", { class: "muted" }, "none yet");
  if (last.error) {
    return el("span", { class: "sweep failed", title: last.error }, "failed " + ago(last.finished_at) + ": " + last.error);
  }
  const by = last.result ? last.result.by_status || {} : {};
  const detail = STATUSES.filter((s) => by[s]).map((s) => `${by[s]} ${s}`).join(", ");
  return el("span", { class: "sweep done", title: detail },
    `${last.result ? last.result.checked : 0} checked ${ago(last.finished_at)}`);
}

function renderPools() {
  const body = $("pools").tBodies[0];
  const seen = new Set();
  const filter = $("f-pool").value;
  for (const { pool, stats } of state.dash.pools) {
    seen.add(pool.id);
    let r = rows.pools.get(pool.id);
    if (!r) {
      r = {
        tr: el("tr", { "data-id": pool.id, "data-name": pool.name }),
        name: el("button", { class: "pool-name", type: "button", title: "Show this pool's proxies" }),
        total: el("td", { class: "num" }),
        health: el("td"),
        avail: el("td", { class: "num" }),
        leased: el("td", { class: "num" }),
        leases: el("td", { class: "num" }),
        sweep: el("td"),
        button: el("button", { type: "button", class: "sweep-btn write" }, "Sweep"),
      };
      r.name.addEventListener("click", () => {
        $("f-pool").value = pool.id;
        refreshNow();
      });
      r.button.addEventListener("click", () => sweep(pool));
      r.tr.append(el("td", {}, r.name), r.total, r.health, r.avail, r.leased, r.leases, r.sweep, el("td", {}, r.button));
      rows.pools.set(pool.id, r);
    }
    text(r.name, pool.name);
    r.name.title = pool.description || "Show this pool's proxies";
    text(r.total, stats.total_proxies);
    clear(r.health);
    r.health.append(healthBar(stats.by_status, stats.total_proxies));
    text(r.avail, stats.available_proxies);
    text(r.leased, stats.leased_proxies);
    text(r.leases, stats.total_leases);
    clear(r.sweep);
    r.sweep.append(sweepCell(pool.name));
    const running = state.sweeping.has(pool.id) || state.dash.sweeps.some((s) => s.running && s.pool === pool.name);
    r.button.disabled = running || !state.dash.sweep_enabled;
    r.button.title = state.dash.sweep_enabled
      ? "Probe every proxy of this pool now"
      : "Health checks are not configured on this server (pharox serve --health-target)";
    r.tr.classList.toggle("selected", filter === pool.id);
    body.append(r.tr);
  }
  for (const [id, r] of rows.pools) {
    if (!seen.has(id)) {
      r.tr.remove();
      rows.pools.delete(id);
    }
  }
  $("pools-empty").hidden = state.dash.pools.length > 0;
}

function renderCharts() {
  const series = state.dash.series;
  const interval = state.dash.sample_interval_seconds;
  const slots = interval > 0 ? Math.max(60, series.length) : 60;
  const scale = (id, max) => text($(id).querySelector(".max"), max > 0 ? `max ${max}` : "");
  scale("chart-acq", bars($("chart-acq").querySelector("svg"), series, "acquired", "b-acq", slots));
  scale("chart-miss", bars($("chart-miss").querySelector("svg"), series, "no_proxy", "b-miss", slots));
  scale("chart-health", stacked($("chart-health").querySelector("svg"), series, STATUSES, slots));
  const sum = (f) => series.reduce((s, p) => s + p[f], 0);
  text($("chart-acq").querySelector(".total"), sum("acquired"));
  text($("chart-miss").querySelector(".total"), sum("no_proxy"));
  let span = "sampling off";
  if (interval > 0) {
    span = series.length
      ? `last ${duration(series.length * interval * 1000)}, every ${interval}s, this server`
      : `first sample within ${interval}s`;
  }
  text($("charts-span"), span);
}

// siteBar shows a site's usable and cooling proxies as one bar.
function siteBar(usable, cooling) {
  const bar = el("span", { class: "bar", title: `usable ${usable}, cooling down ${cooling}` });
  const total = usable + cooling;
  for (const [n, cls] of [[usable, "st-active"], [cooling, "st-banned"]]) {
    if (n <= 0 || total <= 0) continue;
    const part = el("span", { class: cls });
    part.style.width = `${(100 * n) / total}%`;
    bar.append(part);
  }
  return bar;
}

// renderTargets lists the sites of the pools shown, those with the most
// proxies cooling down first.
function renderTargets() {
  const names = poolNames();
  const list = state.targets.slice();
  list.sort((a, b) =>
    b.cooling_proxies - a.cooling_proxies || b.bans_last_hour - a.bans_last_hour ||
    a.target.localeCompare(b.target) || (names.get(a.pool_id) || "").localeCompare(names.get(b.pool_id) || ""));
  const shown = list.slice(0, MAX_TARGET_ROWS);
  const body = $("targets").tBodies[0];
  const seen = new Set();
  for (const t of shown) {
    const key = t.pool_id + "\n" + t.target;
    seen.add(key);
    let r = rows.targets.get(key);
    if (!r) {
      r = {
        tr: el("tr", { "data-target": t.target, "data-pool": t.pool_id }),
        site: el("td", { class: "mono" }),
        pool: el("td"),
        usable: el("td", { class: "num usable" }),
        cooling: el("td", { class: "num cooling" }),
        bans: el("td", { class: "num bans" }),
        health: el("td"),
      };
      r.tr.append(r.site, r.pool, r.usable, r.cooling, r.bans, r.health);
      rows.targets.set(key, r);
    }
    text(r.site, t.target);
    text(r.pool, names.get(t.pool_id) || "");
    text(r.usable, t.usable_proxies);
    text(r.cooling, t.cooling_proxies);
    text(r.bans, t.bans_last_hour);
    clear(r.health);
    r.health.append(siteBar(t.usable_proxies, t.cooling_proxies));
    r.tr.classList.toggle("blocked", t.usable_proxies === 0 && t.cooling_proxies > 0);
    r.tr.title = t.usable_proxies === 0 && t.cooling_proxies > 0
      ? `No proxy of this pool is usable for ${t.target}: every one that tried is cooling down for it.`
      : `${t.usable_proxies} proxies usable for ${t.target}, ${t.cooling_proxies} cooling down for it.`;
    body.append(r.tr);
  }
  for (const [key, r] of rows.targets) {
    if (!seen.has(key)) {
      r.tr.remove();
      rows.targets.delete(key);
    }
  }
  text($("targets-count"), list.length > shown.length ? `(${shown.length} of ${list.length})` : `(${list.length})`);
  $("targets-unsupported").hidden = !state.targetsUnsupported;
  $("targets-empty").hidden = state.targetsUnsupported || list.length > 0;
}

// usageLabel names a usage row: the consumer's, pool's or proxy's name, or
// the site ("no site" for leases taken without one).
function usageLabel(row) {
  if (row.name) return row.name;
  if (state.usageGroup === "target") return row.key || "(no site)";
  return row.key.slice(0, 8) + "…";
}

// renderUsage charts the largest totals of the last 24 hours.
function renderUsage() {
  if (!state.usage) return;
  const rows = state.usage.rows.slice();
  rows.sort((a, b) => b.bytes_sent + b.bytes_received - (a.bytes_sent + a.bytes_received) || a.key.localeCompare(b.key));
  const shown = rows.slice(0, MAX_USAGE_ROWS);
  usageBars($("usage-chart"), shown.map((r) => [r.key, usageLabel(r), r.bytes_sent, r.bytes_received,
    `${r.leases} leases, ${r.requests} requests`]), bytes);
  const total = rows.reduce((s, r) => s + r.bytes_sent + r.bytes_received, 0);
  text($("usage-total"), bytes(total));
  const more = $("usage-more");
  more.hidden = rows.length <= shown.length;
  text(more, `and ${rows.length - shown.length} more`);
  $("usage-empty").hidden = rows.length > 0;
}

// quotaUsed shows bytes counted against a limit (or alone without one).
function quotaUsed(used, limit) {
  if (!limit) return el("span", { class: "quota-used" }, bytes(used));
  const over = used >= limit;
  const bar = el("span", { class: "bar" }, el("span", { class: "fill" }));
  bar.firstChild.style.width = `${Math.min(100, (100 * used) / limit)}%`;
  return el("span", { class: "quota-used" + (over ? " over" : ""), title: `${used} of ${limit} bytes` },
    bar, `${bytes(used)} / ${bytes(limit)}`);
}

function renderQuotas() {
  const body = $("quotas").tBodies[0];
  clear(body);
  for (const q of state.quotas) {
    const name = q.name || q.subject_id;
    const tr = el("tr", { "data-subject": q.subject, "data-name": name, "data-id": q.subject_id },
      el("td", {}, q.subject),
      el("td", { class: q.subject === "proxy" ? "mono" : "" }, name),
      el("td", { class: "num max-leases" }, q.max_concurrent_leases || "–"),
      el("td", { class: "num rpm" }, q.requests_per_minute || "–"),
      el("td", { class: "today" }, quotaUsed(q.bytes_today, q.bytes_per_day)),
      el("td", { class: "month" }, quotaUsed(q.bytes_this_month, q.bytes_per_month)));
    if (q.exhausted_until) {
      tr.title = `Traffic allowance used up: not leased until ${new Date(q.exhausted_until).toLocaleString()}`;
      tr.classList.add("blocked");
    }
    body.append(tr);
  }
  text($("quotas-count"), `(${state.quotas.length})`);
  $("quotas-empty").hidden = state.quotas.length > 0;
}

function proxyLabel(p) {
  return `${p.protocol}://${p.host}:${p.port}`;
}

function reason(p) {
  if (p.last_error) return p.last_error;
  if (p.last_status_code) return `HTTP ${p.last_status_code}`;
  if (p.checked_at) return "check passed";
  return "";
}

function renderProxies() {
  const status = $("f-status").value;
  const country = $("f-country").value;
  const host = $("f-host").value.trim().toLowerCase();
  const names = poolNames();
  const matched = state.proxies.filter(
    (p) => (!status || p.status === status) && (!country || p.country === country) &&
      (!host || p.host.toLowerCase().includes(host)),
  );
  matched.sort((a, b) =>
    (names.get(a.pool_id) || "").localeCompare(names.get(b.pool_id) || "") ||
    a.host.localeCompare(b.host) || a.port - b.port);
  const shown = matched.slice(0, MAX_PROXY_ROWS);
  const body = $("proxies").tBodies[0];
  const seen = new Set();
  for (const p of shown) {
    seen.add(p.id);
    let r = rows.proxies.get(p.id);
    if (!r) {
      r = {
        tr: el("tr", { "data-id": p.id, "data-pool": p.pool_id }),
        label: el("td", { class: "mono" }),
        pool: el("td"),
        country: el("td"),
        badge: el("span", { class: "badge" }),
        leases: el("td", { class: "num" }),
        latency: el("td", { class: "num" }),
        when: el("span", { class: "when" }),
        why: el("span", { class: "why" }),
        reason: el("td", { class: "reason" }),
        select: el("select", { class: "set-status write", "aria-label": "Set status" },
          el("option", { value: "" }, "set…"), ...STATUSES.map((s) => el("option", { value: s }, s))),
      };
      r.reason.append(r.when, r.why);
      r.select.addEventListener("change", () => setStatus(p.id, r.select));
      r.tr.append(r.label, r.pool, r.country, el("td", {}, r.badge), r.leases, r.latency, r.reason, el("td", {}, r.select));
      rows.proxies.set(p.id, r);
    }
    r.proxy = p;
    text(r.label, proxyLabel(p));
    text(r.pool, names.get(p.pool_id) || "");
    text(r.country, p.country || "");
    r.country.title = [p.city, p.isp].filter(Boolean).join(", ");
    text(r.badge, p.status);
    r.badge.className = "badge st-" + p.status;
    text(r.leases, `${p.current_leases}/${p.max_concurrency == null ? "∞" : p.max_concurrency}`);
    text(r.latency, p.latency_ms ? `${p.latency_ms} ms` : "");
    text(r.when, p.status_changed_at ? ago(p.status_changed_at) : "");
    text(r.why, reason(p));
    r.reason.title = [
      p.status_changed_at ? "status changed " + new Date(p.status_changed_at).toLocaleString() : "",
      p.checked_at ? "last checked " + new Date(p.checked_at).toLocaleString() : "never checked",
      p.last_error || "",
      p.failure_streak ? `${p.failure_streak} failures in a row` : "",
    ].filter(Boolean).join("\n");
    for (const opt of r.select.options) opt.disabled = opt.value === p.status;
    body.append(r.tr);
  }
  for (const [id, r] of rows.proxies) {
    if (!seen.has(id)) {
      r.tr.remove();
      rows.proxies.delete(id);
    }
  }
  const total = matched.length;
  text($("proxies-count"), total > shown.length ? `(${shown.length} of ${total}: narrow the filters)` : `(${total})`);
  $("proxies-empty").hidden = shown.length > 0;
}

function renderLeases() {
  const poolFilter = $("f-pool").value;
  const names = poolNames();
  const now = serverNow();
  const leases = state.leases.filter((l) => !poolFilter || l.pool_id === poolFilter);
  leases.sort((a, b) => Date.parse(a.expires_at) - Date.parse(b.expires_at));
  const body = $("leases").tBodies[0];
  const seen = new Set();
  for (const l of leases) {
    seen.add(l.id);
    let r = rows.leases.get(l.id);
    if (!r) {
      r = {
        tr: el("tr", { "data-id": l.id }),
        proxy: el("td", { class: "mono" }),
        pool: el("td"),
        consumer: el("td"),
        held: el("td", { class: "num" }),
        left: el("td", { class: "num" }),
        button: el("button", { type: "button", class: "danger release-btn write" }, "Release"),
      };
      r.button.addEventListener("click", () => release(r.lease));
      r.tr.append(r.proxy, r.pool, r.consumer, r.held, r.left, el("td", {}, r.button));
      rows.leases.set(l.id, r);
    }
    r.lease = l;
    const p = state.proxyByID.get(l.proxy_id);
    text(r.proxy, p ? `${p.host}:${p.port}` : l.proxy_id.slice(0, 8) + "…");
    text(r.pool, l.pool_name || names.get(l.pool_id) || "");
    text(r.consumer, l.consumer_name || "");
    text(r.held, duration(now - Date.parse(l.acquired_at)));
    const left = Date.parse(l.expires_at) - now;
    text(r.left, left > 0 ? duration(left) : "expired");
    r.left.title = "expires " + new Date(l.expires_at).toLocaleString();
    body.append(r.tr);
  }
  for (const [id, r] of rows.leases) {
    if (!seen.has(id)) {
      r.tr.remove();
      rows.leases.delete(id);
    }
  }
  const more = state.leases.length >= LEASE_LIMIT ? ` of the first ${LEASE_LIMIT}` : "";
  text($("leases-count"), `(${leases.length}${more})`);
  $("leases-empty").hidden = leases.length > 0;
}

// ---- actions ----

async function setStatus(proxyID, select) {
  const status = select.value;
  select.value = "";
  const p = state.proxyByID.get(proxyID);
  if (!status || !p) return;
  const ok = await confirmAction(
    "Set proxy status",
    `Set ${proxyLabel(p)} from ${p.status} to ${status}?` +
      (status === "active" || status === "slow" ? "" : " It will not be leased until it is marked active or slow again."),
    "Set " + status,
  );
  if (!ok) return;
  try {
    const updated = await api.setStatus(p.pool_id, p.id, status);
    toast(`${proxyLabel(updated)} is now ${updated.status}.`);
  } catch (err) {
    toast("Could not set the status: " + describe(err), true);
  }
  refreshNow();
}

async function sweep(pool) {
  // Without a default target on the server, the sweep needs one: ask.
  const def = state.dash.sweep_target;
  const ok = await confirmAction(
    "Run a health sweep",
    def
      ? `Probe every proxy of pool ${pool.name} now, requesting ${def} through each, and apply the results to their status?`
      : `This server has no default health target. Which URL should each proxy of pool ${pool.name} request? The results are applied to their status.`,
    "Sweep " + pool.name,
    !def,
  );
  if (!ok) return;
  const target = def ? "" : $("confirm-target").value.trim();
  state.sweeping.add(pool.id);
  refreshNow();
  try {
    const res = await api.sweep(pool.id, target);
    toast(`Sweep of ${pool.name}: ${res.checked} checked, ${res.skipped} skipped in ${duration(res.duration_ms)}.`);
  } catch (err) {
    toast(`Sweep of ${pool.name} failed: ` + describe(err), true);
  } finally {
    state.sweeping.delete(pool.id);
    refreshNow();
  }
}

async function release(lease) {
  const p = state.proxyByID.get(lease.proxy_id);
  const ok = await confirmAction(
    "Release lease",
    `Release the lease of ${lease.consumer_name || "its consumer"} on ${p ? `${p.host}:${p.port}` : "proxy " + lease.proxy_id}? ` +
      "The consumer may still be using the proxy.",
    "Release",
  );
  if (!ok) return;
  try {
    await api.release(lease.id);
    toast("Lease released.");
  } catch (err) {
    toast("Could not release the lease: " + describe(err), true);
  }
  refreshNow();
}

// showSecret shows a new secret, once.
function showSecret(what, created) {
  text($("key-secret-what"), `${what} ${created.role} key ${created.name}.`);
  text($("key-secret-value"), created.secret);
  $("key-secret").hidden = false;
}

function hideSecret() {
  text($("key-secret-value"), "");
  $("key-secret").hidden = true;
}

function names(v) {
  return v.split(",").map((s) => s.trim()).filter(Boolean);
}

async function createKey(ev) {
  ev.preventDefault();
  const body = { name: $("kf-name").value.trim(), role: $("kf-role").value };
  if (body.role === "consumer") {
    const consumers = names($("kf-consumers").value);
    const pools = names($("kf-pools").value);
    if (consumers.length) body.consumers = consumers;
    if (pools.length) body.pools = pools;
  }
  const hours = parseFloat($("kf-expires").value);
  if (hours > 0) body.expires_in_seconds = hours * 3600;
  $("kf-submit").disabled = true;
  try {
    const created = await api.createKey(body);
    $("key-form").reset();
    showSecret("Created", created);
    toast(`Key ${created.name} created.`);
    await loadAdmin();
    renderKeys();
    renderAudit();
  } catch (err) {
    toast("Could not create the key: " + describe(err), true);
  } finally {
    $("kf-submit").disabled = false;
  }
}

async function rotateKey(k) {
  const ok = await confirmAction("Rotate key",
    `Give key ${k.name} a new secret? The current one stops working on every server within seconds.`, "Rotate");
  if (!ok) return;
  try {
    showSecret("Rotated", await api.rotateKey(k.id));
    await loadAdmin();
    renderKeys();
    renderAudit();
  } catch (err) {
    toast("Could not rotate the key: " + describe(err), true);
  }
}

async function revokeKey(k) {
  const ok = await confirmAction("Revoke key",
    `Revoke key ${k.name}? Every server refuses it within seconds; this cannot be undone.`, "Revoke");
  if (!ok) return;
  try {
    await api.revokeKey(k.id);
    toast(`Key ${k.name} revoked.`);
    await loadAdmin();
    renderKeys();
    renderAudit();
  } catch (err) {
    toast("Could not revoke the key: " + describe(err), true);
  }
}

// ---- wiring ----

function init() {
  $("login-form").addEventListener("submit", signIn);
  $("confirm").addEventListener("close", confirmClosed);
  $("signout").addEventListener("click", () => signOut(""));
  $("key-form").addEventListener("submit", createKey);
  $("key-secret-close").addEventListener("click", hideSecret);
  $("pause").addEventListener("click", () => {
    state.paused = !state.paused;
    text($("pause"), state.paused ? "Resume" : "Pause");
    if (state.paused) clearTimeout(state.timer);
    else refreshNow();
    renderLive();
  });
  for (const id of ["f-pool", "f-status", "f-country", "u-group"]) $(id).addEventListener("change", refreshNow);
  $("f-host").addEventListener("input", () => state.dash && renderProxies());
  setInterval(renderLive, 1000);
  if (getKey()) {
    showApp();
    start();
  } else {
    showLogin("");
  }
}

init();
