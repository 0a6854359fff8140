// Live regions: an element with data-live="N" is fetched again every N seconds and
// swapped in place, without a reload. Without JavaScript the page is whole as served.
(function () {
  "use strict";
  function refresh(region) {
    // Never while the operator is inside the region (a focused link or an open details).
    if (region.contains(document.activeElement) && document.activeElement !== document.body) return;
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Requested-With": "live" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) return;
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById(region.id);
        if (!fresh) return;
        var open = Array.prototype.map.call(region.querySelectorAll("details[open]"), function (d) {
          return Array.prototype.indexOf.call(region.querySelectorAll("details"), d);
        });
        region.innerHTML = fresh.innerHTML;
        var all = region.querySelectorAll("details");
        open.forEach(function (i) { if (all[i]) all[i].open = true; });
        region.setAttribute("data-refreshed", String(Date.now()));
      })
      .catch(function () { /* the next tick tries again */ });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live]").forEach(function (region) {
      var seconds = Math.max(1, parseInt(region.getAttribute("data-live"), 10) || 5);
      setInterval(function () { if (!document.hidden) refresh(region); }, seconds * 1000);
    });
  });
})();
