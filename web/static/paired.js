/* EdgeFleet Compare page: the paired chart of two runs (web/pages/paired.py builds the data).
 *
 * As everywhere, data arrives in a <script type="application/json"> block and is JSON.parsed:
 *   <div class="chart" data-paired="ID" data-panel="p50|ratio">
 * "p50": A's p50 (hollow) and B's (filled) per device x threads, joined by a thin segment;
 * "ratio": B/A with its 95% CI as a whisker, and a reference line at 1. x is the pair's index,
 * labelled with the device and thread count. Colours follow the page theme (app.js).
 */
(function () {
  "use strict";

  var ef = window.EdgeFleet;  // app.js: readJSON, size, plot, theme, register
  var SLOWER = "#d84a3f", FASTER = "#2e9d4f";

  function noPath() { return null; }

  // Labels turn when they would not fit side by side (many pairs, or a phone's width).
  function xAxis(d, el) {
    var tight = d.labels.length > 4 || (el.clientWidth || 480) / d.labels.length < 110;
    return {
      splits: function () { return d.labels.map(function (_, i) { return i; }); },
      values: function (u, ticks) {
        return ticks.map(function (t) { return d.labels[t] === undefined ? "" : d.labels[t]; });
      },
      rotate: tight ? -30 : 0,
      size: tight ? 90 : 40,
    };
  }

  function xScale(d) {
    return { time: false, range: function () { return [-0.6, d.labels.length - 0.4]; } };
  }

  // Vertical segments per pair, drawn on the chart's canvas after the series.
  function segments(pairs, color, width) {
    return function (u) {
      var ctx = u.ctx;
      ctx.save();
      ctx.strokeStyle = color;
      ctx.lineWidth = width * (window.devicePixelRatio || 1);
      pairs().forEach(function (p) {
        if (p[1] === null || p[2] === null) return;
        var x = u.valToPos(p[0], "x", true);
        ctx.beginPath();
        ctx.moveTo(x, u.valToPos(p[1], "y", true));
        ctx.lineTo(x, u.valToPos(p[2], "y", true));
        ctx.stroke();
      });
      ctx.restore();
    };
  }

  function p50(el, d, t) {
    var xs = d.labels.map(function (_, i) { return i; });
    var hi = Math.max.apply(null, d.a.concat(d.b).filter(function (v) { return v !== null; }));
    return ef.plot(Object.assign(ef.size(el), {
      scales: { x: xScale(d), y: { range: [0, hi > 0 ? hi * 1.15 : 1] } },
      series: [
        { label: "pair" },
        { label: d.a_label, stroke: t.muted, paths: noPath,
          points: { show: true, size: 9, width: 1.5, stroke: t.fg, fill: t.bg } },
        { label: d.b_label, stroke: t.freq, paths: noPath,
          points: { show: true, size: 9, width: 1.5, stroke: t.freq, fill: t.freq } },
      ],
      axes: [xAxis(d, el), { label: "p50 ms" }],
      hooks: { drawSeries: [segments(function () {
        return xs.map(function (i) { return [i, d.a[i], d.b[i]]; });
      }, t.grid, 2)] },
    }), [xs, d.a, d.b], el);
  }

  function ratio(el, d, t) {
    var xs = d.labels.map(function (_, i) { return i; });
    var all = d.lo.concat(d.hi, d.ratio, [1]).filter(function (v) { return v !== null; });
    var lo = Math.min.apply(null, all), hi = Math.max.apply(null, all);
    var pad = (hi - lo) * 0.12 || 0.1;
    var colors = d.verdict.map(function (v) {
      return v === "slower" ? SLOWER : v === "faster" ? FASTER : t.fg;
    });
    return ef.plot(Object.assign(ef.size(el), {
      scales: { x: xScale(d), y: { range: [Math.max(0, lo - pad), hi + pad] } },
      series: [
        { label: "pair" },
        { label: "B/A", stroke: t.fg, paths: noPath,
          points: { show: true, size: 9, width: 1.5, stroke: t.fg, fill: t.fg } },
      ],
      axes: [xAxis(d, el), { label: "B/A (95% CI)" }],
      hooks: {
        drawClear: [function (u) {  // the reference line at 1 under everything
          var ctx = u.ctx, y = u.valToPos(1, "y", true);
          ctx.save();
          ctx.strokeStyle = t.muted;
          ctx.setLineDash([4, 4]);
          ctx.beginPath();
          ctx.moveTo(u.bbox.left, y);
          ctx.lineTo(u.bbox.left + u.bbox.width, y);
          ctx.stroke();
          ctx.restore();
        }],
        drawSeries: [function (u) {  // whiskers, coloured by verdict
          xs.forEach(function (i) {
            segments(function () { return [[i, d.lo[i], d.hi[i]]]; }, colors[i], 2)(u);
          });
        }],
      },
    }), [xs, d.ratio], el);
  }

  ef.register("[data-paired]", function (el) {
    var d = ef.readJSON(el.dataset.paired);
    if (!d || !d.labels || d.labels.length === 0) return null;
    var t = ef.theme();
    return el.dataset.panel === "ratio" ? ratio(el, d, t) : p50(el, d, t);
  });
})();
