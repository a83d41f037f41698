// batchd dashboard: refreshes the live figures of the page from its JSON endpoint.
// Rates (requests/s, tokens/s) are measured here, between successive polls over a sliding
// window; until the window holds two samples that differ in time, the server's average since
// the batch started is shown. No dependency, no external asset.
"use strict";

(function () {
  var WINDOW_MS = 10000;
  var samples = {}; // batch id -> [{t, done, tokens}]

  function text(el, value) {
    if (el && el.textContent !== String(value)) el.textContent = String(value);
  }

  function field(root, name) {
    return root.querySelector('[data-field="' + name + '"]');
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
    seconds = Math.max(0, Math.round(seconds));
    var h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    if (h) return h + "h " + m + "m";
    if (m) return m + "m " + s + "s";
    return s + "s";
  }

  function fixed(value, digits) {
    return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
  }

  // The current rates of a batch from its samples (the server's clock: "now" of each answer).
  function rates(batch, now) {
    var list = samples[batch.id] || (samples[batch.id] = []);
    list.push({ t: now * 1000, done: batch.done, tokens: batch.tokens });
    while (list.length > 2 && list[list.length - 1].t - list[0].t > WINDOW_MS) list.shift();
    var first = list[0], last = list[list.length - 1];
    var span = (last.t - first.t) / 1000;
    if (span >= 0.5 && last.done > first.done) {
      return { rps: (last.done - first.done) / span, tps: (last.tokens - first.tokens) / span };
    }
    return { rps: batch.avg_rps, tps: batch.avg_tps };
  }

  function showBatch(root, batch, now) {
    text(field(root, "completed"), batch.completed);
    text(field(root, "failed"), batch.failed);
    text(field(root, "total"), batch.total);
    text(field(root, "tokens"), batch.tokens);
    var bar = field(root, "progress");
    if (bar) {
      bar.max = batch.total || 1;
      bar.value = batch.done;
    }
    var status = field(root, "status");
    if (status) {
      text(status, batch.status);
      status.className = "status s-" + batch.status;
    }
    if (batch.running) {
      var r = rates(batch, now);
      text(field(root, "rps"), fixed(r.rps, 1));
      text(field(root, "tps"), fixed(r.tps, 0));
      var left = Math.max(0, batch.total - batch.done);
      text(field(root, "eta"), batch.status === "in_progress" && r.rps ? duration(left / r.rps) : "–");
    } else {
      text(field(root, "rps"), "–");
      text(field(root, "tps"), "–");
      text(field(root, "eta"), "–");
    }
  }

  function poll(url, ms, onData) {
    function tick() {
      fetch(url, { credentials: "same-origin", headers: { accept: "application/json" } })
        .then(function (response) {
          if (response.status === 401) {
            window.location.href = document.body.dataset.prefix + "/login";
            return null;
          }
          return response.ok ? response.json() : null;
        })
        .then(function (data) {
          // onData returns false when nothing more will change (a batch that ended).
          if (!data || onData(data) !== false) window.setTimeout(tick, ms);
        })
        .catch(function () { window.setTimeout(tick, ms); }); // e.g. a restart: try again
    }
    tick();
  }

  document.addEventListener("DOMContentLoaded", function () {
    var ms = parseInt(document.body.dataset.pollMs, 10) || 1000;

    var table = document.querySelector("table.batches[data-live]");
    if (table) {
      poll(table.dataset.live, ms, function (data) {
        data.batches.forEach(function (batch) {
          var row = table.querySelector('tr[data-batch-id="' + batch.id + '"]');
          if (row) {
            row.dataset.status = batch.status;
            showBatch(row, batch, data.now);
          }
        });
      });
    }

    var live = document.querySelector("section.live[data-live]");
    if (live) {
      poll(live.dataset.live, ms, function (data) {
        var batch = data.batch;
        showBatch(live, batch, data.now);
        var badge = document.getElementById("status");
        if (batch.status !== live.dataset.status) {
          // The status changed: the page's buttons, files and error counts change with it.
          window.location.reload();
          return;
        }
        text(badge, batch.status);
        return !batch.terminal;
      });
    }

    var errors = document.querySelector("#errors-by-code[data-live]");
    if (errors) {
      poll(errors.dataset.live, Math.max(ms, 5000), function (data) {
        var body = document.getElementById("error-codes");
        while (body.firstChild) body.removeChild(body.firstChild);
        data.codes.forEach(function (row) {
          var tr = document.createElement("tr");
          var code = document.createElement("td");
          var name = document.createElement("code");
          name.textContent = row.code;
          code.appendChild(name);
          var count = document.createElement("td");
          count.className = "num";
          count.textContent = row.count;
          tr.appendChild(code);
          tr.appendChild(count);
          body.appendChild(tr);
        });
        errors.querySelector("table").hidden = data.codes.length === 0;
        document.getElementById("error-empty").hidden = data.codes.length > 0;
        text(document.getElementById("error-note"), data.note);
        return data.status === "in_progress" || data.status === "finalizing" ||
          data.status === "cancelling" || data.status === "validating";
      });
    }

    var models = document.querySelector("table.models[data-live]");
    if (models) {
      poll(models.dataset.live, Math.max(ms, 2000), function (data) {
        data.models.forEach(function (model) {
          var row = models.querySelector('tr[data-model="' + model.name + '"]');
          if (!row) return;
          text(field(row, "in_flight"), model.in_flight === null ? "–" : model.in_flight);
          text(field(row, "paused"), model.paused_for ? "paused " + model.paused_for + " s (429)" : "");
        });
      });
    }
  });
})();
