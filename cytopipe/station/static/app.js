/* cytopipe review station: the queue, a sample's gates (draggable), one gate across the batch.
 *
 * No library, nothing fetched from anywhere but this station. Every text that
 * comes from files or the sample sheet goes into the page as text
 * (textContent / createTextNode), never as HTML. Gates are drawn as SVG in
 * the gate's own units (logicle units on fluorescence axes); a drag changes
 * the candidate gate locally, and its release asks the server to recount.
 */
(function () {
  'use strict';

  var CSRF = document.querySelector('meta[name="csrf-token"]').getAttribute('content');
  var SVGNS = 'http://www.w3.org/2000/svg';
  var S = {
    queue: [], gates: [], numerator: '', denominator: '', reviewer: '', current: null, sample: null,
    cands: {}, cand: null, plots: {}, view: 'sample', batch: null, batchToken: 0,
    sort: null, sortDir: 1,  // the queue's column order a click on a header chose (null: review order)
    history: [], future: [],  // the moved gates before each step, for undo and redo one step at a time
    views: {}, viewsOf: null, overlay: null,  // each gate's plot axes, view and zoom (of sample viewsOf); overlay
    recountToken: 0
  };

  function $(id) { return document.getElementById(id); }

  function el(tag, attrs, kids) {
    var node = document.createElement(tag);
    setAttrs(node, attrs);
    (kids || []).forEach(function (k) {
      node.appendChild(typeof k === 'string' ? document.createTextNode(k) : k);
    });
    return node;
  }

  function sv(tag, attrs) {
    var node = document.createElementNS(SVGNS, tag);
    setAttrs(node, attrs);
    return node;
  }

  function setAttrs(node, attrs) {
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === 'text') { node.textContent = attrs[k]; } else if (attrs[k] !== null && attrs[k] !== undefined) {
        node.setAttribute(k, String(attrs[k]));
      }
    });
  }

  function clear(node) { while (node.firstChild) { node.removeChild(node.firstChild); } return node; }
  function fmtInt(n) { return (n === null || n === undefined) ? '' : Number(n).toLocaleString('en-US'); }
  function fmtPct(p, d) { return (p === null || p === undefined) ? '' : Number(p).toFixed(d === undefined ? 2 : d); }
  function pctOf(c, p) { return p ? 100 * c / p : null; }

  function message(text, kind) {
    var m = $('message');
    m.textContent = text || '';
    m.className = kind || '';
  }

  function api(method, url, body) {
    var opts = { method: method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
    if (body !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.headers['X-CSRF-Token'] = CSRF;
      opts.body = JSON.stringify(body);
    }
    return fetch(url, opts).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (j) {
        if (!r.ok) {
          // the sign-in expired (15 minutes idle): sign in again; the key is no longer unlocked
          if (r.status === 401 && j.login) { window.location.assign('/login'); }
          var e = new Error(j.error || (r.status + ' ' + r.statusText));
          e.status = r.status; e.stale = !!j.stale;
          throw e;
        }
        return j;
      });
    });
  }

  // -- the modal question (reviewer name, reasons) ---------------------------------------------

  var modalDone = null;

  function ask(label, value) {
    return new Promise(function (resolve) {
      $('modal-label').textContent = label;
      $('modal-input').value = value || '';
      $('modal').hidden = false;
      $('modal-input').focus();
      modalDone = resolve;
    });
  }

  function closeModal(value) {
    $('modal').hidden = true;
    var done = modalDone;
    modalDone = null;
    if (done) { done(value); }
  }

  function askName() {
    return ask('Your name (recorded with every decision you make here):', '').then(function (name) {
      if (name === null) {  // dismissed: look around; the first decision asks again
        message('No name given: you can look at every sample; a decision asks for your name first.');
        return;
      }
      if (!name.trim()) { return askName(); }
      return api('POST', '/api/reviewer', { name: name.trim() }).then(function (r) {
        S.reviewer = r.reviewer;
        $('who').textContent = 'reviewer: ' + S.reviewer;
      }).catch(function (e) { showError(e); return askName(); });
    });
  }

  function toggleHelp() {
    // the keys and what a drag does, over everything (the same text as above the queue)
    var help = $('help');
    help.hidden = !help.hidden;
  }

  // -- queue -----------------------------------------------------------------------------------

  function refresh() {
    return api('GET', '/api/state').then(function (st) {
      S.queue = st.rows; S.gates = st.gates; S.numerator = st.numerator; S.denominator = st.denominator;
      S.reviewer = st.reviewer || S.reviewer;
      $('run').textContent = st.run.dir + ' (' + st.run.strategy + ')';
      $('left').textContent = st.left + ' of ' + st.total + ' left to decide';
      $('left').setAttribute('data-left', st.left);
      $('who').textContent = S.reviewer ? 'reviewer: ' + S.reviewer + (st.signed ? ' (signing)' : '') : '';
      if (st.report && st.report.error) { message(st.report.error, 'error'); }
      renderQueue();
      fillBatchControls();
      return st;
    });
  }

  function ciText(r) {
    if (r.treg_pct === null || r.treg_pct === undefined) { return r.error ? 'not gated' : ''; }
    return fmtPct(r.treg_pct) + (r.ci ? ' [' + fmtPct(r.ci[0]) + ', ' + fmtPct(r.ci[1]) + ']' : '');
  }

  function shownQueue() {
    // the queue as the reviewer filtered and sorted it; review order unless a header was clicked
    var text = ($('queue-filter').value || '').trim().toLowerCase(), show = $('queue-show').value;
    var rows = S.queue.filter(function (r) {
      var hay = [r.patient, r.visit, r.flags.join(' '), r.review_status, r.reviewer || '', r.error ? 'error' : '']
        .join(' ').toLowerCase();
      var kind = show === 'all' || (show === 'open' && r.group < 3) || (show === 'decided' && r.group === 3) ||
        (show === 'flagged' && (r.flags.length > 0 || !!r.error));
      return kind && (!text || hay.indexOf(text) >= 0);
    });
    if (S.sort) {
      var key = function (r) {
        return S.sort === 'treg_pct' ? (r.treg_pct === null ? -Infinity : r.treg_pct)
          : S.sort === 'flags' ? r.flags.join(',') : S.sort === 'status' ? r.review_status : String(r[S.sort]);
      };
      rows = rows.slice().sort(function (a, b) {
        var x = key(a), y = key(b);
        return (x < y ? -1 : x > y ? 1 : a.i - b.i) * S.sortDir;
      });
    }
    return rows;
  }

  function renderQueue() {
    var body = clear($('queue').tBodies[0]);
    shownQueue().forEach(function (r) {
      var status = r.review_status + (r.reviewer ? ' (' + r.reviewer + ')' : '');
      var tr = el('tr', { 'data-i': r.i, 'class': 'g' + r.group + (r.i === S.current ? ' current' : '') }, [
        el('td', { text: r.patient }), el('td', { text: r.visit }), el('td', { text: ciText(r) }),
        el('td', { text: r.flags.join(', ') || (r.error ? 'error' : '') }), el('td', { text: status })
      ]);
      tr.addEventListener('click', function () { showView('sample'); openSample(r.i); });
      body.appendChild(tr);
    });
  }

  function queuePos(i) {
    for (var k = 0; k < S.queue.length; k++) { if (S.queue[k].i === i) { return k; } }
    return -1;
  }

  function step(d) {
    var rows = shownQueue();  // j and k walk the queue as it is shown
    if (!rows.length) { return; }
    var k = -1;
    rows.forEach(function (r, n) { if (r.i === S.current) { k = n; } });
    k = k < 0 ? 0 : Math.max(0, Math.min(rows.length - 1, k + d));
    openSample(rows[k].i);
  }

  function nextUndecided(i) {
    var k = queuePos(i);
    for (var n = 1; n <= S.queue.length; n++) {
      var r = S.queue[(k + n) % S.queue.length];
      if (r.group < 3) { return r.i; }
    }
    return i;
  }

  // -- one sample ------------------------------------------------------------------------------

  function openSample(i, keepMessage) {
    S.current = i; S.cands = {}; S.cand = null; S.history = []; S.future = []; S.recountToken++;
    renderQueue();
    if (!keepMessage) { message('Opening…'); }
    return api('GET', '/api/sample/' + i).then(function (d) {
      if (S.current !== i) { return; }
      S.sample = d;
      renderSample();
      if (!keepMessage) { message(d.load_error || '', d.load_error ? 'error' : ''); }
    }).catch(showError);
  }

  function renderSample() {
    var d = S.sample, s = d.sample, head = clear($('sample-head'));
    head.appendChild(el('h2', { text: s.patient + ' · ' + s.visit + (s.day ? ' (day ' + s.day + ')' : '') }));
    var treg = el('span', { id: 'treg-now', text: ciText(s) });
    var counted = s.cd4_count === null || s.cd4_count === undefined ? ' · '
      : ' (' + fmtInt(s.treg_count) + ' of ' + fmtInt(s.cd4_count) + ' CD4) · ';  // a failed file has no counts
    head.appendChild(el('p', {}, [
      'Treg % CD4 [95 % CI]: ', treg, counted,
      el('span', { id: 'treg-candidate', 'class': 'candidate' }), ' file ', el('code', { text: s.file }),
      ' · ' + fmtInt(s.events) + ' events'
    ]));
    head.appendChild(el('p', {}, [
      'QC: ' + (s.qc_status || '') + (s.flags.length ? ' (' + s.flags.join(', ') + ')' : ''),
      ' · review: ', el('span', { id: 'review-status', 'class': s.review_status, text: s.review_status }),
      s.reviewer ? ' by ' + s.reviewer : '', el('span', { id: 'latency', 'class': 'latency' })
    ]));
    if (s.error) { head.appendChild(el('p', { 'class': 'error', text: 'Not gated: ' + s.error })); }
    head.appendChild(otherVisits(s));
    if (S.overlay === s.i) { S.overlay = null; }
    var tools = clear($('plot-tools'));  // not in the head: its options name every sample of the batch
    if (d.channels) { tools.appendChild(overlayControl(s)); }
    var plots = clear($('plots'));
    S.plots = {};
    d.gates.forEach(function (g, k) {
      var p = makePlot(g, { index: k, interactive: true, sample: s.i });
      S.plots[g.path] = p;
      plots.appendChild(p.card);
    });
    d.gates.forEach(function (g) { foldWhole(g.path, g.count, g.parent_count); });
    S.viewsOf = s.i;
    renderHistory(d.history || []);
  }

  function isLeaf(path) {
    return !S.sample.gates.some(function (g) { return g.path.indexOf(path + '/') === 0; });
  }

  function foldWhole(path, count, parent) {
    // a leaf gate holding every event of its parent shows nothing to review: a line under its parent's card
    // instead of a plot (the parent's count is then the count the header shows); drawn again once it cuts
    var plot = S.plots[path], parentPlot = S.plots[path.slice(0, path.lastIndexOf('/'))];
    if (!plot || !parentPlot || !isLeaf(path)) { return; }
    var whole = count === parent && !S.cands[path];
    plot.card.hidden = whole;
    var note = parentPlot.card.querySelector('.whole-child');
    if (whole) {
      if (!note) { note = el('p', { 'class': 'whole-child' }); parentPlot.card.appendChild(note); }
      note.textContent = path.split('/').pop() + ' holds all ' + fmtInt(count) + ' of them (not drawn)';
    } else if (note) {
      note.parentNode.removeChild(note);
    }
  }

  function otherVisits(s) {
    // the patient's other visits beside this one: a change between visits is what the trial measures
    var p = el('p', { id: 'other-visits' }, ['Patient ' + s.patient + ', other visits: ']);
    var others = S.queue.filter(function (r) { return r.patient === s.patient && r.i !== s.i; })
      .sort(function (a, b) { return a.i - b.i; });
    if (!others.length) { p.appendChild(document.createTextNode('none')); }
    others.forEach(function (r, k) {
      var a = el('a', { href: '#', 'data-i': r.i, text: r.visit + ' ' + (r.treg_pct === null ? 'not gated'
        : fmtPct(r.treg_pct) + ' %') + (r.flags.length ? ' (flagged)' : '') });
      a.addEventListener('click', function (e) { e.preventDefault(); openSample(r.i); });
      if (k) { p.appendChild(document.createTextNode(' · ')); }
      p.appendChild(a);
    });
    return p;
  }

  function overlayControl(s) {
    // another sample's population over this one's, on every plot: the patient's visits first, then the batch
    var sel = el('select', { id: 'overlay-sample' }, [el('option', { value: '', text: '(none)' })]);
    var mine = el('optgroup', { label: 'Patient ' + s.patient + "'s other visits" }), rest = el('optgroup', { label: 'the batch' });
    S.queue.slice().sort(function (a, b) { return a.i - b.i; }).forEach(function (r) {
      if (r.i === s.i || r.error) { return; }
      (r.patient === s.patient ? mine : rest).appendChild(el('option', { value: r.i, text: r.patient + ' ' + r.visit,
        selected: r.i === S.overlay ? 'selected' : null }));
    });
    [mine, rest].forEach(function (g) { if (g.childNodes.length) { sel.appendChild(g); } });
    sel.addEventListener('change', function () {
      S.overlay = sel.value === '' ? null : Number(sel.value);
      Object.keys(S.plots).forEach(function (k) { S.plots[k].population(); });
    });
    var swatch = el('span', { 'class': 'swatch' });
    swatch.style.background = TINT_RGB[OVERLAY_TINT];
    return el('p', { id: 'overlay-line' }, [el('label', {}, ['Overlay ', swatch, sel]),
      ' · off a gate\'s own axes its events are ', el('span', { 'class': 'highlight-word', text: 'red' }),
      ' · wheel: zoom, drag the background (or Shift+drag): pan, ', el('kbd', { text: '0' }), ': whole axes']);
  }

  function renderHistory(rows) {
    var box = clear($('history'));
    if (!rows.length) { return; }
    var t = el('table', {}, [el('tr', {}, ['time', 'reviewer', 'action', 'gate', 'reason'].map(function (h) {
      return el('th', { text: h });
    }))]);
    rows.forEach(function (r) {
      t.appendChild(el('tr', { 'class': r.valid ? '' : 'void' }, [r.time, r.reviewer, r.action, r.gate_path, r.reason]
        .map(function (v) { return el('td', { text: v || '' }); })));
    });
    box.appendChild(el('h3', { text: 'Review history' }));
    box.appendChild(t);
  }

  // -- plots -----------------------------------------------------------------------------------

  var HIGHLIGHT_TINT = 0, OVERLAY_TINT = 4;  // the server's colours (the batch view's): red, orange
  var TINT_RGB = { 0: 'rgb(228,26,28)', 4: 'rgb(255,127,0)' };

  function Scale(ax, start, len, flip) {
    var lo = ax.range[0], hi = ax.range[1], span = hi - lo;
    return {
      lo: lo, hi: hi,
      px: function (v) { var t = (v - lo) / span; return flip ? start + len * (1 - t) : start + len * t; },
      val: function (p) { var t = (p - start) / len; return lo + span * (flip ? 1 - t : t); },
      edge: function (v, isMax) { return v === null ? (isMax ? hi + span : lo - span) : v; }
    };
  }

  function niceTicks(lo, hi) {
    // about five round ticks (1, 2 or 5 times a power of ten) for a linear axis zoomed anywhere
    var raw = (hi - lo) / 5, base = Math.pow(10, Math.floor(Math.log10(raw))), step = base * 10, out = [];
    [1, 2, 5, 10].some(function (m) { if (base * m >= raw) { step = base * m; return true; } return false; });
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
      var r = Math.round(v / step) * step;
      out.push({ v: r, major: true, label: Math.abs(r) >= 1000 ? +(r / 1000).toPrecision(4) + 'k' : String(+r.toPrecision(4)) });
    }
    return out;
  }

  function ticksIn(ax, scale) {
    if (!ax.log) { return niceTicks(scale.lo, scale.hi); }
    return ax.ticks.filter(function (t) { return t.v >= scale.lo - 1e-9 && t.v <= scale.hi + 1e-9; });
  }

  function defaultY(g) {
    // a one-dimension gate's plot starts as its histogram; its y, if a 2-D view is asked, side scatter
    var names = S.sample.channels.map(function (c) { return c.detector; });
    var x = g.axes[0].detector;
    return names.indexOf('SSC-A') >= 0 && x !== 'SSC-A' ? 'SSC-A' : names.filter(function (n) { return n !== x; })[0];
  }

  function makePlot(g, opt) {
    var small = !!opt.small, interactive = !small && opt.sample !== undefined;
    var W = small ? 130 : 250, H = small ? 130 : 250;
    var ML = small ? 8 : 56, MB = small ? 8 : 44, MT = 8, MR = 10;
    var svg = sv('svg', { width: ML + W + MR, height: MT + H + MB, 'class': 'plot', 'data-gate': g.path });
    var clipId = 'clip-' + (opt.prefix || 's') + '-' + opt.index;
    var defs = sv('defs');
    var clip = sv('clipPath', { id: clipId });
    clip.appendChild(sv('rect', { x: ML, y: MT, width: W, height: H }));
    defs.appendChild(clip);
    svg.appendChild(defs);
    svg.appendChild(sv('rect', { x: ML, y: MT, width: W, height: H, 'class': 'frame' }));
    var layer = sv('g', { 'clip-path': 'url(#' + clipId + ')' });
    svg.appendChild(layer);
    var popLayer = sv('g', { 'class': 'population' });
    layer.appendChild(popLayer);
    var gateLayer = sv('g', { 'class': 'gate' });
    layer.appendChild(gateLayer);
    var handleLayer = sv('g', { 'class': 'handles' });
    svg.appendChild(handleLayer);
    var axisLayer = sv('g', { 'class': 'axis' });
    svg.appendChild(axisLayer);

    var title = el('div', { 'class': 'title' });
    var kids = [title];
    var card = el('div', { 'class': 'card' + (small ? ' small' : ''), 'data-gate': g.path });
    var plot = {
      card: card, svg: svg, g: g, xs: null, ys: null, H: H, MT: MT, ML: ML, W: W, layers: [], fetchToken: 0,
      // the plot's axes ($PnN), what it shows, and its zoom window (null: the whole axes)
      st: { x: g.axes[0].detector, y: g.axes.length > 1 ? g.axes[1].detector : null,
        kind: g.axes.length > 1 ? 'density' : 'hist', win: null }
    };
    if (interactive) {
      if (!plot.st.y) { plot.st.y = defaultY(g); }
      // the axes and view chosen for this gate stay for the next sample; the zoom, on the same sample only
      var saved = S.views[g.path], names = S.sample.channels.map(function (c) { return c.detector; });
      if (saved && names.indexOf(saved.x) >= 0 && names.indexOf(saved.y) >= 0) {
        plot.st = { x: saved.x, y: saved.y, kind: saved.kind, win: S.viewsOf === opt.sample ? saved.win : null };
      }
      S.views[g.path] = plot.st;
      kids.push(plotControls(plot));
    }
    kids.push(svg);
    if (interactive) { kids.push(el('p', { 'class': 'axes-note' })); }
    kids.forEach(function (k) { card.appendChild(k); });

    plot.axes = function () {
      // the axes drawn: the chosen channels (a histogram: x only), or the gate's own outside the sample view
      if (!interactive) { return g.axes; }
      var by = {};
      S.sample.channels.forEach(function (c) { by[c.detector] = c; });
      return plot.st.kind === 'hist' ? [by[plot.st.x]] : [by[plot.st.x], by[plot.st.y]];
    };
    plot.own = function () {
      // the gate is drawn, and can be moved, on its own axes only
      if (!interactive) { return true; }
      var st = plot.st, dims = g.axes.map(function (a) { return a.detector; });
      return dims.length === 1 ? st.kind === 'hist' && st.x === dims[0]
        : st.kind !== 'hist' && st.x === dims[0] && st.y === dims[1];
    };
    plot.layout = function () {
      var axs = plot.axes(), win = plot.st.win;
      plot.xs = Scale({ range: win ? win[0] : axs[0].range }, ML, W, false);
      plot.ys = axs.length > 1 ? Scale({ range: win ? win[1] : axs[1].range }, MT, H, true) : null;
      svg.setAttribute('data-x', axs[0].detector);
      svg.setAttribute('data-y', axs.length > 1 ? axs[1].detector : '');
      svg.setAttribute('data-window', [plot.xs.lo, plot.xs.hi].concat(plot.ys ? [plot.ys.lo, plot.ys.hi] : []).join(','));
      svg.setAttribute('data-own', plot.own() ? '1' : '0');
      clear(axisLayer);
      if (!small) { drawAxes(axisLayer, axs, plot, ML, MT, W, H); }
      plot.layers.forEach(function (l) { placeLayer(plot, l); });
    };
    plot.setCount = function (count, parent, saved) {
      clear(title);
      var name = opt.label || g.name;
      var c = el('span', { 'class': 'count', id: small ? null : 'count-' + opt.index, 'data-count': count,
        text: fmtInt(count) });
      title.appendChild(el('b', { text: name + ': ' }));
      title.appendChild(c);
      title.appendChild(document.createTextNode(' (' + fmtPct(pctOf(count, parent), 1) + ' % of ' +
        (small ? 'parent' : fmtInt(parent)) + ')'));
      if (saved !== undefined && saved !== count) {
        title.appendChild(el('span', { 'class': 'was', text: ' saved: ' + fmtInt(saved) }));
        card.classList.add('moved');
      } else {
        card.classList.remove('moved');
      }
      if (g.adjusted && !small) { title.appendChild(el('span', { 'class': 'adjusted', text: ' (reviewer gate)' })); }
    };
    plot.url = function (extra) {
      var st = plot.st, u = '/api/sample/' + opt.sample + '/population?gate=' + encodeURIComponent(g.path) +
        '&x=' + encodeURIComponent(st.x) + (st.kind !== 'hist' ? '&y=' + encodeURIComponent(st.y) : '') +
        '&kind=' + st.kind;
      if (st.win) { u += '&window=' + st.win.slice(0, st.kind === 'hist' ? 1 : 2).map(function (w) { return w.join(','); }).join(','); }
      return u + (S.cand && extra.overlay === undefined ? '&cand=' + encodeURIComponent(S.cand) : '') +
        (extra.events ? '&events=' + extra.events : '') + (extra.overlay !== undefined ? '&overlay=' + extra.overlay : '') +
        (extra.tint !== undefined ? '&tint=' + extra.tint : '');
    };
    plot.population = function () {
      // the parent's events; another sample's over them; the gate's own events highlighted off its own axes
      var token = ++plot.fetchToken, st = plot.st;
      var win = plot.st.win ? plot.st.win : plot.axes().map(function (a) { return a.range; });
      var want = [{ role: 'parent', extra: {} }];
      if (S.overlay !== null && S.overlay !== undefined) {
        want.push({ role: 'overlay', extra: { overlay: S.overlay, tint: OVERLAY_TINT } });
      }
      if (!plot.own()) { want.push({ role: 'highlight', extra: { events: 'gate', tint: HIGHLIGHT_TINT } }); }
      var fresh = want.map(function (w) {
        return { role: w.role, url: plot.url(w.extra), win: win, kind: st.kind, tint: w.extra.tint };
      });
      fresh.forEach(function (l) {
        if (l.kind === 'hist') {
          api('GET', l.url).then(function (r) {
            if (token !== plot.fetchToken) { return; }
            l.hist = r; plot.layers = plot.layers.filter(function (o) { return o.role !== l.role || o === l; });
            if (plot.layers.indexOf(l) < 0) { plot.layers.push(l); }
            drawLayers(plot, popLayer);
          }).catch(showError);
          return;
        }
        image(l.url).then(function (href) {
          // fetched once as a data: URI (responses are no-store, so an <image> would fetch it again)
          if (token !== plot.fetchToken) { return; }
          l.href = href;
          plot.layers = plot.layers.filter(function (o) { return o.role !== l.role; }).concat([l]);
          drawLayers(plot, popLayer);
        }).catch(showError);
      });
      // a layer no longer asked for goes now; the others stay until their successor arrives
      plot.layers = plot.layers.filter(function (o) {
        return o.kind === st.kind && want.some(function (w) { return w.role === o.role; });
      });
      drawLayers(plot, popLayer);
      var note = card.querySelector('.axes-note');
      if (note) {
        note.textContent = plot.own() ? '' : g.name + ' is drawn on ' + g.axes.map(function (a) { return a.label; })
          .join(' × ') + (g.axes.length === 1 ? ' (histogram)' : '') + '; here its parent, with its events in red.';
      }
    };
    plot.refresh = function () {
      plot.layout();
      plot.population();
      plot.drawGate(S.cands[g.path] || g.geometry);
    };
    plot.image = function (dataUri, opacity) {
      popLayer.appendChild(sv('image', { href: dataUri, x: ML, y: MT, width: W, height: H,
        preserveAspectRatio: 'none', opacity: opacity === undefined ? null : opacity }));
    };
    plot.hist = function (counts, colour) { drawHist(popLayer, counts, plot, { colour: colour }); };
    plot.drawGate = function (geom, colour) {
      if (!colour) { clear(gateLayer); clear(handleLayer); }
      if (!geom || !plot.own()) { return; }
      drawGate(plot, gateLayer, geom, colour, interactive && !colour ? handleLayer : null);
    };
    if (interactive) { zoomable(plot); }
    plot.layout();
    if (interactive) {
      plot.setCount(g.count, g.parent_count);
      plot.population();
      plot.drawGate(g.geometry);
    }
    return plot;
  }

  function plotControls(plot) {
    // x, y, what is shown, and the zoom's reset: every plot of the sample view has its own
    var options = function (sel, value) {
      S.sample.channels.forEach(function (c) {
        sel.appendChild(el('option', { value: c.detector, text: c.label, selected: c.detector === value ? 'selected' : null }));
      });
      return sel;
    };
    var x = options(el('select', { 'class': 'axis-x', title: 'x axis' }), plot.st.x);
    var y = options(el('select', { 'class': 'axis-y', title: 'y axis' }), plot.st.y);
    var kind = el('select', { 'class': 'plot-kind', title: 'what is drawn' }, [
      el('option', { value: 'density', text: 'density' }), el('option', { value: 'contour', text: 'contour' }),
      el('option', { value: 'hist', text: 'histogram' })]);
    kind.value = plot.st.kind;
    y.disabled = plot.st.kind === 'hist';
    var reset = el('button', { type: 'button', 'class': 'zoom-reset', title: 'whole axes (0)', text: '⤢' });
    var changed = function () {
      var axesChanged = plot.st.x !== x.value || plot.st.y !== y.value || (plot.st.kind === 'hist') !== (kind.value === 'hist');
      plot.st.x = x.value; plot.st.y = y.value; plot.st.kind = kind.value;
      y.disabled = plot.st.kind === 'hist';
      if (axesChanged) { plot.st.win = null; }  // a window belongs to the axes it was zoomed on
      plot.refresh();
    };
    [x, y, kind].forEach(function (s) { s.addEventListener('change', changed); });
    reset.addEventListener('click', function () { unfocusButtons(); plot.st.win = null; plot.refresh(); });
    return el('div', { 'class': 'plot-controls' }, [el('label', {}, ['x ', x]), el('label', {}, ['y ', y]), kind, reset]);
  }

  function zoomable(plot) {
    // wheel: zoom around the pointer; drag on empty space (or Shift+drag anywhere): pan; both stay within
    // the whole axes, and the picture is binned again for the window once the wheel or drag stops
    var svg = plot.svg, timer = null;
    var full = function () { return plot.axes().map(function (a) { return a.range; }); };
    var current = function () { return [[plot.xs.lo, plot.xs.hi]].concat(plot.ys ? [[plot.ys.lo, plot.ys.hi]] : []); };
    var fit = function (w, f) {
      var span = Math.min(w[1] - w[0], f[1] - f[0]), lo = Math.max(f[0], Math.min(w[0], f[1] - span));
      return [lo, lo + span];
    };
    var apply = function (win) {
      var f = full();
      win = win.map(function (w, k) { return fit(w, f[k]); });
      var whole = win.every(function (w, k) { return Math.abs(w[0] - f[k][0]) < 1e-12 && Math.abs(w[1] - f[k][1]) < 1e-12; });
      plot.st.win = whole ? null : win;
      plot.layout();
      plot.drawGate(S.cands[plot.g.path] || plot.g.geometry);
      clearTimeout(timer);
      timer = setTimeout(plot.population, 200);
    };
    svg.addEventListener('wheel', function (e) {
      var p = svgPoint(plot, e);
      if (p.x < plot.ML || p.x > plot.ML + plot.W || p.y < plot.MT || p.y > plot.MT + plot.H) { return; }
      e.preventDefault();
      var f = e.deltaY < 0 ? 1 / 1.25 : 1.25, at = [plot.xs.val(p.x)].concat(plot.ys ? [plot.ys.val(p.y)] : []);
      apply(current().map(function (w, k) { return [at[k] - (at[k] - w[0]) * f, at[k] + (w[1] - at[k]) * f]; }));
    }, { passive: false });
    svg.addEventListener('pointerdown', function (e) {
      if (e.button !== 0 || (e.target.getAttribute('data-handle') && !e.shiftKey)) { return; }
      e.preventDefault();
      var p0 = svgPoint(plot, e), xs = plot.xs, ys = plot.ys, w0 = current();
      var move = function (ev) {
        var p = svgPoint(plot, ev), d = [xs.val(p0.x) - xs.val(p.x)].concat(ys ? [ys.val(p0.y) - ys.val(p.y)] : []);
        apply(w0.map(function (w, k) { return [w[0] + d[k], w[1] + d[k]]; }));
      };
      var up = function () { window.removeEventListener('pointermove', move); window.removeEventListener('pointerup', up); };
      window.addEventListener('pointermove', move);
      window.addEventListener('pointerup', up);
    });
  }

  function resetZoom() {
    Object.keys(S.plots).forEach(function (k) { var p = S.plots[k]; if (p.st.win) { p.st.win = null; p.refresh(); } });
  }

  function placeLayer(plot, l) {
    // an image binned on window l.win, placed where that window lies on the plot's current scales
    if (!l.node || l.kind === 'hist' || !plot.ys) { return; }  // a 2-D picture on its way out of a histogram
    var x0 = plot.xs.px(l.win[0][0]), x1 = plot.xs.px(l.win[0][1]);
    var y0 = plot.ys.px(l.win[1][1]), y1 = plot.ys.px(l.win[1][0]);
    setAttrs(l.node, { x: x0, y: y0, width: Math.max(0, x1 - x0), height: Math.max(0, y1 - y0) });
  }

  function image(url) {
    return fetch(url, { credentials: 'same-origin' }).then(function (r) {
      if (!r.ok) {
        return r.json().catch(function () { return {}; }).then(function (j) {
          if (r.status === 401 && j.login) { window.location.assign('/login'); }
          throw new Error(j.error || (r.status + ' ' + r.statusText));
        });
      }
      return r.blob().then(function (b) {
        return new Promise(function (resolve) {
          var rd = new FileReader();
          rd.onload = function () { resolve(rd.result); };
          rd.readAsDataURL(b);
        });
      });
    });
  }

  function drawLayers(plot, popLayer) {
    // parent first, the overlay over it, the highlight on top
    clear(popLayer);
    var order = { parent: 0, overlay: 1, highlight: 2 };
    var parentHist = plot.layers.filter(function (l) { return l.role === 'parent' && l.hist; })[0];
    plot.layers.slice().sort(function (a, b) { return order[a.role] - order[b.role]; }).forEach(function (l) {
      if (l.kind === 'hist') {
        if (!l.hist) { return; }
        // the highlight on the parent's scale (a part of it); an overlay on its own (another sample's size)
        var max = l.role === 'highlight' && parentHist ? Math.max.apply(null, parentHist.hist.hist.concat([1])) : null;
        drawHist(popLayer, l.hist.hist, plot, { colour: l.tint !== undefined ? TINT_RGB[l.tint] : null, range: l.hist.range,
          max: max, role: l.role, total: l.hist.events });
        return;
      }
      l.node = sv('image', { href: l.href, preserveAspectRatio: 'none', 'data-src': l.url,
        'class': (l.role === 'parent' ? 'density' : l.role) + ' ' + l.kind, opacity: l.role === 'overlay' && l.kind === 'density' ? 0.8 : null });
      placeLayer(plot, l);
      popLayer.appendChild(l.node);
    });
  }

  function drawAxes(layer, axes, plot, ML, MT, W, H) {
    var xs = plot.xs, ys = plot.ys;
    ticksIn(axes[0], xs).forEach(function (t) {
      var x = xs.px(t.v);
      layer.appendChild(sv('line', { x1: x, x2: x, y1: MT + H, y2: MT + H + (t.major ? 6 : 3) }));
      if (t.label) { layer.appendChild(sv('text', { x: x, y: MT + H + 17, 'text-anchor': 'middle', text: t.label })); }
    });
    layer.appendChild(sv('text', { x: ML + W / 2, y: MT + H + 36, 'text-anchor': 'middle', 'class': 'label',
      text: axes[0].label }));
    if (ys) {
      ticksIn(axes[1], ys).forEach(function (t) {
        var y = ys.px(t.v);
        layer.appendChild(sv('line', { x1: ML - (t.major ? 6 : 3), x2: ML, y1: y, y2: y }));
        if (t.label) { layer.appendChild(sv('text', { x: ML - 8, y: y + 4, 'text-anchor': 'end', text: t.label })); }
      });
      layer.appendChild(sv('text', { x: 14, y: MT + H / 2, 'text-anchor': 'middle', 'class': 'label',
        transform: 'rotate(-90 14 ' + (MT + H / 2) + ')', text: axes[1].label }));
    } else {
      layer.appendChild(sv('text', { x: 14, y: MT + H / 2, 'text-anchor': 'middle', 'class': 'label',
        transform: 'rotate(-90 14 ' + (MT + H / 2) + ')', text: 'events' }));
    }
  }

  function drawHist(layer, counts, plot, o) {
    // bins over o.range (default: the plot's x scale), placed on the plot's current x scale
    var MT = plot.MT, H = plot.H;
    var max = o.max || Math.max.apply(null, counts.concat([1]));
    var lo = o.range ? o.range[0] : plot.xs.lo, hi = o.range ? o.range[1] : plot.xs.hi;
    var n = counts.length, px = function (k) { return plot.xs.px(lo + (hi - lo) * k / n); };
    var d = 'M' + px(0) + ' ' + (MT + H);
    counts.forEach(function (c, k) {
      var y = MT + H - H * 0.95 * c / max;
      d += ' L' + px(k) + ' ' + y + ' L' + px(k + 1) + ' ' + y;
    });
    d += ' L' + px(n) + ' ' + (MT + H) + ' Z';
    var cls = o.role === 'highlight' ? 'hist highlight' : o.colour ? 'hist tinted' : 'hist';
    var path = sv('path', { d: d, 'class': cls + (o.role ? ' ' + o.role : ''), 'data-total': o.total });
    if (o.colour) { path.style.stroke = o.colour; if (o.role === 'highlight') { path.style.fill = o.colour; } }
    layer.appendChild(path);
  }

  function drawGate(plot, layer, geom, colour, handles) {
    var xs = plot.xs, ys = plot.ys, top = plot.MT, bottom = plot.MT + plot.H;
    var style = { 'class': colour ? 'shape tinted' : 'shape' };
    var tint = function (node) { if (colour) { node.style.stroke = colour; } return node; };  // CSSOM: CSP allows it
    var left = xs.px(xs.lo), right = xs.px(xs.hi);
    // a handle beyond the plot is drawn on its edge (hollow), so every handle can be reached
    var inX = function (x) { return Math.max(left, Math.min(right, x)); };
    var inY = function (y) { return Math.max(top, Math.min(bottom, y)); };
    if (geom.type === 'polygon') {
      var pts = geom.vertices.map(function (v) { return xs.px(v[0]) + ',' + ys.px(v[1]); }).join(' ');
      var shape = tint(sv('polygon', Object.assign({ points: pts }, style)));
      layer.appendChild(shape);
      if (handles) {
        shape.classList.add('movable');
        shape.setAttribute('data-handle', 'all');
        shape.addEventListener('pointerdown', function (e) { startDrag(e, plot, 'all'); });
        shape.addEventListener('dblclick', function (e) { addVertex(e, plot); });
        geom.vertices.forEach(function (v, k) {
          var px = xs.px(v[0]), py = ys.px(v[1]), cx = inX(px), cy = inY(py);
          var c = sv('circle', { cx: cx, cy: cy, r: 6, 'class': 'vertex' + (cx !== px || cy !== py ? ' clamped' : ''),
            'data-handle': 'v' + k });
          c.addEventListener('pointerdown', function (e) { startDrag(e, plot, 'v' + k); });
          c.addEventListener('dblclick', function (e) { deleteVertex(e, plot, k); });
          handles.appendChild(c);
        });
      }
      return;
    }
    var b = geom.bounds;
    var x0 = xs.px(xs.edge(b[0][0], false)), x1 = xs.px(xs.edge(b[0][1], true));
    var y0 = ys ? ys.px(ys.edge(b[1][0], false)) : bottom + 50, y1 = ys ? ys.px(ys.edge(b[1][1], true)) : top - 50;
    var box = tint(sv('rect', Object.assign({ x: Math.min(x0, x1), y: Math.min(y0, y1), width: Math.abs(x1 - x0),
      height: Math.abs(y1 - y0) }, style)));
    layer.appendChild(box);
    if (!handles) { return; }
    box.classList.add('movable');
    box.setAttribute('data-handle', 'all');
    box.addEventListener('pointerdown', function (e) { startDrag(e, plot, 'all'); });
    var clampY = inY, clampX = inX;
    var edges = [];
    if (b[0][0] !== null) { edges.push(['x-min', x0, clampY(y1), x0, clampY(y0)]); }
    if (b[0][1] !== null) { edges.push(['x-max', x1, clampY(y1), x1, clampY(y0)]); }
    if (ys && b[1][0] !== null) { edges.push(['y-min', clampX(x0), y0, clampX(x1), y0]); }
    if (ys && b[1][1] !== null) { edges.push(['y-max', clampX(x0), y1, clampX(x1), y1]); }
    edges.forEach(function (e) {
      var line = sv('line', { x1: e[1], y1: e[2], x2: e[3], y2: e[4], 'class': 'edge', 'data-handle': e[0] });
      line.addEventListener('pointerdown', function (ev) { startDrag(ev, plot, e[0]); });
      handles.appendChild(line);
    });
    if (ys) {
      [['x-min', 'y-min', x0, y0], ['x-min', 'y-max', x0, y1], ['x-max', 'y-min', x1, y0], ['x-max', 'y-max', x1, y1]]
        .forEach(function (c) {
          var xi = c[0] === 'x-min' ? 0 : 1, yi = c[1] === 'y-min' ? 0 : 1;
          if (b[0][xi] === null || b[1][yi] === null) { return; }
          var name = c[0] + ',' + c[1];
          var dot = sv('circle', { cx: inX(c[2]), cy: inY(c[3]), r: 6, 'data-handle': name,
            'class': 'corner' + (inX(c[2]) !== c[2] || inY(c[3]) !== c[3] ? ' clamped' : '') });
          dot.addEventListener('pointerdown', function (ev) { startDrag(ev, plot, name); });
          handles.appendChild(dot);
        });
    }
  }

  function geometryOf(g) {
    return JSON.parse(JSON.stringify(S.cands[g.path] || g.geometry));
  }

  function svgPoint(plot, e) {
    var pt = plot.svg.createSVGPoint();
    pt.x = e.clientX; pt.y = e.clientY;
    return pt.matrixTransform(plot.svg.getScreenCTM().inverse());
  }

  function remember() {
    // the moved gates as they are before a step: undo restores them
    S.history.push(JSON.stringify(S.cands));
    S.future = [];
  }

  function startDrag(ev, plot, handle) {
    if (ev.button !== 0 || ev.detail > 1) { return; }  // a double click adds or deletes a vertex instead
    if (ev.shiftKey) { return; }  // Shift+drag pans the plot, even over the gate
    ev.preventDefault();
    var start = geometryOf(plot.g), geom = geometryOf(plot.g), moved = false, before = JSON.stringify(S.cands);
    var p0 = svgPoint(plot, ev), x0 = plot.xs.val(p0.x), y0 = plot.ys ? plot.ys.val(p0.y) : null;
    var move = function (e) {
      var p = svgPoint(plot, e);
      var x = plot.xs.val(p.x), y = plot.ys ? plot.ys.val(p.y) : null;
      if (handle === 'all') {  // the whole gate: every vertex or bound by the pointer's move
        var dx = x - x0, dy = y === null ? 0 : y - y0;
        if (geom.type === 'polygon') {
          geom.vertices = start.vertices.map(function (v) { return [v[0] + dx, v[1] + dy]; });
        } else {
          geom.bounds = start.bounds.map(function (b, dim) {
            var d = dim === 0 ? dx : dy;
            return b.map(function (v) { return v === null ? null : v + d; });
          });
        }
      } else if (geom.type === 'polygon') {
        geom.vertices[Number(handle.slice(1))] = [x, y];
      } else {
        handle.split(',').forEach(function (h) {
          var dim = h[0] === 'x' ? 0 : 1, side = h.slice(2) === 'min' ? 0 : 1, v = dim === 0 ? x : y;
          var other = geom.bounds[dim][1 - side], eps = 1e-3;
          if (other !== null) { v = side === 0 ? Math.min(v, other - eps) : Math.max(v, other + eps); }
          geom.bounds[dim][side] = v;
        });
      }
      moved = true;
      S.cands[plot.g.path] = geom;
      plot.drawGate(geom);
    };
    var up = function () {
      window.removeEventListener('pointermove', move);
      window.removeEventListener('pointerup', up);
      if (moved) {
        S.history.push(before);
        S.future = [];
        recount(plot.g.path);
      }
    };
    window.addEventListener('pointermove', move);
    window.addEventListener('pointerup', up);
  }

  function recount(movedPath) {
    var i = S.current, t0 = performance.now(), token = ++S.recountToken;
    message('Recounting…');
    return api('POST', '/api/sample/' + i + '/recount', { version: S.sample.sample.version, gates: S.cands })
      .then(function (r) {
        // only the latest step's counts: an earlier recount answering late (after an undo) is dropped
        if (S.current !== i || token !== S.recountToken) { return; }
        S.cand = r.cand;
        Object.keys(r.geometry).forEach(function (p) { S.cands[p] = r.geometry[p]; });
        var saved = {};
        S.sample.gates.forEach(function (g) { saved[g.path] = g.count; });
        r.counts.forEach(function (c) {
          var plot = S.plots[c.path];
          if (!plot) { return; }
          plot.setCount(c.count, c.parent_count, saved[c.path]);
          foldWhole(c.path, c.count, c.parent_count);
          if (S.cands[c.path]) { plot.drawGate(S.cands[c.path]); }
          var below = Object.keys(S.cands).some(function (m) { return c.path.indexOf(m + '/') === 0; });
          // a parent changed below a moved gate; off its own axes, a moved gate's highlighted events changed
          if (r.cand && (below || (S.cands[c.path] && !plot.own()))) { plot.population(); }
        });
        $('treg-candidate').textContent = 'with the moved gate: ' + fmtPct(r.treg.pct) + ' % (' +
          fmtInt(r.treg.count) + ' of ' + fmtInt(r.treg.cd4) + '), not saved · ';
        $('latency').textContent = ' · recount ' + Math.round(performance.now() - t0) + ' ms';
        message('Moved ' + movedPath.split('/').pop() + ': press a to approve with it, e to save it, Esc to undo.');
      }).catch(showError);
  }

  function addVertex(ev, plot) {
    // a new vertex where the double click was, on the nearest edge
    ev.preventDefault();
    var geom = geometryOf(plot.g), p = svgPoint(plot, ev), best = 0, bestD = Infinity;
    var px = geom.vertices.map(function (v) { return [plot.xs.px(v[0]), plot.ys.px(v[1])]; });
    px.forEach(function (a, k) {
      var b = px[(k + 1) % px.length], dx = b[0] - a[0], dy = b[1] - a[1];
      var t = Math.max(0, Math.min(1, ((p.x - a[0]) * dx + (p.y - a[1]) * dy) / (dx * dx + dy * dy || 1)));
      var d = Math.hypot(a[0] + t * dx - p.x, a[1] + t * dy - p.y);
      if (d < bestD) { bestD = d; best = k; }
    });
    remember();
    geom.vertices.splice(best + 1, 0, [plot.xs.val(p.x), plot.ys.val(p.y)]);
    S.cands[plot.g.path] = geom;
    plot.drawGate(geom);
    recount(plot.g.path);
  }

  function deleteVertex(ev, plot, k) {
    ev.preventDefault();
    ev.stopPropagation();
    var geom = geometryOf(plot.g);
    if (geom.vertices.length <= 3) { message('A polygon keeps at least 3 vertices.', 'error'); return; }
    remember();
    geom.vertices.splice(k, 1);
    S.cands[plot.g.path] = geom;
    plot.drawGate(geom);
    recount(plot.g.path);
  }

  function restore(cands) {
    // the moved gates of one step before or after: drawn, then counted (the saved gates when none is moved)
    S.cands = JSON.parse(cands);
    var paths = Object.keys(S.cands);
    if (!paths.length) {
      var keep = { history: S.history, future: S.future };
      return openSample(S.current, true).then(function () { S.history = keep.history; S.future = keep.future;
        message('Back to the saved gates.'); });
    }
    S.sample.gates.forEach(function (g) {
      var plot = S.plots[g.path];
      if (plot) { plot.drawGate(S.cands[g.path] || g.geometry); }
    });
    return recount(paths[paths.length - 1]);
  }

  function undo() {
    if (S.current === null) { return; }
    if (!S.history.length) { message('Nothing to undo.'); return; }
    S.future.push(JSON.stringify(S.cands));
    restore(S.history.pop());
  }

  function redo() {
    if (S.current === null) { return; }
    if (!S.future.length) { message('Nothing to redo.'); return; }
    S.history.push(JSON.stringify(S.cands));
    restore(S.future.pop());
  }

  function sampleName() {
    var s = S.sample.sample;
    return s.patient + ' ' + s.visit;
  }

  function unfocusButtons() {
    // a decision button that kept the focus would take the next Space or Enter as a decision on the
    // sample opened after this one, unseen
    var a = document.activeElement;
    if (a && a.tagName === 'BUTTON') { a.blur(); }
  }

  function decide(action) {
    unfocusButtons();
    if (!S.sample || S.current === null) { return; }
    if (!S.reviewer) { askName(); return; }
    var i = S.current, moved = Object.keys(S.cands).length > 0, flags = S.sample.sample.flags || [];
    if (action === 'adjust' && !moved) { message('Nothing to save: drag a gate edge, corner or vertex first.', 'error'); return; }
    // approving a flagged sample is a judgement against the QC: it needs its reason, as a rejection does
    var flagged = action === 'approve' && !moved && flags.length > 0;
    var needReason = action === 'reject' || moved || flagged;
    var label = action === 'reject' ? 'Why is ' + sampleName() + ' rejected?'
      : flagged ? sampleName() + ' is flagged (' + flags.join(', ') + '). Why approve it?'
      : 'Why was the gate of ' + sampleName() + ' moved?' + (action === 'approve' ? ' (It is then approved.)' : '');
    var next = nextUndecided(i);  // the next in queue order now: the queue is sorted again after the decision
    (needReason ? ask(label, '') : Promise.resolve('')).then(function (reason) {
      if (reason === null) { return; }
      if (needReason && !reason.trim()) { message('A reason is needed; nothing was recorded.', 'error'); return; }
      message('Recording…');
      return api('POST', '/api/sample/' + i + '/decision', { version: S.sample.sample.version, action: action,
        reason: reason, gates: action === 'reject' ? {} : S.cands }).then(function (r) {
        var what = r.records.map(function (x) { return x.action; }).join(' + ');
        message(what + ' recorded for ' + sampleName() + ' in review.jsonl' +
          (r.recomputed ? '; Treg % CD4 now ' + fmtPct(r.sample.treg_pct) : ''), 'ok');
        return refresh().then(function () {
          return openSample(action === 'adjust' ? i : next, true);
        });
      });
    }).catch(showError);
  }

  function approveUnflagged() {
    // one confirmation for every pending sample without a flag: a summary, a reason, one line a sample
    unfocusButtons();
    if (!S.reviewer) { askName(); return; }
    var rows = S.queue.filter(function (r) { return r.group === 2 && !r.flags.length && !r.error; });
    if (!rows.length) { message('No pending sample without a flag.', 'error'); return; }
    var names = rows.map(function (r) { return r.patient + ' ' + r.visit + ' (' + fmtPct(r.treg_pct) + ' %)'; });
    var label = 'Approve these ' + rows.length + ' unflagged samples, one decision each: ' + names.join(', ') +
      '. What did you check?';
    ask(label, 'checked in the batch view: no flag, gates as placed').then(function (reason) {
      if (reason === null) { return; }
      if (!reason.trim()) { message('A reason is needed; nothing was recorded.', 'error'); return; }
      var versions = {};
      rows.forEach(function (r) { versions[r.i] = r.version; });
      message('Recording ' + rows.length + ' approvals…');
      return api('POST', '/api/approve-unflagged', { versions: versions, reason: reason }).then(function (r) {
        var text = r.approved.length + ' approved' + (r.skipped.length ? '; left out: ' + r.skipped.map(function (s) {
          return s.sample + ' (' + s.why + ')'; }).join(', ') : '');
        message(text, r.skipped.length ? 'error' : 'ok');
        return refresh().then(function () { if (S.current !== null) { openSample(S.current, true); } });
      });
    }).catch(showError);
  }

  function showError(e) {
    message(e.message || String(e), 'error');
    if (e.stale && S.current !== null) { refresh().then(function () { openSample(S.current, true); }); }
  }

  // -- one gate across the batch ----------------------------------------------------------------

  function fillBatchControls() {
    var sel = $('batch-gate');
    if (sel.options.length) { return; }
    S.gates.forEach(function (g) {
      var o = el('option', { value: g, text: g.split('/').slice(1).join(' / ') });
      if (g === S.numerator) { o.selected = true; }
      sel.appendChild(o);
    });
  }

  function showView(v) {
    S.view = v;
    $('sample-view').hidden = v !== 'sample';
    $('batch-view').hidden = v !== 'batch';
    $('tab-sample').className = v === 'sample' ? 'on' : '';
    $('tab-batch').className = v === 'batch' ? 'on' : '';
    if (v === 'batch') { loadBatch(); }
  }

  function loadBatch() {
    var gate = $('batch-gate').value || S.numerator, token = ++S.batchToken;
    var patient = $('batch-patient').value;
    message('Loading ' + gate.split('/').pop() + ' for every sample…');
    return api('GET', '/api/batch?gate=' + encodeURIComponent(gate)).then(function (b) {
      if (token !== S.batchToken) { return; }
      S.batch = b;
      var psel = $('batch-patient');
      if (psel.options.length === 1) {
        b.patients.forEach(function (p) { psel.appendChild(el('option', { value: p, text: p })); });
      }
      $('batch-axes').textContent = 'Every plot has the same axes: ' + b.axes.map(function (a) { return a.label; })
        .join(' × ') + '. Red frame: ' + b.outlier_rule + '. Click a plot to open it.';
      var grid = clear($('batch-grid'));
      var plots = [];
      b.samples.forEach(function (s, k) {
        var g = { path: b.gate, name: s.patient + ' ' + s.visit, axes: b.axes, geometry: null };
        var p = makePlot(g, { index: k, small: true, prefix: 'b', label: s.patient + ' ' + s.visit });
        p.card.classList.add('thumb');
        if (s.outlier) { p.card.classList.add('outlier'); }
        if (s.count !== null) { p.setCount(s.count, s.parent_count); } else { p.card.appendChild(el('p', { text: 'not gated' })); }
        p.card.appendChild(el('p', { 'class': 'thumb-status ' + s.review_status,
          text: s.review_status + (s.flags.length ? ' · ' + s.flags.join(', ') : '') }));
        p.card.setAttribute('data-i', s.i);
        p.card.addEventListener('click', function () { showView('sample'); openSample(s.i); });
        grid.appendChild(p.card);
        plots.push([s, p]);
      });
      renderOverlay(b, patient, token);
      fetchThumbs(plots, gate, token);
      message('');
    }).catch(showError);
  }

  function fetchThumbs(plots, gate, token) {
    var next = 0;
    var work = function () {
      if (token !== S.batchToken || next >= plots.length) { return Promise.resolve(); }
      var item = plots[next++], s = item[0], p = item[1];
      if (s.error) { return work(); }
      return api('GET', '/api/thumb/' + s.i + '?gate=' + encodeURIComponent(gate)).then(function (t) {
        if (t.image) { p.image(t.image); } else if (t.hist) { p.hist(t.hist, null); }
        if (t.geometry) { p.drawGate(t.geometry); }
      }).catch(function (e) { p.card.appendChild(el('p', { 'class': 'error', text: e.message })); }).then(work);
    };
    work(); work();  // two at a time: each reads and gates one file
  }

  function renderOverlay(b, patient, token) {
    var box = clear($('overlay'));
    if (!patient) { return; }
    var visits = b.samples.filter(function (s) { return s.patient === patient; });
    var g = { path: b.gate, name: patient + ': every visit', axes: b.axes, geometry: null };
    var p = makePlot(g, { index: 0, prefix: 'o', label: patient });
    var legend = el('ul', { 'class': 'legend' });
    box.appendChild(el('h3', { text: 'Patient ' + patient + ', ' + b.gate.split('/').pop() + ' at every visit' }));
    box.appendChild(p.card);
    box.appendChild(legend);
    p.card.firstChild.textContent = '';
    visits.forEach(function (s, k) {
      var colour = 'rgb(' + b.tints[k % b.tints.length].join(',') + ')';
      legend.appendChild(el('li', {}, [el('span', { 'class': 'swatch', 'data-colour': k }),
        s.visit + ': ' + fmtInt(s.count) + ' (' + fmtPct(pctOf(s.count, s.parent_count), 1) + ' %)']));
      legend.lastChild.firstChild.style.background = colour;
      if (s.error) { return; }
      api('GET', '/api/thumb/' + s.i + '?gate=' + encodeURIComponent(b.gate) + '&tint=' + k).then(function (t) {
        if (token !== S.batchToken) { return; }
        if (t.image) { p.image(t.image, 0.75); } else if (t.hist) { p.hist(t.hist, colour); }
        if (t.geometry) { p.drawGate(t.geometry, colour); }
      }).catch(showError);
    });
  }

  // -- start -----------------------------------------------------------------------------------

  function onKey(e) {
    if (!$('modal').hidden || e.ctrlKey || e.metaKey || e.altKey) { return; }
    var tag = (e.target && e.target.tagName) || '';
    if (tag === 'INPUT' || tag === 'SELECT' || tag === 'TEXTAREA') { return; }
    if (e.key === '?' || (e.key === 'Escape' && !$('help').hidden)) { e.preventDefault(); toggleHelp(); return; }
    var acts = { j: function () { step(1); }, k: function () { step(-1); }, a: function () { decide('approve'); },
      r: function () { decide('reject'); }, e: function () { decide('adjust'); }, Escape: undo, z: undo, y: redo,
      0: resetZoom };
    if (acts[e.key] && S.view === 'sample') { e.preventDefault(); acts[e.key](); }
  }

  function init() {
    $('modal-form').addEventListener('submit', function (e) { e.preventDefault(); closeModal($('modal-input').value); });
    $('modal-cancel').addEventListener('click', function () { closeModal(null); });
    $('modal-input').addEventListener('keydown', function (e) { if (e.key === 'Escape') { closeModal(null); } });
    $('btn-approve').addEventListener('click', function () { decide('approve'); });
    $('btn-reject').addEventListener('click', function () { decide('reject'); });
    $('btn-edit').addEventListener('click', function () { decide('adjust'); });
    $('btn-undo').addEventListener('click', function () { unfocusButtons(); undo(); });
    $('btn-redo').addEventListener('click', function () { unfocusButtons(); redo(); });
    $('btn-approve-unflagged').addEventListener('click', approveUnflagged);
    $('tab-sample').addEventListener('click', function () { showView('sample'); });
    $('tab-batch').addEventListener('click', function () { showView('batch'); });
    $('batch-gate').addEventListener('change', loadBatch);
    $('queue-filter').addEventListener('input', renderQueue);
    $('queue-show').addEventListener('change', renderQueue);
    Array.prototype.forEach.call(document.querySelectorAll('#queue th[data-sort]'), function (th) {
      th.addEventListener('click', function () {
        var key = th.getAttribute('data-sort');
        if (S.sort === key) { S.sortDir = -S.sortDir; } else { S.sort = key; S.sortDir = 1; }
        renderQueue();
      });
    });
    $('batch-patient').addEventListener('change', loadBatch);
    document.addEventListener('keydown', onKey);
    refresh().then(function () {
      if (S.queue.length) { openSample(S.queue[0].i); }
      if (!S.reviewer) { return askName(); }
    }).catch(showError);
  }

  init();
}());
