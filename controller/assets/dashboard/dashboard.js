// barrage dashboard: fills the pages served by `controller serve` from the
// REST API and the run's Server-Sent Events (docs/service.md). Plain DOM, no
// framework, no build step. Data goes into the page as text only
// (textContent, attributes), never as HTML.
(function () {
  "use strict";
  var TERMINAL = ["completed", "degraded", "breached", "failed", "cancelled", "interrupted", "error"];
  var REFRESH_MS = 3000;
  var fmt = window.BarrageCharts ? window.BarrageCharts.format : String;

  // ---- script errors: shown on the page (and read by the browser test)
  window.dashboardErrors = [];
  function recordError(msg) {
    window.dashboardErrors.push(msg);
    var box = $("script-errors");
    if (!box) return;
    box.hidden = false;
    box.textContent += msg + "\n";
  }
  window.addEventListener("error", function (e) {
    recordError("error: " + (e.message || e) + (e.lineno ? " (line " + e.lineno + ")" : ""));
  });
  window.addEventListener("unhandledrejection", function (e) {
    recordError("unhandled rejection: " + ((e.reason && e.reason.message) || e.reason));
  });
  document.addEventListener("securitypolicyviolation", function (e) {
    recordError("blocked by the page's policy: " + e.blockedURI + " (" + e.violatedDirective + ")");
  });

  // ---- small helpers
  function $(id) { return document.getElementById(id); }

  // An element with attributes (`text` sets its text) and children (nodes
  // or strings, added as text).
  function h(tag, attrs, kids) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      var v = attrs[k];
      if (v === undefined || v === null || v === false) return;
      if (k === "text") e.textContent = String(v);
      else if (k === "class") e.className = v;
      else e.setAttribute(k, v === true ? "" : String(v));
    });
    (kids || []).forEach(function (c) {
      if (c !== null && c !== undefined) e.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return e;
  }

  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); }

  function showError(el, err) {
    if (!el) return;
    el.hidden = !err;
    el.textContent = err ? (err.message || String(err)) : "";
    if (err && err.code) el.setAttribute("data-code", err.code); else el.removeAttribute("data-code");
  }

  function pad(n) { return (n < 10 ? "0" : "") + n; }

  // An RFC 3339 time in the browser's time zone: "2026-12-03 07:45:12".
  function when(iso) {
    if (!iso) return "–";
    var d = new Date(iso);
    if (isNaN(d.getTime())) return iso;
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  function seconds(s) {
    if (s === null || s === undefined || !isFinite(s)) return "–";
    s = Math.max(0, Math.round(s));
    if (s < 60) return s + " s";
    var m = Math.floor(s / 60);
    if (m < 60) return m + " min " + pad(s % 60) + " s";
    return Math.floor(m / 60) + " h " + pad(m % 60) + " min";
  }

  function num(v) { return v === null || v === undefined ? "–" : fmt(v); }

  function isTerminal(status) { return TERMINAL.indexOf(status) >= 0; }

  function loginUrl() {
    return "/login?next=" + encodeURIComponent(location.pathname + location.search);
  }

  // ---- the REST API
  function ApiError(status, code, message) {
    this.status = status; this.code = code; this.message = message;
  }

  // Resolves to the response's JSON (null for 204); rejects with ApiError
  // carrying the API's own message. A 401 sends the user to the login page.
  function api(method, path, body, contentType) {
    var headers = { Accept: "application/json" };
    if (contentType) headers["Content-Type"] = contentType;
    return fetch(path, { method: method, credentials: "same-origin", headers: headers, body: body })
      .then(function (res) {
        if (res.status === 401) {
          location.assign(loginUrl());
          throw new ApiError(401, "unauthorized", "Log in first.");
        }
        return res.text().then(function (text) {
          var data = null;
          try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
          if (!res.ok) {
            var e = (data && data.error) || {};
            throw new ApiError(res.status, e.code || "http_" + res.status,
              e.message || text || res.statusText);
          }
          return data;
        });
      }, function (e) {
        throw new ApiError(0, "network", "The service did not answer: " + e.message);
      });
  }

  function runUrl(id) { return "/runs/" + encodeURIComponent(id); }
  function apiRun(id) { return "/api/runs/" + encodeURIComponent(id); }

  // What a run measured: its headline once finished, its live progress
  // before, in the headline's words.
  function figures(run) {
    if (run.headline) return run.headline;
    var p = run.progress;
    if (!p) return {};
    return {
      requests_ok: p.requests_ok, requests_failed: p.requests_failed,
      request_throughput: p.req_per_s, output_throughput: p.output_tok_per_s,
      ttft_p50_ms: p.ttft_p50_ms, ttft_p99_ms: p.ttft_p99_ms, itl_p50_ms: p.itl_p50_ms
    };
  }

  function badge(status) {
    return h("span", { "class": "badge status-" + status, text: status, "data-status": status });
  }

  // ================================================================ runs list
  function runsPage() {
    var form = $("filters");
    var params = new URLSearchParams(location.search);
    var keys = ["name", "status", "since", "until"];
    keys.forEach(function (k) { if (params.get(k)) form.elements[k].value = params.get(k); });
    var picked = [];

    $("compare").addEventListener("click", function () {
      location.assign("/compare?ids=" + picked.map(encodeURIComponent).join(","));
    });

    var names = {};

    function showPicked() {
      $("compare").disabled = picked.length < 2;
      $("selected").textContent = picked.length
        ? picked.length + " selected; baseline: " + (names[picked[0]] || picked[0]) +
          (picked.length < 2 ? "; tick one more to compare" : "")
        : "Tick two runs or more to compare them (the first ticked is the baseline).";
    }

    function toggle(id, on) {
      var i = picked.indexOf(id);
      if (on && i < 0) picked.push(id);
      if (!on && i >= 0) picked.splice(i, 1);
      showPicked();
    }

    function row(run) {
      var f = figures(run);
      names[run.id] = run.name;
      var box = h("input", { type: "checkbox", "aria-label": "compare " + run.name, value: run.id });
      box.checked = picked.indexOf(run.id) >= 0;
      box.addEventListener("change", function () { toggle(run.id, box.checked); });
      var live = run.progress && !run.headline;
      var nameCell = h("td", { "class": "name" }, [
        h("a", { href: runUrl(run.id), text: run.name }),
        h("div", { "class": "meta id", text: run.id + (run.sweep ? " · sweep" : "") +
          (run.pool && run.pool !== "default" ? " · pool " + run.pool : "") })
      ]);
      if (run.error) nameCell.appendChild(h("div", { "class": "row-error", text: run.error }));
      if (run.headline && isTerminal(run.status)) {
        nameCell.appendChild(h("a", { "class": "report", href: apiRun(run.id) + "/files/report.html", text: "report" }));
      }
      return h("tr", { "data-id": run.id, "data-status": run.status, "class": live ? "live" : "" }, [
        h("td", { "class": "pick" }, [box]),
        h("td", {}, [badge(run.status)]),
        nameCell,
        h("td", { "class": "time", text: when(run.submitted_at) }),
        h("td", { "class": "time", text: when(run.started_at) }),
        h("td", { "class": "time", text: when(run.finished_at) }),
        h("td", { "class": "num", text: num(f.ttft_p50_ms) + " / " + num(f.ttft_p99_ms) }),
        h("td", { "class": "num", text: num(f.itl_p50_ms) }),
        h("td", { "class": "num", text: num(f.request_throughput) }),
        h("td", { "class": "num", text: num(f.output_throughput) }),
        h("td", { "class": "num", text: num(f.requests_ok) + " / " + num(f.requests_failed) })
      ]);
    }

    function query() {
      var q = new URLSearchParams();
      keys.forEach(function (k) { if (form.elements[k].value) q.set(k, form.elements[k].value); });
      q.set("limit", "200");
      return "/api/runs?" + q.toString();
    }

    function load() {
      api("GET", query()).then(function (data) {
        var runs = (data && data.runs) || [];
        var body = $("runs").tBodies[0];
        clear(body);
        runs.forEach(function (r) { body.appendChild(row(r)); });
        $("empty").hidden = runs.length > 0;
        $("refreshed").textContent = "updated " + when(new Date().toISOString());
        document.body.setAttribute("data-runs", String(runs.length));
        showError($("error"), null);
      }).catch(function (e) { showError($("error"), e); })
        .then(function () { setTimeout(load, REFRESH_MS); });
    }
    showPicked();
    load();
  }

  // ================================================================ new run
  function tomlString(s) { return JSON.stringify(String(s)); }

  // The plan the common fields describe (TOML, as `controller run` takes it).
  function fieldsPlan(f) {
    var v = function (k) { return f.elements[k].value.trim(); };
    var lines = ["name = " + tomlString(v("name") || "dashboard-run"), "", "[target]"];
    var sim = f.elements.target.value !== "url";
    if (!sim) lines.push("url = " + tomlString(v("url")));
    lines.push("api = " + tomlString(v("api")));
    if (v("model")) lines.push("model = " + tomlString(v("model")));
    if (v("max_tokens")) lines.push("", "[request]", "max_tokens = " + v("max_tokens"));
    lines.push("", "[load]");
    if (f.elements.mode.value === "rate") lines.push("rate = " + (v("rate") || "0"));
    else lines.push("users = " + (v("users") || "0"));
    if (v("requests")) lines.push("requests = " + v("requests"));
    if (v("duration")) lines.push("duration = " + tomlString(v("duration")));
    if (sim) lines.push("", "# the built-in simulator, started by the service for this run", "[simulator]");
    return lines.join("\n") + "\n";
  }

  function poolQuery(form) {
    var p = form.elements.pool && form.elements.pool.value.trim();
    return p && p !== "default" ? "?pool=" + encodeURIComponent(p) : "";
  }

  // Submits, then opens the new run's page; an error is shown as the API
  // wrote it (the CLI's words).
  function submit(form, path, body, contentType) {
    var err = form.querySelector(".error");
    var button = form.querySelector("button[type=submit]");
    button.disabled = true;
    showError(err, null);
    return api("POST", path, body, contentType).then(function (run) {
      location.assign(runUrl(run.id));
    }).catch(function (e) {
      showError(err, e);
      err.scrollIntoView({ block: "nearest" });
      button.disabled = false;
    });
  }

  function numberList(name, text, pairs) {
    return text.split(",").map(function (s) { return s.trim(); }).filter(Boolean).map(function (s) {
      if (pairs) {
        var m = /^(\d+)\s*[:x/]\s*(\d+)$/.exec(s);
        if (!m) throw new ApiError(0, "invalid_batch", name + ": '" + s + "' is not input:output, e.g. 1024:128");
        return [Number(m[1]), Number(m[2])];
      }
      if (!/^\d+$/.test(s)) throw new ApiError(0, "invalid_batch", name + ": '" + s + "' is not a whole number");
      return Number(s);
    });
  }

  function batchRequest(f) {
    var v = function (k) { return f.elements[k].value.trim(); };
    var req = {
      name: v("name"), description: v("description"),
      num_prompts_list: numberList("num_prompts_list", v("num_prompts_list")),
      max_concurrency_list: numberList("max_concurrency_list", v("max_concurrency_list")),
      input_output_pairs: numberList("input_output_pairs", v("input_output_pairs"), true)
    };
    ["url", "model", "api", "plan"].forEach(function (k) { if (v(k)) req[k] = v(k); });
    return req;
  }

  function tabs() {
    var buttons = document.querySelectorAll("[data-tab]");
    function select(name) {
      Array.prototype.forEach.call(buttons, function (b) {
        var on = b.getAttribute("data-tab") === name;
        b.setAttribute("aria-selected", String(on));
        $("tab-" + b.getAttribute("data-tab")).hidden = !on;
      });
    }
    Array.prototype.forEach.call(buttons, function (b) {
      b.addEventListener("click", function () { select(b.getAttribute("data-tab")); history.replaceState(null, "", "#" + b.getAttribute("data-tab")); });
    });
    var wanted = location.hash.replace("#", "");
    if ($("tab-" + wanted)) select(wanted);
    return select;
  }

  function newPage() {
    var selectTab = tabs();
    var ff = $("fields-form");
    var preview = function () {
      // Only the fields the chosen target and load mode use are editable.
      ff.elements.url.disabled = ff.elements.target.value !== "url";
      ff.elements.url.required = !ff.elements.url.disabled;
      ff.elements.users.disabled = ff.elements.mode.value === "rate";
      ff.elements.rate.disabled = ff.elements.mode.value !== "rate";
      $("fields-plan").textContent = fieldsPlan(ff);
    };
    ff.addEventListener("input", preview);
    ff.addEventListener("change", preview);
    preview();
    ff.addEventListener("submit", function (e) {
      e.preventDefault();
      submit(ff, "/api/runs" + poolQuery(ff), fieldsPlan(ff), "application/toml");
    });

    var pf = $("plan-form");
    $("to-plan").addEventListener("click", function () {
      pf.elements.plan.value = fieldsPlan(ff);
      selectTab("plan");
    });
    pf.elements.file.addEventListener("change", function () {
      var file = pf.elements.file.files[0];
      if (!file) return;
      file.text().then(function (text) { pf.elements.plan.value = text; });
    });
    pf.addEventListener("submit", function (e) {
      e.preventDefault();
      submit(pf, "/api/runs" + poolQuery(pf), pf.elements.plan.value, "application/toml");
    });

    var bf = $("batch-form");
    bf.addEventListener("submit", function (e) {
      e.preventDefault();
      var req;
      try { req = batchRequest(bf); } catch (err) { showError(bf.querySelector(".error"), err); return; }
      submit(bf, "/api/batch" + poolQuery(bf), JSON.stringify(req), "application/json");
    });
  }

  // ================================================================ login
  function loginPage() {
    var params = new URLSearchParams(location.search);
    var next = params.get("next") || "/";
    // Only a path of this site: never a way to send someone elsewhere.
    if (next.charAt(0) !== "/" || next.charAt(1) === "/" || next.charAt(1) === "\\") next = "/";
    $("login").elements.next.value = next;
    if (params.get("error")) showError($("error"), { message: "That token was not accepted." });
  }

  // ================================================================ run page
  // The report's time charts (html/timeline.rs), fed row by row.
  var CHARTS = [
    { title: "Requests per second", y: "req/s", unit: "req/s", series: function (c) {
      var out = [c.series("ok / s", function (r) { return r.requests_ok / c.iv; })];
      if (c.rows.some(function (r) { return r.requests_failed > 0; })) {
        out.push(c.series("failed / s", function (r) { return r.requests_failed / c.iv; }));
      }
      return out;
    } },
    { title: "Output tokens per second", y: "tok/s", unit: "tok/s", series: function (c) {
      return [c.series("output tok/s", function (r) { return r.output_tokens / c.iv; })];
    } },
    { title: "Requests in flight", y: "requests", unit: "", series: function (c) {
      return [c.series("in flight", function (r) { return r.in_flight; })];
    } },
    latency("ttft", "TTFT"), latency("itl", "ITL"), latency("e2e", "E2E"),
    { title: "Load generator", y: "%", unit: "%", series: function (c) {
      return [c.series("max agent CPU %", function (r) { return r.max_agent_cpu_percent; })];
    } },
    { title: "Scheduler lag (max)", y: "ms", unit: "ms", series: function (c) {
      return [c.series("max scheduler lag", function (r) { return r.max_scheduler_lag_ms; })];
    } },
    monitored("gpu_util_pct", "GPU utilisation (%)", "%"),
    monitored("gpu_mem_pct", "GPU memory used (%)", "%"),
    monitored("gpu_power_w", "GPU power (W)", "W")
  ];

  function latency(metric, label) {
    return { title: label + " p50 / p99 (ms)", y: "ms", unit: "ms", series: function (c) {
      var p99 = c.series("p99", function (r) { return r[metric + "_p99_ms"]; });
      p99.dashed = true;
      return [c.series("p50", function (r) { return r[metric + "_p50_ms"]; }), p99];
    } };
  }

  function monitored(key, title, unit) {
    return { title: title, y: unit, unit: unit, optional: key, series: function (c) {
      return [c.series(title.replace(/ \(.*\)$/, ""), function (r) { return r[key]; })];
    } };
  }

  // One step's rows, in index order, and what charts need of them.
  function chartContext(step) {
    var rows = Object.keys(step.rows).map(Number).sort(function (a, b) { return a - b; })
      .map(function (i) { return step.rows[i]; });
    var iv = (step.info && step.info.interval_s) || smallestGap(rows) || 1;
    return {
      rows: rows, iv: iv,
      series: function (name, f) {
        return { name: name, points: rows.map(function (r) {
          var y = f(r);
          return [r.t_s, y === undefined || y === null || !isFinite(y) ? null : y];
        }) };
      }
    };
  }

  function smallestGap(rows) {
    var best = null;
    for (var i = 1; i < rows.length; i++) {
      var d = rows[i].t_s - rows[i - 1].t_s;
      if (d > 0 && (best === null || d < best)) best = d;
    }
    return best;
  }

  function chartSpec(def, c, step, live) {
    var last = c.rows.length ? c.rows[c.rows.length - 1].t_s + c.iv : c.iv;
    var planned = step.info && step.info.duration_s;
    var warm = c.rows.filter(function (r) { return r.warmup; });
    return {
      title: def.title,
      // Live: the axis spans the planned length, so the lines grow across it.
      x: { label: "time (s)", scale: "linear", min: 0, max: live ? Math.max(last, planned || 0) : last },
      y: { label: def.y, unit: def.unit },
      series: def.series(c),
      bands: warm.length ? [{ from: warm[0].t_s, to: warm[warm.length - 1].t_s + c.iv,
        label: "warmup (not in the totals)" }] : [],
      empty: live ? "no samples yet" : "no samples in this run"
    };
  }

  function runPage() {
    var id = decodeURIComponent(location.pathname.replace(/^\/runs\//, "").replace(/\/+$/, ""));
    var st = { run: null, steps: {}, shown: null, follow: true, drawn: {}, source: null, filesShown: false };

    function step(n) {
      if (!st.steps[n]) st.steps[n] = { n: n, rows: {}, info: null, totals: null, done: null };
      return st.steps[n];
    }

    function latestStep() {
      var ns = Object.keys(st.steps).map(Number);
      return ns.length ? Math.max.apply(null, ns) : null;
    }

    function setRun(run) {
      st.run = run;
      document.title = run.name + " · barrage";
      $("run-name").textContent = run.name;
      var b = $("run-status");
      b.textContent = run.status;
      b.className = "badge status-" + run.status;
      document.body.setAttribute("data-status", run.status);
      var meta = $("run-meta");
      clear(meta);
      [run.id, "pool " + run.pool, run.sweep ? "sweep" : null, "submitted " + when(run.submitted_at),
        run.started_at ? "started " + when(run.started_at) : null,
        run.finished_at ? "finished " + when(run.finished_at) : null,
        run.started_at && run.finished_at ? "took " + seconds((new Date(run.finished_at) - new Date(run.started_at)) / 1000) : null,
        run.description || null
      ].forEach(function (t) { if (t) meta.appendChild(h("span", { text: t })); });
      $("run-error").hidden = !run.error;
      $("run-error").textContent = run.error || "";
      $("cancel").hidden = isTerminal(run.status);
      $("delete").hidden = !isTerminal(run.status);
      progress();
      if (isTerminal(run.status)) finished();
    }

    // ---- progress and headline cards
    function card(k, v, u) {
      return h("div", { "class": "card" }, [h("div", { "class": "k", text: k }),
        h("div", { "class": "v" }, [v, u ? h("span", { "class": "u", text: u }) : null])]);
    }

    function progress() {
      var run = st.run;
      if (!run) return;
      var n = latestStep();
      var s = n === null ? null : st.steps[n];
      var c = s ? chartContext(s) : null;
      var row = c && c.rows.length ? c.rows[c.rows.length - 1] : null;
      var info = (s && s.info) || {};
      var totals = (s && s.totals) || {};
      // Step 0 is a plain run; a sweep's steps count from 1.
      $("step-label").textContent = !s ? (run.status === "queued" ? "queued: waits for its pool" : "")
        : (n === 0 ? "run" : "step " + n) + (info.name ? ": " + info.name : "");
      var done = (totals.requests_ok || 0) + (totals.requests_failed || 0);
      var frac = null, text = "";
      if (isTerminal(run.status)) { frac = 1; text = run.status; }
      else if (info.requests) { frac = done / info.requests; text = done + " / " + info.requests + " requests"; }
      else if (info.duration_s && row) {
        frac = (row.t_s + c.iv) / info.duration_s;
        text = seconds(row.t_s + c.iv) + " of " + seconds(info.duration_s);
      }
      var bar = $("progress");
      if (frac === null) bar.removeAttribute("value"); else bar.value = Math.min(1, frac);
      $("progress-text").textContent = text;

      var cards = $("cards");
      clear(cards);
      var f = isTerminal(run.status) && run.headline ? run.headline : null;
      var live = !f && row;
      if (f) {
        cards.appendChild(card("requests ok / failed", num(f.requests_ok) + " / " + num(f.requests_failed)));
        cards.appendChild(card("throughput", num(f.request_throughput), "req/s"));
        cards.appendChild(card("output", num(f.output_throughput), "tok/s"));
        cards.appendChild(card("TTFT p50 / p99", num(f.ttft_p50_ms) + " / " + num(f.ttft_p99_ms), "ms"));
        cards.appendChild(card("ITL p50", num(f.itl_p50_ms), "ms"));
        cards.appendChild(card("E2E p99", num(f.e2e_p99_ms), "ms"));
      } else if (live) {
        cards.appendChild(card("requests ok / failed", num(totals.requests_ok) + " / " + num(totals.requests_failed)));
        cards.appendChild(card("last interval", num(row.requests_ok / c.iv), "req/s"));
        cards.appendChild(card("output", num(row.output_tokens / c.iv), "tok/s"));
        cards.appendChild(card("TTFT p50 / p99", num(row.ttft_p50_ms) + " / " + num(row.ttft_p99_ms), "ms"));
        cards.appendChild(card("ITL p50", num(row.itl_p50_ms), "ms"));
        cards.appendChild(card("in flight", num(row.in_flight)));
      }
      $("progress-box").hidden = !s && !f && run.status !== "queued" && run.status !== "running";
    }

    // ---- charts of the shown step
    function pickSteps() {
      var ns = Object.keys(st.steps).map(Number).sort(function (a, b) { return a - b; });
      $("step-pick-box").hidden = ns.length < 2;
      var sel = $("step-pick");
      if (sel.options.length === ns.length) return;
      clear(sel);
      ns.forEach(function (n) {
        var info = st.steps[n].info || {};
        sel.appendChild(h("option", { value: n, text: n + (info.name ? ": " + info.name : "") }));
      });
      sel.value = String(st.shown);
    }

    function draw() {
      if (st.follow) st.shown = latestStep();
      // Another step: its own set of charts (its monitored series may differ).
      if (st.drawnStep !== st.shown) { resetCharts(); st.drawnStep = st.shown; }
      pickSteps();
      var s = st.shown === null ? null : st.steps[st.shown];
      var box = $("charts");
      var live = !st.run || !isTerminal(st.run.status);
      if (!s) {
        $("charts-note").textContent = live ? "Waiting for the first interval…" : "No interval was recorded.";
        return;
      }
      var c = chartContext(s);
      $("charts-note").textContent = c.rows.length
        ? "One point per " + num(c.iv) + " s interval, at its start" + (live ? "; updates live." : ".")
        : (live ? "Waiting for the first interval…" : "No interval was recorded.");
      var points = 0;
      CHARTS.forEach(function (def, i) {
        if (def.optional && !c.rows.some(function (r) { return r[def.optional] !== undefined && r[def.optional] !== null; })) return;
        var spec = chartSpec(def, c, s, live);
        var d = st.drawn[i];
        if (!d) {
          var fig = h("figure", { "class": "chart" }, [h("figcaption", { text: def.title })]);
          var holder = h("div", { "class": "chart-box", "data-chart": def.title });
          fig.appendChild(holder);
          box.appendChild(fig);
          d = st.drawn[i] = { box: holder, handle: null, frame: null };
        }
        var frame = JSON.stringify([spec.x, spec.bands, spec.empty]);
        if (d.handle && d.frame === frame) points += d.handle.update(spec.series);
        else { d.handle = BarrageCharts.chart(d.box, spec); points += d.handle.points(); }
        d.frame = frame;
      });
      document.body.setAttribute("data-points", String(points));
      document.body.setAttribute("data-intervals", String(c.rows.length));
    }

    // Redraws at most every 200 ms: a long run's history (thousands of
    // intervals at once) is drawn once, not once per interval.
    var pending = false;
    function later() {
      if (pending) return;
      pending = true;
      setTimeout(function () { pending = false; draw(); progress(); }, 200);
    }

    function resetCharts() {
      clear($("charts"));
      st.drawn = {};
    }

    $("step-pick").addEventListener("change", function () {
      st.shown = Number($("step-pick").value);
      st.follow = st.shown === latestStep();
      draw();
    });

    // ---- the event stream: history first, then live
    function message(text) {
      $("messages-box").hidden = false;
      $("messages").appendChild(h("li", { text: text }));
    }

    var handlers = {
      run: function (d) { setRun(d); },
      step: function (d) { step(d.step).info = d; later(); },
      interval: function (d) {
        var s = step(d.step);
        if (!s.info && !s.asked) askStep(s);
        s.rows[d.row.index] = d.row;
        if (d.totals) s.totals = d.totals;
        later();
      },
      monitor: function () {},
      message: function (d) { message(d.text); },
      step_finished: function (d) {
        step(d.step).done = d;
        var name = (step(d.step).info || {}).name;
        message("step " + (d.step + 1) + (name ? " (" + name + ")" : "") + " finished: " + d.verdict);
      },
      end: function (d) { close("closed: the run ended"); setRun(d); draw(); }
    };

    // A step whose `step` event this page did not get (it may fall between
    // the stream's history and its live part): its length from the run's
    // progress.
    function askStep(s) {
      s.asked = true;
      api("GET", apiRun(id)).then(function (run) {
        var p = run.progress;
        if (s.info || !p || p.step !== s.n) return;
        s.info = { step: s.n, name: p.step_name, duration_s: p.duration_s, requests: p.requests };
        draw(); progress();
      }).catch(function () {});
    }

    function close(why) {
      if (st.source) st.source.close();
      st.source = null;
      $("connection").textContent = why;
    }

    function connect() {
      var src = new EventSource(apiRun(id) + "/events");
      // Each connection (and reconnection) sends the whole history again,
      // after its first event: the page starts afresh there. (Not on
      // "open": the browser may dispatch it after the first events.)
      var fresh = true;
      st.source = src;
      src.addEventListener("open", function () { $("connection").textContent = "live"; });
      Object.keys(handlers).forEach(function (type) {
        src.addEventListener(type, function (e) {
          var data;
          try { data = JSON.parse(e.data); } catch (err) { recordError("bad " + type + " event: " + err.message); return; }
          if (fresh) {
            fresh = false;
            st.steps = {};
            clear($("messages"));
            $("messages-box").hidden = true;
            resetCharts();
          }
          handlers[type](data);
        });
      });
      src.addEventListener("error", function () {
        fresh = true;
        if (src.readyState === EventSource.CLOSED) {
          close("disconnected");
          // Tells why (a 401 goes to the login page) and shows the state.
          api("GET", apiRun(id)).then(function (run) {
            setRun(run);
            if (!isTerminal(run.status)) setTimeout(connect, REFRESH_MS);
          }).catch(function (e) { showError($("error"), e); });
        } else {
          $("connection").textContent = "reconnecting…";
        }
      });
    }

    // ---- a finished run: its files and its report
    function finished() {
      if (st.filesShown) return;
      st.filesShown = true;
      api("GET", apiRun(id) + "/files").then(function (data) {
        var files = (data && data.files) || [];
        var list = $("files");
        clear(list);
        files.forEach(function (f) {
          var href = apiRun(id) + "/files/" + f.split("/").map(encodeURIComponent).join("/");
          list.appendChild(h("li", {}, [h("a", { href: href, text: f })]));
        });
        $("files-box").hidden = files.length === 0;
        if (files.indexOf("report.html") >= 0) {
          var href = apiRun(id) + "/files/report.html";
          var link = $("report-link");
          link.href = href;
          link.hidden = false;
          $("report").src = href;
          $("report-box").hidden = false;
        }
      }).catch(function (e) {
        // A run that never started has no folder: nothing to list.
        if (e.status !== 404 && e.status !== 409) showError($("error"), e);
      });
    }

    $("cancel").addEventListener("click", function () {
      var b = $("cancel");
      b.disabled = true;
      api("POST", apiRun(id) + "/cancel").then(function (run) { setRun(run); })
        .catch(function (e) { showError($("error"), e); })
        .then(function () { b.disabled = false; });
    });

    $("delete").addEventListener("click", function () {
      if (!window.confirm("Delete this run and its files?")) return;
      api("DELETE", apiRun(id)).then(function () { location.assign("/"); })
        .catch(function (e) { showError($("error"), e); });
    });

    api("GET", apiRun(id)).then(function (run) {
      setRun(run);
      $("plan").textContent = run.plan_toml || "";
      connect();
    }).catch(function (e) { showError($("error"), e); });
  }

  var pages = { runs: runsPage, "new": newPage, run: runPage, login: loginPage };
  var page = pages[document.body.getAttribute("data-page")];
  if (page) page();
})();
