// pgaudit dashboard and report. The report inlines its data as
// window.PGAUDIT_DATA; the live dashboard fetches api/v1/dashboard every
// 10 seconds. Every value from the proxy (query text, names) is inserted
// with textContent, never as HTML.
(function () {
  'use strict';

  var charts = {};
  var chartDefs = [
    { id: 'throughput', title: 'Throughput (per second)', series: [
      ['qps', 'statements/s', '#2563eb'], ['tps', 'transactions/s', '#16a34a'], ['eps', 'errors/s', '#dc2626']] },
    { id: 'latency', title: 'Statement latency (ms)', series: [
      ['p50_ms', 'p50', '#2563eb'], ['p99_ms', 'p99', '#dc2626'], ['mean_ms', 'mean', '#9ca3af']] },
    { id: 'utilization', title: 'Pool utilization (%)', scale: 100, series: [
      ['util_avg', 'all pools', '#2563eb'], ['util_max', 'busiest pool', '#f59e0b']] },
    { id: 'wait', title: 'Wait for a server connection (ms)', series: [
      ['wait_p50_ms', 'p50', '#2563eb'], ['wait_p99_ms', 'p99', '#dc2626']] }
  ];

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }

  function num(v, digits) {
    if (v === null || v === undefined || v !== v) { return '-'; }
    if (typeof v !== 'number') { return String(v); }
    var d = digits === undefined ? (Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 1 ? 2 : 3) : digits;
    return v.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: 0 });
  }

  function chartData(def, s) {
    var data = [s.t || []];
    def.series.forEach(function (x) {
      var col = s[x[0]] || [];
      if (def.scale) {
        col = col.map(function (v) { return v === null ? null : v * def.scale; });
      }
      data.push(col);
    });
    return data;
  }

  function chartWidth(host) {
    return Math.max(300, (host.clientWidth || 560) - 12);
  }

  function renderCharts(s) {
    chartDefs.forEach(function (def) {
      var data = chartData(def, s || {});
      if (charts[def.id]) {
        charts[def.id].setData(data);
        return;
      }
      var host = document.getElementById('chart-' + def.id);
      var pad = (s && s.interval_s) || 10;
      var opts = {
        title: def.title,
        width: chartWidth(host),
        height: 220,
        scales: { x: { time: true, range: function (u, min, max) {
          // With a single point (or none) uPlot would span years.
          var xs = u.data[0] || [];
          if (xs.length === 0 || min === null || max === null) { var now = Date.now() / 1000; return [now - 3600, now]; }
          if (xs.length === 1) { return [xs[0] - pad, xs[0] + pad]; }
          return [min, max];
        } } },
        series: [{}].concat(def.series.map(function (x) {
          return { label: x[1], stroke: x[2], width: 1.5, spanGaps: true,
            value: function (u, v) { return num(v); } };
        })),
        axes: [{}, { size: 64 }]
      };
      charts[def.id] = new uPlot(opts, data, host);
    });
  }

  window.addEventListener('resize', function () {
    chartDefs.forEach(function (def) {
      var c = charts[def.id];
      if (c) { c.setSize({ width: chartWidth(document.getElementById('chart-' + def.id)), height: 220 }); }
    });
  });

  // table fills tbl with a header and rows; cols are [label, key, kind]
  // where kind is 'text', 'sql' or a number format.
  function table(tbl, cols, rows, empty) {
    while (tbl.firstChild) { tbl.removeChild(tbl.firstChild); }
    var thead = el('thead'), tr = el('tr');
    cols.forEach(function (c) { tr.appendChild(el('th', c[2] === 'text' || c[2] === 'sql' ? 'text' : '', c[0])); });
    thead.appendChild(tr);
    tbl.appendChild(thead);
    var tbody = el('tbody');
    if (!rows || rows.length === 0) {
      var r = el('tr'), td = el('td', 'empty text', empty);
      td.colSpan = cols.length;
      r.appendChild(td);
      tbody.appendChild(r);
    } else {
      rows.forEach(function (row) {
        var r = el('tr');
        cols.forEach(function (c) {
          var v = typeof c[1] === 'function' ? c[1](row) : row[c[1]];
          var kind = c[2];
          if (kind === 'text' || kind === 'sql') {
            r.appendChild(el('td', kind, v));
          } else {
            r.appendChild(el('td', '', num(v, kind)));
          }
        });
        tbody.appendChild(r);
      });
    }
    tbl.appendChild(tbody);
  }

  function renderQueries(rows) {
    table(document.getElementById('queries'), [
      ['query', 'query', 'sql'],
      ['calls', 'calls', 0],
      ['total ms', 'total_ms', 1],
      ['share %', 'share_pct', 1],
      ['mean ms', 'mean_ms'],
      ['p50 ms', 'p50_ms'],
      ['p90 ms', 'p90_ms'],
      ['p99 ms', 'p99_ms'],
      ['rows', 'rows', 0],
      ['errors', 'errors', 0]
    ], rows, 'No statements seen yet.');
  }

  function renderPools(rows) {
    table(document.getElementById('pools'), [
      ['database', 'database', 'text'],
      ['user', 'user', 'text'],
      ['mode', 'pool_mode', 'text'],
      ['size', 'pool_size', 0],
      ['clients active', 'cl_active', 0],
      ['clients waiting', 'cl_waiting', 0],
      ['servers active', 'sv_active', 0],
      ['servers idle', 'sv_idle', 0],
      ['utilization %', function (r) { return r.utilization * 100; }, 1],
      ['wait p50 ms', function (r) { return r.wait_p50_us / 1000; }],
      ['wait p99 ms', function (r) { return r.wait_p99_us / 1000; }],
      ['wait max ms', function (r) { return r.wait_max_us / 1000; }]
    ], rows, 'No pools yet: pools open with their first client.');
  }

  function renderFindings(fs) {
    var host = document.getElementById('findings');
    while (host.firstChild) { host.removeChild(host.firstChild); }
    if (!fs || fs.length === 0) {
      host.appendChild(el('p', 'empty', 'No findings.'));
      return;
    }
    function when(t) { return t ? t.replace('T', ' ').replace(/\.\d+/, '').replace('Z', ' UTC') : ''; }
    // Open findings are cards; resolved ones (their condition is gone) a
    // short list below them, so stale findings never crowd the page.
    var open = fs.filter(function (f) { return f.status !== 'resolved'; });
    var resolved = fs.filter(function (f) { return f.status === 'resolved'; });
    if (open.length === 0) {
      host.appendChild(el('p', 'empty', 'No open findings.'));
    }
    open.forEach(function (f) {
      var sev = f.severity || 'info';
      var box = el('div', 'finding ' + sev);
      var head = el('div', 'head');
      head.appendChild(el('span', 'sev ' + sev, sev));
      head.appendChild(el('strong', '', f.rule));
      head.appendChild(el('span', '', f.message));
      var meta = [];
      if (f.count) { meta.push(num(f.count, 0) + '×'); }
      if (f.database) { meta.push('database ' + f.database); }
      if (f.first_seen) { meta.push('first seen ' + when(f.first_seen)); }
      if (f.last_seen) { meta.push('last seen ' + when(f.last_seen)); }
      head.appendChild(el('span', 'muted', meta.join(' · ')));
      box.appendChild(head);
      if (f.query) { box.appendChild(el('pre', 'query', f.query)); }
      if (f.suggestion) {
        box.appendChild(el('div', 'fix', 'Fix'));
        box.appendChild(el('pre', 'suggestion', f.suggestion));
      }
      host.appendChild(box);
    });
    if (resolved.length > 0) {
      var maxShown = 20;
      host.appendChild(el('h3', 'resolved-title', 'Resolved (' + resolved.length + ')'));
      var ul = el('ul', 'resolved');
      resolved.slice(0, maxShown).forEach(function (f) {
        var li = el('li', 'finding-resolved');
        li.appendChild(el('strong', '', f.rule + ' '));
        li.appendChild(el('span', '', f.message + ' '));
        li.appendChild(el('span', 'muted', '· last seen ' + when(f.last_seen) + ' · resolved ' + when(f.resolved_at) +
          (f.resolution ? ': ' + f.resolution : '')));
        ul.appendChild(li);
      });
      if (resolved.length > maxShown) {
        ul.appendChild(el('li', 'muted', (resolved.length - maxShown) + ' more in /api/v1/findings?status=resolved'));
      }
      host.appendChild(ul);
    }
  }

  function renderSummary(items) {
    var host = document.getElementById('summary');
    while (host.firstChild) { host.removeChild(host.firstChild); }
    (items || []).forEach(function (it) {
      var t = el('div', 'tile');
      t.appendChild(el('div', 'v', it.value));
      t.appendChild(el('div', 'l', it.label));
      host.appendChild(t);
    });
  }

  function renderNotes(notes) {
    var host = document.getElementById('notes');
    while (host.firstChild) { host.removeChild(host.firstChild); }
    (notes || []).forEach(function (n) { host.appendChild(el('li', '', n)); });
  }

  // renderFleet shows the merged fleet (fleet_peers, or report --from):
  // each source's status, the merged shapes and findings, each row with
  // the number of instances behind it.
  function renderFleet(f) {
    var host = document.getElementById('fleet');
    if (!f) { host.hidden = true; return; }
    host.hidden = false;
    document.getElementById('fleet-sub').textContent =
      f.instances + ' instance' + (f.instances === 1 ? '' : 's') + (f.failed ? ', ' + f.failed + ' failed' : '');
    table(document.getElementById('fleet-sources'), [
      ['source', 'source', 'text'],
      ['status', function (s) { return s.ok ? 'ok' : 'failed: ' + s.error; }, 'text'],
      ['host', function (s) { return s.instance ? s.instance.hostname : ''; }, 'text'],
      ['listen', function (s) { return s.instance ? s.instance.listen : ''; }, 'text'],
      ['shapes', 'shapes', 0],
      ['findings', 'findings', 0]
    ], f.sources, 'No sources.');
    table(document.getElementById('fleet-queries'), [
      ['query', 'query', 'sql'],
      ['instances', 'instances', 0],
      ['calls', 'calls', 0],
      ['total ms', function (r) { return r.total_us / 1000; }, 1],
      ['share %', 'share_pct', 1],
      ['p50 ms', function (r) { return r.p50_us / 1000; }],
      ['p99 ms', function (r) { return r.p99_us / 1000; }],
      ['rows', 'rows', 0],
      ['errors', 'errors', 0]
    ], f.shapes, 'No statements seen yet.');
    table(document.getElementById('fleet-findings'), [
      ['severity', 'severity', 'text'],
      ['rule', 'rule', 'text'],
      ['instances', 'instances', 0],
      ['count', 'count', 0],
      ['message', 'message', 'text'],
      ['first seen', 'first_seen', 'text'],
      ['last seen', 'last_seen', 'text']
    ], f.findings, 'No findings.');
  }

  function render(d) {
    document.getElementById('subtitle').textContent = d.subtitle || '';
    renderSummary(d.summary);
    renderCharts(d.series);
    renderQueries(d.queries);
    renderFindings(d.findings);
    renderPools(d.pools);
    renderFleet(d.fleet);
    renderNotes(d.notes);
  }

  function refresh() {
    fetch('api/v1/dashboard', { cache: 'no-store' })
      .then(function (r) {
        if (!r.ok) { throw new Error('HTTP ' + r.status); }
        return r.json();
      })
      .then(function (d) {
        render(d);
        document.getElementById('status').textContent = 'updated ' + new Date().toLocaleTimeString();
      })
      .catch(function (e) {
        document.getElementById('status').textContent = 'update failed: ' + e.message;
      });
  }

  if (window.PGAUDIT_DATA) {
    render(window.PGAUDIT_DATA);
  } else {
    refresh();
    setInterval(refresh, 10000);
  }
})();
