// gatewarden market console: five views over the admin HTTP API (/api/v1), and the two things
// staff do from it: revoke or reinstate a person, and resolve an escalation.
//
// Plain ES2020, no framework and no build step, so the engine can embed this file as is.
// Routing lives in the URL fragment (#view=hall&market=1&...), so every screen has a URL a
// person can bookmark or a test can open. Every number and row the page renders carries a
// data-testid; when a view has rendered its data, body[data-ready] names the view, and when a
// request fails body[data-error] holds the message shown on the page.
'use strict';

const TOKEN_KEY = 'gatewarden.token';
const LIVE_POLL_MS = 1000;
const HALL_POLL_MS = 5000;
// Five minutes of one-second samples for the sparklines.
const HISTORY_SAMPLES = 300;
const ESCALATIONS_POLL_MS = 10000;
// Open escalations listed at most (the API's largest page), and the latest resolved ones shown.
const ESCALATIONS_LIMIT = 200;
const RESOLVED_SHOWN = 50;
// A hall display in wall mode moves to the next market after this many seconds by default.
const WALL_ROTATE_S = 20;
const STAFF_NAME_KEY = 'gatewarden.staff';
const VIEWS = ['live', 'hall', 'escalations', 'person', 'contacts'];

// ---------------------------------------------------------------------------------------------
// Small DOM helpers. Everything goes through textContent: API strings never become markup.

