// Small SVG charts drawn from the server's sampled history. The viewBox is
// 300 x 48; the SVG stretches to the card's width.

import { el, svg, clear } from "./dom.js";

// Labels stay out of the SVG: it stretches to the card, and text in it
// would stretch too.

const W = 300;
const H = 48;
const PAD = 2;

// bars draws one bar per sample; values are counts per interval. It
// returns the scale's maximum.
export function bars(node, points, field, cls, slots) {
  clear(node);
  const n = Math.max(slots, points.length, 1);
  const top = Math.max(0, ...points.map((p) => p[field]));
  const max = Math.max(1, top);
  const w = W / n;
  const offset = n - points.length; // newest point at the right edge
  points.forEach((p, i) => {
    const v = p[field];
    if (v <= 0) return;
    const h = Math.max(1, ((H - PAD) * v) / max);
    const rect = svg("rect", {
      class: cls, x: ((offset + i) * w).toFixed(2), y: (H - h).toFixed(2),
      width: Math.max(0.6, w - 0.4).toFixed(2), height: h.toFixed(2),
    });
    rect.append(svg("title", {}, `${v} at ${new Date(p.at).toLocaleTimeString()}`));
    node.append(rect);
  });
  return top;
}

// stacked draws the proxies per status as stacked areas. It returns the
// scale's maximum.
export function stacked(node, points, statuses, slots) {
  clear(node);
  if (points.length === 0) return 0;
  const n = Math.max(slots, points.length, 2);
  const step = W / (n - 1);
  const offset = n - points.length;
  const totals = points.map((p) => statuses.reduce((s, st) => s + (p.by_status[st] || 0), 0));
  const peak = Math.max(0, ...totals);
  const max = Math.max(1, peak);
  const x = (i) => ((offset + i) * step).toFixed(2);
  const y = (v) => (H - ((H - PAD) * v) / max).toFixed(2);
  let base = points.map(() => 0);
  for (const st of statuses) {
    const top = points.map((p, i) => base[i] + (p.by_status[st] || 0));
    if (top.some((v, i) => v > base[i])) {
      let d = "";
      if (points.length === 1) {
        d = `M${x(0)},${y(base[0])}L${x(0)},${y(top[0])}L${W},${y(top[0])}L${W},${y(base[0])}Z`;
      } else {
        d = top.map((v, i) => `${i ? "L" : "M"}${x(i)},${y(v)}`).join("");
        for (let i = points.length - 1; i >= 0; i--) d += `L${x(i)},${y(base[i])}`;
        d += "Z";
      }
      const path = svg("path", { class: "a-" + st, d });
      path.append(svg("title", {}, `${st}: ${points[points.length - 1].by_status[st] || 0} now`));
      node.append(path);
    }
    base = top;
  }
  return peak;
}

// usageBars draws one row per group: its label, an SVG bar of the bytes
// sent and received (scaled to the largest total) and the total as text.
// Each row is [key, label, sent, received, title]; labels stay out of the
// SVG, which stretches to the card.
export function usageBars(node, rows, format) {
  clear(node);
  const max = Math.max(1, ...rows.map((r) => r[2] + r[3]));
  for (const [key, label, sent, received, title] of rows) {
    const bar = svg("svg", { viewBox: "0 0 100 10", preserveAspectRatio: "none", role: "img" });
    const ws = (100 * sent) / max;
    const wr = (100 * received) / max;
    if (sent > 0) bar.append(svg("rect", { class: "u-sent", x: 0, y: 0, width: Math.max(0.4, ws).toFixed(2), height: 10 }));
    if (received > 0) {
      bar.append(svg("rect", { class: "u-received", x: ws.toFixed(2), y: 0, width: Math.max(0.4, wr).toFixed(2), height: 10 }));
    }
    bar.append(svg("title", {}, `${label}: ${format(sent)} sent, ${format(received)} received`));
    node.append(el("div", { class: "urow", "data-key": key, title },
      el("span", { class: "ulabel" }, label), bar, el("span", { class: "uval" }, format(sent + received))));
  }
}
