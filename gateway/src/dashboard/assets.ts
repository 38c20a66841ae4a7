/**
 * The live status page's HTML, CSS and script, kept here as strings so `tsc`
 * stays the only build step and the page needs nothing from the internet: no
 * CDN, no framework; plain DOM and inline SVG charts. The script polls
 * `/dashboard/data` every second and derives rates and latency quantiles
 * from successive snapshots.
 */

export const DASHBOARD_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>llmux status</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/dashboard/app.css">
</head>
<body data-updates="0">
<header>
  <h1>llmux</h1>
  <span id="gateway" class="muted"></span>
  <span id="status" class="pill pill-wait">loading…</span>
  <span id="updated" class="muted"></span>
</header>
<main>
  <section class="tiles">
    <div class="tile"><div class="label">Tokens/s <small>this gateway</small></div><div class="value" id="tok-rate">–</div></div>
    <div class="tile"><div class="label">Requests/s <small>this gateway</small></div><div class="value" id="req-rate">–</div></div>
    <div class="tile"><div class="label">TTFT p50 / p95 <small>last 5 s</small></div><div class="value" id="ttft">–</div></div>
    <div class="tile"><div class="label">E2E p50 / p95 <small>last 5 s</small></div><div class="value" id="e2e">–</div></div>
    <div class="tile"><div class="label">Open requests <small>this gateway</small></div><div class="value" id="open">–</div></div>
    <div class="tile"><div class="label">Workers <small>ready / live</small></div><div class="value" id="worker-count">–</div></div>
  </section>
  <section class="charts">
    <figure class="chart" id="chart-tok"><figcaption>Tokens/s</figcaption></figure>
    <figure class="chart" id="chart-req"><figcaption>Requests/s <span class="key k0">ended</span> <span class="key k1">not ok</span></figcaption></figure>
    <figure class="chart" id="chart-ttft"><figcaption>TTFT <span class="key k0">p50</span> <span class="key k1">p95</span></figcaption></figure>
    <figure class="chart" id="chart-e2e"><figcaption>E2E latency <span class="key k0">p50</span> <span class="key k1">p95</span></figcaption></figure>
  </section>
  <section>
    <h2>Models</h2>
    <table id="models">
      <thead><tr>
        <th>Model</th><th>Aliases</th><th>Engine</th>
        <th class="num">Waiting</th><th class="num">Running</th><th class="num">Dispatched/s <small>all gateways</small></th>
        <th class="num">Tokens/s <small>this gateway</small></th>
      </tr></thead>
      <tbody></tbody>
    </table>
  </section>
  <section>
    <h2>Workers</h2>
    <table id="workers">
      <thead><tr><th>Worker</th><th>Host</th><th>Models</th><th>State</th><th>Engines</th><th>Load</th><th>Heartbeat</th></tr></thead>
      <tbody></tbody>
    </table>
  </section>
  <p class="muted note">
    Polls <code>/dashboard/data</code> every second. Rates and latencies are this gateway's (from its
    Prometheus counters); queues and workers are the whole system's (from Redis).
  </p>
