// MIDRE dashboard: small progressive enhancements. Every page works without this script.
"use strict";

(function () {
  function text(el, value) { if (el) { el.textContent = value; } }

  function appendEvent(list, e) {
    if (!list || list.querySelector('li[data-id="' + e.id + '"]')) { return; }
    var li = document.createElement("li");
    li.dataset.id = e.id;
    var time = document.createElement("time");
    time.dateTime = e.created_at;
    time.textContent = new Date(e.created_at).toISOString().slice(11, 19);
    var type = document.createElement("span");
    type.className = "etype";
    type.textContent = e.type;
    li.append(time, " ", type, " " + e.message);
    list.append(li);
    list.scrollTop = list.scrollHeight;
  }

  // Live job page: Server-Sent Events, falling back to polling /state when EventSource fails.
  function followJob(section) {
    var id = section.dataset.job;
    var after = parseInt(section.dataset.after || "0", 10);
    var list = document.getElementById("events");
    var mode = document.getElementById("live-mode");
    var finished = false;

    function show(job) {
      var status = document.getElementById("job-status");
      text(status, job.status);
      if (status) { status.className = "status s-" + job.status; }
      var bar = document.getElementById("job-progress");
      if (bar) { bar.value = job.progress; }
      text(document.getElementById("job-percent"), Math.round(job.progress * 100) + "%");
      text(document.getElementById("job-stage"), job.stage || "–");
      text(document.getElementById("job-message"), job.message || "–");
      section.dataset.status = job.status;
      if (job.terminal && !finished) {
        finished = true;
        var cancel = document.getElementById("cancel-form");
        if (cancel) { cancel.hidden = true; }
        text(mode, "finished: reloading for metrics and artifacts");
        window.setTimeout(function () { window.location.reload(); }, 800);
      }
    }

    function poll() {
      if (finished) { return; }
      fetch("/ui/jobs/" + encodeURIComponent(id) + "/state?after=" + after, { credentials: "same-origin" })
        .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.json(); })
        .then(function (s) {
          s.events.forEach(function (e) { appendEvent(list, e); after = Math.max(after, e.id); });
          show(s.job);
        })
        .catch(function () { /* keep trying */ })
        .then(function () { if (!finished) { window.setTimeout(poll, 2000); } });
    }

    function startPolling() {
      section.dataset.live = "polling";
      text(mode, "polling every 2 s");
      poll();
    }

    if (!window.EventSource) { startPolling(); return; }
    var source = new EventSource("/ui/jobs/" + encodeURIComponent(id) + "/stream?after=" + after);
    var opened = false;
    source.addEventListener("job", function (m) {
      opened = true;
      section.dataset.live = "sse";
      text(mode, "live, Server-Sent Events");
      show(JSON.parse(m.data));
    });
    source.addEventListener("log", function (m) {
      var e = JSON.parse(m.data);
      appendEvent(list, e);
      after = Math.max(after, e.id);
    });
    source.addEventListener("end", function () { source.close(); });
    source.onerror = function () {
      if (finished) { source.close(); return; }
      if (!opened) { source.close(); startPolling(); }  // never connected: the proxy or browser blocks SSE
    };
  }

  // Jobs list: unfinished rows refresh their status and progress.
  function refreshRows(table) {
    var rows = Array.prototype.slice.call(table.querySelectorAll("tr[data-job]")).filter(function (row) {
      return ["queued", "running", "cancelling"].indexOf(row.dataset.status) >= 0;
    });
    if (!rows.length) { return; }
    window.setTimeout(function () {
      Promise.all(rows.map(function (row) {
        return fetch("/ui/jobs/" + encodeURIComponent(row.dataset.job) + "/state?after=999999999999",
                     { credentials: "same-origin" })
          .then(function (r) { return r.ok ? r.json() : null; })
          .then(function (s) {
            if (!s) { return; }
            row.dataset.status = s.job.status;
            var status = row.querySelector('[data-field="status"]');
            text(status, s.job.status);
            if (status) { status.className = "status s-" + s.job.status; }
            var bar = row.querySelector('[data-field="progress"]');
            if (bar) { bar.value = s.job.progress; }
            text(row.querySelector('[data-field="stage"]'), s.job.stage || "");
          });
      })).catch(function () {}).then(function () { refreshRows(table); });
    }, 3000);
  }

  function examples(form) {
    var data = JSON.parse(form.dataset.examples || "{}");
    var select = form.querySelector("select");
    var button = form.querySelector("[data-nojs]");
    if (button) { button.hidden = true; }
    select.addEventListener("change", function () {
      var spec = document.getElementById("spec");
      if (spec && data[select.value]) { spec.value = data[select.value]; }
    });
  }

  // Review page: keys 1-9 pick a candidate, 0 "none of these"; one answer per page.
  function reviewKeys(form) {
    var sent = false;
    form.addEventListener("submit", function (ev) {
      if (sent) { ev.preventDefault(); }
      sent = true;
    });
    document.addEventListener("keydown", function (ev) {
      if (sent || ev.ctrlKey || ev.metaKey || ev.altKey || !/^[0-9]$/.test(ev.key)) { return; }
      var button = form.querySelector('button[data-key="' + ev.key + '"]');
      if (!button) { return; }
      ev.preventDefault();
      form.requestSubmit(button);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var answer = document.getElementById("answer-form");
    if (answer) { reviewKeys(answer); }
    var live = document.getElementById("live");
    if (live && live.dataset.terminal === "false") { followJob(live); }
    var jobs = document.getElementById("jobs");
    if (jobs) { refreshRows(jobs); }
    var ex = document.querySelector("form[data-examples]");
    if (ex) { examples(ex); }
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (ev) {
        if (!window.confirm(form.dataset.confirm)) { ev.preventDefault(); }
      });
    });
  });
})();
