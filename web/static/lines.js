/* EdgeFleet Trends and Compare pages: uPlot line charts from JSON data blocks.
 *
 * Like app.js, data never reaches code as text: the server writes it into
 * <script type="application/json" id="ID"> (escaped) and this file JSON.parses it. An element
 *   <div class="chart" data-lines="ID" data-index="N">
 * draws chart N of that block (shape: web/pages_charts.py). Its own attribute (not data-chart)
 * keeps app.js's renderers out of it.
 *
 * Series kinds: "line" (valid points joined across gaps), "invalid" (hollow markers, no line:
 * measured while throttled, not comparable), "regression" (filled red markers on the line).
 */
(function () {
  "use strict";

  var charts = [];

  function readJSON(id) {
    var el = document.getElementById(id);
    if (!el) return null;
    try { return JSON.parse(el.textContent); } catch (e) { return null; }
  }

  function size(el) {
    return { width: Math.max(260, el.clientWidth || 480), height: 220 };
  }

  function noPath() { return null; }

  function seriesOpts(s) {
    if (s.kind === "invalid") {
      return { label: s.label, stroke: s.color, paths: noPath,
               points: { show: true, size: 9, width: 1.5, stroke: s.color, fill: "#fff" } };
    }
    if (s.kind === "regression") {
      return { label: s.label, stroke: s.color, paths: noPath,
               points: { show: true, size: 11, width: 2, stroke: s.color, fill: s.color } };
    }
    return { label: s.label, stroke: s.color, width: 1.5, spanGaps: true,
             points: { show: true, size: 5, fill: s.color, stroke: s.color } };
  }

  function xScale(c) {
    if (c.x_time) return { time: true };
    var lo = Math.min.apply(null, c.x), hi = Math.max.apply(null, c.x);
    if (c.x_log2 && lo > 0) {
      return { time: false, distr: 3, log: 2,
               range: function () { return [lo / 1.5, hi * 1.5]; } };
    }
    return { time: false, range: function () { return [lo - 1, hi + 1]; } };
  }

  function xAxis(c) {
    var axis = { label: c.x_label || "" };
    if (!c.x_time) {  // thread counts: a tick at each measured count, and only there
      axis.splits = function () { return c.x; };
      axis.values = function (u, ticks) { return ticks.map(String); };
    }
    return axis;
  }

  function draw(el, c) {
    if (!c || !c.x || c.x.length === 0) {
      el.classList.add("empty");
      el.textContent = "No points.";
      return null;
    }
    var opts = Object.assign(size(el), {
      // Times in UTC, like every timestamp on these pages (and cron schedules).
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"); },
      scales: {
        x: xScale(c),
        // From 0: a 10% regression should look like 10%, not like a cliff.
        y: { range: function (u, lo, hi) { return [0, hi > 0 ? hi * 1.1 : 1]; } },
      },
      series: [{ label: c.x_time ? "time" : (c.x_label || "x") }]
        .concat(c.series.map(seriesOpts)),
      axes: [xAxis(c), { label: c.y_label || "" }],
    });
    var data = [c.x].concat(c.series.map(function (s) { return s.values; }));
    return new uPlot(opts, data, el);
  }

  function drawAll(root) {
    if (typeof window.uPlot === "undefined") return;
    var els = (root || document).querySelectorAll("[data-lines]:not([data-drawn])");
    Array.prototype.forEach.call(els, function (el) {
      el.dataset.drawn = "1";
      var block = readJSON(el.dataset.lines);
      if (!block) return;
      var chart = draw(el, block[Number(el.dataset.index || 0)]);
      if (chart) charts.push({ el: el, chart: chart });
    });
  }

  var resizeTimer = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () {
      charts.forEach(function (c) { c.chart.setSize(size(c.el)); });
    }, 150);
  });

  document.addEventListener("DOMContentLoaded", function () { drawAll(document); });
  document.addEventListener("htmx:afterSwap", function (event) { drawAll(event.target); });
})();
