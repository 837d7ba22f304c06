// The DAG of a FlowRun, laid out left to right and drawn as one SVG.
//
// Layering is by longest path: a step sits one layer right of the furthest of the steps it depends on, so
// every edge points right. Exit steps (spec.onExit) come after the main steps. Within a layer, steps are
// ordered by a few barycenter sweeps (the mean position of their neighbours) to cut edge crossings. A forEach
// step is one node, whatever its number of instances: a bar shows how many succeeded, failed or are active.
// Node positions depend only on the steps and their dependencies, so live updates change classes and text of
// the existing elements and never lay the graph out again.
"use strict";

const SluiceDag = (() => {
  const W = 190, H = 58, GX = 70, GY = 16, PAD = 16;

  function esc(s) {
    return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }

  // Layers by longest path from the roots (Kahn's order); unknown dependencies are ignored, and steps on a
  // cycle (which the operator refuses) land in layer 0.
  function layers(steps) {
    const index = new Map(steps.map((s, i) => [s.name, i]));
    const layer = new Array(steps.length).fill(0);
    const indeg = new Array(steps.length).fill(0);
    const children = steps.map(() => []);
    steps.forEach((s, i) => {
      for (const d of new Set(s.dependsOn || [])) {
        const p = index.get(d);
        if (p === undefined || p === i) continue;
        children[p].push(i);
        indeg[i]++;
      }
    });
    const queue = [];
    indeg.forEach((n, i) => { if (n === 0) queue.push(i); });
    for (let q = 0; q < queue.length; q++) {
      const i = queue[q];
      for (const c of children[i]) {
        layer[c] = Math.max(layer[c], layer[i] + 1);
        if (--indeg[c] === 0) queue.push(c);
      }
    }
    // Exit steps after every main step.
    const mainMax = Math.max(-1, ...steps.map((s, i) => (s.onExit ? -1 : layer[i])));
    steps.forEach((s, i) => { if (s.onExit) layer[i] += mainMax + 1; });
    return { layer, children, index };
  }

  // Positions of every node ({x, y} by step index), the edges as SVG paths, and the size of the drawing. An edge
  // that spans several layers passes through a placeholder in each layer between (as in Sugiyama's method), so
  // it runs between the nodes of those layers rather than through them.
  function layout(steps) {
    const { layer, children } = layers(steps);
    const n = steps.length;
    // Real nodes first, then the placeholders of long edges.
    const layerOf = layer.slice();
    const up = steps.map(() => []);
    const down = steps.map(() => []);
    const chains = [];
    children.forEach((cs, p) => cs.forEach((c) => {
      const chain = [p];
      for (let l = layer[p] + 1; l < layer[c]; l++) {
        const v = layerOf.length;
        layerOf.push(l);
        up.push([]);
        down.push([]);
        chain.push(v);
      }
      chain.push(c);
      for (let k = 1; k < chain.length; k++) {
        down[chain[k - 1]].push(chain[k]);
        up[chain[k]].push(chain[k - 1]);
      }
      chains.push(chain);
    }));
    const total = layerOf.length;
    const nLayers = n ? Math.max(...layer) + 1 : 0;
    const rows = Array.from({ length: nLayers }, () => []);
    for (let i = 0; i < total; i++) rows[layerOf[i]].push(i);
    const pos = new Array(total).fill(0);
    rows.forEach((r) => r.forEach((i, k) => { pos[i] = k; }));
    const mean = (list, fallback) => (list.length ? list.reduce((a, j) => a + pos[j], 0) / list.length : fallback);
    for (let sweep = 0; sweep < 6; sweep++) {
      const downward = sweep % 2 === 0;
      const order = downward ? [...rows.keys()] : [...rows.keys()].reverse();
      for (const l of order) {
        const r = rows[l];
        const key = new Map(r.map((i) => [i, mean(downward ? up[i] : down[i], pos[i])]));
        r.sort((a, b) => key.get(a) - key.get(b) || pos[a] - pos[b]);
        r.forEach((i, k) => { pos[i] = k; });
      }
    }
    const tallest = Math.max(0, ...rows.map((r) => r.length));
    const xy = new Array(total);
    rows.forEach((r, l) => {
      const offset = ((tallest - r.length) * (H + GY)) / 2;
      r.forEach((i, k) => { xy[i] = { x: PAD + l * (W + GX), y: PAD + offset + k * (H + GY) }; });
    });
    const edges = chains.map((chain) => {
      const a = xy[chain[0]];
      let d = `M${a.x + W},${a.y + H / 2}`;
      let x = a.x + W, y = a.y + H / 2;
      for (let k = 1; k < chain.length; k++) {
        const b = xy[chain[k]];
        const last = k === chain.length - 1;
        const x2 = last ? b.x - 4 : b.x, y2 = b.y + H / 2, mx = (x + x2) / 2;
        d += ` C${mx},${y} ${mx},${y2} ${x2},${y2}`;
        if (!last) d += ` L${b.x + W},${y2}`;
        x = b.x + W;
        y = y2;
      }
      return { from: chain[0], to: chain[chain.length - 1], d };
    });
    return {
      xy: xy.slice(0, n), edges,
      width: PAD * 2 + Math.max(0, nLayers * (W + GX) - GX),
      height: PAD * 2 + Math.max(0, tallest * (H + GY) - GY),
    };
  }

  // The structure of a run's graph: changes only when steps or dependencies do.
  function shape(steps) {
    return steps.map((s) => `${s.name}<${(s.dependsOn || []).join(",")}${s.onExit ? "!" : ""}`).join("|");
  }

  const KIND = { handler: "⚙", signal: "✉", sleep: "◷", flow: "↳" };

  function cut(s, n) {
    return s.length > n ? s.slice(0, n - 1) + "…" : s;
  }

  // The second line of a node: phase, attempt, instance counts.
  function detail(step) {
    let t = step.phase;
    const inst = step.instances;
    if (inst) t += ` ${inst.succeeded}/${inst.total}`;
    else if (step.attempts > 1) t += ` · attempt ${step.attempts}`;
    if (step.child) t += " · child";
    return t;
  }

  // Fractions of the forEach bar: succeeded, failed, active.
  function bar(step) {
    const inst = step.instances;
    if (!inst || !inst.total) return null;
    const w = W - 20;
    const s = (w * inst.succeeded) / inst.total;
    const f = (w * inst.failed) / inst.total;
    const a = (w * inst.active) / inst.total;
    return { s, f, a };
  }

  function nodeMarkup(step, p) {
    const b = bar(step);
    const bars = b
      ? `<rect class="bar-bg" x="10" y="${H - 12}" width="${W - 20}" height="5" rx="2"/>` +
        `<rect class="bar-s" x="10" y="${H - 12}" width="${b.s}" height="5" rx="2"/>` +
        `<rect class="bar-f" x="${10 + b.s}" y="${H - 12}" width="${b.f}" height="5"/>` +
        `<rect class="bar-a" x="${10 + b.s + b.f}" y="${H - 12}" width="${b.a}" height="5"/>`
      : "";
    const icon = KIND[step.kind] || "";
    const each = step.instances ? `<text class="each" x="${W - 8}" y="18" text-anchor="end">×${step.instances.total}</text>` : "";
    return `<g class="node p-${step.phase}${step.onExit ? " exit" : ""}" data-step="${esc(step.name)}" data-phase="${step.phase}" transform="translate(${p.x},${p.y})" tabindex="0">` +
      `<title>${esc(step.name)}</title>` +
      `<rect class="box" width="${W}" height="${H}" rx="8"/>` +
      `<text class="name" x="10" y="20">${esc(icon)} ${esc(cut(step.name, step.instances ? 20 : 24))}</text>` +
      each +
      `<text class="sub" x="10" y="${b ? 38 : 42}">${esc(detail(step))}</text>` +
      bars + `</g>`;
  }

  // Draws the graph into `svg` (an <svg> element); returns a handle to update it in place.
  function draw(svg, steps) {
    const t0 = performance.now();
    const lay = layout(steps);
    const t1 = performance.now();
    const edges = lay.edges.map((e) =>
      `<path class="edge" data-from="${esc(steps[e.from].name)}" data-to="${esc(steps[e.to].name)}" d="${e.d}"/>`);
    const nodes = steps.map((s, i) => nodeMarkup(s, lay.xy[i]));
    svg.setAttribute("width", lay.width);
    svg.setAttribute("height", lay.height);
    svg.setAttribute("viewBox", `0 0 ${lay.width} ${lay.height}`);
    svg.innerHTML =
      `<defs><marker id="arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L8,4 L0,8 z"/></marker></defs>` +
      `<g class="edges">${edges.join("")}</g><g class="nodes">${nodes.join("")}</g>`;
    const byName = new Map();
    svg.querySelectorAll("g.node").forEach((g) => byName.set(g.dataset.step, g));
    const t2 = performance.now();
    return {
      shape: shape(steps),
      layoutMs: t1 - t0,
      drawMs: t2 - t1,
      // Updates phases, texts and bars of the existing nodes.
      update(next) {
        for (const s of next) {
          const g = byName.get(s.name);
          if (!g) continue;
          if (g.dataset.phase !== s.phase) {
            g.dataset.phase = s.phase;
            g.setAttribute("class", `node p-${s.phase}${s.onExit ? " exit" : ""}${g.classList.contains("selected") ? " selected" : ""}`);
          }
          const sub = g.querySelector("text.sub");
          const text = detail(s);
          if (sub.textContent !== text) sub.textContent = text;
          const b = bar(s);
          if (b) {
            const [bs, bf, ba] = ["bar-s", "bar-f", "bar-a"].map((c) => g.querySelector(`rect.${c}`));
            bs.setAttribute("width", b.s);
            bf.setAttribute("x", 10 + b.s);
            bf.setAttribute("width", b.f);
            ba.setAttribute("x", 10 + b.s + b.f);
            ba.setAttribute("width", b.a);
          }
        }
      },
      select(name) {
        svg.querySelectorAll(".selected").forEach((e) => e.classList.remove("selected"));
        if (name === null) return;
        const g = byName.get(name);
        if (g) g.classList.add("selected");
        svg.querySelectorAll("path.edge").forEach((p) => {
          if (p.dataset.from === name || p.dataset.to === name) p.classList.add("selected");
        });
      },
      node(name) {
        return byName.get(name);
      },
    };
  }

  return { layout, layers, draw, shape, W, H };
})();
