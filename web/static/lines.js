/* EdgeFleet Trends and Compare pages: uPlot line charts from JSON data blocks.
 *
 * Like app.js, data never reaches code as text: the server writes it into
 * <script type="application/json" id="ID"> (escaped) and this file JSON.parses it. An element
 *   <div class="chart" data-lines="ID" data-index="N">
 * draws chart N of that block (shape: web/pages/charts.py); with data-url="URL" instead, the
 * chart is that URL's JSON, fetched when the element comes near the view (the Trends page: one
 * request per device x bundle, so a page of 600 series does not embed 50,000 points). Its own
 * attribute (not data-chart) keeps app.js's renderers out of it.
 *
 * Series kinds: "line" (valid points joined across gaps), "invalid" (hollow markers, no line:
 * measured while throttled, not comparable), "regression" / "faster" (filled markers on the line:
 * the first run of a new level found by change-point detection, slower / faster).
 */
(function () {
  "use strict";

  var ef = window.EdgeFleet;  // app.js: readJSON, size, register (loaded first, in base.html)

  function noPath() { return null; }

  function seriesOpts(s, t) {
    if (s.kind === "invalid") {  // hollow: filled with the page's background, either theme
      return { label: s.label, stroke: s.color, paths: noPath,
               points: { show: true, size: 9, width: 1.5, stroke: s.color, fill: t.bg } };
    }
    if (s.kind === "regression" || s.kind === "faster") {
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
    var pad = c.x_pad != null ? c.x_pad : 1;  // thread counts: 1; thresholds: a fraction
    return { time: false, range: function () { return [lo - pad, hi + pad]; } };
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
    var t = ef.theme();
    var opts = Object.assign(ef.size(el), {
      // Times in UTC, like every timestamp on these pages (and cron schedules).
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"); },
      scales: {
        x: xScale(c),
        // From 0: a 10% regression should look like 10%, not like a cliff.
        y: { range: function (u, lo, hi) { return [0, hi > 0 ? hi * 1.1 : 1]; } },
      },
      series: [{ label: c.x_time ? "time" : (c.x_label || "x") }]
        .concat(c.series.map(function (s) { return seriesOpts(s, t); })),
      axes: [xAxis(c), { label: c.y_label || "" }],
    });
    var data = [c.x].concat(c.series.map(function (s) { return s.values; }));
    return ef.plot(opts, data, el);
  }

  ef.register("[data-lines]", function (el) {
    if (el.dataset.url) {  // one chart's JSON, fetched when it comes near the view
      ef.whenNear(el, function () {
        ef.fetchJSON(el.dataset.url).then(function (c) {
          if (!c) {
            el.classList.add("empty");
            el.textContent = "Chart data could not be loaded.";
            return;
          }
          ef.track(el, draw(el, c));
        });
      });
      return null;
    }
    var block = ef.readJSON(el.dataset.lines);
    return block ? draw(el, block[Number(el.dataset.index || 0)]) : null;
  });
})();
