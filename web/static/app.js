/* EdgeFleet pages: draw uPlot charts from JSON data blocks, confirm risky forms.
 *
 * Data never reaches code as text: pages embed it in <script type="application/json"> blocks
 * (escaped by the server) and this file reads it with JSON.parse. A chart element names its
 * block and, for lists, an index:
 *   <div class="chart" data-chart="hist|cdf|samples|telemetry" data-source="ID" data-index="N">
 * or names a same-origin JSON URL instead (data-url: the run page's per-result chart data,
 * fetched once per URL when the element scrolls near the view, so a 150-result run page does
 * not carry every result's raw latencies; lines.js does the same for the Trends page's charts).
 * An element [data-note-of="URL"] gets that data's
 * hist.note as its text (the histogram caption's tail clause, worded by the server).
 */
(function () {
  "use strict";

  var TEMP = "#c0392b", FREQ = "#1f5fa8", EVENT = "#e07b00", BAR = "#5c6bc0";
  var charts = [];

  // Chart colours follow the page's theme (app.css's variables, re-valued under
  // prefers-color-scheme: dark): axis text, ticks and grid lines, the background of hollow
  // markers. Read when a chart is drawn; charts are redrawn when the scheme changes.
  function theme() {
    var css = getComputedStyle(document.documentElement);
    function v(name, fallback) { return (css.getPropertyValue(name) || "").trim() || fallback; }
    var dark = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
    return { fg: v("--fg", "#1d1f21"), muted: v("--muted", "#6b7075"),
             grid: v("--grid", "rgba(0,0,0,.08)"), bg: v("--bg", "#fff"), dark: !!dark,
             temp: dark ? "#ef6f5e" : TEMP, freq: dark ? "#7fb2f0" : FREQ };
  }

  // Every chart goes through here (lines.js too): the theme's colours on every axis that did
  // not choose its own text colour.
  function plot(opts, data, el) {
    var t = theme();
    (opts.axes || []).forEach(function (axis) {
      if (!axis.stroke) axis.stroke = t.fg;
      axis.grid = Object.assign({ stroke: t.grid, width: 1 }, axis.grid || {});
      axis.ticks = Object.assign({ stroke: t.grid, width: 1 }, axis.ticks || {});
    });
    el.dataset.theme = t.dark ? "dark" : "light";  // which colours it was drawn in
    return new uPlot(opts, data, el);
  }

  function readJSON(id) {
    var el = document.getElementById(id);
    if (!el) return null;
    try { return JSON.parse(el.textContent); } catch (e) { return null; }
  }

  function size(el) {
    return { width: Math.max(260, el.clientWidth || 480),
             height: Number(el.dataset.height) || 200 };
  }

  function empty(el, text) {
    el.classList.add("empty");
    el.textContent = text;
  }

  function nums(values) {
    return values.filter(function (v) { return v !== null && isFinite(v); });
  }

  // Temperature from 30 to at least 90 °C, so the 80 °C throttle point is always on the axis
  // and a flat 51 °C line does not look like a cliff; frequency from 0.
  function tempRange(u, lo, hi) {
    return [Math.min(30, lo === null ? 30 : lo - 5), Math.max(90, hi === null ? 90 : hi + 5)];
  }
  function freqRange(u, lo, hi) { return [0, Math.max(100, (hi || 0) * 1.1)]; }

  function telemetryOpts(el, timeAxis) {
    var t = theme();
    return Object.assign(size(el), {
      legend: { show: timeAxis },
      scales: { x: { time: timeAxis }, C: { range: tempRange }, MHz: { range: freqRange } },
      series: [
        { label: timeAxis ? "time" : "s" },
        { label: "temp °C", scale: "C", stroke: t.temp, width: 1.5 },
        { label: "freq MHz", scale: "MHz", stroke: t.freq, width: 1.5 },
        { label: "throttled", scale: "C", stroke: EVENT, paths: function () { return null; },
          points: { show: true, size: 9, fill: EVENT, stroke: EVENT } },
      ],
      axes: [
        { label: timeAxis ? "" : "seconds since start" },
        { scale: "C", label: "°C", stroke: t.temp },
        { scale: "MHz", label: "MHz", side: 1, stroke: t.freq, grid: { show: false } },
      ],
    });
  }

  function telemetry(el, s, timeAxis) {
    if (!s || !s.x || s.x.length === 0) return empty(el, "No telemetry samples recorded.");
    return plot(telemetryOpts(el, timeAxis), [s.x, s.temp_c, s.freq_mhz, s.throttled], el);
  }

  function histogram(el, h) {
    if (!h || h.counts.length === 0) return empty(el, "No latencies recorded.");
    var edges = h.edges, counts = h.counts.concat([null]);
    return plot(Object.assign(size(el), {
      scales: { x: { time: false, range: [edges[0], edges[edges.length - 1]] },
                y: { range: function (u, lo, hi) { return [0, Math.max(1, hi)]; } } },
      legend: { show: false },
      series: [
        { label: "ms" },
        { label: "runs", stroke: BAR, fill: BAR + "99", width: 1,
          paths: uPlot.paths.bars({ size: [1, Infinity], align: 1 }), points: { show: false } },
      ],
      axes: [{ label: "latency ms" }, { label: "runs" }],
    }), [edges, counts], el);
  }

  function cdf(el, c) {
    if (!c || c.x.length === 0) return empty(el, "No latencies recorded.");
    // Log x: a Pi's latency tail can sit 100x above the median; a linear axis would flatten
    // the body into a vertical line.
    var xs = nums(c.x).filter(function (v) { return v > 0; });
    var lo = Math.min.apply(null, xs), hi = Math.max.apply(null, xs);
    var log = xs.length === c.x.length && hi > lo * 3;
    return plot(Object.assign(size(el), {
      scales: { x: log ? { time: false, distr: 3, log: 10 }
                       : { time: false, range: [lo, hi === lo ? lo * 1.01 : hi] },
                y: { range: [0, 1] } },
      legend: { show: false },
      series: [
        { label: "ms" },
        { label: "fraction", stroke: BAR, width: 1.5,
          paths: uPlot.paths.stepped({ align: 1 }), points: { show: false } },
      ],
      axes: [{ label: "latency ms" }, { label: "fraction ≤ x" }],
    }), [c.x, c.y], el);
  }

  var fetched = {};  // URL -> Promise of its JSON, shared by the charts of one result

  function fetchJSON(url) {
    if (!fetched[url]) {
      fetched[url] = fetch(url, { credentials: "same-origin",
                                  headers: { Accept: "application/json" } })
        .then(function (r) { return r.ok ? r.json() : null; })
        .catch(function () { return null; });
    }
    return fetched[url];
  }

  function drawFetched(el) {
    fetchJSON(el.dataset.url).then(function (data) {
      if (!data) return empty(el, "Chart data could not be loaded.");
      var notes = document.querySelectorAll("[data-note-of]");
      Array.prototype.forEach.call(notes, function (n) {
        if (n.dataset.noteOf === el.dataset.url) n.textContent = (data.hist || {}).note || "";
      });
      var chart = drawData(el, data);
      if (chart) charts.push({ el: el, chart: chart });
    });
  }

  // Elements with data-url are drawn when they come within a screen or so of the view
  // (whenNear: also the Trends page's per-chart data, through lines.js).
  var pending = new Map();  // element -> what to do when it comes near
  var observer = typeof IntersectionObserver === "undefined" ? null :
    new IntersectionObserver(function (entries) {
      entries.forEach(function (entry) {
        if (!entry.isIntersecting) return;
        observer.unobserve(entry.target);
        var todo = pending.get(entry.target);
        pending.delete(entry.target);
        if (todo) todo(entry.target);
      });
    }, { rootMargin: "1000px 0px" });

  function whenNear(el, todo) {
    if (!observer) return todo(el);
    pending.set(el, todo);
    observer.observe(el);
  }

  function drawOne(el) {
    if (el.dataset.url) {
      whenNear(el, drawFetched);
      return null;
    }
    var data = readJSON(el.dataset.source);
    if (data === null) return null;
    if (el.dataset.index !== undefined) data = data[Number(el.dataset.index)];
    return data ? drawData(el, data) : null;
  }

  function drawData(el, data) {
    var kind = el.dataset.chart, chart = null;
    if (kind === "telemetry") chart = telemetry(el, data, true);
    else if (kind === "samples") chart = telemetry(el, data.telemetry, false);
    else if (kind === "hist") chart = histogram(el, data.hist);
    else if (kind === "cdf") chart = cdf(el, data.cdf);
    return chart;
  }

  // Chart kinds by selector; other scripts (lines.js) add theirs through EdgeFleet.register,
  // and share the JSON reading, sizing and resize handling below.
  var renderers = [["[data-chart]", drawOne]];

  function draw(root) {
    if (typeof window.uPlot === "undefined") return;
    renderers.forEach(function (r) {
      var els = (root || document).querySelectorAll(r[0] + ":not([data-drawn])");
      Array.prototype.forEach.call(els, function (el) {
        el.dataset.drawn = "1";
        var chart = r[1](el);
        if (chart) charts.push({ el: el, chart: chart });
      });
    });
  }

  window.EdgeFleet = {
    readJSON: readJSON,
    size: size,
    fetchJSON: fetchJSON,
    whenNear: whenNear,
    track: function (el, chart) { if (chart) charts.push({ el: el, chart: chart }); },
    plot: plot,
    theme: theme,
    register: function (selector, render) { renderers.push([selector, render]); },
  };

  var resizeTimer = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () {
      charts.forEach(function (c) { c.chart.setSize(size(c.el)); });
    }, 150);
  });

  // <form data-confirm="..."> asks before submitting (pushes, cancels).
  document.addEventListener("submit", function (event) {
    var message = event.target.dataset && event.target.dataset.confirm;
    if (message && !window.confirm(message)) event.preventDefault();
  });

  // The scheme changed (the OS went dark at sunset): draw every chart again in its colours.
  if (window.matchMedia) {
    var scheme = window.matchMedia("(prefers-color-scheme: dark)");
    var redraw = function () {
      charts.forEach(function (c) {
        c.chart.destroy();
        delete c.el.dataset.drawn;
      });
      charts = [];
      draw(document);
    };
    if (scheme.addEventListener) scheme.addEventListener("change", redraw);
  }

  document.addEventListener("DOMContentLoaded", function () { draw(document); });
  document.addEventListener("htmx:afterSwap", function (event) { draw(event.target); });
  // Sorting is the server's (the Fleet page's column links, ?sort=&order=): the whole fleet is
  // sorted before it is paged, and the self-refresh asks for the same order.
})();
