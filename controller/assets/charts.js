// barrage charts: line charts drawn as SVG from JSON series, no dependency,
// no network. One chart per call:
//   var c = BarrageCharts.chart(element, spec); ... c.update(newSeries);
// spec = {
//   title, x: {label, scale: "linear" | "nines" | "log", min, max}, y: {label, scale, unit},
//   series: [{name, points: [[x, y], ...], dashed, color}],   // y may be null (a gap)
//   bands: [{from, to, label}],                               // shaded x ranges
//   kind: "line" | "points"
// }
// "nines" is the x axis of percentile curves: x is a percentile (0..100),
// drawn at -log10(1 - x/100) so p90, p99, p99.9, p99.99 are evenly spaced.
// Every drawn series is a <path class="series" data-series data-points>, its
// points <circle class="pt" data-x data-y> (up to MAX_MARKERS per series).
(function (root) {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";
  var W = 720, H = 270, M = { l: 64, r: 18, t: 12, b: 44 };
  var MAX_MARKERS = 400;
  var PALETTE = ["#1f6fd1", "#d9480f", "#2b8a3e", "#9c36b5", "#e8590c", "#0b7285",
    "#c2255c", "#5c940d", "#364fc7", "#862e9c"];
  var NINES_CAP = 5;     // p99.999: the furthest percentile drawn
  var NINES_MAX = 4.35;  // where p100 (the exact max) is drawn, just past p99.99

  function el(name, attrs, parent) {
    var e = document.createElementNS(SVG, name);
    for (var k in attrs) { if (attrs[k] !== undefined) e.setAttribute(k, attrs[k]); }
    if (parent) parent.appendChild(e);
    return e;
  }

  function nines(p) {
    if (p >= 100) return NINES_MAX;
    return Math.min(NINES_CAP, -Math.log(1 - p / 100) / Math.LN10);
  }

  function fmt(v) {
    if (v === null || v === undefined || !isFinite(v)) return "–";
    var a = Math.abs(v);
    if (a >= 1e9) return (v / 1e9).toFixed(a >= 1e10 ? 0 : 1) + "G";
    if (a >= 1e6) return (v / 1e6).toFixed(a >= 1e7 ? 0 : 1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(a >= 1e5 ? 0 : 1) + "k";
    if (a >= 100) return v.toFixed(0);
    if (a >= 10) return v.toFixed(1).replace(/\.0$/, "");
    if (a >= 1) return v.toFixed(2).replace(/\.?0+$/, "");
    if (a === 0) return "0";
    return v.toPrecision(2).replace(/\.?0+$/, "");
  }

  function pctLabel(p) {
    if (p >= 100) return "max";
    return "p" + String(Math.round(p * 10000) / 10000);
  }

  // About `n` round ticks covering [lo, hi].
  function niceTicks(lo, hi, n) {
    if (!(hi > lo)) { hi = lo + 1; }
    var step = Math.pow(10, Math.floor(Math.log(( hi - lo) / n) / Math.LN10));
    var err = (hi - lo) / n / step;
    if (err >= 7.5) step *= 10; else if (err >= 3.5) step *= 5; else if (err >= 1.5) step *= 2;
    var out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
      out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
    }
    return out;
  }

  function logTicks(lo, hi) {
    var out = [];
    for (var e = Math.floor(Math.log(lo) / Math.LN10); Math.pow(10, e) <= hi * 1.0001; e++) {
      var v = Math.pow(10, e);
      if (v >= lo * 0.9999) out.push(v);
    }
    return out.length >= 2 ? out : [lo, hi];
  }

  function finitePoints(series, xf) {
    var xs = [], ys = [];
    series.forEach(function (s) {
      (s.points || []).forEach(function (p) {
        if (p && p[1] !== null && p[1] !== undefined && isFinite(p[1]) && isFinite(p[0])) {
          xs.push(xf(p[0])); ys.push(p[1]);
        }
      });
    });
    return { xs: xs, ys: ys };
  }

  function axisX(spec, g, sx, dom, plotH) {
    var scale = (spec.x && spec.x.scale) || "linear";
    var ticks;
    if (scale === "nines") {
      ticks = [0, 50, 90, 99, 99.9, 99.99].filter(function (p) { return nines(p) <= dom[1] + 1e-9; })
        .map(function (p) { return { v: nines(p), label: pctLabel(p) }; });
      var hasMax = (spec.series || []).some(function (s) {
        return (s.points || []).some(function (p) { return p[0] >= 100; });
      });
      if (hasMax) {
        // "max" sits at the end: drop a percentile tick too close to it.
        ticks = ticks.filter(function (t) { return t.v < NINES_MAX - 0.25; });
        ticks.push({ v: NINES_MAX, label: "max" });
      }
    } else if (scale === "log") {
      ticks = logTicks(dom[0], dom[1]).map(function (v) { return { v: v, label: fmt(v) }; });
    } else {
      ticks = niceTicks(dom[0], dom[1], 7).map(function (v) { return { v: v, label: fmt(v) }; });
    }
    ticks.forEach(function (t) {
      var x = sx(t.v);
      el("line", { x1: x, x2: x, y1: M.t, y2: M.t + plotH, "class": "grid" }, g);
      var tx = el("text", { x: x, y: M.t + plotH + 16, "text-anchor": "middle", "class": "tick" }, g);
      tx.textContent = t.label;
    });
    if (spec.x && spec.x.label) {
      var lab = el("text", { x: M.l + (W - M.l - M.r) / 2, y: H - 6, "text-anchor": "middle", "class": "axis-label" }, g);
      lab.textContent = spec.x.label;
    }
  }

  function axisY(spec, g, sy, dom, plotW) {
    var logY = spec.y && spec.y.scale === "log";
    var ticks = logY ? logTicks(dom[0], dom[1]) : niceTicks(dom[0], dom[1], 5);
    ticks.forEach(function (v) {
      var y = sy(v);
      el("line", { x1: M.l, x2: M.l + plotW, y1: y, y2: y, "class": "grid" }, g);
      var tx = el("text", { x: M.l - 6, y: y + 4, "text-anchor": "end", "class": "tick" }, g);
      tx.textContent = fmt(v);
    });
    if (spec.y && spec.y.label) {
      var lab = el("text", { x: 14, y: M.t + (H - M.t - M.b) / 2, "text-anchor": "middle",
        transform: "rotate(-90 14 " + (M.t + (H - M.t - M.b) / 2) + ")", "class": "axis-label" }, g);
      lab.textContent = spec.y.label;
    }
  }

  function domains(spec, series, xf) {
    var f = finitePoints(series, xf);
    if (!f.xs.length) return null;
    var x0 = Math.min.apply(null, f.xs), x1 = Math.max.apply(null, f.xs);
    var y0 = Math.min.apply(null, f.ys), y1 = Math.max.apply(null, f.ys);
    var logY = spec.y && spec.y.scale === "log";
    if (logY) {
      var pos = f.ys.filter(function (v) { return v > 0; });
      y0 = pos.length ? Math.min.apply(null, pos) : 1; y1 = Math.max(y1, y0 * 10);
    } else {
      y0 = Math.min(0, y0);
      if (y1 <= y0) y1 = y0 + 1;
      y1 = y1 + (y1 - y0) * 0.05;
    }
    if (spec.x && isFinite(spec.x.min)) x0 = xf(spec.x.min);
    if (spec.x && isFinite(spec.x.max)) x1 = xf(spec.x.max);
    if (x1 <= x0) {
      // One point: a span around it that does not go below 0 for times.
      var half = Math.max(Math.abs(x0) * 0.5, 0.5);
      x1 = x0 + half; x0 = x0 >= 0 ? Math.max(0, x0 - half) : x0 - half;
    }
    if (spec.x && spec.x.scale === "nines") { x0 = 0; }
    return { x: [x0, x1], y: [y0, y1], logY: logY };
  }

  function drawSeries(svg, s, i, sx, sy, xf, kind, spec) {
    var color = s.color || PALETTE[i % PALETTE.length];
    var d = "", pen = false, n = 0, pts = [];
    (s.points || []).forEach(function (p) {
      var ok = p && p[1] !== null && p[1] !== undefined && isFinite(p[1]) &&
        !(spec.y && spec.y.scale === "log" && p[1] <= 0);
      if (!ok) { pen = false; return; }
      var x = sx(xf(p[0])), y = sy(p[1]);
      d += (pen ? "L" : "M") + x.toFixed(1) + " " + y.toFixed(1);
      pen = true; n++; pts.push([p[0], p[1], x, y]);
    });
    var path = el("path", { d: d || "M0 0", "class": "series" + (s.dashed ? " dashed" : ""),
      stroke: kind === "points" ? "none" : color, fill: "none",
      "data-series": s.name, "data-points": String(n) }, svg);
    var markers = pts.length <= MAX_MARKERS;
    var g = el("g", { "class": "points", "data-series": s.name }, svg);
    if (markers) {
      pts.forEach(function (p) {
        var c = el("circle", { cx: p[2].toFixed(1), cy: p[3].toFixed(1),
          r: kind === "points" || pts.length <= 40 ? 3.2 : 1.8, fill: color, "class": "pt",
          "data-x": String(p[0]), "data-y": String(p[1]) }, g);
        var t = el("title", {}, c);
        var xl = spec.x && spec.x.scale === "nines" ? pctLabel(p[0]) : fmt(p[0]);
        t.textContent = s.name + " — " + ((spec.x && spec.x.label) || "x") + " " + xl + ": " +
          fmt(p[1]) + ((spec.y && spec.y.unit) ? " " + spec.y.unit : "");
      });
    }
    return { name: s.name, color: color, n: n, dashed: !!s.dashed };
  }

  function legend(box, drawn) {
    var lg = document.createElement("div");
    lg.className = "legend";
    drawn.forEach(function (s) {
      var item = document.createElement("span");
      item.className = "legend-item";
      var sw = document.createElement("span");
      sw.className = "swatch" + (s.dashed ? " dashed" : "");
      sw.style.borderColor = s.color;
      item.appendChild(sw);
      item.appendChild(document.createTextNode(s.name + (s.n ? "" : " (no data)")));
      lg.appendChild(item);
    });
    box.appendChild(lg);
  }

  function render(box, spec) {
    while (box.firstChild) box.removeChild(box.firstChild);
    var series = spec.series || [];
    var xf = spec.x && spec.x.scale === "nines" ? nines : function (v) { return v; };
    var dom = domains(spec, series, xf);
    box.setAttribute("data-chart-kind", (spec.x && spec.x.scale) || "linear");
    if (!dom) {
      var empty = document.createElement("p");
      empty.className = "chart-empty";
      empty.textContent = spec.empty || "no data in this run";
      box.appendChild(empty);
      box.setAttribute("data-empty", "true");
      return 0;
    }
    box.removeAttribute("data-empty");
    var svg = el("svg", { viewBox: "0 0 " + W + " " + H, "class": "chart-svg", role: "img",
      "aria-label": spec.title || "chart", preserveAspectRatio: "xMidYMid meet" });
    var plotW = W - M.l - M.r, plotH = H - M.t - M.b;
    var logX = spec.x && spec.x.scale === "log";
    var lx = function (v) { return Math.log(Math.max(v, 1e-12)) / Math.LN10; };
    var sx = function (v) {
      if (logX) return M.l + (lx(v) - lx(dom.x[0])) / ((lx(dom.x[1]) - lx(dom.x[0])) || 1) * plotW;
      return M.l + (v - dom.x[0]) / (dom.x[1] - dom.x[0]) * plotW;
    };
    var sy = function (v) {
      if (dom.logY) return M.t + plotH - (lx(v) - lx(dom.y[0])) / ((lx(dom.y[1]) - lx(dom.y[0])) || 1) * plotH;
      return M.t + plotH - (v - dom.y[0]) / (dom.y[1] - dom.y[0]) * plotH;
    };
    var axes = el("g", { "class": "axes" }, svg);
    (spec.bands || []).forEach(function (b) {
      var x0 = sx(Math.max(dom.x[0], b.from)), x1 = sx(Math.min(dom.x[1], b.to));
      if (x1 > x0) {
        el("rect", { x: x0, y: M.t, width: x1 - x0, height: plotH, "class": "band" }, axes);
        var bt = el("text", { x: x0 + 4, y: M.t + 12, "class": "band-label" }, axes);
        bt.textContent = b.label || "";
      }
    });
    axisX(spec, axes, sx, dom.x, plotH);
    axisY(spec, axes, sy, dom.y, plotW);
    el("rect", { x: M.l, y: M.t, width: plotW, height: plotH, "class": "frame", fill: "none" }, axes);
    var drawn = series.map(function (s, i) { return drawSeries(svg, s, i, sx, sy, xf, spec.kind, spec); });
    box.appendChild(svg);
    legend(box, drawn);
    return drawn.reduce(function (a, s) { return a + s.n; }, 0);
  }

  // Draws `spec` into `box`; returns a handle whose update(series) redraws
  // with new series (a live view calls it on every interval).
  function chart(box, spec) {
    var current = spec;
    var points = render(box, spec);
    return {
      points: function () { return points; },
      update: function (series) {
        current = Object.assign({}, current, { series: series });
        points = render(box, current);
        return points;
      }
    };
  }

  root.BarrageCharts = { chart: chart, format: fmt, nines: nines, percentileLabel: pctLabel };
})(typeof window !== "undefined" ? window : this);
