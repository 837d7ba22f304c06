// The Sluice web view: the list of FlowRuns and one run's DAG, steps, signals and Events, kept live by
// server-sent events. Plain DOM, no framework; the server (kubectl sluice ui) embeds the session token in the
// page, and every change is sent with it.
"use strict";

(() => {
  const TOKEN = document.querySelector('meta[name="sluice-token"]').content;
  const NAMESPACE = document.querySelector('meta[name="sluice-namespace"]').content;
  const PHASES = ["Pending", "Running", "Succeeded", "Failed", "Cancelled"];
  const main = document.getElementById("main");
  const liveBadge = document.getElementById("live");
  document.getElementById("scope").textContent = NAMESPACE ? `namespace ${NAMESPACE}` : "all namespaces";
  window.sluiceStats = {};

  // ---- small helpers ----------------------------------------------------------------------------------
  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "dataset") Object.assign(el.dataset, v);
      else el.setAttribute(k, v === true ? "" : v);
    }
    for (const kid of kids.flat()) {
      if (kid === null || kid === undefined || kid === false) continue;
      el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return el;
  }

  // Replaces an element's children, skipping the null, undefined and false of optional parts.
  function put(el, ...kids) {
    el.replaceChildren(...kids.flat().filter((k) => k !== null && k !== undefined && k !== false));
  }

  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

  class ApiError extends Error {
    constructor(body, status) {
      super(body && body.error ? body.error : `HTTP ${status}`);
      this.code = (body && body.code) || status;
      this.reason = (body && body.reason) || "";
    }
  }

  async function call(method, path, body) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") {
      headers["Content-Type"] = "application/json";
      headers["X-Sluice-Token"] = TOKEN;
    }
    const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: "same-origin" });
    let data = null;
    try { data = await res.json(); } catch (_) { /* not JSON */ }
    if (!res.ok) throw new ApiError(data, res.status);
    return data;
  }

  function secondsSince(ts, now) {
    return ts ? Math.max(0, Math.floor(((now || Date.now()) - Date.parse(ts)) / 1000)) : null;
  }

  function duration(secs) {
    if (secs === null || secs === undefined) return "";
    if (secs < 60) return `${secs}s`;
    if (secs < 3600) return `${Math.floor(secs / 60)}m${String(secs % 60).padStart(2, "0")}s`;
    if (secs < 86400) return `${Math.floor(secs / 3600)}h${String(Math.floor((secs % 3600) / 60)).padStart(2, "0")}m`;
    return `${Math.floor(secs / 86400)}d${Math.floor((secs % 86400) / 3600)}h`;
  }

  function age(ts) {
    return ts ? duration(secondsSince(ts)) : "";
  }

  function when(ts) {
    if (!ts) return "";
    const d = new Date(ts);
    return `${d.toLocaleString()} (${age(ts)} ago)`;
  }

  function phaseBadge(phase, attrs) {
    return h("span", Object.assign({ class: `badge p-${phase}`, dataset: { phase } }, attrs || {}), phase);
  }

  function setLive(state, text) {
    liveBadge.dataset.state = state;
    liveBadge.textContent = text;
  }

  // One EventSource at a time: the page's.
  let source = null;
  function listen(path, handlers) {
    if (source) source.close();
    source = new EventSource(path);
    source.onopen = () => setLive("live", "live");
    source.onerror = () => setLive("down", "reconnecting…");
    for (const [name, fn] of Object.entries(handlers)) {
      source.addEventListener(name, (e) => fn(JSON.parse(e.data)));
    }
  }

  const timers = [];
  function every(ms, fn) {
    timers.push(setInterval(fn, ms));
  }

  function route() {
    if (source) { source.close(); source = null; }
    while (timers.length) clearInterval(timers.pop());
    const m = /^\/runs\/([^/]+)\/([^/]+)\/?$/.exec(location.pathname);
    if (m) runPage(decodeURIComponent(m[1]), decodeURIComponent(m[2]));
    else listPage();
  }

  // Links inside the app change the page without a reload.
  document.addEventListener("click", (e) => {
    const a = e.target.closest && e.target.closest("a[data-nav]");
    if (!a || e.ctrlKey || e.metaKey || e.shiftKey || e.button !== 0) return;
    e.preventDefault();
    history.pushState(null, "", a.getAttribute("href"));
    route();
  });
  window.addEventListener("popstate", route);

  function runHref(ns, name) {
    return `/runs/${encodeURIComponent(ns)}/${encodeURIComponent(name)}`;
  }

  function errorBox(err) {
    return h("div", { class: "error-box", role: "alert" }, h("strong", {}, `${err.reason || "Error"} (${err.code || "?"})`), " ", err.message);
  }

  // ---- label selectors, as kubectl -l: a=b, a!=b, a, !a, comma-separated -------------------------------
  function labelFilter(text) {
    const terms = text.split(",").map((t) => t.trim()).filter(Boolean).map((t) => {
      let m;
      if ((m = /^([^!=]+)!=(.*)$/.exec(t))) return (l) => l[m[1].trim()] !== m[2].trim();
      if ((m = /^([^!=]+)==?(.*)$/.exec(t))) return (l) => l[m[1].trim()] === m[2].trim();
      if ((m = /^!(.+)$/.exec(t))) return (l) => !(m[1].trim() in l);
      return (l) => t in l;
    });
    return (labels) => terms.every((f) => f(labels || {}));
  }

  // ---- the list ----------------------------------------------------------------------------------------
  function listPage() {
    document.title = "FlowRuns · Sluice";
    const params = new URLSearchParams(location.search);
    const runs = new Map();
    let synced = false;
    const phaseSel = h("select", { id: "filter-phase", "aria-label": "phase" },
      h("option", { value: "" }, "all phases"), PHASES.map((p) => h("option", { value: p }, p)));
    phaseSel.value = params.get("phase") || "";
    const labelIn = h("input", { id: "filter-label", type: "search", placeholder: "labels: team=a,env!=prod", value: params.get("label") || "", size: 28 });
    const nameIn = h("input", { id: "filter-name", type: "search", placeholder: "name contains", value: params.get("q") || "", size: 18 });
    const count = h("span", { class: "muted", id: "list-count" });
    const tbody = h("tbody", { id: "runs-body" });
    const problem = h("div", { id: "list-problem" });
    const cols = ["Name", NAMESPACE ? null : "Namespace", "Phase", "Progress", "Age", "Duration", "Pool", "Labels"].filter(Boolean);
    put(main,
      h("section", { class: "list" },
        h("div", { class: "toolbar" }, h("h1", {}, "FlowRuns"), phaseSel, labelIn, nameIn, count),
        problem,
        h("table", { class: "runs", id: "runs" }, h("thead", {}, h("tr", {}, cols.map((c) => h("th", {}, c)))), tbody)));

    let scheduled = false;
    function schedule() {
      if (scheduled) return;
      scheduled = true;
      requestAnimationFrame(() => { scheduled = false; render(); });
    }

    function render() {
      const phase = phaseSel.value;
      const byLabel = labelFilter(labelIn.value);
      const q = nameIn.value.trim().toLowerCase();
      const q2 = new URLSearchParams();
      if (phase) q2.set("phase", phase);
      if (labelIn.value.trim()) q2.set("label", labelIn.value.trim());
      if (q) q2.set("q", q);
      const search = q2.toString();
      if (search !== location.search.replace(/^\?/, "")) history.replaceState(null, "", search ? `/?${search}` : "/");
      const rows = [...runs.values()]
        .filter((r) => (!phase || r.phase === phase) && byLabel(r.labels) && (!q || r.name.toLowerCase().includes(q)))
        .sort((a, b) => (b.created || "").localeCompare(a.created || "") || a.name.localeCompare(b.name));
      const now = Date.now();
      tbody.innerHTML = rows.map((r) => {
        const key = `${r.namespace}/${r.name}`;
        const m = /^(\d+)\/(\d+)$/.exec(r.progress || "");
        const pct = m && +m[2] ? Math.round((100 * +m[1]) / +m[2]) : 0;
        const dur = r.startedAt ? duration(Math.floor(((r.finishedAt ? Date.parse(r.finishedAt) : now) - Date.parse(r.startedAt)) / 1000)) : "";
        const flags = (r.suspended && !["Succeeded", "Failed", "Cancelled"].includes(r.phase) ? ' <span class="flag">suspended</span>' : "") +
          (r.cancelRequested && !["Succeeded", "Failed", "Cancelled"].includes(r.phase) ? ' <span class="flag">cancelling</span>' : "") +
          (r.parent ? ` <span class="muted" title="child of ${esc(r.parent)}">↳ ${esc(r.parent)}</span>` : "");
        const labels = Object.entries(r.labels || {}).map(([k, v]) => `<span class="label">${esc(k)}=${esc(v)}</span>`).join(" ");
        return `<tr data-run="${esc(key)}" data-phase="${r.phase}">` +
          `<td class="name"><a data-nav href="${esc(runHref(r.namespace, r.name))}">${esc(r.name)}</a>${flags}</td>` +
          (NAMESPACE ? "" : `<td>${esc(r.namespace)}</td>`) +
          `<td class="phase"><span class="badge p-${r.phase}">${r.phase}</span></td>` +
          `<td><span class="progress-cell"><span class="progress"><span class="fill p-${r.phase}" data-pct="${pct}"></span></span><span class="muted">${esc(r.progress || "–")}</span></span></td>` +
          `<td title="${esc(r.created || "")}">${esc(r.created ? duration(secondsSince(r.created, now)) : "")}</td>` +
          `<td>${esc(dur)}</td><td>${esc(r.pool || "")}</td><td class="labels">${labels}</td></tr>`;
      }).join("");
      // Widths through the CSSOM: the Content-Security-Policy refuses style attributes in markup.
      tbody.querySelectorAll(".fill[data-pct]").forEach((el) => { el.style.width = `${el.dataset.pct}%`; });
      count.textContent = synced ? `${rows.length} of ${runs.size}` : "";
      if (synced && !rows.length) {
        tbody.innerHTML = `<tr><td class="empty" colspan="${cols.length}">${runs.size ? "No FlowRun matches the filters." : "No FlowRuns yet."}</td></tr>`;
      }
    }

    for (const el of [phaseSel, labelIn, nameIn]) el.addEventListener("input", schedule);

    const t0 = performance.now();
    call("GET", "/api/runs").then((list) => {
      for (const r of list.items) runs.set(`${r.namespace}/${r.name}`, r);
      synced = true;
      render();
      window.sluiceStats.listMs = performance.now() - t0;
      document.body.dataset.page = "list";
    }).catch((err) => put(problem, errorBox(err)));

    let fresh = null;
    listen("/api/live/runs", {
      reset: () => { fresh = new Map(); },
      upsert: (r) => {
        const key = `${r.namespace}/${r.name}`;
        if (fresh) fresh.set(key, r);
        runs.set(key, r);
        schedule();
      },
      delete: (r) => { runs.delete(`${r.namespace}/${r.name}`); schedule(); },
      synced: () => {
        // After a (re)start of the watch, what it did not list is gone.
        if (fresh) for (const key of [...runs.keys()]) if (!fresh.has(key)) runs.delete(key);
        fresh = null;
        synced = true;
        put(problem);
        schedule();
      },
      problem: (p) => put(problem, errorBox({ message: p.error, reason: "Watch", code: "" })),
    });
    every(5000, schedule);
  }

  // ---- one run -----------------------------------------------------------------------------------------
  function runPage(ns, name) {
    document.title = `${name} · Sluice`;
    const base = `/api/runs/${encodeURIComponent(ns)}/${encodeURIComponent(name)}`;
    let view = null;
    let graph = null;
    let selected = new URLSearchParams(location.hash.slice(1)).get("step");
    let detailKey = null;

    const head = h("div", { class: "run-head" });
    const result = h("div", { id: "action-result", class: "result", role: "status", "aria-live": "polite" });
    const actions = h("div", { class: "actions", id: "actions" });
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.id = "dag";
    const dagWrap = h("div", { class: "dag-wrap", id: "dag-wrap" }, svg);
    const panel = h("aside", { class: "panel", id: "step-panel" }, h("p", { class: "muted" }, "Select a step to see its attempts, worker, timings, input, output and last error."));
    const signals = h("section", { class: "card", id: "signals" });
    const events = h("section", { class: "card", id: "events" }, h("h2", {}, "Events"), h("p", { class: "muted" }, "Loading…"));
    const io = h("section", { class: "card", id: "io" });
    const banner = h("div", { id: "run-banner" });
    put(main,
      h("section", { class: "run" },
        h("nav", { class: "crumbs" }, h("a", { href: "/", "data-nav": true }, "FlowRuns"), " / ", ns, " / ", h("strong", {}, name)),
        banner, head, actions, result,
        h("div", { class: "run-body" }, dagWrap, panel),
        h("div", { class: "run-lower" }, signals, events, io)));

    svg.addEventListener("click", (e) => {
      const g = e.target.closest("g.node");
      if (g) select(g.dataset.step);
    });
    svg.addEventListener("keydown", (e) => {
      const g = e.target.closest && e.target.closest("g.node");
      if (g && (e.key === "Enter" || e.key === " ")) { e.preventDefault(); select(g.dataset.step); }
    });

    function select(step) {
      selected = step;
      history.replaceState(null, "", step ? `#step=${encodeURIComponent(step)}` : location.pathname);
      if (graph) graph.select(step);
      detailKey = null;
      renderPanel();
    }

    // -- header and actions
    function renderHead() {
      const r = view.run, s = view.summary;
      const ended = ["Succeeded", "Failed", "Cancelled"].includes(r.phase);
      const meta = [
        ["namespace", r.namespace],
        ["pool", s.pool || "–"],
        ["created", s.created ? `${age(s.created)} ago` : ""],
        ["progress", r.progress ? `${r.progress} steps` : "–"],
        ["duration", duration(r.durationSeconds)],
      ];
      put(head,
        h("h1", {}, name, " ", phaseBadge(r.phase, { id: "run-phase" }),
          r.suspended && !ended ? h("span", { class: "flag", id: "flag-suspended" }, "suspended") : null,
          r.cancelRequested && !ended ? h("span", { class: "flag" }, "cancel requested") : null),
        h("dl", { class: "meta" }, meta.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]),
          s.template ? [h("dt", {}, "template"), h("dd", {}, s.template)] : null,
          s.parent ? [h("dt", {}, "parent"), h("dd", {}, h("a", { "data-nav": true, href: runHref(ns, s.parent) }, s.parent))] : null,
          Object.keys(s.labels || {}).length ? [h("dt", {}, "labels"), h("dd", {}, Object.entries(s.labels).map(([k, v]) => h("span", { class: "label" }, `${k}=${v}`)))] : null),
        r.message ? h("p", { class: "run-message", id: "run-message" }, r.message) : null,
        r.waitingForSlot ? h("p", { class: "muted" }, `waiting for a slot: ${r.waitingForSlot}`) : null,
        r.mainOutcome && !ended ? h("p", { class: "muted" }, `main steps ended ${r.mainOutcome.phase} (${r.mainOutcome.reason}): running the exit steps`) : null,
        r.retry ? h("p", { class: "muted" }, `last retry request: ${r.retry.outcome} (${r.retry.count} retries so far): ${r.retry.message}`) : null);
      renderActions(r, ended);
    }

    let confirming = false;
    let actionsKey = null;
    function renderActions(r, ended) {
      const busy = actions.dataset.busy === "1";
      // Rebuilt only when what they offer changes, so a live update never swaps a button under the pointer.
      const key = JSON.stringify([r.suspended, ended, r.cancelRequested, r.phase, busy, confirming]);
      if (key === actionsKey) return;
      actionsKey = key;
      const btn = (id, label, onclick, opts) => h("button", Object.assign({ id, type: "button", onclick, disabled: busy || (opts && opts.disabled) }, opts && opts.cls ? { class: opts.cls } : {}), label);
      const list = [];
      if (r.suspended) list.push(btn("btn-resume", "Resume", () => act("resume"), { disabled: ended }));
      else list.push(btn("btn-suspend", "Suspend", () => act("suspend"), { disabled: ended }));
      if (confirming) {
        list.push(h("span", { class: "confirm" }, "Cancel this run? No new step starts and running workers are asked to stop. ",
          btn("btn-cancel-confirm", "Yes, cancel it", () => { confirming = false; act("cancel"); }, { cls: "danger" }),
          btn("btn-cancel-keep", "Keep running", () => { confirming = false; renderActions(r, ended); })));
      } else {
        list.push(btn("btn-cancel", "Cancel…", () => { confirming = true; renderActions(r, ended); }, { disabled: ended || r.cancelRequested, cls: "danger" }));
      }
      list.push(btn("btn-retry", "Retry", () => act("retry"), { disabled: r.phase !== "Failed" }));
      put(actions, ...list);
    }

    function showResult(ok, text, note) {
      result.dataset.state = ok ? "ok" : "error";
      put(result, ok ? h("span", {}, text) : text, note ? h("div", { class: "muted" }, note) : null);
    }

    async function act(action, body) {
      actions.dataset.busy = "1";
      if (view) renderActions(view.run, ["Succeeded", "Failed", "Cancelled"].includes(view.run.phase));
      showResult(true, action === "retry" ? "Retry requested; waiting for the operator…" : `${action}…`);
      try {
        const done = await call("POST", `${base}/${action}`, body);
        showResult(true, done.message, done.note);
        return true;
      } catch (err) {
        showResult(false, errorBox(err));
        return false;
      } finally {
        actions.dataset.busy = "";
        if (view) renderActions(view.run, ["Succeeded", "Failed", "Cancelled"].includes(view.run.phase));
      }
    }

    // -- the DAG
    function renderGraph() {
      const steps = view.run.steps.map((s) => Object.assign({}, s));
      if (graph && graph.shape === SluiceDag.shape(steps)) {
        const t = performance.now();
        graph.update(steps);
        window.sluiceStats.lastUpdateMs = performance.now() - t;
      } else {
        graph = SluiceDag.draw(svg, steps);
        window.sluiceStats.layoutMs = graph.layoutMs;
        window.sluiceStats.drawMs = graph.drawMs;
        window.sluiceStats.nodes = steps.length;
        if (selected) graph.select(selected);
      }
    }

    // -- the step panel
    const STATE_CLASS = { S: "Succeeded", F: "Failed", R: "Running", Q: "Ready", T: "Retrying", W: "Waiting", Z: "Sleeping", K: "Skipped", C: "Cancelled", ".": "Pending" };
    const STATE_COLOUR = { S: "#2da44e", F: "#cf222e", R: "#0969da", Q: "#54aeff", T: "#bf8700", W: "#8250df", Z: "#8250df", K: "#afb8c1", C: "#8c959f", ".": "#eaeef2" };

    function instanceStrip(states) {
      const n = states.length;
      const cols = Math.min(n, 100), size = n > 2000 ? 5 : 8;
      const rows = Math.ceil(n / cols);
      const canvas = h("canvas", { class: "instances", id: "instance-strip", width: cols * size, height: rows * size, title: "instances by index: each cell is one instance" });
      const ctx = canvas.getContext("2d");
      for (let i = 0; i < n; i++) {
        ctx.fillStyle = STATE_COLOUR[states[i]] || "#ccc";
        ctx.fillRect((i % cols) * size, Math.floor(i / cols) * size, size - 1, size - 1);
      }
      canvas.addEventListener("mousemove", (e) => {
        const r = canvas.getBoundingClientRect();
        const i = Math.floor((e.clientY - r.top) / size) * cols + Math.floor((e.clientX - r.left) / size);
        canvas.title = i < n ? `instance ${i}: ${STATE_CLASS[states[i]]}` : "";
      });
      return canvas;
    }

    function errorText(e) {
      let t = e.type;
      if (e.message) t += `: ${e.message}`;
      if (e.exitCode !== undefined && e.exitCode !== null) t += ` (exit code ${e.exitCode})`;
      if (e.attempt) t += ` [attempt ${e.attempt}]`;
      return t;
    }

    function json(v) {
      return h("pre", { class: "json" }, v === undefined ? "–" : JSON.stringify(v, null, 2));
    }

    function renderPanel() {
      if (!view || !selected) return;
      const step = view.run.steps.find((s) => s.name === selected);
      if (!step) { put(panel, h("p", { class: "muted" }, `No step ${selected} in this run.`)); return; }
      const extra = view.steps[selected] || {};
      const rows = [
        ["phase", phaseBadge(step.phase, { id: "panel-phase" })],
        ["kind", (step.handler ? `handler ${step.handler}` : step.kind) + (extra.forEach ? " · forEach" : "") + (step.onExit ? " · on exit" : "")],
        ["attempt", step.attempts ? String(step.attempts) : "–"],
        ["worker", step.worker || "–"],
        ["started", when(step.startedAt)],
        ["finished", when(step.finishedAt)],
        ["duration", duration(step.durationSeconds)],
        step.dependsOn.length ? ["depends on", step.dependsOn.join(", ")] : null,
        extra.when ? ["when", extra.when] : null,
        extra.sleep ? ["sleep", extra.sleep] : null,
        extra.wakeAt ? ["wakes", when(extra.wakeAt)] : null,
        extra.deadline ? ["deadline", when(extra.deadline)] : null,
        step.signal ? ["signal", step.signal] : null,
        step.child ? ["child flow", h("a", { "data-nav": true, href: runHref(ns, step.child), id: "child-link" }, step.child)] : null,
        step.message ? ["message", step.message] : null,
      ].filter(Boolean);
      const kids = [
        h("h2", {}, step.name),
        h("dl", { class: "facts" }, rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
      ];
      if (step.error) kids.push(h("h3", {}, "Last error"), h("pre", { class: "error-text", id: "panel-error" }, errorText(step.error)));
      const inst = step.instances;
      if (inst) {
        kids.push(h("h3", {}, `Instances (${inst.total})`),
          h("p", { id: "panel-instances" }, `${inst.succeeded} succeeded, ${inst.failed} failed, ${inst.active} active, ${inst.notStarted} not started`));
        if (extra.instanceStates) kids.push(instanceStrip(extra.instanceStates));
        const shown = inst.notSucceeded.slice(0, 50);
        if (shown.length) {
          kids.push(h("table", { class: "mini" },
            h("thead", {}, h("tr", {}, ["#", "phase", "attempt", "worker", "error"].map((c) => h("th", {}, c)))),
            h("tbody", {}, shown.map((i) => h("tr", {}, h("td", {}, i.index), h("td", {}, phaseBadge(i.phase)), h("td", {}, i.attempts), h("td", {}, i.worker || ""), h("td", {}, i.error ? errorText(i.error) : ""))))));
          if (inst.notSucceeded.length > shown.length) kids.push(h("p", { class: "muted" }, `… and ${inst.notSucceeded.length - shown.length} more not succeeded`));
        }
      }
      const detail = h("div", { id: "panel-detail" }, h("p", { class: "muted" }, "Loading input and output…"));
      kids.push(detail);
      put(panel, ...kids);
      loadDetail(step, detail);
    }

    let detailCache = null;
    async function loadDetail(step, into) {
      const key = `${step.name}|${step.phase}|${step.attempts}|${step.instances ? step.instances.succeeded : ""}`;
      if (key === detailKey && detailCache) { put(into, ...detailCache()); return; }
      detailKey = key;
      try {
        const d = await call("GET", `${base}/steps/${encodeURIComponent(step.name)}`);
        if (detailKey !== key) return;
        const st = d.status || {};
        detailCache = () => {
          const parts = [h("h3", {}, "Input (as written)"), json(d.spec.input)];
          if (d.spec.forEach !== undefined) parts.push(h("h3", {}, "forEach"), json(d.spec.forEach));
          parts.push(h("h3", {}, "Output"), h("pre", { class: "json", id: "panel-output" }, st.output === undefined ? "–" : JSON.stringify(st.output, null, 2)));
          if (Object.keys(d.instanceOutputs || {}).length) {
            parts.push(h("h3", {}, "Outputs of the instances so far"), h("pre", { class: "json", id: "panel-instance-outputs" }, JSON.stringify(d.instanceOutputs, null, 2)));
            if (d.outputsOmitted) parts.push(h("p", { class: "muted" }, `… and ${d.outputsOmitted} more outputs`));
          }
          const policy = Object.fromEntries(["retry", "timeout", "heartbeatTimeout", "pool", "maxParallel", "continueOnFailure", "waitForSignal", "flow"].filter((k) => d.spec[k] !== undefined).map((k) => [k, d.spec[k]]));
          if (Object.keys(policy).length) parts.push(h("h3", {}, "Settings"), json(policy));
          return parts;
        };
        put(into, ...detailCache());
      } catch (err) {
        put(into, errorBox(err));
      }
    }

    // -- signals
    let signalDraft = null;
    function renderSignals() {
      const waiting = view.awaited.filter((a) => a.phase === "Waiting");
      const names = [...new Set(view.awaited.map((a) => a.signal))];
      if (!signalDraft) {
        const nameIn = h("input", { id: "signal-name", list: "signal-names", placeholder: "signal name", value: (waiting[0] && waiting[0].signal) || names[0] || "", size: 22, "aria-label": "signal name" });
        const payload = h("textarea", { id: "signal-payload", rows: 4, cols: 40, placeholder: '{"approved": true}', spellcheck: "false", "aria-label": "payload (JSON)" });
        const check = h("div", { id: "signal-check", class: "muted" }, "Payload: JSON, or empty for none.");
        const send = h("button", { id: "signal-send", type: "button" }, "Send signal");
        const validate = () => {
          const text = payload.value.trim();
          if (!text) { check.className = "muted"; check.textContent = "No payload: the signal is sent without one."; send.disabled = !nameIn.value.trim(); return true; }
          try {
            JSON.parse(text);
            check.className = "ok"; check.textContent = "Valid JSON."; send.disabled = !nameIn.value.trim();
            return true;
          } catch (e) {
            check.className = "bad"; check.textContent = `Not valid JSON: ${e.message}`; send.disabled = true;
            return false;
          }
        };
        payload.addEventListener("input", validate);
        nameIn.addEventListener("input", validate);
        send.addEventListener("click", async () => {
          if (!validate()) return;
          send.disabled = true;
          const ok = await act("signal", { signal: nameIn.value.trim(), payload: payload.value.trim() || null });
          if (ok) payload.value = "";
          validate();
        });
        signalDraft = { form: h("div", { class: "signal-form" }, h("datalist", { id: "signal-names" }), nameIn, payload, check, send), list: h("datalist"), validate };
        validate();
      }
      const datalist = signalDraft.form.querySelector("#signal-names");
      put(datalist, ...names.map((n) => h("option", { value: n })));
      put(signals,
        h("h2", {}, "Signals"),
        view.awaited.length
          ? h("ul", { class: "awaited" }, view.awaited.map((a) => h("li", { dataset: { signal: a.signal } }, h("code", {}, a.signal), " for step ", h("strong", {}, a.step), " ", phaseBadge(a.phase))))
          : h("p", { class: "muted" }, "No step of this run waits for a signal."),
        signalDraft.form,
        h("h3", {}, "Delivered"),
        view.signals.length
          ? h("table", { class: "mini", id: "signals-delivered" }, h("tbody", {}, view.signals.map((s) => h("tr", {}, h("td", {}, h("code", {}, s.name)), h("td", {}, h("pre", { class: "json" }, s.payload === undefined ? "(no payload)" : JSON.stringify(s.payload)))))))
          : h("p", { class: "muted" }, "None."));
    }

    function renderIo() {
      put(io, h("h2", {}, "Input and output"), h("h3", {}, "spec.input"), json(view.input), h("h3", {}, "status.output"), json(view.output));
    }

    function renderEvents(list, error) {
      put(events, h("h2", {}, "Events"),
        error ? errorBox({ message: error, reason: "Events", code: "" }) : null,
        list.length
          ? h("table", { class: "mini", id: "events-table" },
            h("thead", {}, h("tr", {}, ["type", "reason", "age", "count", "message"].map((c) => h("th", {}, c)))),
            h("tbody", {}, list.map((e) => h("tr", { class: e.type === "Warning" ? "warn" : "" }, h("td", {}, e.type), h("td", {}, e.reason), h("td", { title: e.lastSeen || "" }, age(e.lastSeen)), h("td", {}, e.count), h("td", {}, e.message)))))
          : error ? null : h("p", { class: "muted" }, "No Events."));
    }

    let lastPanelKey = null;
    function apply(next, first) {
      const t0 = performance.now();
      view = next;
      renderHead();
      renderGraph();
      renderSignals();
      renderIo();
      if (selected) {
        const s = view.run.steps.find((x) => x.name === selected);
        const key = s ? JSON.stringify(s) + JSON.stringify(view.steps[selected] || {}) : "";
        if (key !== lastPanelKey) { lastPanelKey = key; renderPanel(); }
      }
      const ms = performance.now() - t0;
      if (first) {
        window.sluiceStats.renderMs = ms;
        window.sluiceStats.firstRenderAt = performance.now();
        document.body.dataset.page = "run";
        document.body.dataset.rendered = "1";
      }
    }

    const t0 = performance.now();
    call("GET", base).then((answer) => {
      window.sluiceStats.fetchMs = performance.now() - t0;
      apply(answer.view, true);
      renderEvents(answer.events, answer.eventsError);
      listen(`/api/live/runs/${encodeURIComponent(ns)}/${encodeURIComponent(name)}`, {
        run: (v) => apply(v, false),
        events: (e) => renderEvents(e.events, e.error),
        deleted: () => put(banner, h("div", { class: "error-box" }, "This FlowRun was deleted.")),
        problem: (p) => put(banner, errorBox({ message: p.error, reason: "Watch", code: "" })),
      });
    }).catch((err) => {
      put(head, errorBox(err));
      document.body.dataset.page = "run";
      document.body.dataset.rendered = "error";
    });
    every(5000, () => { if (view) renderHead(); });
  }

  route();
})();
