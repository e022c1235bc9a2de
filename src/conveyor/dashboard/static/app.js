// Conveyor dashboard. Every page is built here from the JSON API. Nothing a job carries
// (task names, arguments, results, errors, queue names) is ever parsed as HTML: text goes in
// with textContent or text nodes, attributes with setAttribute, and the server's
// Content-Security-Policy runs no script but this file.
"use strict";

(function () {
  const root = document.documentElement;
  const stored = localStorage.getItem("conveyor-theme");
  const systemDark = window.matchMedia("(prefers-color-scheme: dark)").matches;
  root.dataset.theme = stored || (systemDark ? "dark" : "light");
  document.addEventListener("DOMContentLoaded", start);

  const STATUSES = ["queued", "scheduled", "running", "succeeded", "failed", "dead", "cancelled"];
  const ENDED = ["failed", "dead", "cancelled"];
  let ROOT = "";
  let CSRF = "";
  let READ_ONLY = false;
  let main = null;

  // -- building the page -------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }

  function svg(tag, attrs, ...children) {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }

  function setAttrs(el, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") el.textContent = String(value);
      else if (key === "class") el.setAttribute("class", value);
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
  }

  function append(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  function meta(name) {
    const el = document.querySelector(`meta[name="conveyor-${name}"]`);
    return el ? el.getAttribute("content") : "";
  }

  function url(path, params) {
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(params || {})) {
      if (value !== null && value !== undefined && value !== "") query.set(key, value);
    }
    const text = query.toString();
    return ROOT + path + (text ? "?" + text : "");
  }

  function jobLink(id, text) {
    return h("a", { href: url("/job/" + encodeURIComponent(id)), class: "mono" }, text || id);
  }

  function pill(status) {
    return h("span", { class: "pill " + (status || "unknown") }, status || "unknown");
  }

  const number = new Intl.NumberFormat();
  function count(n) {
    return n === null || n === undefined ? "" : number.format(n);
  }

  function parse(iso) {
    return iso ? Date.parse(iso) : NaN;
  }

  function span(seconds) {
    const s = Math.max(0, seconds);
    if (s < 90) return Math.round(s) + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    if (s < 129600) return Math.round(s / 3600) + " h";
    return Math.round(s / 86400) + " d";
  }

  function ago(iso, now) {
    const t = parse(iso);
    if (isNaN(t)) return "";
    const delta = ((now || Date.now()) - t) / 1000;
    return delta >= 0 ? span(delta) + " ago" : "in " + span(-delta);
  }

  function when(iso) {
    const t = parse(iso);
    return isNaN(t) ? "" : new Date(t).toLocaleString();
  }

  function time(iso, now) {
    return h("time", { datetime: iso, title: when(iso) }, ago(iso, now));
  }

  function showProblem(message) {
    main.replaceChildren(h("p", { class: "problem" }, message));
  }

  let toastTimer = null;
  function toast(message, bad) {
    const el = document.getElementById("toast");
    el.textContent = message;
    el.className = "toast" + (bad ? " bad" : "");
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { el.hidden = true; }, bad ? 8000 : 4000);
  }

  // -- talking to the server -----------------------------------------------------------------

  async function api(path) {
    const response = await fetch(ROOT + "/api" + path, { headers: { accept: "application/json" } });
    const data = await response.json().catch(() => ({ error: response.statusText }));
    if (!response.ok) throw new Error(data.error || response.statusText);
    return data;
  }

  async function act(path, question) {
    if (question && !window.confirm(question)) return null;
    try {
      const response = await fetch(ROOT + "/api" + path, {
        method: "POST",
        headers: { "x-conveyor-csrf": CSRF, accept: "application/json" },
      });
      const data = await response.json().catch(() => ({ error: response.statusText }));
      if (!response.ok) throw new Error(data.error || response.statusText);
      toast(data.message);
      return data;
    } catch (error) {
      toast(error.message, true);
      return null;
    }
  }

  function button(label, onclick, kind) {
    return h("button", { type: "button", class: "act " + (kind || ""), onclick }, label);
  }

  function setLive(state, text) {
    const el = document.getElementById("live");
    el.className = "live " + state;
    el.textContent = text;
    el.hidden = !text;
  }

  // A server-sent event stream: each message is the page's whole document.
  function follow(path, render) {
    const source = new EventSource(ROOT + "/api/live" + path);
    source.onopen = () => setLive("on", "live");
    source.onmessage = (event) => {
      setLive("on", "live");
      render(JSON.parse(event.data));
    };
    source.addEventListener("problem", (event) => {
      const problem = JSON.parse(event.data);
      const why = { 503: "broker unreachable", 404: "not found" }[problem.status] || "error";
      setLive("off", why);
      toast(problem.error, true);
    });
    source.onerror = () => setLive("off", "reconnecting");
    return source;
  }

  function header(data) {
    document.getElementById("broker").textContent = data.broker;
    document.getElementById("mode").hidden = !data.read_only;
  }

  // -- start ---------------------------------------------------------------------------------

  function start() {
    ROOT = meta("root");
    CSRF = meta("csrf");
    READ_ONLY = meta("read-only") === "true";
    main = document.getElementById("main");
    document.querySelector(".theme").addEventListener("click", () => {
      root.dataset.theme = root.dataset.theme === "dark" ? "light" : "dark";
      localStorage.setItem("conveyor-theme", root.dataset.theme);
      window.dispatchEvent(new Event("resize")); // charts read their colours again
    });
    const search = document.querySelector(".search");
    search.addEventListener("submit", (event) => {
      event.preventDefault();
      const id = search.elements.id.value.trim();
      if (id) window.location.href = url("/job/" + encodeURIComponent(id));
    });
    const path = window.location.pathname.slice(ROOT.length) || "/";
    const params = new URLSearchParams(window.location.search);
    let match;
    if (path === "/" && params.get("id")) {
      window.location.replace(url("/job/" + encodeURIComponent(params.get("id"))));
    } else if (path === "/") {
      here("overview");
      overviewPage();
    } else if ((match = path.match(/^\/jobs\/([a-z]+)$/))) {
      here(match[1] === "failed" ? "failed" : "jobs");
      jobsPage(match[1], params);
    } else if ((match = path.match(/^\/job\/([^/]+)$/))) {
      jobPage(decodeURIComponent(match[1]));
    } else if (path === "/schedules") {
      here("schedules");
      schedulesPage();
    }
  }

  function here(name) {
    for (const a of document.querySelectorAll(".nav a")) {
      a.classList.toggle("here", a.dataset.nav === name);
    }
  }

  // -- charts --------------------------------------------------------------------------------

  // Lines over time: series = [{name, values, cls, area}], values every `step` s from `start`
  // (null: no data then). Redrawn when the window's size changes.
  function chart(box, start, step, series, unit) {
    box.replaceChildren();
    const width = Math.max(box.clientWidth, 200);
    const height = box.clientHeight || 180;
    const pad = { left: 44, right: 10, top: 10, bottom: 22 };
    const n = Math.max(...series.map((s) => s.values.length), 2);
    let top = 0;
    for (const s of series) for (const v of s.values) if (v !== null && v > top) top = v;
    top = niceTop(top);
    const x = (i) => pad.left + (i / (n - 1)) * (width - pad.left - pad.right);
    const y = (v) => pad.top + (1 - v / top) * (height - pad.top - pad.bottom);
    const drawing = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img" });
    for (let k = 0; k <= 4; k++) {
      const v = (top * k) / 4;
      drawing.append(
        svg("line", { class: "grid", x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v) }),
        svg("text", { class: "axis", x: pad.left - 6, y: y(v) + 4, "text-anchor": "end" }, short(v)),
      );
    }
    const ticks = Math.min(width < 420 ? 3 : 5, n - 1);
    const clock = { hour: "2-digit", minute: "2-digit", hourCycle: "h23" };
    if ((n - 1) * step < 600) clock.second = "2-digit";
    for (let k = 0; k <= ticks; k++) {
      const i = Math.round(((n - 1) * k) / ticks);
      const label = new Date((start + i * step) * 1000).toLocaleTimeString([], clock);
      const anchor = k === 0 ? "start" : k === ticks ? "end" : "middle";
      drawing.append(svg("text", { class: "axis", x: x(i), y: height - 6, "text-anchor": anchor }, label));
    }
    for (const s of series) {
      for (const run of runs(s.values)) {
        const points = run.map((i) => `${x(i).toFixed(1)},${y(s.values[i]).toFixed(1)}`);
        if (s.area && run.length > 1) {
          const floor = y(0).toFixed(1);
          const shape = `M${x(run[0]).toFixed(1)},${floor}L${points.join("L")}L${x(run[run.length - 1]).toFixed(1)},${floor}Z`;
          drawing.append(svg("path", { class: "area " + s.cls, d: shape }));
        }
        const d = run.length > 1 ? "M" + points.join("L") : `M${points[0]}h1`;
        drawing.append(svg("path", { class: "line " + s.cls, d }));
      }
    }
    const cursor = svg("line", { class: "cursor", y1: pad.top, y2: height - pad.bottom, visibility: "hidden" });
    drawing.append(cursor);
    const tip = h("div", { class: "tip", hidden: true });
    drawing.addEventListener("mousemove", (event) => {
      const bounds = drawing.getBoundingClientRect();
      const px = ((event.clientX - bounds.left) / bounds.width) * width;
      const i = Math.min(n - 1, Math.max(0, Math.round(((px - pad.left) / (width - pad.left - pad.right)) * (n - 1))));
      cursor.setAttribute("x1", x(i));
      cursor.setAttribute("x2", x(i));
      cursor.setAttribute("visibility", "visible");
      const at = new Date((start + i * step) * 1000).toLocaleTimeString();
      const lines = series.map((s) => `${s.name}: ${s.values[i] === null ? "–" : short(s.values[i])}`);
      tip.textContent = `${at} · ${lines.join(" · ")}${unit ? " " + unit : ""}`;
      tip.hidden = false;
      tip.style.left = Math.min(Math.max(0, (x(i) / width) * bounds.width - 60), bounds.width - tip.offsetWidth) + "px";
    });
    drawing.addEventListener("mouseleave", () => {
      cursor.setAttribute("visibility", "hidden");
      tip.hidden = true;
    });
    box.append(drawing, tip);
  }

  // The indexes of each stretch of values, across gaps of up to 3 points (a sample every
  // 10 s while nobody watched); a longer gap (the dashboard was not running) breaks a line.
  function runs(values) {
    const out = [];
    let current = [];
    let gap = 0;
    values.forEach((v, i) => {
      if (v === null) {
        gap += 1;
        return;
      }
      if (gap > 3 && current.length) {
        out.push(current);
        current = [];
      }
      gap = 0;
      current.push(i);
    });
    if (current.length) out.push(current);
    return out;
  }

  // The top of the axis: four steps of 1, 2, 2.5 or 5 times a power of ten (at least 1).
  function niceTop(v) {
    const rough = Math.max(v, 1) / 4;
    const power = Math.pow(10, Math.floor(Math.log10(rough)));
    for (const m of [1, 2, 2.5, 5, 10]) if (rough <= m * power) return 4 * Math.max(1, m * power);
    return 40 * power;
  }

  function short(v) {
    if (v >= 1e6) return (v / 1e6).toFixed(v >= 1e7 ? 0 : 1) + "M";
    if (v >= 1e4) return (v / 1e3).toFixed(0) + "k";
    if (v >= 1e3) return (v / 1e3).toFixed(1) + "k";
    return Number.isInteger(v) ? String(v) : v.toFixed(1);
  }

  // The charts show the last 15 minutes, trimmed to where data begins (2 minutes at least).
  function shownFrom(charts) {
    const n = charts.succeeded.length;
    let first = n;
    for (let i = 0; i < n; i++) {
      if (charts.succeeded[i] || charts.failed[i] || charts.backlog[i] !== null) {
        first = i;
        break;
      }
    }
    const least = Math.ceil(120 / charts.step);
    return Math.max(0, Math.min(first - 1, n - least));
  }

  // -- the overview --------------------------------------------------------------------------

  function overviewPage() {
    const cards = h("section", { class: "cards" });
    const throughput = h("div", { class: "chart" });
    const backlog = h("div", { class: "chart" });
    const legend = h("div", { class: "legend" });
    const note = h("p", { class: "muted", hidden: true });
    const queues = h("tbody");
    const workers = h("tbody");
    main.replaceChildren(
      cards,
      h("section", { class: "charts" },
        h("div", { class: "panel" }, h("h2", {}, "Throughput (jobs per minute)"), throughput,
          h("div", { class: "legend" }, h("span", {}, h("i", { class: "c0" }), "succeeded"), h("span", {}, h("i", { class: "c1" }), "failed or dead")), note),
        h("div", { class: "panel" }, h("h2", {}, "Backlog (queued and scheduled)"), backlog, legend)),
      h("section", { class: "panel" }, h("h2", {}, "Queues"),
        h("div", { class: "scroll" }, h("table", { id: "queues" }, h("thead", {}, h("tr", {},
          h("th", {}, "Queue"),
          STATUSES.map((s) => h("th", { class: "num" }, s)),
          h("th", {}, "Next waiting"), h("th", { class: "num" }, "Done/min"),
          READ_ONLY ? null : h("th", {}, "Actions"))), queues))),
      h("section", { class: "panel" }, h("h2", {}, "Workers"),
        h("div", { class: "scroll" }, h("table", { id: "workers" }, h("thead", {}, h("tr", {},
          ["Worker", "Host", "Queues", "Pool", "Busy", "Processed", "Heartbeat", "Up"].map((t) =>
            h("th", { class: ["Processed"].includes(t) ? "num" : "" }, t)))), workers))),
    );
    let last = null;
    const draw = () => {
      if (!last) return;
      const c = last.charts;
      const from = shownFrom(c);
      // The bucket in progress is left out: it would dip at "now".
      const perMinute = (values) => values.slice(from, -1).map((v) => (v * 60) / c.step);
      chart(throughput, c.start + from * c.step, c.step, [
        { name: "succeeded", values: perMinute(c.succeeded), cls: "c0", area: true },
        { name: "failed", values: perMinute(c.failed), cls: "c1", area: true },
      ], "/min");
      const names = Object.keys(c.backlog_by_queue).sort((a, b) => peak(c.backlog_by_queue[b]) - peak(c.backlog_by_queue[a])).slice(0, 5);
      const lines = [{ name: "all", values: c.backlog.slice(from), cls: "c2", area: true }];
      names.forEach((q, k) => lines.push({ name: q, values: c.backlog_by_queue[q].slice(from), cls: "c" + (3 + k) }));
      chart(backlog, c.start + from * c.step, c.step, lines, "");
      legend.replaceChildren(...lines.map((s) => h("span", {}, h("i", { class: s.cls }), s.name)));
      note.hidden = c.events;
      note.textContent = "No events in the broker's log yet: throughput is counted from job events, which workers publish unless Conveyor(events=False).";
    };
    window.addEventListener("resize", draw);
    follow("", (data) => {
      header(data);
      last = data;
      renderCards(cards, data);
      draw();
      syncRows(queues, data.queues, (q) => q.queue, queueRow, updateQueueRow, data);
      syncRows(workers, data.workers, (w) => w.id, workerRow, updateWorkerRow, data);
      emptyRow(queues, data.queues.length, READ_ONLY ? 10 : 11, "No queues yet: they appear with their first job.");
      emptyRow(workers, data.workers.length, 8, "No live workers. Start one: conveyor worker -A yourapp.tasks");
    });
  }

  function peak(values) {
    return Math.max(0, ...values.filter((v) => v !== null));
  }

  function renderCards(box, data) {
    const t = data.totals;
    const minute = data.queues.reduce((sum, q) => sum + q.done_last_minute, 0);
    const busy = data.workers.reduce((sum, w) => sum + w.busy, 0);
    const slots = data.workers.reduce((sum, w) => sum + w.concurrency, 0);
    const figures = [
      ["Queued", count(t.queued), false, ""],
      ["Scheduled", count(t.scheduled), false, ""],
      ["Running", count(t.running), false, ""],
      ["Failed", count(t.failed), t.failed > 0, ""],
      ["Dead", count(t.dead), t.dead > 0, ""],
      ["Done last minute", count(minute), false, ""],
      ["Workers", count(data.workers.length), false, `${busy} of ${slots} slots busy`],
    ];
    box.replaceChildren(...figures.map(([label, value, bad, sub]) =>
      h("div", { class: "card" + (bad ? " bad" : "") }, h("div", { class: "label" }, label),
        h("div", { class: "value" }, value), sub ? h("div", { class: "sub" }, sub) : null)));
  }

  // Rows keyed by id and updated in place, so a button under the pointer is never replaced
  // by a fresh one between a press and its release.
  function syncRows(body, items, key, build, update, data) {
    const rows = body._rows || (body._rows = new Map());
    const keep = new Set();
    items.forEach((item, i) => {
      const id = key(item);
      keep.add(id);
      let row = rows.get(id);
      if (!row) {
        row = build(item);
        row.dataset.key = id;
        rows.set(id, row);
      }
      update(row, item, data);
      if (body.children[i] !== row) body.insertBefore(row, body.children[i] || null);
    });
    for (const [id, row] of rows) {
      if (!keep.has(id)) {
        row.remove();
        rows.delete(id);
      }
    }
  }

  function emptyRow(body, n, columns, text) {
    let row = body.querySelector("tr.none");
    if (n) {
      if (row) row.remove();
    } else if (!row) {
      body.append(h("tr", { class: "none" }, h("td", { class: "empty", colspan: columns }, text)));
    }
  }

  function queueRow(q) {
    const row = h("tr");
    row._state = q;
    const name = h("td");
    const cells = STATUSES.map((s) => h("td", { class: "num", "data-status": s }));
    const actions = [];
    if (!READ_ONLY) {
      const pause = button("Pause", () => {
        const s = row._state;
        act(`/queue/${encodeURIComponent(s.queue)}/${s.paused ? "resume" : "pause"}`);
      });
      pause.dataset.role = "pause";
      const requeueFailed = button("Requeue failed", () =>
        act(`/queue/${encodeURIComponent(row._state.queue)}/requeue?status=failed`, `Requeue every failed job of ${row._state.queue}?`));
      requeueFailed.dataset.role = "requeue-failed";
      const requeueDead = button("Requeue dead", () =>
        act(`/queue/${encodeURIComponent(row._state.queue)}/requeue?status=dead`, `Requeue every dead job of ${row._state.queue}?`));
      requeueDead.dataset.role = "requeue-dead";
      const purge = button("Purge", () =>
        act(`/queue/${encodeURIComponent(row._state.queue)}/purge`, `Delete every queued and scheduled job of ${row._state.queue}? This cannot be undone.`), "danger");
      purge.dataset.role = "purge";
      actions.push(h("td", {}, pause, requeueFailed, requeueDead, purge));
    }
    row.append(name, ...cells, h("td", { "data-role": "head" }), h("td", { class: "num", "data-role": "minute" }), ...actions);
    return row;
  }

  // A cell's text, a link to `href` (none: plain text), changed in place: the link stays
  // the same element across live updates, so a press on it and its release, however far
  // apart, land on one element and make a click.
  function linkIn(cell, text, href) {
    const a = cell.firstElementChild;
    if (!href) {
      if (a || cell.textContent !== text) cell.textContent = text;
      return;
    }
    if (!a) {
      cell.replaceChildren(h("a", { href }, text));
      return;
    }
    if (a.getAttribute("href") !== href) a.setAttribute("href", href);
    if (a.textContent !== text) a.textContent = text;
  }

  function updateQueueRow(row, q, data) {
    row._state = q;
    const name = row.children[0];
    linkIn(name, q.queue, url("/jobs/queued", { queue: q.queue }));
    const flag = name.querySelector(".pill.paused");
    if (q.paused && !flag) append(name, [" ", h("span", { class: "pill paused" }, "paused")]);
    if (!q.paused && flag) {
      flag.previousSibling.remove(); // the space before it
      flag.remove();
    }
    for (const s of STATUSES) {
      const cell = row.querySelector(`td[data-status="${s}"]`);
      const n = q[s];
      cell.className = "num" + (n ? "" : " zero") + (n && (s === "failed" || s === "dead") ? " red" : "");
      linkIn(cell, n ? count(n) : "0", n ? url("/jobs/" + s, { queue: q.queue }) : null);
    }
    const head = row.querySelector('td[data-role="head"]');
    head.replaceChildren(q.head_since ? h("span", { title: when(q.head_since) }, "since " + span((parse(data.sampled_at) - parse(q.head_since)) / 1000)) : "");
    row.querySelector('td[data-role="minute"]').textContent = count(q.done_last_minute);
    if (!READ_ONLY) {
      const pause = row.querySelector('[data-role="pause"]');
      pause.textContent = q.paused ? "Resume" : "Pause";
      pause.classList.toggle("primary", q.paused);
      row.querySelector('[data-role="requeue-failed"]').hidden = !q.failed;
      row.querySelector('[data-role="requeue-dead"]').hidden = !q.dead;
      row.querySelector('[data-role="purge"]').hidden = !(q.queued || q.scheduled);
    }
  }

  function workerRow() {
    return h("tr", {}, Array.from({ length: 8 }, (_, i) => h("td", { class: i === 5 ? "num" : "" })));
  }

  function updateWorkerRow(row, w, data) {
    const now = parse(data.sampled_at);
    const cells = row.children;
    cells[0].replaceChildren(h("span", { class: "mono" }, w.id));
    cells[1].textContent = `${w.host} (pid ${w.pid})`;
    cells[2].textContent = w.queues.join(", ");
    cells[3].textContent = `${w.pool} × ${w.concurrency}`;
    const share = w.concurrency ? Math.min(1, w.busy / w.concurrency) : 0;
    const bar = h("span");
    bar.style.width = Math.round(share * 100) + "%";
    cells[4].replaceChildren(h("span", { class: "meter" }, bar), `${w.busy}/${w.concurrency}`);
    cells[5].textContent = count(w.processed);
    cells[6].replaceChildren(time(w.seen_at, now));
    cells[7].textContent = span((now - parse(w.started_at)) / 1000);
  }

  // -- job lists -----------------------------------------------------------------------------

  async function jobsPage(status, params) {
    const queue = params.get("queue") || "";
    const task = params.get("task") || "";
    const offset = Number(params.get("offset") || 0);
    let data;
    try {
      data = await api(url("/jobs/" + status, { queue, task, offset }).slice(ROOT.length));
    } catch (error) {
      showProblem(error.message);
      return;
    }
    header(data);
    setLive("", "");
    const tabs = h("nav", { class: "tabs" }, STATUSES.map((s) =>
      h("a", { href: url("/jobs/" + s, { queue, task }), class: s === status ? "here" : "" }, s, h("span", { class: "n" }, count(data.counts[s])))));
    const queueChoice = h("select", { name: "queue", "aria-label": "Queue" }, h("option", { value: "" }, "every queue"),
      data.queues.map((q) => h("option", { value: q, selected: q === queue }, q)));
    const taskChoice = h("input", { name: "task", list: "tasks", placeholder: "task (any)", value: task, "aria-label": "Task" });
    const filters = h("form", { class: "filters", method: "get", action: url("/jobs/" + status) },
      queueChoice, taskChoice, h("datalist", { id: "tasks" }, data.tasks.map((t) => h("option", { value: t }))),
      h("button", { type: "submit", class: "act" }, "Filter"));
    queueChoice.addEventListener("change", () => filters.requestSubmit());
    const ended = ENDED.includes(status);
    const bulk = [];
    if (!READ_ONLY && ended && status !== "cancelled" && queue && data.count) {
      bulk.push(button(`Requeue all ${status} of ${queue}`, async () => {
        if (await act(`/queue/${encodeURIComponent(queue)}/requeue?status=${status}`, `Requeue every ${status} job of ${queue}?`)) {
          window.setTimeout(() => window.location.reload(), 600);
        }
      }, "primary"));
    } else if (!READ_ONLY && ended && status !== "cancelled" && data.count) {
      bulk.push(h("span", { class: "muted" }, "Choose a queue to requeue all its jobs."));
    }
    const columns = ["Job", "Task", "Queue", "Arguments", "Attempt", ...(ended ? ["Reason"] : []), "Changed"];
    const rows = data.jobs.map((j) => h("tr", {},
      h("td", {}, jobLink(j.id)),
      h("td", { class: "mono" }, j.task || "(unknown)"),
      h("td", {}, h("a", { href: url("/jobs/" + status, { queue: j.queue }) }, j.queue)),
      h("td", { class: "mono args", title: j.args || "" }, j.args === null ? "" : j.args),
      h("td", { class: "num" }, j.attempt === null ? "" : j.attempt),
      ended ? h("td", { class: "wrap" }, j.reason || "") : null,
      h("td", {}, time(j.updated_at))));
    if (!rows.length) {
      const where = queue ? ` in ${queue}` : "";
      const which = task ? ` of task ${task}` : "";
      rows.push(h("tr", {}, h("td", { class: "empty", colspan: columns.length }, `No ${status} jobs${where}${which}${offset ? " past this point" : ""}.`)));
    }
    const pager = h("div", { class: "pager" });
    const shown = data.jobs.length;
    if (!task) {
      if (offset > 0) pager.append(h("a", { href: url("/jobs/" + status, { queue, offset: Math.max(0, offset - data.page_size) }) }, "← Previous"));
      pager.append(h("span", {}, shown ? `${count(offset + 1)}–${count(offset + shown)} of ${count(data.count)}` : ""));
    } else {
      if (offset > 0) pager.append(h("a", { href: url("/jobs/" + status, { queue, task }) }, "← First page"));
      pager.append(h("span", {}, `${count(shown)} of task ${task}`));
    }
    if (data.next_offset !== null) pager.append(h("a", { href: url("/jobs/" + status, { queue, task, offset: data.next_offset }) }, "Next →"));
    main.replaceChildren(h("section", { class: "panel" },
      h("div", { class: "head" }, h("h1", {}, "Jobs"), h("div", { class: "actions" }, bulk)),
      tabs, filters,
      h("div", { class: "scroll" }, h("table", { id: "jobs" }, h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c)))), h("tbody", {}, rows))),
      pager));
  }

  // -- one job -------------------------------------------------------------------------------

  // `render`, held while a pointer is pressed on the page: it replaces the whole page, maybe
  // what was pressed, and a release on another element than the press makes no click. The
  // latest held call runs after the release and the click it makes.
  function heldWhilePressed(render) {
    let down = false;
    let waiting = null;
    const release = () => {
      down = false;
      window.setTimeout(() => {
        if (down || !waiting) return;
        const args = waiting;
        waiting = null;
        render(...args);
      }, 0);
    };
    document.addEventListener("pointerdown", () => { down = true; }, true);
    document.addEventListener("pointerup", release, true);
    document.addEventListener("pointercancel", release, true);
    window.addEventListener("blur", release);
    return (...args) => {
      if (down) waiting = args;
      else render(...args);
    };
  }

  function jobPage(id) {
    let shown = "";
    const show = heldWhilePressed(renderJob);
    const source = follow("/job/" + encodeURIComponent(id), (data) => {
      header(data);
      const text = JSON.stringify(data.job);
      if (text === shown) return;
      shown = text;
      show(data.job);
    });
    source.addEventListener("problem", (event) => {
      const message = JSON.parse(event.data).error;
      if (!shown) showProblem(message);
    });
  }

  function attemptText(j) {
    if (j.attempt === null) return "";
    if (j.attempt === 0) return j.retries ? `first run (up to ${j.retries} retries)` : "first run (no retries)";
    return `retry ${j.attempt} of ${j.retries}`;
  }

  function renderJob(j) {
    const actions = [];
    if (j.can_requeue) actions.push(button("Requeue", () => act(`/job/${encodeURIComponent(j.id)}/requeue`), "primary"));
    if (j.can_cancel) actions.push(button("Cancel", () => act(`/job/${encodeURIComponent(j.id)}/cancel`, `Cancel job ${j.id}?`), "danger"));
    if (j.can_delete) {
      const question = j.status === "queued" || j.status === "scheduled"
        ? `Delete job ${j.id}? It is cancelled first, then its record is gone for good.`
        : j.status === "running"
          ? `Delete job ${j.id}? Only if its worker is gone (its lease expired); a live worker keeps it.`
          : `Delete job ${j.id} and its result for good?`;
      actions.push(button("Delete", async () => {
        // The job is gone: its page has nothing more to show; the list it was in has.
        if (await act(`/job/${encodeURIComponent(j.id)}/delete`, question)) {
          window.location.assign(url("/jobs/" + j.status, { queue: j.queue }));
        }
      }, "danger"));
    }
    const facts = [
      ["Job id", h("span", { class: "mono" }, j.id)],
      ["Queue", h("a", { href: url("/jobs/" + j.status, { queue: j.queue }) }, j.queue)],
      ["Status", pill(j.status)],
      ["Attempt", attemptText(j)],
      ["Deliveries", j.deliveries],
      ["Priority", j.priority === null ? "" : j.priority],
      ["Enqueued", j.enqueued_at ? [when(j.enqueued_at), " (", ago(j.enqueued_at), ")"] : ""],
      ["Changed", j.updated_at ? [when(j.updated_at), " (", ago(j.updated_at), ")"] : ""],
    ];
    if (j.key) facts.push(["Unique key", h("span", { class: "mono" }, j.key)]);
    if (j.payload_error) facts.push(["Payload", j.payload_error]);
    const sections = [
      h("section", { class: "panel" },
        h("div", { class: "head" }, h("h1", { class: "mono" }, j.task || "(unknown task)"), pill(j.status), h("div", { class: "actions" }, actions)),
        h("dl", { class: "facts" }, facts.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v))))),
    ];
    if (j.progress !== null || j.progress_note) {
      const bar = h("span");
      bar.style.width = Math.round((j.progress || 0) * 100) + "%";
      sections.push(h("section", { class: "panel" }, h("h2", {}, "Progress"),
        h("div", { class: "progress" }, bar),
        h("p", {}, j.progress === null ? "" : Math.round(j.progress * 100) + "% ", j.progress_note || "")));
    }
    if (j.args !== null) {
      sections.push(h("section", { class: "panel" }, h("h2", {}, "Arguments"),
        h("pre", { id: "args" }, pretty({ args: j.args, kwargs: j.kwargs }))));
    }
    if (j.error) {
      sections.push(h("section", { class: "panel" }, h("h2", {}, "Error"),
        h("p", { class: "error-line" }, `${j.error.type}: ${j.error.message}`),
        j.error.traceback ? h("pre", { class: "traceback", id: "traceback" }, j.error.traceback) : null));
    } else if (j.reason) {
      sections.push(h("section", { class: "panel" }, h("h2", {}, "Reason"), h("p", {}, j.reason)));
    }
    if (j.status === "succeeded") {
      sections.push(h("section", { class: "panel" }, h("h2", {}, "Result"), h("pre", { id: "result" }, pretty(j.result))));
    }
    const g = j.graph;
    if (g.nodes.length > 1 || g.chord) {
      const notes = ["Solid lines: workflow steps; dashed: depends_on."];
      if (g.chord) notes.unshift(`Member ${g.chord.i + 1} of ${g.chord.n} of a group.`);
      if (g.more) notes.push(`Only the ${g.nodes.length} jobs nearest to this one are shown.`);
      sections.push(h("section", { class: "panel graph" }, h("h2", {}, "Workflow and dependencies"),
        graph(j, g), h("p", { class: "muted", id: "graph-notes" }, notes.join(" "))));
    }
    sections.push(h("section", { class: "panel" }, h("h2", {}, "Timeline"),
      j.timeline.length
        ? h("ol", { class: "timeline" }, j.timeline.map((e) => h("li", {},
          h("span", { class: "t" }, when(e.time)),
          h("span", {}, pill(e.type.replace("job.", ""))),
          h("span", {}, eventDetails(e)))))
        : h("p", { class: "muted" }, "No events of this job in the broker's event log (it keeps the newest 10,000 by default).")));
    main.replaceChildren(...sections);
  }

  function eventDetails(e) {
    const parts = [];
    if (e.attempt !== null && e.attempt !== undefined) parts.push(`attempt ${e.attempt}`);
    if (e.duration !== null && e.duration !== undefined) parts.push(`${e.duration.toFixed(3)} s`);
    if (e.error) parts.push(e.error);
    if (e.reason) parts.push(e.reason);
    if (e.worker_id) parts.push(`worker ${e.worker_id}`);
    return parts.join(" · ");
  }

  function pretty(value) {
    return JSON.stringify(value, null, 2);
  }

  // The jobs linked to this one (the server picks them, at most 40): a column per level,
  // each job after the ones it waits for, every box a link.
  function graph(j, g) {
    const nodeW = 200;
    const nodeH = 44;
    const gapX = 48;
    const gapY = 12;
    const columns = new Map();
    for (const node of g.nodes) {
      if (!columns.has(node.level)) columns.set(node.level, []);
      columns.get(node.level).push(node);
    }
    const levels = [...columns.keys()].sort((a, b) => a - b);
    const rows = Math.max(1, ...[...columns.values()].map((c) => c.length));
    const width = 2 * gapY + levels.length * nodeW + (levels.length - 1) * gapX;
    const height = rows * (nodeH + gapY) + gapY;
    const at = new Map();
    levels.forEach((level, k) => {
      const column = columns.get(level);
      column.forEach((node, i) => {
        const top = gapY + i * (nodeH + gapY) + ((rows - column.length) * (nodeH + gapY)) / 2;
        at.set(node.id, { node, x: gapY + k * (nodeW + gapX), y: top });
      });
    });
    const drawing = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": "workflow and dependencies" });
    for (const e of g.edges) {
      const a = at.get(e.from);
      const b = at.get(e.to);
      if (a && b) drawing.append(edge(a.x + nodeW, a.y + nodeH / 2, b.x, b.y + nodeH / 2, e.kind));
    }
    for (const p of at.values()) drawing.append(box(p, p.node.id === j.id));
    return h("div", { class: "scroll" }, drawing);

    function edge(x1, y1, x2, y2, kind) {
      const mid = (x1 + x2) / 2;
      return svg("path", { class: kind, d: `M${x1},${y1}C${mid},${y1} ${mid},${y2} ${x2},${y2}` });
    }

    function box(p, self) {
      const status = p.node.status || "unknown";
      const label = (p.node.task || "(unknown task)").split(":").pop();
      const group = svg("g", { class: self ? "me" : "" },
        svg("rect", { x: p.x, y: p.y, width: nodeW, height: nodeH, rx: 8 }),
        svg("circle", { class: "dot " + status, cx: p.x + 14, cy: p.y + nodeH / 2, r: 5 }),
        svg("text", { x: p.x + 26, y: p.y + 18 }, clip(label, 24)),
        svg("text", { class: "sub", x: p.x + 26, y: p.y + 34 }, `${status} · ${clip(p.node.id, Math.max(8, 24 - status.length))}`),
        svg("title", {}, `${p.node.task || ""} ${p.node.id} (${status})`));
      if (self) return group;
      return svg("a", { href: url("/job/" + encodeURIComponent(p.node.id)) }, group);
    }
  }

  function clip(text, n) {
    return text.length > n ? text.slice(0, n - 1) + "…" : text;
  }

  // -- schedules -----------------------------------------------------------------------------

  async function schedulesPage() {
    let data;
    try {
      data = await api("/schedules");
    } catch (error) {
      showProblem(error.message);
      return;
    }
    header(data);
    setLive("", "");
    const rows = data.schedules.map((s) => h("tr", {},
      h("td", { class: "mono" }, s.name),
      h("td", { class: "mono" }, s.cron !== null ? `cron ${s.cron}` : `every ${span(s.every)}`),
      h("td", {}, s.tz),
      h("td", {}, s.overlap === "allow" ? "allowed" : "skipped"),
      h("td", {}, when(s.next_fire_at), " ", h("span", { class: "muted" }, "(" + ago(s.next_fire_at) + ")")),
      h("td", { class: "muted", title: s.upcoming.map(when).join("\n") }, s.upcoming.slice(1, 3).map(when).join(", ") + "…")));
    if (!rows.length) {
      rows.push(h("tr", {}, h("td", { class: "empty", colspan: 6 },
        "No periodic jobs known. Schedules live in your code: start the dashboard with -A yourapp.tasks.")));
    }
    main.replaceChildren(h("section", { class: "panel" }, h("h1", {}, "Schedules"),
      h("div", { class: "scroll" }, h("table", { id: "schedules" },
        h("thead", {}, h("tr", {}, ["Name", "Rule", "Time zone", "Overlap", "Next fire", "Then"].map((t) => h("th", {}, t)))),
        h("tbody", {}, rows)))));
  }
})();