/** Creates an element: h('td', {'data-testid': 'x'}, 'text', child, ...). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  appendAll(el, children);
  return el;
}

/** Creates an SVG element (SVG needs its namespace; createElement would make inert HTML). */
function s(tag, attrs, ...children) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  setAttrs(el, attrs);
  appendAll(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

function appendAll(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces the children of `el`. */
function fill(el, ...children) {
  el.replaceChildren();
  appendAll(el, children);
}

// ---------------------------------------------------------------------------------------------
// Formatting. Times are shown in the engine's local time (its utc_offset), not the browser's:
// "today" and the hall display's day are the engine's, and a console opened from another time
// zone must not move sign-ins to another day.

const state = {
  utcOffsetMinutes: 0,
  // Bumped on every navigation; late answers of an older view check it and are dropped.
  generation: 0,
  timer: null,
  // The wall display's move to the next market.
  rotation: null,
};

function fmtInt(n) {
  return n === null || n === undefined ? '—' : Number(n).toLocaleString('en-US');
}

function fmtNum(x, digits) {
  return x === null || x === undefined || !Number.isFinite(x) ? '—' : x.toFixed(digits);
}

function localIso(ms) {
  return new Date(ms + state.utcOffsetMinutes * 60000).toISOString();
}

function fmtDateTime(ms) {
  if (ms === null || ms === undefined) return '—';
  const iso = localIso(ms);
  return `${iso.slice(0, 10)} ${iso.slice(11, 19)}`;
}

function fmtTime(ms) {
  return ms === null || ms === undefined ? '—' : localIso(ms).slice(11, 19);
}

/** A time cell: the text for people, the raw milliseconds for tests and scripts. */
function timeCell(testid, ms, withDate) {
  return h('td', { 'data-testid': testid, 'data-ms': ms ?? '' }, withDate ? fmtDateTime(ms) : fmtTime(ms));
}

function numCell(testid, n, extra) {
  return h('td', { class: 'num', 'data-testid': testid, 'data-value': n ?? '', ...extra }, fmtInt(n));
}

/** A check's value or threshold: four significant digits are plenty on a screen
 *  (36.099998474121094 is a float32 reading of 36.1). */
function fmtValue(v) {
  if (v === null || v === undefined) return '—';
  if (typeof v !== 'number' || Number.isInteger(v)) return String(v);
  return String(parseFloat(v.toPrecision(4)));
}

function label(name) {
  return String(name).replace(/_/g, ' ');
}

// ---------------------------------------------------------------------------------------------
// Routing and the token.

/** The fragment's parameters. A token found there moves to sessionStorage and leaves the URL,
 *  so it does not linger in the address bar, screenshots or the history. */
function readRoute() {
  const params = new URLSearchParams(location.hash.replace(/^#/, ''));
  if (params.has('token')) {
    sessionStorage.setItem(TOKEN_KEY, params.get('token'));
    params.delete('token');
    history.replaceState(null, '', `${location.pathname}${location.search}#${params}`);
  }
  const view = VIEWS.includes(params.get('view')) ? params.get('view') : 'live';
  return { view, params };
}

/** Navigates to `view` with `params`, keeping the others (market, subject, ...) of the URL. */
function go(view, changes) {
  const params = new URLSearchParams(location.hash.replace(/^#/, ''));
  params.set('view', view);
  for (const [k, v] of Object.entries(changes || {})) {
    if (v === '' || v === null || v === undefined) params.delete(k);
    else params.set(k, v);
  }
  location.hash = params.toString();
}

function linkTo(view, changes, text, attrs) {
  const params = new URLSearchParams(location.hash.replace(/^#/, ''));
  params.set('view', view);
  for (const [k, v] of Object.entries(changes)) params.set(k, v);
  return h('a', { href: `#${params}`, ...attrs }, text);
}

function updateNav(view) {
  const params = new URLSearchParams(location.hash.replace(/^#/, ''));
  for (const a of document.querySelectorAll('#nav a')) {
    params.set('view', a.dataset.view);
    a.href = `#${params}`;
    a.classList.toggle('active', a.dataset.view === view);
  }
}

// ---------------------------------------------------------------------------------------------
// The API.

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** GET `path` with the admin token (or POST `body` as JSON); the parsed JSON, or an ApiError
 *  with a message for people. */
async function api(path, payload) {
  const token = sessionStorage.getItem(TOKEN_KEY) || '';
  const headers = { Authorization: `Bearer ${token}`, Accept: 'application/json' };
  const init = { headers, cache: 'no-store' };
  if (payload !== undefined) {
    init.method = 'POST';
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(payload);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, 'network', `cannot reach the engine at ${location.host}: is gatewarden serve running? (${e.message})`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = null;
  }
  if (response.ok) return body;
  if (response.status === 401) {
    throw new ApiError(401, 'unauthorized', 'token missing or wrong: open this page as http://' + location.host + '/#token=TOKEN, where TOKEN is the content of admin.token in the data folder (gatewarden serve prints where it is; gatewarden demo --console prints the whole URL)');
  }
  const detail = body && body.error ? body.error : response.statusText;
  throw new ApiError(response.status, body && body.code, `${path}: ${response.status} ${detail}`);
}

/** Reads the engine's time zone once per page; every time shown depends on it. */
let offsetKnown = false;
async function ensureOffset() {
  if (offsetKnown) return;
  const stats = await api('/api/v1/stats');
  state.utcOffsetMinutes = stats.utc_offset_minutes || 0;
  offsetKnown = true;
}

// ---------------------------------------------------------------------------------------------
// Page state: errors, "ready" and the status line.

function showError(err) {
  const box = document.getElementById('error');
  const message = err instanceof Error ? err.message : String(err);
  box.textContent = message;
  box.hidden = false;
  document.body.dataset.error = message;
}

function clearError() {
  const box = document.getElementById('error');
  box.hidden = true;
  box.textContent = '';
  delete document.body.dataset.error;
}

function markReady(view) {
  document.body.dataset.ready = view;
}

function setStatus(text) {
  document.getElementById('status').textContent = text;
}

/** Runs `fn` for the current view only: if the user navigated meanwhile, its result is dropped. */
function current(generation) {
  return generation === state.generation;
}

function startTimer(fn, ms) {
  state.timer = setInterval(fn, ms);
}

function route() {
  clearInterval(state.timer);
  state.timer = null;
  clearTimeout(state.rotation);
  state.rotation = null;
  delete document.body.dataset.nextMarket;
  state.generation += 1;
  delete document.body.dataset.ready;
  clearError();
  setStatus('');
  const { view, params } = readRoute();
  updateNav(view);
  const main = document.getElementById('main');
  main.replaceChildren();
  const generation = state.generation;
  document.body.classList.toggle('wall', view === 'hall' && params.get('wall') === '1');
  const render = {
    live: liveView, hall: hallView, escalations: escalationsView, person: personView, contacts: contactsView,
  }[view];
  render(main, params, generation).catch((err) => {
    if (current(generation)) showError(err);
  });
}

// ---------------------------------------------------------------------------------------------
// Live view: the pipeline as it runs. Counters in /stats are cumulative, so rates and a
// windowed p99 come from the difference between two polls.

const liveHistory = [];
let livePrevious = null;

function verdictTotal(d) {
  return (d.admit || 0) + (d.deny || 0) + (d.escalate || 0);
}

/** p99 of the values recorded between two snapshots of a log2 histogram, as the upper edge
 *  of its bucket (what the engine reports), in µs; null when nothing was recorded. */
function windowedP99(prevBuckets, buckets) {
  const delta = buckets.map((c, i) => c - ((prevBuckets && prevBuckets[i]) || 0));
  const count = delta.reduce((a, b) => a + b, 0);
  if (count <= 0) return null;
  const rank = Math.max(1, Math.ceil(count * 0.99));
  let seen = 0;
  for (let i = 0; i < delta.length; i += 1) {
    seen += delta[i];
    if (seen >= rank) return 2 ** (i + 1) - 1;
  }
  return null;
}

/** Rates between the previous poll and this one; null fields until there are two polls. */
function liveRates(prev, cur) {
  const dt = prev ? (cur.now_ms - prev.now_ms) / 1000 : 0;
  if (!prev || dt <= 0) return { eventsPerS: null, busyPerS: null, p99Us: null, dt };
  const e = cur.engine;
  const p = prev.engine;
  return {
    dt,
    eventsPerS: (verdictTotal(e) - verdictTotal(p)) / dt,
    busyPerS: (e.rejected_busy + e.expired - p.rejected_busy - p.expired) / dt,
    p99Us: windowedP99(p.end_to_end_us.buckets, e.end_to_end_us.buckets),
  };
}

async function liveView(main, params, generation) {
  livePrevious = null;
  liveHistory.length = 0;
  const body = h('div', { class: 'live' });
  fill(main, h('h2', {}, 'Live'), body);
  // The server keeps the last five minutes, so the sparklines start full, not empty.
  try {
    const recent = await api('/api/v1/stats/history');
    if (!current(generation)) return;
    for (const x of recent.samples.slice(-HISTORY_SAMPLES)) {
      liveHistory.push({ eps: x.verdicts_per_s, p99: x.p99_ms === null ? null : x.p99_ms * 1000 });
    }
  } catch (err) {
    // A server without the history: the sparklines fill as the page polls.
  }
  const poll = async () => {
    try {
      const stats = await api('/api/v1/stats');
      if (!current(generation)) return;
      state.utcOffsetMinutes = stats.utc_offset_minutes || 0;
      offsetKnown = true;
      const rates = liveRates(livePrevious, stats);
      const prevMarkets = new Map((livePrevious ? livePrevious.engine.markets : []).map((m) => [m.market, m]));
      livePrevious = stats;
      if (rates.eventsPerS !== null) {
        liveHistory.push({ eps: rates.eventsPerS, p99: rates.p99Us });
        if (liveHistory.length > HISTORY_SAMPLES) liveHistory.shift();
      }
      fill(body, renderLive(stats, rates, prevMarkets));
      clearError();
      setStatus(`engine time ${fmtDateTime(stats.now_ms)} · up ${fmtNum(stats.uptime_s, 0)} s · policy ${policyOf(stats)}`);
      markReady('live');
    } catch (err) {
      // Keep the last figures on screen; the banner says they are stale and why.
      if (current(generation)) showError(err);
    }
  };
  await poll();
  if (current(generation)) startTimer(poll, LIVE_POLL_MS);
}

function policyOf(stats) {
  return stats.engine.policy_version || '—';
}

function renderLive(stats, rates, prevMarkets) {
  const e = stats.engine;
  const eps = rates.eventsPerS;
  const p99ms = rates.p99Us === null ? null : rates.p99Us / 1000;
  return [
    h('section', { class: 'tiles' },
      tile('Verdicts / s', fmtNum(eps, 1), 'live-events-per-s', eps),
      tile('p99 end to end (last poll)', p99ms === null ? '—' : `≤ ${fmtNum(p99ms, 1)} ms`, 'live-p99-ms', p99ms,
        p99ms !== null && p99ms >= 100 ? 'bad' : ''),
      tile('Queue', `${fmtInt(e.queue_depth)} / ${fmtInt(e.queue_capacity)}`, 'live-queue', e.queue_depth),
      tile('Busy / s', fmtNum(rates.busyPerS, 1), 'live-busy-per-s', rates.busyPerS),
      h('div', { class: 'tile' }, h('div', { class: 'tile-title' }, 'Policy version'),
        h('div', { class: 'tile-value mono', 'data-testid': 'live-policy-version' }, policyOf(stats)))),
    h('section', { class: 'sparks' },
      sparkline('verdicts / s', liveHistory.map((x) => x.eps), 'spark-eps', ''),
      sparkline('p99 ms', liveHistory.map((x) => (x.p99 === null ? null : x.p99 / 1000)), 'spark-p99', 'ms')),
    h('section', { class: 'cols' },
      h('div', {}, h('h3', {}, 'Totals since start'), totalsTable(stats)),
      h('div', {}, h('h3', {}, 'Failing checks'), failedChecksTable(e.failed_checks, 'failed-check'))),
    h('h3', {}, 'Per market'),
    marketsTable(e.markets, prevMarkets, rates.dt),
  ];
}

function tile(title, text, testid, value, cls) {
  return h('div', { class: `tile ${cls || ''}` },
    h('div', { class: 'tile-title' }, title),
    h('div', { class: 'tile-value', 'data-testid': testid, 'data-value': value ?? '' }, text));
}

function totalsTable(stats) {
  const e = stats.engine;
  const rows = [
    ['admitted', 'live-admit', e.admit],
    ['denied', 'live-deny', e.deny],
    ['escalated', 'live-escalate', e.escalate],
    ['submitted', 'live-submitted', e.submitted],
    ['busy: refused on arrival', 'live-rejected-busy', e.rejected_busy],
    ['busy: waited past deadline', 'live-expired', e.expired],
    ['replayed (same gate, seq)', 'live-replayed', e.replayed],
    ['internal errors', 'live-internal-errors', e.internal_errors],
    ['commit failures', 'live-commit-failures', e.commit_failures],
    ['queue capacity', 'live-queue-capacity', e.queue_capacity],
    ['gate connections', 'live-connections', stats.server ? stats.server.connections : null],
  ];
  return h('table', { class: 'kv' },
    h('tbody', {}, rows.map(([name, id, n]) => h('tr', {}, h('th', {}, name), numCell(id, n)))));
}

function failedChecksTable(failed, testid) {
  const entries = Object.entries(failed || {}).sort((a, b) => b[1] - a[1]);
  if (entries.length === 0) return h('p', { class: 'hint', 'data-testid': `${testid}-none` }, 'No check has failed.');
  return h('table', {},
    h('thead', {}, h('tr', {}, h('th', {}, 'check'), h('th', { class: 'num' }, 'failures'))),
    h('tbody', {}, entries.map(([kind, n]) =>
      h('tr', { 'data-testid': testid, 'data-check': kind }, h('td', {}, label(kind)), numCell(`${testid}-count`, n)))));
}

function marketsTable(markets, prev, dt) {
  return h('table', { 'data-testid': 'markets-table' },
    h('thead', {}, h('tr', {},
      ['market', 'verdicts / s', 'admitted', 'denied', 'escalated', 'top failing checks'].map((t, i) =>
        h('th', { class: i > 0 && i < 5 ? 'num' : '' }, t)))),
    h('tbody', {}, (markets || []).map((m) => marketRow(m, prev.get(m.market), dt))));
}

function marketRow(m, prev, dt) {
  const rate = prev && dt > 0 ? (verdictTotal(m) - verdictTotal(prev)) / dt : null;
  const top = Object.entries(m.failed_checks || {}).sort((a, b) => b[1] - a[1]).slice(0, 3);
  return h('tr', { 'data-testid': 'market-row', 'data-market': m.market },
    h('td', {}, linkTo('hall', { market: m.market }, `market ${m.market}`)),
    h('td', { class: 'num', 'data-testid': 'market-rate', 'data-value': rate ?? '' }, fmtNum(rate, 1)),
    numCell('market-admit', m.admit),
    numCell('market-deny', m.deny),
    numCell('market-escalate', m.escalate),
    h('td', { class: 'reasons' }, top.map(([k, n]) => h('span', { class: 'reason', 'data-check': k }, `${label(k)} ${fmtInt(n)}`))));
}

/** An inline SVG line of the last samples; gaps (null) break the line. */
function sparkline(title, values, testid, unit) {
  const width = 300;
  const height = 60;
  const finite = values.filter((v) => v !== null && Number.isFinite(v));
  const max = Math.max(1e-9, ...finite);
  // The newest sample sits at the right edge; the scale grows to the full history, but starts
  // at one minute so a fresh page does not draw everything in a few pixels.
  const span = Math.min(HISTORY_SAMPLES, Math.max(60, values.length));
  const step = width / (span - 1);
  const x0 = width - (values.length - 1) * step;
  const segments = [];
  let points = [];
  values.forEach((v, i) => {
    if (v === null || !Number.isFinite(v)) {
      if (points.length) segments.push(points);
      points = [];
      return;
    }
    points.push(`${(x0 + i * step).toFixed(1)},${(height - 2 - (v / max) * (height - 4)).toFixed(1)}`);
  });
  if (points.length) segments.push(points);
  const last = finite.length ? finite[finite.length - 1] : null;
  return h('figure', { class: 'spark', 'data-testid': testid, 'data-samples': values.length, 'data-max': finite.length ? max : '' },
    h('figcaption', {}, `${title}: now ${fmtNum(last, 1)}${unit ? ` ${unit}` : ''}, max ${fmtNum(finite.length ? max : null, 1)}`),
    s('svg', { viewBox: `0 0 ${width} ${height}`, width, height, role: 'img', 'aria-label': title },
      s('rect', { x: 0, y: 0, width, height, class: 'spark-bg' }),
      segments.map((pts) => s('polyline', { points: pts.join(' '), class: 'spark-line' }))));
}

// ---------------------------------------------------------------------------------------------
// Hall display: per market, today's staff, who signed in and who has a valid test today.

let marketsCache = null;
async function markets() {
  if (!marketsCache) marketsCache = await api('/api/v1/markets');
  return marketsCache;
}

async function hallView(main, params, generation) {
  const [list] = await Promise.all([markets(), ensureOffset()]);
  if (!current(generation)) return;
  if (list.length === 0) {
    fill(main, h('h2', {}, 'Hall display'), h('p', { class: 'hint', 'data-testid': 'hall-no-markets' }, 'No gates are registered: import gates first.'));
    markReady('hall');
    return;
  }
  const market = params.get('market') || String(list[0].market);
  const day = params.get('day') || '';
  const wall = params.get('wall') === '1';
  const select = h('select', { 'data-testid': 'market-picker', onchange: (ev) => go('hall', { market: ev.target.value }) },
    list.map((m) => h('option', { value: m.market, selected: String(m.market) === market }, `market ${m.market} (${m.gates} gates)`)));
  const dayInput = h('input', { type: 'date', value: day, 'data-testid': 'day-picker', onchange: (ev) => go('hall', { day: ev.target.value }) });
  const body = h('div', {});
  fill(main, h('h2', { 'data-testid': 'hall-title' }, wall ? `Market ${market}` : 'Hall display'),
    h('form', { class: 'controls', onsubmit: (ev) => ev.preventDefault() },
      h('label', {}, 'Market ', select), h('label', {}, 'Day ', dayInput),
      h('span', { class: 'hint' }, 'refreshes every 5 s'),
      linkTo('hall', { wall: '1', market }, 'Wall mode (full screen, rotating markets)', { 'data-testid': 'wall-link' })),
    body);
  if (wall) scheduleRotation(list, market, params);
  const query = `/api/v1/markets/${encodeURIComponent(market)}/hall${day ? `?day=${encodeURIComponent(day)}` : ''}`;
  const refresh = async () => {
    try {
      const hall = await api(query);
      if (!current(generation)) return;
      fill(body, renderHall(hall));
      // Without a day in the URL the hall follows "today"; show which day that is.
      if (!day) dayInput.value = hall.day;
      clearError();
      setStatus(`hall of market ${hall.market}, ${hall.day}`);
      markReady('hall');
    } catch (err) {
      if (current(generation)) showError(err);
    }
  };
  await refresh();
  if (current(generation)) startTimer(refresh, HALL_POLL_MS);
}

/** In wall mode, shows the next market after `rotate` seconds (0: stay on this one). */
function scheduleRotation(list, market, params) {
  const seconds = Number(params.get('rotate') ?? WALL_ROTATE_S);
  if (!(seconds > 0) || list.length < 2) return;
  const at = list.findIndex((m) => String(m.market) === market);
  const next = list[(at + 1) % list.length].market;
  document.body.dataset.nextMarket = next;
  state.rotation = setTimeout(() => {
    // Replace, not push: a wall screen running all day must not grow the browser's history.
    const p = new URLSearchParams(location.hash.replace(/^#/, ''));
    p.set('market', next);
    history.replaceState(null, '', `${location.pathname}${location.search}#${p}`);
    route();
  }, seconds * 1000);
}

function renderHall(hall) {
  const c = hall.counts;
  return [
    h('section', { class: 'tiles' },
      tile('Staff', fmtInt(c.staff), 'hall-staff', c.staff),
      tile('Signed in today', fmtInt(c.signed_in), 'hall-signed-in', c.signed_in),
      tile('Tested today', fmtInt(c.tested_today), 'hall-tested-today', c.tested_today, 'good'),
      tile('Not tested', fmtInt(c.not_tested), 'hall-not-tested', c.not_tested, c.not_tested > 0 ? 'bad' : '')),
    h('p', { class: 'hint' }, `Market ${hall.market}, ${hall.day} (engine local day). Not tested first.`),
    h('table', { 'data-testid': 'staff-table', 'data-market': hall.market, 'data-day': hall.day },
      h('thead', {}, h('tr', {},
        ['person', 'category', 'signed in at', 'gate', 'test result', 'tested at', 'tested today'].map((t) => h('th', {}, t)))),
      h('tbody', {}, hall.staff.map(staffRow))),
  ];
}

function staffRow(p) {
  return h('tr', {
    'data-testid': 'staff-row',
    'data-subject': p.subject,
    'data-tested': p.tested_today ? 'yes' : 'no',
    class: p.tested_today ? '' : 'not-tested',
  },
  h('td', {}, linkTo('person', { subject: p.subject }, String(p.subject))),
  h('td', { 'data-testid': 'staff-category' }, label(p.category)),
  timeCell('staff-signed-in-at', p.signed_in_at, false),
  h('td', { 'data-testid': 'staff-gate' }, p.gate ?? '—'),
  h('td', { 'data-testid': 'staff-test-result', class: `result-${p.test_result || 'none'}` }, p.test_result || 'no test'),
  timeCell('staff-test-at', p.test_at, true),
  h('td', { 'data-testid': 'staff-tested-today' }, p.tested_today ? 'yes' : 'no'));
}

// ---------------------------------------------------------------------------------------------
// Escalations: the verdicts that said "please wait for staff", per market, and what staff did.

async function escalationsView(main, params, generation) {
  const [list] = await Promise.all([markets(), ensureOffset()]);
  if (!current(generation)) return;
  if (list.length === 0) {
    fill(main, h('h2', {}, 'Escalations'), h('p', { class: 'hint' }, 'No gates are registered: import gates first.'));
    markReady('escalations');
    return;
  }
  const market = params.get('market') || String(list[0].market);
  const day = params.get('day') || '';
  const select = h('select', { 'data-testid': 'market-picker', onchange: (ev) => go('escalations', { market: ev.target.value }) },
    list.map((m) => h('option', { value: m.market, selected: String(m.market) === market }, `market ${m.market}`)));
  const dayInput = h('input', { type: 'date', value: day, 'data-testid': 'day-picker', onchange: (ev) => go('escalations', { day: ev.target.value }) });
  const staff = h('input', {
    name: 'by', placeholder: 'your name', maxlength: 64, 'data-testid': 'staff-name',
    value: sessionStorage.getItem(STAFF_NAME_KEY) || '',
    onchange: (ev) => sessionStorage.setItem(STAFF_NAME_KEY, ev.target.value.trim()),
  });
  const body = h('div', {});
  fill(main, h('h2', {}, 'Escalations'),
    h('form', { class: 'controls', onsubmit: (ev) => ev.preventDefault() },
      h('label', {}, 'Market ', select), h('label', {}, 'Day ', dayInput), h('label', {}, 'Resolved by ', staff),
      h('span', { class: 'hint' }, 'open ones first; refreshes every 10 s')),
    body);
  const base = `/api/v1/markets/${encodeURIComponent(market)}/escalations?${day ? `day=${encodeURIComponent(day)}&` : ''}`;
  // Notes typed but not yet sent, by escalation: a redraw must not lose them.
  const notes = new Map();
  const refresh = async () => {
    // Never redraw under someone typing.
    if (document.activeElement && document.activeElement.tagName === 'INPUT' && body.contains(document.activeElement)) return;
    try {
      // Open ones apart from resolved ones, so a long day of resolved ones never pushes an
      // open one off the list.
      const [open, done] = await Promise.all([
        api(`${base}state=open&limit=${ESCALATIONS_LIMIT}`),
        api(`${base}state=resolved&limit=${RESOLVED_SHOWN}`),
      ]);
      if (!current(generation)) return;
      fill(body, renderEscalations(open, done, { staff, notes, refresh }));
      clearError();
      setStatus(`escalations at market ${market}`);
      markReady('escalations');
    } catch (err) {
      if (current(generation)) showError(err);
    }
  };
  await refresh();
  if (current(generation)) startTimer(refresh, ESCALATIONS_POLL_MS);
}

function renderEscalations(open, done, ctx) {
  const more = open.length >= ESCALATIONS_LIMIT;
  return [
    h('section', { class: 'tiles' },
      tile('Open', more ? `${fmtInt(open.length)}+` : fmtInt(open.length), 'escalations-open', open.length, open.length > 0 ? 'bad' : 'good'),
      tile(`Resolved (latest ${RESOLVED_SHOWN} shown)`, fmtInt(done.length), 'escalations-resolved', done.length)),
    more ? h('p', { class: 'hint' }, `Showing the latest ${ESCALATIONS_LIMIT} open escalations; resolve them to see older ones.`) : null,
    open.length + done.length === 0 ? h('p', { class: 'hint', 'data-testid': 'escalations-empty' }, 'No escalations on this day.') :
      h('table', { 'data-testid': 'escalations-table' },
        h('thead', {}, h('tr', {}, ['at', 'person', 'gate', 'why', 'resolution'].map((t) => h('th', {}, t)))),
        h('tbody', {}, [...open, ...done].map((r) => escalationRow(r, ctx)))),
  ];
}

function escalationRow(r, ctx) {
  const e = r.entry;
  const why = r.checks.map((c) => `${label(c.kind)}${c.value === null ? '' : ` ${fmtValue(c.value)}`}${c.threshold === null ? '' : ` (limit ${fmtValue(c.threshold)})`}`).join(', ') || '—';
  return h('tr', {
    'data-testid': 'escalation', 'data-gate': e.gate, 'data-seq': e.seq,
    'data-state': r.resolution ? r.resolution.outcome : 'open',
    class: r.resolution ? '' : 'open-escalation',
  },
  timeCell('escalation-at', e.decided_at, false),
  h('td', {}, e.subject === null ? 'unknown' : linkTo('person', { subject: e.subject }, String(e.subject))),
  h('td', {}, `gate ${e.gate}`),
  h('td', { 'data-testid': 'escalation-why' }, why),
  h('td', {}, r.resolution ? resolutionText(r.resolution) : resolveForm(e, ctx)));
}

function resolutionText(res) {
  return h('span', { 'data-testid': 'escalation-resolution', 'data-by': res.by, class: `resolved-${res.outcome}` },
    `${label(res.outcome)} by ${res.by} at ${fmtTime(res.at)}${res.note ? ` (${res.note})` : ''}`);
}

function resolveForm(e, { staff, notes, refresh }) {
  const key = `${e.gate}/${e.seq}`;
  const note = h('input', {
    name: 'note', placeholder: 'note (optional)', maxlength: 500, 'data-testid': 'resolve-note',
    value: notes.get(key) || '', oninput: (ev) => notes.set(key, ev.target.value),
  });
  const buttons = [];
  const resolve = async (outcome) => {
    const by = staff.value.trim();
    if (!by) {
      showError('type your name in "Resolved by" first: every resolution records who made it');
      staff.focus();
      return;
    }
    sessionStorage.setItem(STAFF_NAME_KEY, by);
    // One request at a time: a double click must not become a second resolution.
    buttons.forEach((b) => { b.disabled = true; });
    try {
      await api(`/api/v1/escalations/${e.gate}/${e.seq}/resolve`, { outcome, by, note: note.value.trim() });
      notes.delete(key);
      clearError();
    } catch (err) {
      // Someone else may have resolved it (409): the refresh below shows how.
      showError(err);
    }
    if (document.activeElement) document.activeElement.blur();
    await refresh();
  };
  buttons.push(
    h('button', { type: 'button', 'data-testid': 'resolve-admitted', onclick: () => resolve('admitted') }, 'Admitted'),
    h('button', { type: 'button', 'data-testid': 'resolve-turned-away', onclick: () => resolve('turned_away') }, 'Turned away'));
  return h('span', { class: 'resolve' }, note, buttons);
}

// ---------------------------------------------------------------------------------------------
// Person view: one subject across every market.

function subjectForm(view, params, extra) {
  const input = h('input', { name: 'subject', inputmode: 'numeric', pattern: '[0-9]+', required: true, placeholder: 'subject id', value: params.get('subject') || '', 'data-testid': 'subject-input' });
  const day = h('input', { name: 'day', type: 'date', value: params.get('day') || '', 'data-testid': 'day-picker' });
  const fields = extra || [];
  return h('form', {
    class: 'controls',
    onsubmit: (ev) => {
      ev.preventDefault();
      const changes = { subject: input.value.trim(), day: day.value };
      for (const f of fields) changes[f.name] = f.value;
      go(view, changes);
    },
  }, h('label', {}, 'Subject ', input), h('label', {}, 'Day ', day),
  fields.map((f) => h('label', {}, `${f.dataset.label} `, f)),
  h('button', { type: 'submit' }, 'Show'));
}

/** `since`/`until` or `day` for the API, from the fragment; empty means the API's today. */
function timeQuery(params) {
  const q = new URLSearchParams();
  for (const k of ['since', 'until', 'day']) if (params.get(k)) q.set(k, params.get(k));
  return q;
}

function validSubject(params) {
  const subject = params.get('subject') || '';
  if (subject === '') return null;
  if (!/^[0-9]+$/.test(subject)) throw new ApiError(400, 'bad_request', `subject ${JSON.stringify(subject)} is not a number: type the person's numeric id`);
  return subject;
}

async function personView(main, params, generation) {
  const body = h('div', {});
  fill(main, h('h2', {}, 'Person'), subjectForm('person', params), body);
  const subject = validSubject(params);
  if (subject === null) {
    fill(body, h('p', { class: 'hint' }, 'Type a subject id (or pick a person in the hall display).'));
    markReady('person');
    return;
  }
  const q = timeQuery(params);
  const base = `/api/v1/subjects/${subject}`;
  const [, info, trajectory, frequency, verdicts, resolutions] = await Promise.all([
    ensureOffset(),
    api(base),
    api(`${base}/trajectory?${q}`),
    api(`${base}/frequency?${q}`),
    api(`${base}/verdicts?limit=20`),
    api(`${base}/resolutions?${q}`),
  ]);
  if (!current(generation)) return;
  fill(body,
    subjectInfo(info),
    statusAction(info.subject),
    h('p', {}, linkTo('contacts', { subject }, `Contacts of ${subject} →`)),
    h('h3', {}, 'Entry frequency'), frequencyTable(frequency),
    h('h3', {}, `Trajectory (${trajectory.length} records)`),
    h('p', { class: 'hint', 'data-testid': 'trajectory-count', 'data-value': trajectory.length }, `${trajectory.length} entry records in the period`),
    timeline(trajectory, resolutions),
    resolutionList(resolutions),
    h('h3', {}, 'Recent verdicts'), verdictList(verdicts));
  setStatus(`person ${subject}`);
  markReady('person');
}

/** Revoke an active person, or reinstate a revoked or blocklisted one, with a reason for the
 *  audit trail. The server refuses both without the admin token. */
function statusAction(p) {
  const action = p.status === 'active' ? 'revoke' : 'reinstate';
  const reason = h('input', { name: 'reason', required: true, placeholder: `why ${action}? (audited)`, 'data-testid': 'status-reason' });
  return h('form', {
    class: 'controls status-action',
    'data-testid': 'status-form',
    'data-action': action,
    onsubmit: async (ev) => {
      ev.preventDefault();
      if (!reason.value.trim()) {
        showError(`say why the person is to be ${action}d: the reason goes to the audit trail`);
        return;
      }
      try {
        await api(`/api/v1/subjects/${p.subject}/${action}`, { reason: reason.value.trim() });
        clearError();
        route();
      } catch (err) {
        showError(err);
      }
    },
  }, h('label', {}, `${action === 'revoke' ? 'Revoke' : 'Reinstate'} this person: `, reason),
  h('button', { type: 'submit', class: action, 'data-testid': 'status-action' }, action === 'revoke' ? 'Revoke' : 'Reinstate'));
}

function resolutionList(resolutions) {
  if (resolutions.length === 0) return null;
  return h('div', {}, h('h3', {}, 'Escalations resolved by staff'),
    h('ul', { class: 'resolutions' }, resolutions.map((r) => h('li', {
      'data-testid': 'resolution', 'data-gate': r.gate, 'data-seq': r.seq, 'data-outcome': r.outcome,
    }, `${fmtDateTime(r.escalated_at)} market ${r.market}, gate ${r.gate}: `, resolutionText(r)))));
}

function subjectInfo(info) {
  const p = info.subject;
  const health = info.health;
  const rows = [
    ['subject', 'person-subject', p.subject],
    ['category', 'person-category', label(p.category)],
    ['home market', 'person-home-market', p.home_market ?? '—'],
    ['markets allowed', 'person-markets', (p.markets || []).join(', ') || 'all'],
    ['zones allowed', 'person-zones', (p.zones || []).join(', ') || 'all'],
    ['valid', 'person-validity', `${fmtDateTime(p.valid_from)} → ${fmtDateTime(p.valid_until)}`],
    ['status', 'person-status', p.status],
  ];
  const healthRows = health ? [
    ['test result', 'person-test-result', health.test_result ?? '—'],
    ['tested at', 'person-test-at', fmtDateTime(health.test_at)],
    ['vaccine doses', 'person-vaccine-doses', health.vaccine_doses ?? '—'],
    ['health code', 'person-health-code', health.health_code ?? '—'],
    ['travel code', 'person-travel-code', health.travel_code ?? '—'],
    ['health updated', 'person-health-updated', fmtDateTime(health.updated_at)],
  ] : [['health record', 'person-health', 'none']];
  return h('table', { class: 'kv', 'data-testid': 'person-info', 'data-subject': p.subject },
    h('tbody', {}, [...rows, ...healthRows].map(([name, id, v]) =>
      h('tr', {}, h('th', {}, name), h('td', { 'data-testid': id }, v)))));
}

function frequencyTable(freq) {
  return h('div', {},
    h('p', {}, 'Admitted entries: ', h('strong', { 'data-testid': 'person-entries', 'data-value': freq.entries }, fmtInt(freq.entries))),
    h('table', {},
      h('thead', {}, h('tr', {}, ['market', 'entries', 'first', 'last'].map((t) => h('th', {}, t)))),
      h('tbody', {}, freq.by_market.map((m) => h('tr', { 'data-testid': 'freq-row', 'data-market': m.market },
        h('td', {}, `market ${m.market}`), numCell('freq-entries', m.entries),
        timeCell('freq-first-at', m.first_at, false), timeCell('freq-last-at', m.last_at, false))))));
}

/** The trajectory as an SVG: time across, one lane per market, a mark per record coloured by
 *  decision (sign-ins drawn as squares, exits hollow). */
function timeline(rows, resolutions) {
  const resolved = new Map((resolutions || []).map((r) => [`${r.gate}/${r.seq}`, r]));
  if (rows.length === 0) return h('p', { class: 'hint', 'data-testid': 'timeline-empty' }, 'No entry records in the period.');
  const lanes = [...new Set(rows.map((r) => r.market))].sort((a, b) => a - b);
  const left = 90;
  const width = 900;
  const lane = 32;
  const height = lanes.length * lane + 30;
  let t0 = Math.min(...rows.map((r) => r.decided_at));
  let t1 = Math.max(...rows.map((r) => r.decided_at));
  // Pad the span so a single record sits in the middle, not on the edge.
  const pad = Math.max(1000, (t1 - t0) * 0.05);
  t0 -= pad;
  t1 += pad;
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (width - left - 10);
  const y = (m) => 10 + lanes.indexOf(m) * lane + lane / 2;
  return s('svg', { class: 'timeline', viewBox: `0 0 ${width} ${height}`, width: '100%', 'data-testid': 'timeline', 'data-entries': rows.length, role: 'img', 'aria-label': 'trajectory timeline' },
    lanes.map((m) => [
      s('line', { x1: left, x2: width - 10, y1: y(m), y2: y(m), class: 'lane' }),
      s('text', { x: 4, y: y(m) + 4, class: 'lane-label' }, `market ${m}`),
    ]),
    s('text', { x: left, y: height - 4, class: 'axis' }, fmtDateTime(t0 + pad)),
    s('text', { x: width - 10, y: height - 4, class: 'axis', 'text-anchor': 'end' }, fmtDateTime(t1 - pad)),
    rows.map((r) => timelineMark(r, x(r.decided_at), y(r.market), resolved.get(`${r.gate}/${r.seq}`))));
}

function timelineMark(r, cx, cy, resolution) {
  const attrs = {
    'data-resolved': resolution ? resolution.outcome : null,
    'data-testid': 'timeline-dot',
    'data-decision': r.decision,
    'data-market': r.market,
    'data-gate': r.gate,
    'data-seq': r.seq,
    class: `mark ${r.decision} ${r.direction === 'exit' ? 'exit' : ''} ${resolution ? `resolved-${resolution.outcome}` : ''}`,
  };
  const staff = resolution ? `; staff: ${label(resolution.outcome)} by ${resolution.by} at ${fmtTime(resolution.at)}` : '';
  const title = s('title', {}, `${fmtDateTime(r.decided_at)} market ${r.market} gate ${r.gate}: ${r.decision} (${label(r.mode)}, ${r.direction})${r.failed.length ? ` failed: ${r.failed.map(label).join(', ')}` : ''}${staff}`);
  if (r.mode === 'sign_in') return s('rect', { ...attrs, x: cx - 5, y: cy - 5, width: 10, height: 10 }, title);
  return s('circle', { ...attrs, cx, cy, r: 5 }, title);
}

function verdictList(verdicts) {
  if (verdicts.length === 0) return h('p', { class: 'hint', 'data-testid': 'verdicts-empty' }, 'No verdicts in the last 7 days.');
  return h('div', { class: 'verdicts' }, verdicts.map((v, i) => {
    const e = v.entry;
    const failing = (v.checks || []).filter((c) => c.outcome === 'fail' || c.outcome === 'escalate');
    return h('article', { class: `verdict ${e.decision}`, 'data-testid': 'verdict', 'data-gate': e.gate, 'data-seq': e.seq, 'data-decision': e.decision },
      h('header', {},
        h('span', { class: `badge ${v.display ? v.display.colour : ''}`, 'data-testid': 'verdict-display' }, v.display ? v.display.text : e.decision),
        h('span', { 'data-testid': 'verdict-decision' }, e.decision),
        ` · ${fmtDateTime(e.decided_at)} · market ${e.market}, gate ${e.gate} (seq ${e.seq}) · ${label(e.mode)}, ${e.direction}`,
        e.score === null || e.score === undefined ? '' : ` · score ${fmtNum(e.score, 3)}`,
        ' · policy ', h('span', { class: 'mono', 'data-testid': 'verdict-policy' }, v.policy_version || 'not recorded')),
      // Twenty checks per verdict: the latest open, the others folded behind what failed.
      h('details', { open: i === 0 },
        h('summary', {}, `${(v.checks || []).length} checks`,
          failing.length ? ` · failed: ${failing.map((c) => label(c.kind)).join(', ')}` : ' · all passed or not needed'),
        checksTable(v.checks)));
  }));
}

function checksTable(checks) {
  return h('table', { class: 'checks' },
    h('thead', {}, h('tr', {}, ['check', 'outcome', 'value', 'threshold', 'detail'].map((t) => h('th', {}, t)))),
    h('tbody', {}, (checks || []).map((c) => h('tr', { 'data-testid': 'check', 'data-kind': c.kind, 'data-outcome': c.outcome, class: `outcome-${c.outcome}` },
      h('td', {}, label(c.kind)), h('td', {}, label(c.outcome)),
      h('td', { class: 'num' }, fmtValue(c.value)), h('td', { class: 'num' }, fmtValue(c.threshold)), h('td', {}, c.detail || '')))));
}

// ---------------------------------------------------------------------------------------------
// Contacts view: who shared a market with a person within a window of their passages.

async function contactsView(main, params, generation) {
  const windowInput = h('input', { name: 'window_s', type: 'number', min: 0, value: params.get('window_s') || '600', 'data-testid': 'window-input', 'data-label': 'Window (s)' });
  const body = h('div', {});
  fill(main, h('h2', {}, 'Contacts'), subjectForm('contacts', params, [windowInput]), body);
  const subject = validSubject(params);
  if (subject === null) {
    fill(body, h('p', { class: 'hint' }, 'Type a subject id to list who was in the same market around their passages.'));
    markReady('contacts');
    return;
  }
  const q = timeQuery(params);
  q.set('window_s', params.get('window_s') || '600');
  const [, rows] = await Promise.all([ensureOffset(), api(`/api/v1/subjects/${subject}/contacts?${q}`)]);
  if (!current(generation)) return;
  fill(body,
    h('p', {}, h('strong', { 'data-testid': 'contacts-count', 'data-value': rows.length }, fmtInt(rows.length)),
      ` people shared a market with ${subject} within ${q.get('window_s')} s of one of their passages.`),
    h('table', { 'data-testid': 'contacts-table', 'data-subject': subject },
      h('thead', {}, h('tr', {}, ['person', 'category', 'market', 'first', 'last', 'passages', 'closest'].map((t) => h('th', {}, t)))),
      h('tbody', {}, rows.map((c) => h('tr', { 'data-testid': 'contact-row', 'data-subject': c.subject, 'data-market': c.market },
        h('td', {}, linkTo('person', { subject: c.subject }, String(c.subject))),
        h('td', {}, c.category ? label(c.category) : '—'),
        h('td', {}, `market ${c.market}`),
        timeCell('contact-first-at', c.first_at, false), timeCell('contact-last-at', c.last_at, false),
        numCell('contact-passages', c.passages),
        h('td', { class: 'num', 'data-testid': 'contact-closest-ms', 'data-value': c.closest_ms }, `${fmtNum(c.closest_ms / 1000, 1)} s`))))));
  setStatus(`contacts of ${subject}`);
  markReady('contacts');
}

// ---------------------------------------------------------------------------------------------

window.addEventListener('hashchange', route);
route();
