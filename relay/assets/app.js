// o1 dashboard: the first client of o1's public WebSocket API and REST.
// One WebSocket per page, reconnecting with exponential backoff and
// jitter, resubscribing, and resuming log and deployment streams with
// `since`. No framework; uPlot draws the charts.
'use strict';

(() => {
  const main = document.getElementById('main');
  const stateEl = document.getElementById('connection');

  // ---------------------------------------------------------------- helpers
  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'class') node.className = value;
      // Through the CSSOM: the Content-Security-Policy allows no style attributes.
      else if (key === 'style') node.style.cssText = value;
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? '' : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }
  const pct = (v) => (typeof v === 'number' ? v.toFixed(1) + '%' : '–');
  const bytes = (v) => {
    if (typeof v !== 'number') return '–';
    const units = ['B', 'KB', 'MB', 'GB', 'TB'];
    let i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return v.toFixed(v < 10 && i > 0 ? 1 : 0) + ' ' + units[i];
  };
  const rate = (v) => (typeof v === 'number' ? bytes(v) + '/s' : '–');
  const time = (t) => (t ? new Date(t).toLocaleTimeString() : '–');
  const ago = (t) => {
    if (!t) return '–';
    const s = Math.max(0, Math.round((Date.now() - new Date(t).getTime()) / 1000));
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.round(s / 60) + ' min ago';
    if (s < 86400) return Math.round(s / 3600) + ' h ago';
    return Math.round(s / 86400) + ' d ago';
  };

  // ------------------------------------------------------------------ token
  const TOKEN_KEY = 'o1.token';
  const token = () => sessionStorage.getItem(TOKEN_KEY);

  function askToken(reason) {
    conn.stop();
    setState('failed', 'authentication needed');
    main.replaceChildren(
      h('h1', {}, 'This relay needs a token'),
      h('p', { class: 'muted' }, reason || 'Enter a reader token (o1-relay token create --role reader).'),
      h('form', {
        class: 'token',
        onsubmit: (e) => {
          e.preventDefault();
          const value = e.target.elements.token.value.trim();
          if (value) { sessionStorage.setItem(TOKEN_KEY, value); location.reload(); }
        },
      },
      h('label', { for: 'token' }, 'Token'),
      h('input', { id: 'token', name: 'token', type: 'password', autocomplete: 'off', required: true }),
      h('button', { type: 'submit' }, 'Open the dashboard')),
    );
    const input = document.getElementById('token');
    if (input) input.focus();
  }

  async function rest(path) {
    const headers = {};
    if (token()) headers.Authorization = 'Bearer ' + token();
    const response = await fetch(path, { headers });
    if (response.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      askToken();
      throw new Error('unauthorized');
    }
    if (!response.ok) throw new Error(path + ': HTTP ' + response.status);
    return response.json();
  }

  // ------------------------------------------------------------- connection
  function setState(kind, text) {
    stateEl.className = 'state ' + kind;
    stateEl.textContent = text;
  }

  // What every error code of the API means to a person.
  const HUMAN = {
    connection_failed: 'The relay refused the connection (too many connections); retrying.',
    subscription_failed: 'The subscription failed',
    rate_limit_exceeded: 'Too many requests; slowing down.',
    invalid_message: 'The dashboard sent something the relay did not understand',
    subscription_not_found: 'That subscription no longer exists',
    unauthorized: 'Not allowed with this token',
  };

  class Connection {
    constructor() {
      this.subs = new Map(); // key -> { request, onMessage, onError, resume, id, epoch, offset }
      this.byId = new Map(); // subscriptionId -> key
      this.attempt = 0;
      this.ws = null;
      this.stopped = false;
      this.countdown = null;
      this.listeners = [];
    }

    start() { this.open(); }

    stop() {
      this.stopped = true;
      clearInterval(this.countdown);
      if (this.ws) this.ws.close();
    }

    onOpen(listener) { this.listeners.push(listener); }

    open() {
      if (this.stopped) return;
      const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
      const ws = new WebSocket(scheme + '//' + location.host + '/api/websocket');
      this.ws = ws;
      setState('reconnecting', this.attempt ? 'reconnecting…' : 'connecting…');
      ws.onopen = () => {
        this.attempt = 0;
        setState('connected', 'connected');
        if (token()) this.send({ type: 'authenticate', token: token(), requestId: 'auth' });
        this.byId.clear();
        for (const key of this.subs.keys()) this.sendSubscribe(key);
        this.listeners.forEach((l) => l());
        clearInterval(this.ping);
        this.ping = setInterval(() => this.send({ type: 'ping' }), 20000);
      };
      ws.onmessage = (event) => {
        let message;
        try { message = JSON.parse(event.data); } catch { return; }
        this.dispatch(message);
      };
      ws.onclose = (event) => {
        clearInterval(this.ping);
        if (this.ws !== ws || this.stopped) return;
        if (event.code === 4001) {
          sessionStorage.removeItem(TOKEN_KEY);
          askToken('The relay did not accept the token.');
          return;
        }
        this.retry(event.code === 1013 ? 'the relay is full' : '');
      };
    }

    // Exponential backoff with full jitter, at most 30 s.
    retry(why) {
      const ceiling = Math.min(30, 0.5 * 2 ** this.attempt);
      const delay = ceiling / 2 + Math.random() * (ceiling / 2);
      this.attempt++;
      let left = Math.ceil(delay);
      const tick = () => setState('reconnecting', 'reconnecting in ' + left + ' s' + (why ? ' (' + why + ')' : ''));
      tick();
      clearInterval(this.countdown);
      this.countdown = setInterval(() => { left = Math.max(0, left - 1); tick(); }, 1000);
      setTimeout(() => { clearInterval(this.countdown); this.open(); }, delay * 1000);
    }

    send(message) {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
    }

    subscribe(key, request, handlers) {
      this.unsubscribe(key);
      this.subs.set(key, { request, ...handlers, id: null, epoch: null, offset: null });
      this.sendSubscribe(key);
    }

    unsubscribe(key) {
      const sub = this.subs.get(key);
      if (!sub) return;
      if (sub.id) {
        this.send({ type: 'unsubscribe', subscriptionId: sub.id });
        this.byId.delete(sub.id);
      }
      this.subs.delete(key);
    }

    sendSubscribe(key) {
      const sub = this.subs.get(key);
      if (!sub) return;
      const request = { ...sub.request, requestId: key };
      // Resume where the last connection stopped, where the API offers it.
      if (sub.resume && sub.offset !== null && sub.epoch !== null) {
        request.since = { offset: sub.offset, epoch: sub.epoch };
        delete request.tail;
      }
      this.send(request);
    }

    dispatch(message) {
      if (message.type === 'pong' || message.type === 'authenticated') return;
      if (message.type === 'subscribed') {
        const sub = this.subs.get(message.requestId);
        if (!sub) return;
        sub.id = message.subscriptionId;
        sub.epoch = message.epoch ?? sub.epoch;
        this.byId.set(sub.id, message.requestId);
        return;
      }
      if (message.type === 'error') {
        if (message.code === 'rate_limit_exceeded') {
          setState('limited', 'rate-limited, retry in ' + (message.retryAfter || 1) + ' s');
          const key = message.requestId;
          if (key && this.subs.has(key)) setTimeout(() => this.sendSubscribe(key), (message.retryAfter || 1) * 1000);
          return;
        }
        if (message.code === 'unauthorized' && message.requestId === 'auth') {
          sessionStorage.removeItem(TOKEN_KEY);
          askToken('The relay did not accept the token.');
          return;
        }
        const sub = this.subs.get(message.requestId);
        const text = (HUMAN[message.code] || message.code) + ': ' + message.message;
        if (sub && sub.onError) sub.onError(text, message);
        else if (message.code === 'unauthorized' && !token()) askToken();
        return;
      }
      const key = this.byId.get(message.subscriptionId);
      const sub = key && this.subs.get(key);
      if (!sub) return;
      if (typeof message.offset === 'number') sub.offset = message.offset;
      sub.onMessage(message);
    }
  }

  const conn = new Connection();

  // ---------------------------------------------------------------- charts
  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

  function sparkline(canvas, values) {
    const ctx = canvas.getContext('2d');
    const w = canvas.width, hgt = canvas.height;
    ctx.clearRect(0, 0, w, hgt);
    if (values.length < 2) return;
    ctx.strokeStyle = css('--accent');
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    values.forEach((v, i) => {
      const x = (i / (values.length - 1)) * (w - 2) + 1;
      const y = hgt - 1 - (Math.min(100, Math.max(0, v)) / 100) * (hgt - 2);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }

  // ----------------------------------------------------------------- fleet
  function fleetPage() {
    const hosts = new Map(); // host -> { view, metrics, cpu: [], seen }
    let sortKey = 'host', sortDir = 1, filter = '', renderQueued = false;
    const tbody = h('tbody');
    const columns = [
      ['host', 'Host'], ['status', 'Status'], ['cpu', 'CPU'], ['memory', 'Memory'],
      ['disk', 'Disk'], ['network', 'Network rx / tx'], ['trend', 'CPU, last minutes'],
    ];
    const headRow = h('tr', {}, columns.map(([key, label]) => h('th', {
      scope: 'col', tabindex: key === 'trend' ? null : 0, 'data-key': key,
      class: ['trend', 'network', 'disk'].includes(key) ? 'hide-narrow' : null,
      onclick: () => sortBy(key),
      onkeydown: (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); sortBy(key); } },
    }, label)));
    function sortBy(key) {
      if (key === 'trend') return;
      sortDir = sortKey === key ? -sortDir : 1;
      sortKey = key;
      render();
    }
    main.replaceChildren(
      h('h1', {}, 'Fleet'),
      h('div', { class: 'toolbar' }, h('label', {}, 'Filter by name',
        h('input', { type: 'search', id: 'filter', placeholder: 'web-', oninput: (e) => { filter = e.target.value; render(); } }))),
      h('div', { class: 'table-wrap' }, h('table', { id: 'fleet' }, h('thead', {}, headRow), tbody)),
      h('p', { class: 'muted', id: 'empty' }, ''),
    );
    const entry = (host) => {
      if (!hosts.has(host)) hosts.set(host, { view: null, metrics: null, cpu: [], seen: 0 });
      return hosts.get(host);
    };
    const stale = (e) => !e.view || !e.view.connected || Date.now() - e.seen > 5000;
    const value = (e, key) => {
      switch (key) {
        case 'host': return e.view ? e.view.host : '';
        case 'status': return stale(e) ? 1 : 0;
        case 'network': return e.metrics && e.metrics.network ? e.metrics.network.rxBytesPerSecond : -1;
        default: return e.metrics && typeof e.metrics[key] === 'number' ? e.metrics[key] : -1;
      }
    };
    function render() {
      const rows = [...hosts.entries()]
        .filter(([host, e]) => e.view && host.toLowerCase().includes(filter.toLowerCase()))
        .sort(([, a], [, b]) => {
          const x = value(a, sortKey), y = value(b, sortKey);
          return (x < y ? -1 : x > y ? 1 : 0) * sortDir;
        });
      for (const th of headRow.children) {
        th.setAttribute('aria-sort', th.dataset.key === sortKey ? (sortDir > 0 ? 'ascending' : 'descending') : 'none');
      }
      tbody.replaceChildren(...rows.map(([host, e]) => {
        const m = e.metrics || {};
        const status = !e.view.connected
          ? h('span', { class: 'badge err' }, 'disconnected ' + ago(e.view.lastSeen))
          : !e.seen
            ? h('span', { class: 'badge warn' }, 'waiting for samples')
            : stale(e)
              ? h('span', { class: 'badge warn' }, 'stale: no sample for ' + ago(e.seen).replace(' ago', ''))
            : h('span', { class: 'badge ok', title: 'since ' + e.view.connectedSince }, 'connected ' + ago(e.view.connectedSince).replace(' ago', ''));
        const canvas = h('canvas', { class: 'spark', width: 120, height: 24, 'aria-hidden': 'true' });
        sparkline(canvas, e.cpu.map((p) => p[1]));
        return h('tr', { class: stale(e) ? 'stale' : null, 'data-host': host },
          h('td', {}, h('a', { href: '/hosts/' + encodeURIComponent(host) }, host)),
          h('td', {}, status),
          h('td', { class: 'num cpu' }, pct(m.cpu)),
          h('td', { class: 'num' }, pct(m.memory)),
          h('td', { class: 'num hide-narrow' }, pct(m.disk)),
          h('td', { class: 'num hide-narrow' }, m.network ? rate(m.network.rxBytesPerSecond) + ' / ' + rate(m.network.txBytesPerSecond) : '–'),
          h('td', { class: 'hide-narrow' }, canvas));
      }));
      document.getElementById('empty').textContent = rows.length ? '' : (hosts.size ? 'No host matches.' : 'No host has reported yet.');
    }
    async function inventory() {
      try {
        const body = await rest('/api/hosts');
        for (const view of body.hosts) entry(view.host).view = view;
        render();
      } catch (e) { /* shown by the state or the token form */ }
    }
    inventory();
    setInterval(inventory, 5000);
    setInterval(render, 1000);
    conn.subscribe('fleet', { type: 'subscribe-metrics', application: 'system', history: 300 }, {
      onMessage: (m) => {
        const e = entry(m.host);
        const at = new Date(m.timestamp).getTime();
        e.cpu.push([at, m.cpu]);
        while (e.cpu.length && e.cpu[0][0] < Date.now() - 5 * 60 * 1000) e.cpu.shift();
        if (!e.metrics || at >= new Date(e.metrics.timestamp).getTime()) {
          e.metrics = m;
          e.seen = Date.now();
        }
        // At most one render per animation frame, however many hosts report.
        if (!renderQueued) {
          renderQueued = true;
          requestAnimationFrame(() => { renderQueued = false; render(); });
        }
      },
    });
  }

  // ------------------------------------------------------------------ host
  function hostPage(host) {
    const WINDOW = 15 * 60 * 1000;
    const apps = new Map(); // application -> { card, plot, data: [[t],[cpu],[mem]] }
    const grid = h('div', { class: 'cards' });
    main.replaceChildren(
      h('h1', {}, host),
      h('p', {}, h('a', { href: '/logs?host=' + encodeURIComponent(host) }, 'Logs of ' + host)),
      grid,
      h('p', { class: 'muted', id: 'empty' }, 'Waiting for samples…'),
    );
    function card(app) {
      if (apps.has(app)) return apps.get(app);
      const badge = h('span', { class: 'badge ok' }, 'up');
      const figures = h('span', { class: 'muted' });
      const holder = h('div');
      const node = h('section', { class: 'card', 'data-app': app },
        h('h2', {}, app === 'system' ? 'host' : app, badge, figures), holder,
        h('a', { href: '/logs?host=' + encodeURIComponent(host) + (app === 'system' ? '' : '&application=' + encodeURIComponent(app)) }, 'logs'));
      grid.append(node);
      const data = [[], [], [], []];
      const net = [[], [], []];
      const width = Math.max(260, Math.min(640, holder.clientWidth || 400));
      const axis = { stroke: css('--muted') };
      const plot = window.uPlot ? new uPlot({
        width, height: 160,
        scales: { x: { time: true }, y: { range: [0, 100] } },
        axes: [axis, { ...axis, values: (u, v) => v.map((x) => x + '%') }],
        series: [{}, { label: 'CPU %', stroke: css('--accent'), width: 1.5 },
          { label: 'Memory %', stroke: css('--warn'), width: 1.5 },
          { label: 'Disk %', stroke: css('--muted'), width: 1, dash: [4, 3] }],
      }, data, holder) : null;
      const netHolder = h('div', { class: 'net' });
      holder.after(netHolder);
      const netPlot = () => (window.uPlot ? new uPlot({
        width, height: 120,
        scales: { x: { time: true } },
        axes: [axis, { ...axis, size: 70, values: (u, v) => v.map((x) => rate(x)) }],
        series: [{}, { label: 'rx', stroke: css('--ok'), width: 1.5, value: (u, v) => rate(v) },
          { label: 'tx', stroke: css('--err'), width: 1.5, value: (u, v) => rate(v) }],
      }, net, netHolder) : null);
      const entry = { node, badge, figures, plot, data, net, netPlot, network: null };
      apps.set(app, entry);
      document.getElementById('empty').textContent = '';
      return entry;
    }
    let pending = false;
    conn.subscribe('host', { type: 'subscribe-metrics', host, history: 900 }, {
      onMessage: (m) => {
        const c = card(m.application);
        const t = new Date(m.timestamp).getTime() / 1000;
        const [ts, cpu, mem, disk] = c.data;
        if (ts.length && t <= ts[ts.length - 1]) return;
        ts.push(t); cpu.push(m.cpu ?? null); mem.push(m.memory ?? null); disk.push(m.disk ?? null);
        while (ts.length && ts[0] < t - WINDOW / 1000) { ts.shift(); cpu.shift(); mem.shift(); disk.shift(); }
        if (m.network) {
          const [nt, rx, tx] = c.net;
          nt.push(t); rx.push(m.network.rxBytesPerSecond); tx.push(m.network.txBytesPerSecond);
          while (nt.length && nt[0] < t - WINDOW / 1000) { nt.shift(); rx.shift(); tx.shift(); }
          if (!c.network) c.network = c.netPlot();
        }
        const up = m.up !== false;
        c.node.classList.toggle('down', !up);
        c.badge.className = 'badge ' + (up ? 'ok' : 'err');
        c.badge.textContent = up ? 'up' : 'DOWN';
        c.figures.textContent = 'CPU ' + pct(m.cpu) + ' · memory ' + pct(m.memory) + (m.memoryBytes ? ' (' + bytes(m.memoryBytes) + ')' : '')
          + (typeof m.disk === 'number' ? ' · disk ' + pct(m.disk) : '')
          + (m.network ? ' · net ' + rate(m.network.rxBytesPerSecond) + ' / ' + rate(m.network.txBytesPerSecond) : '');
        if (!pending) {
          pending = true;
          requestAnimationFrame(() => {
            pending = false;
            for (const a of apps.values()) {
              if (a.plot) a.plot.setData(a.data);
              if (a.network) a.network.setData(a.net);
            }
          });
        }
      },
      onError: (text) => { document.getElementById('empty').textContent = text; },
    });
  }

  // ------------------------------------------------------------------ logs
  const LEVELS = ['TRACE', 'DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL'];
  const MAX_ROWS = 2000;

  function logsPage() {
    const params = new URLSearchParams(location.search);
    const filters = {
      host: params.get('host') || '', application: params.get('application') || '',
      level: params.get('level') || '', search: params.get('search') || '',
    };
    const box = h('div', { class: 'logs', id: 'log-lines', role: 'log', 'aria-live': 'off', tabindex: 0 });
    let follow = true, paused = false, queued = [], held = [], scheduled = false, heldDropped = 0;
    const followButton = h('button', { type: 'button', 'aria-pressed': 'true', onclick: () => setFollow(!follow) }, 'Follow');
    const pauseButton = h('button', { type: 'button', 'aria-pressed': 'false', onclick: () => setPaused(!paused) }, 'Pause');
    const counter = h('span', { class: 'muted', id: 'counter' });
    function setFollow(on) {
      follow = on;
      followButton.setAttribute('aria-pressed', String(on));
      if (on) box.scrollTop = box.scrollHeight;
    }
    function setPaused(on) {
      paused = on;
      pauseButton.setAttribute('aria-pressed', String(on));
      pauseButton.textContent = on ? 'Resume' : 'Pause';
      if (!on) {
        queued.push(...held);
        if (heldDropped) queued.push({ notice: heldDropped + ' lines not kept while paused' });
        held = []; heldDropped = 0;
        schedule();
      }
    }
    const input = (name, label, attrs) => h('label', {}, label, h('input', {
      name, value: filters[name], ...attrs,
      onchange: (e) => { filters[name] = e.target.value.trim(); apply(); },
    }));
    main.replaceChildren(
      h('h1', {}, 'Logs'),
      h('form', { class: 'toolbar', onsubmit: (e) => { e.preventDefault(); apply(); } },
        input('host', 'Host', { placeholder: 'any' }),
        input('application', 'Application', { placeholder: 'any' }),
        h('label', {}, 'Level at least', h('select', {
          name: 'level', onchange: (e) => { filters.level = e.target.value; apply(); },
        }, h('option', { value: '' }, 'any'), LEVELS.map((l) => h('option', { value: l, selected: filters.level === l }, l)))),
        input('search', 'Search', { type: 'search', placeholder: 'text' }),
        pauseButton, followButton, counter),
      box,
    );
    box.addEventListener('scroll', () => {
      const atEnd = box.scrollTop + box.clientHeight >= box.scrollHeight - 30;
      if (follow !== atEnd) setFollow(atEnd);
    });
    let shown = 0;
    function row(m) {
      if (m.notice) return h('div', { class: 'notice' }, m.notice);
      return h('div', { class: 'line lvl-' + m.level },
        h('span', { class: 't' }, time(m.timestamp)), ' ',
        h('span', { class: 'lv' }, m.level.padEnd(8)), ' ',
        h('span', { class: 'src' }, m.host + '/' + m.application), ' ',
        m.message);
    }
    // Rendered once per animation frame, at most a few hundred rows each:
    // the main thread never takes long, whatever the line rate.
    function flush() {
      scheduled = false;
      if (!queued.length) return;
      const batch = queued.length > MAX_ROWS ? queued.slice(-MAX_ROWS) : queued;
      const skipped = queued.length - batch.length;
      queued = [];
      const fragment = document.createDocumentFragment();
      if (skipped) fragment.append(row({ notice: skipped + ' lines scrolled past unseen' }));
      for (const m of batch) fragment.append(row(m));
      box.append(fragment);
      while (box.childElementCount > MAX_ROWS) box.firstElementChild.remove();
      shown += batch.length;
      counter.textContent = shown + ' lines';
      if (follow) box.scrollTop = box.scrollHeight;
    }
    function schedule() {
      if (!scheduled) { scheduled = true; requestAnimationFrame(flush); }
    }
    function push(item) {
      if (paused) {
        held.push(item);
        if (held.length > 10000) { held.shift(); heldDropped++; }
        return;
      }
      queued.push(item);
      if (queued.length > 4 * MAX_ROWS) queued.splice(0, queued.length - MAX_ROWS);
      schedule();
    }
    function apply() {
      const query = new URLSearchParams();
      for (const [k, v] of Object.entries(filters)) if (v) query.set(k, v);
      history.replaceState(null, '', '/logs' + (query.toString() ? '?' + query : ''));
      box.replaceChildren();
      queued = []; shown = 0;
      const request = { type: 'subscribe-logs', tail: 200 };
      for (const [k, v] of Object.entries(filters)) if (v) request[k] = v;
      conn.subscribe('logs', request, {
        resume: true,
        onMessage: (m) => {
          if (m.type === 'log') push(m);
          else if (m.type === 'dropped') push({ notice: m.count + ' lines dropped: this browser read too slowly' });
          else if (m.type === 'gap') push({ notice: 'some lines are no longer held by the relay' + (m.missed ? ' (' + m.missed + ')' : '') });
        },
        onError: (text) => push({ notice: text }),
      });
    }
    apply();
  }

  // ----------------------------------------------------------- deployments
  const progressBar = (p) => h('div', { class: 'progress', role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': p },
    h('div', { style: 'width:' + p + '%' }));

  function deploymentsPage() {
    const tbody = h('tbody');
    main.replaceChildren(
      h('h1', {}, 'Deployments'),
      h('div', { class: 'table-wrap' }, h('table', { id: 'deployments' },
        h('thead', {}, h('tr', {}, ['Deployment', 'Application', 'Status', 'Progress', 'Started'].map((l) => h('th', { scope: 'col' }, l)))),
        tbody)),
      h('p', { class: 'muted', id: 'empty' }),
    );
    async function load() {
      try {
        const page = await rest('/api/deployments?limit=100');
        tbody.replaceChildren(...page.deployments.map((d) => h('tr', {},
          h('td', {}, h('a', { href: '/deployments/' + encodeURIComponent(d.deploymentId) }, d.deploymentId)),
          h('td', {}, d.application),
          h('td', { class: 'status-' + d.status }, d.status),
          h('td', {}, progressBar(d.progress)),
          h('td', {}, ago(d.startedAt)))));
        document.getElementById('empty').textContent = page.deployments.length ? '' : 'No deployment yet.';
      } catch (e) { /* the token form or the state says why */ }
    }
    load();
    setInterval(load, 3000);
  }

  function deploymentPage(id) {
    const status = h('span', { id: 'status' }, '…');
    const bar = h('div', { class: 'progress', role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100 }, h('div', { style: 'width:0%' }));
    const message = h('p', { id: 'message', class: 'muted' });
    const final = h('div', { id: 'final' });
    const lines = h('div', { class: 'logs', id: 'deployment-lines', role: 'log', tabindex: 0 });
    main.replaceChildren(h('h1', {}, 'Deployment ', id), h('p', {}, 'Status: ', status), bar, message, final, lines);
    // The seed page's DeploymentMonitor, made into a page.
    conn.subscribe('deployment', { type: 'subscribe', deploymentId: id }, {
      resume: true,
      onMessage: (data) => {
        switch (data.type) {
          case 'deployment':
            bar.setAttribute('aria-valuenow', data.progress);
            bar.firstElementChild.style.width = data.progress + '%';
            status.textContent = data.status + ' (' + data.progress + '%)';
            status.className = 'status-' + data.status;
            message.textContent = data.message;
            break;
          case 'log':
            lines.append(h('div', { class: 'line lvl-' + data.level }, h('span', { class: 't' }, time(data.timestamp)), ' ',
              h('span', { class: 'lv' }, data.level.padEnd(8)), ' ', h('span', { class: 'src' }, data.host), ' ', data.message));
            while (lines.childElementCount > MAX_ROWS) lines.firstElementChild.remove();
            lines.scrollTop = lines.scrollHeight;
            break;
          case 'status':
            final.replaceChildren(h('div', { class: 'final status-' + data.status, role: 'status' }, 'Final status: ' + data.status + ' — ' + data.message));
            if (data.status === 'completed') {
              bar.setAttribute('aria-valuenow', 100);
              bar.firstElementChild.style.width = '100%';
            }
            status.textContent = data.status;
            status.className = 'status-' + data.status;
            break;
          case 'gap':
            lines.append(h('div', { class: 'notice' }, 'some lines are no longer held by the relay'));
            break;
        }
      },
      onError: (text) => final.replaceChildren(h('div', { class: 'final status-failed' }, text)),
    });
  }

  // ---------------------------------------------------------------- router
  const path = location.pathname;
  let page = 'fleet';
  if (path.startsWith('/hosts/')) { page = 'fleet'; hostPage(decodeURIComponent(path.slice(7))); }
  else if (path === '/logs') { page = 'logs'; logsPage(); }
  else if (path === '/deployments') { page = 'deployments'; deploymentsPage(); }
  else if (path.startsWith('/deployments/')) { page = 'deployments'; deploymentPage(decodeURIComponent(path.slice(13))); }
  else fleetPage();
  for (const a of document.querySelectorAll('nav a')) {
    if (a.dataset.page === page) a.setAttribute('aria-current', 'page');
  }
  conn.start();
})();
