// Live updates without reloading: incident pages append steps, the index refreshes its sections.
"use strict";
(function () {
  function fromHTML(html) {
    var tpl = document.createElement("template");
    tpl.innerHTML = html.trim();
    return tpl.content.firstElementChild;
  }

  function liveIncident(url) {
    var source = new EventSource(url);
    source.addEventListener("step", function (ev) {
      var data = JSON.parse(ev.data);
      if (document.getElementById("step-" + data.id)) { return; }
      var el = fromHTML(data.html);
      el.classList.add("new");
      // What happened inside a tool call goes under that call, as on a reload.
      var into = (data.parent && document.getElementById("inner-" + data.parent)) || document.getElementById("steps");
      into.appendChild(el);
    });
    source.addEventListener("transition", function (ev) {
      var data = JSON.parse(ev.data);
      var el = fromHTML(data.html);
      el.classList.add("new");
      document.getElementById("transitions").appendChild(el);
      var state = document.getElementById("inc-state");
      state.textContent = data.to_state;
      state.className = "state state-" + data.to_state;
    });
    source.addEventListener("closed", function (ev) {
      var data = JSON.parse(ev.data);
      var state = document.getElementById("inc-state");
      state.textContent = data.state;
      state.className = "state state-" + data.state;
      document.getElementById("report").textContent = data.report;
      if (data.report) { document.getElementById("report-section").hidden = false; }
      var closed = document.getElementById("inc-closed");
      if (closed && data.closed_at) {
        closed.textContent = "";
        var t = document.createElement("time");
        t.dateTime = new Date(data.closed_at * 1000).toISOString();
        t.dataset.ts = String(data.closed_at);
        t.textContent = data.closed_text;
        var a = document.createElement("span");
        a.className = "ago";
        closed.appendChild(t);
        closed.appendChild(document.createTextNode(" "));
        closed.appendChild(a);
        refreshAgo();
      }
      var took = document.getElementById("inc-duration");
      if (took && data.duration) {
        took.textContent = data.duration;
        var label = took.previousElementSibling;
        if (label && data.state === "resolved") { label.textContent = "Time to resolve"; }
      }
      document.getElementById("live-note").textContent = "Closed " + data.state + ".";
      source.close();
    });
  }

  // "3 min ago" next to each time, kept current without a reload.
  function ago(ts) {
    var delta = Date.now() / 1000 - ts;
    var span = Math.abs(delta), suffix = delta >= 0 ? "ago" : "from now";
    var units = [[86400, "d"], [3600, "h"], [60, "min"]];
    for (var i = 0; i < units.length; i++) {
      if (span >= units[i][0]) { return Math.floor(span / units[i][0]) + " " + units[i][1] + " " + suffix; }
    }
    return Math.floor(span) + " s " + suffix;
  }

  function refreshAgo() {
    document.querySelectorAll("time[data-ts]").forEach(function (t) {
      var next = t.nextElementSibling;
      if (next && next.classList.contains("ago")) { next.textContent = "(" + ago(parseFloat(t.dataset.ts)) + ")"; }
    });
  }

  function refreshIndex(force) {
    // Swap in the freshly rendered sections, unless the user is typing in a form.
    var active = document.activeElement;
    if (!force && active && (active.tagName === "INPUT" || active.tagName === "SELECT")) { return; }
    fetch(window.location.pathname, { credentials: "same-origin" })
      .then(function (resp) { return resp.text(); })
      .then(function (text) {
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.getElementById("main");
        if (fresh) { document.getElementById("main").replaceWith(fresh); }
      });
  }

  function liveIndex(url) {
    var source = new EventSource(url);
    var first = true;
    source.addEventListener("status", function () {
      if (first) { first = false; return; }
      refreshIndex(false);
    });
    // Readings and charts change every probe round even when status does not.
    window.setInterval(function () { refreshIndex(false); }, 30000);
  }

  // The simulator buttons post in the background so the page keeps its live stream.
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (!form.classList || !form.classList.contains("faults")) { return; }
    ev.preventDefault();
    var data = new FormData(form);
    if (ev.submitter && ev.submitter.name) { data.append(ev.submitter.name, ev.submitter.value); }
    fetch(form.action, { method: "POST", body: data, credentials: "same-origin" })
      .then(function () { refreshIndex(true); });
  });

  document.addEventListener("DOMContentLoaded", function () {
    var body = document.body;
    window.setInterval(refreshAgo, 15000);
    if (body.dataset.incidentLive) { liveIncident(body.dataset.incidentLive); }
    if (body.dataset.live) { liveIndex(body.dataset.live); }
  });
})();