</main>
<script src="/dashboard/app.js"></script>
</body>
</html>
`;

export const DASHBOARD_CSS = `:root {
  --bg: #0f1419; --panel: #171d24; --line: #263040; --text: #d8dee9; --muted: #7d8899;
  --ok: #3fb950; --warn: #d29922; --bad: #f85149; --c0: #58a6ff; --c1: #f0883e;
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--text); font: 14px/1.4 system-ui, -apple-system, 'Segoe UI', sans-serif; }
header { display: flex; align-items: baseline; gap: 14px; padding: 12px 20px; border-bottom: 1px solid var(--line); }
h1 { font-size: 18px; margin: 0; }
h2 { font-size: 15px; margin: 20px 0 8px; }
main { padding: 0 20px 20px; }
small { color: var(--muted); font-weight: normal; }
code { font-family: ui-monospace, monospace; }
.muted { color: var(--muted); }
.note { margin-top: 20px; font-size: 12px; }
.pill { padding: 1px 9px; border-radius: 10px; font-size: 12px; font-weight: 600; }
.pill-ok { background: rgba(63, 185, 80, 0.15); color: var(--ok); }
.pill-bad { background: rgba(248, 81, 73, 0.15); color: var(--bad); }
.pill-wait { background: rgba(125, 136, 153, 0.15); color: var(--muted); }
.tiles { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr)); gap: 10px; margin-top: 16px; }
.tile { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; }
.tile .label { font-size: 12px; color: var(--muted); }
.tile .value { font-size: 20px; font-variant-numeric: tabular-nums; margin-top: 2px; white-space: nowrap; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(280px, 1fr)); gap: 10px; margin-top: 10px; }
.chart { margin: 0; background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; }
.chart figcaption { font-size: 12px; color: var(--muted); display: flex; gap: 8px; align-items: baseline; }
.chart .max { margin-left: auto; font-variant-numeric: tabular-nums; }
.chart svg { display: block; width: 100%; height: 70px; margin-top: 4px; }
.chart .grid { stroke: var(--line); stroke-width: 1; }
.chart .s0 { stroke: var(--c0); }
.chart .s1 { stroke: var(--c1); }
.chart path { fill: none; stroke-width: 1.5; vector-effect: non-scaling-stroke; }
.key::before { content: ''; display: inline-block; width: 10px; height: 2px; margin-right: 4px; vertical-align: middle; }
.key.k0::before { background: var(--c0); }
.key.k1::before { background: var(--c1); }
table { width: 100%; border-collapse: collapse; background: var(--panel); border: 1px solid var(--line); border-radius: 6px; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { font-size: 12px; color: var(--muted); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:last-child td { border-bottom: none; }
td.empty { color: var(--muted); text-align: center; }
.state { font-weight: 600; }
.state-ready { color: var(--ok); }
.state-starting, .state-draining { color: var(--warn); }
.state-stopped { color: var(--muted); }
.stale { color: var(--bad); font-weight: 600; }
.load { display: flex; align-items: center; gap: 8px; font-variant-numeric: tabular-nums; }
.bar { width: 90px; height: 8px; background: var(--line); border-radius: 4px; overflow: hidden; }
.bar > div { height: 100%; background: var(--c0); }
.bar.full > div { background: var(--warn); }
`;

/**
 * The page's script. Plain ES2017 in one function scope; no template
 * literals inside (it lives in one), no innerHTML with data (names come
 * from deployments and worker ids).
 */
export const DASHBOARD_JS = `(function () {
  'use strict';
  var POLL_MS = 1000;
  var FETCH_TIMEOUT_MS = 3000;
  var HISTORY_MS = 60000;
  var LATENCY_WINDOW_MS = 5000;
  var SVG = 'http://www.w3.org/2000/svg';

  /** Snapshots of one gateway run, newest last, reaching back LATENCY_WINDOW_MS. */
  var snaps = [];
  /** Chart points: { t, v: [series0, series1] } with null for no value. */
  var series = { tok: [], req: [], ttft: [], e2e: [] };
  var updates = 0;

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function fmtRate(v) {
    if (v === null || v === undefined || !isFinite(v)) return '–';
    return v >= 100 ? v.toFixed(0) : v.toFixed(1);
  }
  function fmtSec(v) {
    if (v === null || v === undefined || !isFinite(v)) return '–';
    if (v < 1) return (v * 1000).toFixed(v < 0.01 ? 1 : 0) + ' ms';
    return v.toFixed(v < 10 ? 2 : 1) + ' s';
  }
  function fmtAge(ms) { return (ms / 1000).toFixed(1) + ' s ago'; }

  /** The q-quantile of a bucketed distribution (Prometheus' histogram_quantile: linear within a bucket). */
  function quantile(q, le, cum, total) {
    if (!(total > 0)) return null;
    var rank = q * total;
    var prevCount = 0;
    var prevBound = 0;
    for (var i = 0; i < le.length; i++) {
      if (cum[i] >= rank) {
        var inBucket = cum[i] - prevCount;
        return inBucket > 0 ? prevBound + (le[i] - prevBound) * ((rank - prevCount) / inBucket) : le[i];
      }
      prevCount = cum[i];
      prevBound = le[i];
    }
    return le.length ? le[le.length - 1] : null; // in the +Inf bucket
  }

  /** p50, p95 and mean of what a histogram recorded between two readings; null when nothing was. */
  function latencyBetween(h1, h0) {
    var n = h1.count - h0.count;
    if (!(n > 0)) return null;
    var cum = [];
    for (var i = 0; i < h1.le.length; i++) cum.push(h1.cumulative[i] - (h0.cumulative[i] || 0));
    return {
      n: n,
      mean: (h1.sum - h0.sum) / n,
      p50: quantile(0.5, h1.le, cum, n),
      p95: quantile(0.95, h1.le, cum, n),
    };
  }

  /** A new gateway process (or another gateway behind a balancer): start over. */
  function isRestart(s, prev) {
    return (
      prev.gateway.id !== s.gateway.id ||
      prev.gateway.startedAt !== s.gateway.startedAt ||
      s.now <= prev.now ||
      s.counters.tokens < prev.counters.tokens ||
      s.counters.requests < prev.counters.requests ||
      s.counters.ttft.count < prev.counters.ttft.count ||
      s.counters.e2e.count < prev.counters.e2e.count
    );
  }

  function notOk(c) {
    var ok = c.outcomes.ok || 0;
    return c.requests - ok;
  }

  function push(list, t, v) {
    list.push({ t: t, v: v });
    while (list.length && list[0].t < t - HISTORY_MS) list.shift();
  }

  function onSnapshot(s) {
    var prev = snaps.length ? snaps[snaps.length - 1] : null;
    if (prev && isRestart(s, prev)) {
      snaps = [];
      series = { tok: [], req: [], ttft: [], e2e: [] };
      prev = null;
    }
    snaps.push(s);
    while (snaps.length > 2 && snaps[1].now <= s.now - LATENCY_WINDOW_MS) snaps.shift();

    var rates = null;
    if (prev) {
      var dt = (s.now - prev.now) / 1000;
      rates = {
        tok: (s.counters.tokens - prev.counters.tokens) / dt,
        req: (s.counters.requests - prev.counters.requests) / dt,
        bad: Math.max(0, notOk(s.counters) - notOk(prev.counters)) / dt,
        models: {},
      };
      var before = {};
      prev.models.forEach(function (m) { before[m.name] = m; });
      s.models.forEach(function (m) {
        var p = before[m.name];
        var r = { tok: null, dispatched: null };
        if (p) {
          r.tok = Math.max(0, m.tokens - p.tokens) / dt;
          if (m.queue && p.queue && m.queue.entriesRead >= p.queue.entriesRead) {
            r.dispatched = (m.queue.entriesRead - p.queue.entriesRead) / dt;
          }
        }
        rates.models[m.name] = r;
      });
      push(series.tok, s.now, [rates.tok]);
      push(series.req, s.now, [rates.req, rates.bad]);
    }
    var base = snaps[0] !== s ? snaps[0] : null;
    var ttft = base ? latencyBetween(s.counters.ttft, base.counters.ttft) : null;
    var e2e = base ? latencyBetween(s.counters.e2e, base.counters.e2e) : null;
    if (base) {
      push(series.ttft, s.now, [ttft && ttft.p50, ttft && ttft.p95]);
      push(series.e2e, s.now, [e2e && e2e.p50, e2e && e2e.p95]);
    }
    render(s, rates, ttft, e2e);
  }

  function setStatus(cls, text) {
    var st = $('status');
    st.className = 'pill ' + cls;
    st.textContent = text;
  }

  function render(s, rates, ttft, e2e) {
    $('gateway').textContent = 'gateway ' + s.gateway.id;
    if (s.redis.reachable) setStatus('pill-ok', 'live');
    else setStatus('pill-bad', 'Redis unreachable');
    $('status').title = s.redis.error || '';
    $('updated').textContent = 'updated ' + new Date(s.now).toLocaleTimeString();
    $('tok-rate').textContent = rates ? fmtRate(rates.tok) : '–';
    $('req-rate').textContent = rates ? fmtRate(rates.req) : '–';
    $('ttft').textContent = ttft ? fmtSec(ttft.p50) + ' / ' + fmtSec(ttft.p95) : '–';
    $('ttft').title = ttft ? 'mean ' + fmtSec(ttft.mean) + ' over ' + ttft.n + ' requests' : 'no first token in the last 5 s';
    $('e2e').textContent = e2e ? fmtSec(e2e.p50) + ' / ' + fmtSec(e2e.p95) : '–';
    $('e2e').title = e2e ? 'mean ' + fmtSec(e2e.mean) + ' over ' + e2e.n + ' requests' : 'no request finished in the last 5 s';
    $('open').textContent = String(s.gateway.openRequests);
    if (s.workers) {
      var ready = s.workers.filter(function (w) { return w.state === 'ready' && !w.stale; }).length;
      $('worker-count').textContent = ready + ' / ' + s.workers.length;
    } else $('worker-count').textContent = '?';
    renderModels(s, rates);
    renderWorkers(s);
    chart('chart-tok', series.tok, fmtRate);
    chart('chart-req', series.req, fmtRate);
    chart('chart-ttft', series.ttft, fmtSec);
    chart('chart-e2e', series.e2e, fmtSec);
    updates++;
    document.body.setAttribute('data-updates', String(updates));
  }

  function cell(row, text, cls, field) {
    var td = el('td', cls, text);
    if (field) td.setAttribute('data-field', field);
    row.appendChild(td);
    return td;
  }

  function emptyRow(tbody, cols, text) {
    var tr = el('tr');
    var td = el('td', 'empty', text);
    td.colSpan = cols;
    tr.appendChild(td);
    tbody.appendChild(tr);
  }

  function renderModels(s, rates) {
    var tbody = $('models').tBodies[0];
    tbody.textContent = '';
    if (!s.models.length) emptyRow(tbody, 7, 'No deployments published yet.');
    s.models.forEach(function (m) {
      var tr = el('tr');
      tr.setAttribute('data-model', m.name);
      cell(tr, m.name, null, 'name');
      cell(tr, m.aliases.length ? m.aliases.join(', ') : '–', 'muted', 'aliases');
      cell(tr, m.engine, null, 'engine').title = m.concurrency + ' concurrent requests per replica';
      cell(tr, m.queue ? m.queue.waiting : '?', 'num', 'waiting');
      cell(tr, m.queue ? m.queue.pending : '?', 'num', 'running');
      var r = rates && rates.models[m.name];
      cell(tr, r ? fmtRate(r.dispatched) : '–', 'num', 'dispatched');
      cell(tr, r ? fmtRate(r.tok) : '–', 'num', 'tokens');
      tbody.appendChild(tr);
    });
  }

  function renderWorkers(s) {
    var tbody = $('workers').tBodies[0];
    tbody.textContent = '';
    if (!s.workers) {
      emptyRow(tbody, 7, 'Unknown: Redis is unreachable.');
      return;
    }
    if (!s.workers.length) emptyRow(tbody, 7, 'No live worker.');
    s.workers.forEach(function (w) {
      var tr = el('tr');
      tr.setAttribute('data-worker', w.id);
      if (w.stale) tr.setAttribute('data-stale', 'true');
      cell(tr, w.id, null, 'id');
      cell(tr, w.host, 'muted', 'host');
      cell(tr, w.models.join(', '), null, 'models');
      cell(tr, w.state, 'state state-' + w.state, 'state');
      var engines = Object.keys(w.engines).map(function (k) { return k + ': ' + w.engines[k]; });
      cell(tr, engines.length ? engines.join(', ') : '–', 'muted', 'engines');
      var load = cell(tr, null, null, 'load');
      var box = el('div', 'load');
      var bar = el('div', 'bar' + (w.capacity > 0 && w.inflight >= w.capacity ? ' full' : ''));
      var fill = el('div');
      fill.style.width = (w.capacity > 0 ? Math.min(100, (100 * w.inflight) / w.capacity) : 0) + '%';
      bar.appendChild(fill);
      box.appendChild(bar);
      box.appendChild(el('span', null, w.inflight + ' / ' + w.capacity));
      load.appendChild(box);
      var hb = cell(tr, w.stale ? 'stale: ' + fmtAge(w.ageMs) : fmtAge(w.ageMs), w.stale ? 'stale' : 'muted', 'heartbeat');
      hb.title = 'last heartbeat at ' + new Date(w.at).toLocaleTimeString() + '; stale after ' + s.staleAfterMs / 1000 + ' s';
      tbody.appendChild(tr);
    });
  }

  /** Draws up to two series over the last minute into the figure's SVG. */
  function chart(id, points, fmt) {
    var fig = $(id);
    var svg = fig.querySelector('svg');
    var label = fig.querySelector('.max');
    if (!svg) {
      label = el('span', 'max');
      fig.querySelector('figcaption').appendChild(label);
      svg = document.createElementNS(SVG, 'svg');
      svg.setAttribute('viewBox', '0 0 300 70');
      svg.setAttribute('preserveAspectRatio', 'none');
      fig.appendChild(svg);
    }
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var max = 0;
    points.forEach(function (p) { p.v.forEach(function (v) { if (v !== null && v > max) max = v; }); });
    var top = max > 0 ? max * 1.15 : 1;
    label.textContent = 'max ' + fmt(max);
    [17.5, 35, 52.5].forEach(function (y) {
      var g = document.createElementNS(SVG, 'line');
      g.setAttribute('class', 'grid');
      g.setAttribute('x1', '0');
      g.setAttribute('x2', '300');
      g.setAttribute('y1', String(y));
      g.setAttribute('y2', String(y));
      svg.appendChild(g);
    });
    if (!points.length) return;
    var end = points[points.length - 1].t;
    for (var k = 0; k < 2; k++) {
      var d = '';
      var pen = false;
      points.forEach(function (p) {
        var v = p.v[k];
        if (v === null || v === undefined || !isFinite(v)) {
          pen = false;
          return;
        }
        var x = 300 - ((end - p.t) / HISTORY_MS) * 300;
        var y = 70 - (v / top) * 68;
        d += (pen ? 'L' : 'M') + x.toFixed(1) + ' ' + y.toFixed(1);
        pen = true;
      });
      if (!d) continue;
      var path = document.createElementNS(SVG, 'path');
      path.setAttribute('class', 's' + k);
      path.setAttribute('d', d);
      svg.appendChild(path);
    }
  }

  function poll() {
    var started = Date.now();
    var ctl = typeof AbortController === 'function' ? new AbortController() : null;
    var timer = setTimeout(function () { if (ctl) ctl.abort(); }, FETCH_TIMEOUT_MS);
    fetch('/dashboard/data', { cache: 'no-store', signal: ctl ? ctl.signal : undefined })
      .then(function (res) {
        if (!res.ok) throw new Error('HTTP ' + res.status);
        return res.json();
      })
      .then(
        function (snapshot) {
          try {
            onSnapshot(snapshot);
          } catch (err) {
            // Keep polling, and report the bug as an uncaught error (the console shows it).
            setStatus('pill-bad', 'page error');
            setTimeout(function () { throw err; }, 0);
          }
        },
        function (err) {
          setStatus('pill-bad', 'gateway not answering');
          $('status').title = String(err && err.message ? err.message : err);
        },
      )
      .then(function () {
        clearTimeout(timer);
        setTimeout(poll, Math.max(0, POLL_MS - (Date.now() - started)));
      });
  }

  poll();
})();
`;
