// Conveyor dashboard: refresh the live serving numbers on the deployments page.
// The only script of the dashboard; vendored, no dependencies, nothing fetched from elsewhere.
(function () {
  "use strict";
  var PERIOD_MS = 5000;

  function show(value, suffix, scale) {
    if (value === null || value === undefined) { return "-"; }
    var scaled = value * (scale || 1);
    return Number(scaled.toPrecision(4)).toString() + (suffix || "");
  }

  function refresh() {
    var rows = document.querySelectorAll("tr[data-live-url]");
    if (rows.length === 0) { return; }
    fetch("/api/deployments/live", {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (body) {
        if (!body) { return; }
        body.numbers.forEach(function (n) {
          rows.forEach(function (row) {
            if (row.getAttribute("data-live-url") !== n.url) { return; }
            var cells = {
              requests_per_s: show(n.requests_per_s),
              error_rate: show(n.error_rate, "%", 100),
              p99_ms: show(n.p99_ms, " ms")
            };
            Object.keys(cells).forEach(function (field) {
              var cell = row.querySelector('[data-field="' + field + '"]');
              if (cell) { cell.textContent = cells[field]; }
            });
            row.setAttribute("data-refreshed", String(Date.now()));
          });
        });
      })
      .catch(function () { /* the next tick tries again */ });
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (document.querySelector("tr[data-live-url]")) {
      refresh();
      window.setInterval(refresh, PERIOD_MS);
    }
  });
})();
