// Records script errors into #script-errors, so a reader (and the headless
// browser test) sees a chart that failed instead of a silently empty page.
(function () {
  function record(msg) {
    var box = document.getElementById("script-errors");
    if (!box) return;
    box.hidden = false;
    box.textContent += msg + "\n";
  }
  window.addEventListener("error", function (e) {
    record("error: " + (e.message || e) + (e.lineno ? " (line " + e.lineno + ")" : ""));
  });
  window.addEventListener("unhandledrejection", function (e) {
    record("unhandled rejection: " + (e.reason && e.reason.message || e.reason));
  });
})();
