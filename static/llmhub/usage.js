// The usage and analytics pages' charts: uPlot (vendored, static/vendor/uplot-*) over the series the page embeds as
// JSON (#usage-series: x in epoch seconds, one point per day unless `step` says otherwise). Each
// <figure data-chart data-series="key:Label,…" data-kind="bars|line" data-unit="$|%|ms|/s"> gets one chart, sized
// to its box and redrawn when the box changes width (phones included). Missing values (null) leave a gap.
(function () {
  "use strict";
  var COLOURS = ["#1e88e5", "#d32f2f", "#43a047", "#8e24aa"];

  function format(key, value, unit) {
    if (value == null) return "–";
    if (unit === "%") return value.toFixed(1) + "%";
    if (unit === "ms") return Math.round(value).toLocaleString("en-US") + " ms";
    if (unit === "/s") return value.toFixed(1) + "/s";
    if (key === "cost" || unit === "$") return "$" + (value >= 0.01 || value === 0 ? value.toFixed(2) : value.toPrecision(2));
    return Math.round(value).toLocaleString("en-US");
  }

  function axisValues(key) {
    return function (u, splits) {
      return splits.map(function (v) {
        if (key === "cost" || key.indexOf("cost_") === 0) return "$" + (Math.abs(v) >= 1 ? v.toFixed(0) : v >= 0.01 ? v.toFixed(2) : v.toPrecision(1));
        if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(1).replace(/\.0$/, "") + "M";
        if (Math.abs(v) >= 1e3) return (v / 1e3).toFixed(1).replace(/\.0$/, "") + "k";
        return String(v);
      });
    };
  }

  function draw(figure, data) {
    var wanted = figure.dataset.series.split(",").map(function (part) {
      var pair = part.split(":");
      return {key: pair[0], label: pair[1]};
    });
    var bars = figure.dataset.kind === "bars" && uPlot.paths && uPlot.paths.bars;
    var columns = [data.x];
    var series = [{}];
    var total = 0;
    wanted.forEach(function (item, index) {
      var values = data[item.key];
      values.forEach(function (v) { total += v || 0; });
      columns.push(values);
      series.push({
        label: item.label, stroke: COLOURS[index], width: 2,
        fill: bars ? COLOURS[index] + "cc" : COLOURS[index] + "22",
        // Two bar series sit side by side: the first left of its day's tick, the second right of it.
        paths: bars ? uPlot.paths.bars({size: [0.8 / wanted.length, 40], align: wanted.length === 1 ? 0 : index === 0 ? -1 : 1})
          : undefined,
        points: {show: !bars && data.x.length <= 31},
        value: function (u, v) { return format(item.key, v, figure.dataset.unit); },
      });
    });
    var box = figure.querySelector(".usage-chart-plot");
    if (!box) {
      box = document.createElement("div");
      box.className = "usage-chart-plot";
      figure.appendChild(box);
    }
    var width = Math.max(200, box.clientWidth || figure.clientWidth);
    var day = data.step || 86400;
    var plot = new uPlot({
      width: width, height: 200,
      series: series,
      scales: {x: {time: true, range: function (u, min, max) { return [min - day / 2, max + day / 2]; }},
               y: {range: function (u, min, max) { return [0, max > 0 ? max * 1.1 : 1]; }}},
      axes: [{space: 60}, {values: axisValues(wanted[0].key), size: wanted[0].key.indexOf("cost") === 0 ? 80 : 56}],
      legend: {live: true},
      cursor: {points: {show: false}},
    }, columns, box);
    figure.dataset.rendered = "true";
    figure.dataset.total = String(total);
    new ResizeObserver(function () {
      var next = Math.max(200, box.clientWidth);
      if (Math.abs(next - plot.width) > 2) plot.setSize({width: next, height: 200});
    }).observe(box);
  }

  function start() {
    var source = document.getElementById("usage-series");
    if (!source || typeof uPlot === "undefined") return;
    var data = JSON.parse(source.textContent);
    document.querySelectorAll("figure[data-chart]").forEach(function (figure) { draw(figure, data); });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
