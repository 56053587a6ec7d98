// Draws every chart of the page from the JSON in #chart-data: a list of
// {id, spec}; the figure with that id receives the chart. Sets
// body[data-charts] (charts drawn) and body[data-points] (points drawn).
(function () {
  var node = document.getElementById("chart-data");
  var specs = node ? JSON.parse(node.textContent) : [];
  var charts = 0, points = 0;
  specs.forEach(function (c) {
    var box = document.getElementById(c.id);
    if (!box) throw new Error("no figure for chart " + c.id);
    points += BarrageCharts.chart(box, c.spec).points();
    charts += 1;
  });
  document.body.setAttribute("data-charts", String(charts));
  document.body.setAttribute("data-points", String(points));
})();
