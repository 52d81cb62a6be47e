'use strict';
// gatewarden console: the what-if tools, beside the views of app.js (whose helpers it uses:
// h, fill, fmtInt, api, showError, TOKEN_KEY).
//
// - Policy replay: upload a policy file, pick days (and a market), and see what it would have
//   changed over the recorded entries (POST /api/v1/policy/replay); nothing is put in force.
// - Calibration: the server's scheduled FPIR estimate at the live gallery size
//   (GET /api/v1/calibration), and a warning banner on every view while it is above target.
//
// The tools open in a panel over the current view (the #tools link), so they never compete
// with the views' own refresh timers.

(function () {
  const CALIBRATION_POLL_MS = 60000;

  /** POST `text` to `path` with the admin token; the parsed JSON, or an Error for people. */
  async function postText(path, text) {
    const token = sessionStorage.getItem(TOKEN_KEY) || '';
    const response = await fetch(path, {
      method: 'POST',
      headers: { Authorization: `Bearer ${token}`, Accept: 'application/json', 'Content-Type': 'text/plain' },
      body: text,
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const problems = (body.problems || []).map((p) => `${p.origin}:${p.line}:${p.column}: ${p.reason}`);
      throw new Error([body.message || `HTTP ${response.status}`, ...problems].join('\n'));
    }
    return body;
  }

  function today() {
    return new Date().toISOString().slice(0, 10);
  }

  function table(testid, headers, rows) {
    return h('table', { 'data-testid': testid },
      h('thead', {}, h('tr', {}, headers.map((t) => h('th', {}, t)))),
      h('tbody', {}, rows.map((r) => h('tr', {}, r.map((c, i) => h('td', i ? { class: 'num' } : {}, String(c)))))));
  }

  function renderReport(out, r) {
    const rows = (list, key) => list.map((g) => [g[key], fmtInt(g.entries), fmtInt(g.changed), fmtInt(g.extra_denials), fmtInt(g.fewer_denials), fmtInt(g.undetermined)]);
    const groupHeaders = (what) => [what, 'entries', 'changed', 'extra denials', 'fewer denials', 'undetermined'];
    fill(out,
      h('p', { 'data-testid': 'replay-summary', 'data-changed': r.changed, 'data-undetermined': r.undetermined },
        `Policy ${r.policy_version}: ${fmtInt(r.entries)} entries replayed, ${fmtInt(r.changed)} change, `
        + `${fmtInt(r.undetermined)} cannot be decided from their records; ${fmtInt(r.extra_denials)} extra denials.`),
      table('replay-transitions', ['from', 'to', 'entries'], r.transitions.map((t) => [t.from, t.to, fmtInt(t.count)])),
      h('h3', {}, 'By market'), table('replay-markets', groupHeaders('market'), rows(r.by_market, 'key')),
      h('h3', {}, 'By category'), table('replay-categories', groupHeaders('category'), rows(r.by_category, 'key')),
      h('h3', {}, 'By check'),
      table('replay-checks', ['check', 'now failing', 'now escalating', 'no longer failing', 'input not recorded'],
        r.by_check.map((c) => [label(c.check), fmtInt(c.newly_failing), fmtInt(c.newly_escalating), fmtInt(c.no_longer_failing), fmtInt(c.undetermined)])),
      h('ul', {}, r.by_check.filter((c) => c.undetermined > 0).map((c) => h('li', {}, `${label(c.check)}: ${fmtInt(c.undetermined)} entries lack ${c.missing_input}`))),
      h('h3', {}, 'Extra denials by hour'),
      table('replay-hours', ['hour', 'entries', 'denied', 'denied now', 'extra'],
        r.by_hour.map((x) => [`${String(x.hour).padStart(2, '0')}:00`, fmtInt(x.entries), fmtInt(x.denials_before), fmtInt(x.denials_after), fmtInt(x.extra_denials)])),
      h('h3', {}, 'Examples'),
      h('ul', { 'data-testid': 'replay-examples' }, r.examples.map((e) => h('li', {},
        `${e.at} gate ${e.gate} seq ${e.seq} market ${e.market}, ${e.subject === null ? 'nobody' : 'person ' + e.subject}: ${e.from} → ${e.to}; ${e.checks.join(', ')}`))),
      h('ul', { class: 'hint' }, r.notes.map((n) => h('li', {}, n))));
  }

  function replayForm() {
    const file = h('input', { type: 'file', accept: '.toml,text/plain', 'data-testid': 'replay-file' });
    const from = h('input', { type: 'date', value: today(), 'data-testid': 'replay-from' });
    const to = h('input', { type: 'date', value: today(), 'data-testid': 'replay-to' });
    const market = h('input', { type: 'number', min: '0', placeholder: 'all', 'data-testid': 'replay-market' });
    const out = h('div', { 'data-testid': 'replay-report' });
    const run = h('button', { type: 'button', 'data-testid': 'replay-run' }, 'Replay');
    run.addEventListener('click', async () => {
      if (!file.files.length) { showError('choose a policy file first'); return; }
      const q = new URLSearchParams({ from: from.value, to: to.value });
      if (market.value !== '') q.set('market', market.value);
      fill(out, h('p', { class: 'hint' }, 'Replaying…'));
      try {
        renderReport(out, await postText(`/api/v1/policy/replay?${q}`, await file.files[0].text()));
      } catch (err) {
        fill(out);
        showError(err);
      }
    });
    return h('section', {},
      h('h2', {}, 'Policy replay'),
      h('p', { class: 'hint' }, 'What a policy would have decided over the recorded days. Nothing is put in force.'),
      h('p', {}, 'Policy file ', file, ' from ', from, ' to ', to, ' market ', market, ' ', run),
      out);
  }

  function calibrationText(c) {
    if (!c.estimate) return `No estimate yet (the first is made a few seconds after start, then every ${Math.round(c.every_s / 60)} min).`;
    const e = c.estimate;
    return `FPIR at identify threshold ${e.threshold}: ${e.fpir.toPrecision(3)} (95% ${e.low.toPrecision(3)} to ${e.high.toPrecision(3)}), `
      + `from ${fmtInt(e.probes)} probes over ${fmtInt(e.gallery_size)} templates; target ${c.target_fpir}. `
      + (c.above_target ? 'Above target: run `gatewarden calibrate` for the threshold to set.' : 'Within target.');
  }

  async function calibrationSection() {
    const c = await api('/api/v1/calibration');
    return h('section', {},
      h('h2', {}, 'Threshold calibration'),
      h('p', { 'data-testid': 'calibration', 'data-above': String(c.above_target) }, calibrationText(c)));
  }

  async function openPanel() {
    let panel = document.getElementById('tools-panel');
    if (!panel) {
      panel = h('div', { id: 'tools-panel', class: 'tools-panel', 'data-testid': 'tools-panel' });
      document.body.append(panel);
    }
    const close = h('button', { type: 'button', 'data-testid': 'tools-close' }, 'Close');
    close.addEventListener('click', () => panel.remove());
    fill(panel, h('p', {}, close), replayForm());
    try {
      panel.append(await calibrationSection());
    } catch (err) {
      showError(err);
    }
  }

  /** The warning on every view while the scheduled estimate is above target. */
  async function checkCalibration() {
    let c;
    try {
      c = await api('/api/v1/calibration');
    } catch (_) {
      return; // no token yet, or the server is gone: app.js reports those
    }
    let banner = document.getElementById('fpir-warning');
    if (!c.above_target) {
      if (banner) banner.remove();
      return;
    }
    if (!banner) {
      banner = h('div', { id: 'fpir-warning', class: 'error', role: 'alert', 'data-testid': 'fpir-warning' });
      document.querySelector('header.top').after(banner);
    }
    banner.textContent = calibrationText(c);
  }

  const link = document.getElementById('tools-link');
  if (link) {
    link.addEventListener('click', (ev) => {
      ev.preventDefault();
      openPanel().catch(showError);
    });
  }
  checkCalibration();
  setInterval(checkCalibration, CALIBRATION_POLL_MS);
}());
