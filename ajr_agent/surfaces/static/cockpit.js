// AJR cockpit: the job list (/) and a job's page (/jobs/ID), drawn from the JSON API.
// Plain JavaScript and inline SVG, no library: the cockpit must work on head nodes with
// no internet. Every text from the store (job names, log lines) goes in through
// textContent, never as HTML: log lines are written by users.
"use strict";

(() => {
  const REFRESH_MS = 5000;
  const TOKEN_KEY = "ajr.operatorToken";
  const RECOVERING = ["holding", "held", "releasing", "restarting", "handing_over"];
  const PHASES = ["watching", "holding", "held", "releasing", "restarting", "handing_over", "handed_over", "stopped",
    "finished", "gone", "forgotten"];
  const SLURM_STATES = ["RUNNING", "PENDING", "COMPLETING", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
    "OUT_OF_MEMORY", "PREEMPTED"];
  const PHASE_TONE = {
    watching: "info", holding: "warn", held: "warn", releasing: "warn", restarting: "warn", handing_over: "warn",
    handed_over: "teal", stopped: "bad", finished: "ok", gone: "idle", forgotten: "idle",
  };
  const SLURM_TONE = {
    RUNNING: "ok", CONFIGURING: "ok", PENDING: "warn", REQUEUED: "warn", REQUEUE_HOLD: "warn", COMPLETING: "info",
    COMPLETED: "teal", FAILED: "bad", TIMEOUT: "bad", NODE_FAIL: "bad", OUT_OF_MEMORY: "bad", BOOT_FAIL: "bad",
    DEADLINE: "bad", CANCELLED: "idle", PREEMPTED: "violet", SUSPENDED: "violet",
  };
  const CATEGORY = {
    attempt: ["info", "attempt"], checkpoint: ["ok", "checkpoint"], success: ["ok", "restart ok"],
    anomaly: ["bad", "anomaly"], verdict: ["violet", "verdict"], action: ["teal", "action"],
    refusal: ["bad", "not requeued"], warning: ["warn", "warning"], info: ["idle", "info"],
  };
  const ACTION_TONE = { done: "ok", failed: "bad", dry_run: "violet", pending: "warn", retry: "warn" };
  const OUTCOME_TONE = { running: "info", completed: "ok", failed: "bad", cancelled: "idle", ended: "teal" };
  const SERIES = ["#0284c7", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#db2777", "#65a30d", "#4f46e5"];
  const SVG_NS = "http://www.w3.org/2000/svg";

  // ---- small helpers --------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }

  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    setAttrs(el, attrs);
    append(el, children);
    return el;
  }

  function setAttrs(el, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.setAttribute("class", value);
      else if (key === "text") el.textContent = value;
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
  }

  function append(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  function badge(text, tone, plain) {
    return h("span", { class: `badge tone-${tone || "idle"}${plain ? " plain" : ""}`, text });
  }

  function pad(n) { return String(n).padStart(2, "0"); }

  function fmtClock(epoch, withSeconds = true) {
    const d = new Date(epoch * 1000);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}${withSeconds ? ":" + pad(d.getSeconds()) : ""}`;
  }

  function fmtWhen(epoch) {
    if (epoch === null || epoch === undefined) return "–";
    const d = new Date(epoch * 1000);
    const today = new Date();
    const sameDay = d.toDateString() === today.toDateString();
    return sameDay ? fmtClock(epoch) : `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${fmtClock(epoch)}`;
  }

  function fmtDuration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const s = Math.max(0, Math.round(seconds));
    if (s < 90) return `${s} s`;
    const m = Math.round(s / 60);
    if (m < 90) return `${m} min`;
    const hours = Math.floor(m / 60);
    if (hours < 48) return `${hours} h ${pad(m % 60)} min`;
    return `${Math.floor(hours / 24)} d ${hours % 24} h`;
  }

  function fmtPct(ratio) { return ratio === null || ratio === undefined ? "–" : `${(ratio * 100).toFixed(1)} %`; }

  function effTone(ratio) { return ratio === null || ratio === undefined ? "" : ratio >= 0.9 ? "ok" : ratio >= 0.7 ? "warn" : "bad"; }

  function meter(ratio, text, tone) {
    const width = Math.max(0, Math.min(1, ratio || 0)) * 100;
    const fill = h("div", { class: `fill ${tone || ""}` });
    fill.style.width = `${width}%`;
    return h("span", { class: "meter" }, h("span", { class: "track" }, fill), h("span", { class: "text", text }));
  }

  async function getJSON(url, options) {
    const answer = await fetch(url, options);
    let body = null;
    try { body = await answer.json(); } catch (e) { body = null; }
    if (!answer.ok) {
      const error = new Error((body && body.error) || `${answer.status} ${answer.statusText}`);
      error.status = answer.status;
      error.body = body;
      throw error;
    }
    return body;
  }

  let toastTimer = null;
  function toast(message, bad) {
    const el = document.getElementById("toast");
    el.textContent = message;
    el.className = `toast show${bad ? " bad" : ""}`;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { el.className = "toast"; }, 6000);
  }

  function panel(title, hint, ...body) {
    return h("section", { class: "panel" },
      h("div", { class: "panel-head" }, h("h2", { text: title }), hint ? h("span", { class: "hint" }, hint) : null),
      ...body);
  }

  // Re-render only when the data changed, so a refresh does not disturb reading.
  function refresher(load, render) {
    let last = "";
    const tick = async () => {
      try {
        const data = await load();
        const key = JSON.stringify(data, (k, v) => (k === "now" ? undefined : v));
        if (key !== last) {
          last = key;
          render(data);
        }
      } catch (error) {
        render(null, error);
      }
    };
    tick();
    setInterval(tick, REFRESH_MS);
  }

  // ---- agent status in the top bar --------------------------------------------------------

  let status = null;

  async function loadStatus() {
    status = await getJSON("/api/status");
    const box = document.getElementById("agent");
    const a = status.agent;
    box.replaceChildren();
    // Under failover this host's agent may be standing by: say so before anything else.
    const c = status.control;
    if (c) {
      append(box, [h("span", { class: `pill${c.role === "standby" ? " dry" : ""}`, title: c.reason,
                               text: `${c.host}: ${c.role}, ${c.reason}` })]);
    }
    if (a.last_poll_at === null || a.last_poll_at === undefined) {
      append(box, [h("span", { class: "dot stale" }), h("span", { text: "the agent has not polled yet" })]);
      return status;
    }
    const age = status.now - a.last_poll_at;
    append(box, [
      h("span", { class: `dot${age > 60 ? " stale" : ""}`, title: age > 60 ? "the agent has not polled for a while" : "agent polling" }),
      h("span", { text: `last poll ${fmtDuration(age)} ago` }),
      a.backend ? h("span", { class: "pill", text: a.backend }) : null,
      h("span", { class: `pill${a.dry_run ? " dry" : ""}`, text: a.dry_run ? "DRY RUN" : "live" }),
      a.last_poll_error && a.last_poll_error_at > a.last_poll_at - 60
        ? h("span", { class: "pill dry", title: a.last_poll_error, text: "Slurm error" }) : null,
    ]);
    return status;
  }

  // ---- the job list ------------------------------------------------------------------------

  function listPage(app) {
    const params = new URLSearchParams(location.search);
    const user = h("input", { type: "text", placeholder: "any user", value: params.get("user") || "", "aria-label": "user" });
    const state = h("select", { "aria-label": "state" },
      h("option", { value: "", text: "any state" }),
      h("optgroup", { label: "AJR phase" }, PHASES.map((p) => h("option", { value: p, text: p.replace("_", " ") }))),
      h("optgroup", { label: "Slurm state" }, SLURM_STATES.map((p) => h("option", { value: p, text: p }))));
    state.value = params.get("state") || "";
    const mode = h("select", { "aria-label": "mode" },
      h("option", { value: "", text: "any mode" }),
      h("option", { value: "requeue", text: "requeue" }),
      h("option", { value: "singleton_dependency", text: "singleton chain" }));
    mode.value = params.get("mode") || "";
    const gone = h("input", { type: "checkbox" });
    gone.checked = params.get("include_gone") === "true";
    const count = h("span", { class: "count" });
    const cards = h("div", { class: "cards" });
    const body = h("div", { class: "table-wrap" });
    const refused = h("div");
    const nodes = h("div");

    app.replaceChildren(
      h("div", { class: "page-head" }, h("div", {}, h("h1", { text: "Managed jobs" }),
        h("div", { class: "muted", text: "Jobs that opted in with an APS spec, newest first. Click a job for its story." }))),
      cards,
      h("section", { class: "panel" },
        h("div", { class: "filters" },
          h("label", {}, "User", user), h("label", {}, "State", state), h("label", {}, "Mode", mode),
          h("label", {}, gone, "include jobs that left Slurm"), count),
        body),
      refused,
      nodes);

    const query = () => {
      const q = new URLSearchParams();
      if (user.value.trim()) q.set("user", user.value.trim());
      if (state.value) q.set("state", state.value);
      if (mode.value) q.set("mode", mode.value);
      if (gone.checked) q.set("include_gone", "true");
      return q;
    };
    const load = async () => {
      const q = query();
      const [list, kpi, ledger] = await Promise.all([
        getJSON(`/api/jobs?${q}`),
        getJSON(`/api/kpi?since=24h${q.get("user") ? "&user=" + encodeURIComponent(q.get("user")) : ""}`),
        getJSON("/api/nodes"),
        loadStatus(),
      ]);
      return { list, kpi, ledger };
    };
    const render = (data, error) => {
      if (error) {
        body.replaceChildren(h("div", { class: "empty", text: `Cannot read the jobs: ${error.message}` }));
        return;
      }
      renderCards(cards, data.list, data.kpi);
      count.textContent = `${data.list.total} job${data.list.total === 1 ? "" : "s"}`;
      body.replaceChildren(jobTable(data.list.jobs));
      refused.replaceChildren(...(data.list.refused.length ? [refusedPanel(data.list.refused)] : []));
      nodes.replaceChildren(nodesPanel(data.ledger));
    };
    let typing = null;
    const changed = () => {
      history.replaceState(null, "", `/${query().toString() ? "?" + query() : ""}`);
      load().then((d) => render(d)).catch((e) => render(null, e));
    };
    user.addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(changed, 300); });
    for (const el of [state, mode, gone]) el.addEventListener("change", changed);
    refresher(load, render);
  }

  function renderCards(cards, list, kpi) {
    const jobs = list.jobs;
    const running = jobs.filter((j) => j.slurm_state === "RUNNING").length;
    const recovering = jobs.filter((j) => RECOVERING.includes(j.phase)).length;
    const stopped = jobs.filter((j) => j.phase === "stopped").length;
    const total = kpi.total;
    const card = (label, value, sub, tone) => h("div", { class: `card ${tone || ""}` },
      h("div", { class: "label", text: label }), h("div", { class: "value", text: value }), h("div", { class: "sub", text: sub }));
    cards.replaceChildren(
      card("Managed", String(list.total), "jobs shown by the filters"),
      card("Running", String(running), "Slurm state RUNNING", running ? "ok" : ""),
      card("Recovering", String(recovering), "held, releasing or restarting", recovering ? "warn" : ""),
      card("Stopped", String(stopped), "limit, crash-loop or refusal", stopped ? "bad" : ""),
      card("Efficiency, 24 h", fmtPct(total.efficiency),
        `${fmtDuration(total.productive)} productive, ${fmtDuration(total.lost)} lost`, effTone(total.efficiency)));
  }

  function jobTable(jobs) {
    if (!jobs.length) return h("div", { class: "empty", text: "No managed job matches." });
    const head = ["Job", "User", "Mode", "Slurm", "AJR", "Requeues", "Last anomaly", "Efficiency"];
    return h("table", { class: "jobs" },
      h("thead", {}, h("tr", {}, head.map((t) => h("th", { text: t })))),
      h("tbody", {}, jobs.map((j) => {
        const used = j.limit ? j.requeues_used / j.limit : (j.requeues_used ? 1 : 0);
        const row = h("tr", { class: "clickable", "data-job": j.job_id },
          h("td", {}, h("a", { class: "jobid", href: `/jobs/${j.job_id}`, text: String(j.job_id) }),
            h("div", { class: "muted small", text: j.name })),
          h("td", { text: j.user }),
          h("td", {}, badge(j.mode === "singleton_dependency" ? "singleton" : j.mode, "idle", true)),
          h("td", {}, badge(j.slurm_state || "?", SLURM_TONE[j.slurm_state])),
          h("td", {}, badge(j.phase.replace("_", " "), PHASE_TONE[j.phase])),
          h("td", {}, meter(used, `${j.requeues_used}/${j.limit}`, used >= 1 ? "bad" : used > 0 ? "warn" : "")),
          h("td", { class: j.last_anomaly ? "" : "muted", text: j.last_anomaly || "–" }),
          h("td", {}, j.efficiency === null ? h("span", { class: "muted", text: "–" })
            : meter(j.efficiency, fmtPct(j.efficiency), effTone(j.efficiency))));
        row.addEventListener("click", (e) => { if (e.target.tagName !== "A") location.href = `/jobs/${j.job_id}`; });
        return row;
      })));
  }

  // ---- the node ledger ------------------------------------------------------------------------

  function nodesPanel(ledger) {
    const shown = ledger.nodes.filter((n) => n.lemon || n.blames_total || n.excluded_from.length || n.actions.length);
    const rule = `lemon at ${ledger.lemon_jobs || "–"} witnesses or ${ledger.lemon_blames || "–"} blames in ` +
      `${fmtDuration(ledger.lemon_window)}; trusted again after ${fmtDuration(ledger.trust_after)} in service; ` +
      `lemons: ${ledger.lemon_action}`;
    if (!shown.length) return panel("Nodes", rule, h("div", { class: "empty", text: "No node blamed." }));
    const canForgive = status && status.operator_actions && sessionStorage.getItem(TOKEN_KEY);
    const head = ["Node", "Standing", "Service", "Witnesses", "Blames", "Evidence", "Excluded from", "Drains / reboots", ""];
    return panel("Nodes", rule, h("div", { class: "table-wrap" }, h("table", { class: "nodes" },
      h("thead", {}, h("tr", {}, head.map((t) => h("th", { text: t })))),
      h("tbody", {}, shown.map((n) => h("tr", { "data-node": n.node },
        h("td", { class: "mono", text: n.node }),
        h("td", {}, n.lemon ? badge("lemon", "bad") : n.trusted_at ? badge(`trusted by ${n.trusted_by}`, "ok") : badge("ok", "ok"),
          n.trusted_again_at ? h("div", { class: "muted small", text: `trusted again ${fmtWhen(n.trusted_again_at)} unless blamed` }) : null),
        h("td", {}, badge(n.in_service ? "in service" : "out", n.in_service ? "ok" : "warn")),
        h("td", { text: String(n.witnesses) }),
        h("td", { text: `${n.recent} recent / ${n.blames_total}`,
          title: n.blames.map((b) => `job ${b.job_id} (${b.user}) ${b.basis}: ${b.cause}`).join("\n") }),
        h("td", { text: n.trusted_evidence ? "node log / Slurm" : "job logs only" }),
        h("td", { text: n.excluded_from.join(", ") || "–" }),
        h("td", { text: `${n.drains} / ${n.reboots}` }),
        h("td", {}, canForgive && (n.lemon || n.blames_total)
          ? h("button", { class: "btn", text: "Forgive", onclick: () => forgive(n.node) }) : null)))))));
  }

  async function forgive(node) {
    const sure = await confirmAction(`Forgive node ${node}?`, "The agent trusts it again at its next poll: no lemon, its " +
      "record afresh, AJR's exclusions of it taken back from pending jobs. A node AJR drained stays drained. " +
      "The request is journaled as operator:web.");
    if (!sure) return;
    try {
      const result = await getJSON(`/api/nodes/forgive?node=${encodeURIComponent(node)}`, {
        method: "POST", headers: { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY)}` },
      });
      toast(result.message);
    } catch (error) {
      if (error.status === 401) sessionStorage.removeItem(TOKEN_KEY);
      toast(error.message, true);
    }
  }

  function refusedPanel(refused) {
    return panel("Refused specs", "these jobs mention APS but their spec is broken: not managed",
      h("div", { class: "table-wrap" }, h("table", {},
        h("thead", {}, h("tr", {}, ["Job", "User", "Problem", "Comment"].map((t) => h("th", { text: t })))),
        h("tbody", {}, refused.map((r) => h("tr", {},
          h("td", {}, h("span", { class: "jobid", text: String(r.job_id) }), h("div", { class: "muted small", text: r.name })),
          h("td", { text: r.user }), h("td", { text: r.problem }), h("td", {}, h("code", { text: r.comment }))))))));
  }

  // ---- one job --------------------------------------------------------------------------------

  function jobPage(app, jobId) {
    document.title = `Job ${jobId} · AJR cockpit`;
    // Made once: a refresh must not wipe a token being typed.
    const operator = operatorPanel(Number(jobId));
    refresher(async () => {
      const [detail] = await Promise.all([getJSON(`/api/jobs/${jobId}`), loadStatus()]);
      return detail;
    }, (detail, error) => {
      if (error) {
        app.replaceChildren(h("div", { class: "crumbs" }, h("a", { href: "/", text: "Jobs" }), ` / ${jobId}`),
          h("section", { class: "panel" }, h("div", { class: "empty", text: error.message })));
        return;
      }
      renderJob(app, detail, operator);
    });
  }

  function renderJob(app, d, operator) {
    const j = d.job;
    const chain = j.chain ? `chain ${j.chain}` : null;
    const head = h("div", { class: "page-head" },
      h("div", {},
        h("div", { class: "crumbs" }, h("a", { href: "/", text: "Jobs" }), ` / ${j.job_id}`),
        h("div", { class: "title-row" },
          h("h1", {}, String(j.job_id), h("span", { class: "sep", text: "·" }), j.name),
          badge(j.slurm_state || "?", SLURM_TONE[j.slurm_state]),
          badge(j.phase.replace("_", " "), PHASE_TONE[j.phase])),
        h("div", { class: "subtitle" },
          h("span", {}, "user ", h("strong", { text: j.user })),
          h("span", { text: `${j.mode === "singleton_dependency" ? "singleton chain" : "requeue"} mode` }),
          j.partition ? h("span", { text: `partition ${j.partition}` }) : null,
          j.nodes ? h("span", { text: `nodes ${j.nodes}` }) : null,
          chain ? h("span", { text: chain }) : null)),
      operator);
    const banner = j.stop_reason
      ? h("div", { class: `banner${j.phase === "stopped" ? "" : " warn"}` }, h("strong", { text: "Not requeued:" }), h("span", { text: j.stop_reason }))
      : null;
    const limitNote = j.requested_limit !== null && j.requested_limit !== j.limit ? ` (job asked ${j.requested_limit})` : "";
    const fact = (label, value, small) => h("div", { class: "fact" },
      h("div", { class: "label", text: label }), h("div", { class: `value${small ? " small" : ""}`, text: value, title: value }));
    const facts = h("section", { class: "panel facts" },
      fact("Requeues", `${j.requeues_used} of ${j.limit}${limitNote}`),
      fact("By cause", d.budgets.by_cause.map((b) => `${b.budget === "application" ? "own" : b.budget} ${b.used}/${b.cap === null ? "?" : b.cap}`).join(", "), true),
      fact("Attempt", String(j.attempt)),
      fact("Last checkpoint", fmtWhen(j.last_checkpoint), true),
      fact("Last anomaly", j.last_anomaly || "–", true),
      fact("Fault verdict", j.verdict || "–", true),
      fact("Last action", j.last_action || "–", true));

    app.replaceChildren(h("div", {},
      head, banner, facts,
      h("div", { class: "grid grid-side" },
        panel("Timeline", "attempts, checkpoint saves, anomalies, verdicts and actions", h("div", { class: "panel-body" }, timeline(d))),
        panel("Training efficiency", "productive / settled time", h("div", { class: "panel-body" }, efficiencyView(d.efficiency)))),
      h("div", { class: "grid grid-2" },
        panel("Throughput", d.throughput.length ? `${d.throughput.length} reports` : null, h("div", { class: "panel-body" }, throughputChart(d))),
        h("div", {},
          panel("Verdicts", "where each failure's fault lies", verdictList(d.verdicts)),
          panel("Log files", "followed by the agent", fileList(d.log_files)))),
      panel("Story", "everything AJR saw and did, by attempt", story(d)),
      panel("Actions", "the journal: every Slurm command AJR or an operator ran", actionTable(d.actions))));
  }

  // ---- operator actions -----------------------------------------------------------------------

  function operatorPanel(jobId) {
    if (!status || !status.operator_actions) return null;
    const box = h("div", { class: "operator" });
    const draw = () => {
      const token = sessionStorage.getItem(TOKEN_KEY);
      if (!token) {
        const input = h("input", { type: "password", placeholder: "operator token", autocomplete: "off", "aria-label": "operator token" });
        const unlock = () => {
          if (!input.value) return;
          sessionStorage.setItem(TOKEN_KEY, input.value);
          draw();
        };
        input.addEventListener("keydown", (e) => { if (e.key === "Enter") unlock(); });
        box.replaceChildren(input, h("button", { class: "btn", onclick: unlock, text: "Unlock actions" }));
        return;
      }
      box.replaceChildren(
        h("button", { class: "btn", text: "Requeue", onclick: () => act(jobId, "requeue", draw) }),
        h("button", { class: "btn", text: "Release", onclick: () => act(jobId, "release", draw) }),
        h("button", { class: "btn btn-danger", text: "Stop managing", onclick: () => act(jobId, "forget", draw) }),
        h("button", { class: "btn btn-ghost", text: "Lock", title: "forget the token in this tab",
          onclick: () => { sessionStorage.removeItem(TOKEN_KEY); draw(); } }));
    };
    draw();
    return box;
  }

  const ACTION_TEXT = {
    requeue: ["Requeue job", "Slurm kills the running attempt, if any, and queues the job again (scontrol requeue)."],
    release: ["Release job", "Slurm releases the held job and clears its requeue wait (scontrol release, StartTime=now)."],
    forget: ["Stop managing job", "The agent leaves the job alone from its next poll: no more recoveries."],
  };

  function confirmAction(title, text) {
    const dialog = document.getElementById("confirm");
    document.getElementById("confirm-title").textContent = title;
    document.getElementById("confirm-text").textContent = text;
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.showModal();
    });
  }

  async function act(jobId, verb, redraw) {
    const [title, text] = ACTION_TEXT[verb];
    const sure = await confirmAction(`${title} ${jobId}?`, `${text} The request is journaled as operator:web.`);
    if (!sure) return;
    try {
      const result = await getJSON(`/api/jobs/${jobId}/${verb}`, {
        method: "POST", headers: { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY)}` },
      });
      toast(result.message);
    } catch (error) {
      if (error.status === 401) {
        sessionStorage.removeItem(TOKEN_KEY);
        redraw();
      }
      toast(error.body && error.body.message ? error.body.message : error.message, true);
    }
  }

  // ---- efficiency -----------------------------------------------------------------------------

  function efficiencyView(e) {
    const parts = [
      ["productive", "Productive", "training whose progress was saved"],
      ["lost_unsaved", "Lost: unsaved work", "after the last checkpoint of failed attempts"],
      ["lost_restart", "Lost: restarts", "detection, requeue, queueing, start-up"],
      ["at_risk", "Not yet saved", "the running attempt since its last checkpoint"],
    ];
    const stack = h("div", { class: "stack" });
    for (const [key, label] of parts) {
      if (!e.elapsed || !e[key]) continue;
      const bar = h("div", { class: `k-${key}`, title: `${label}: ${fmtDuration(e[key])}` });
      bar.style.width = `${(e[key] / e.elapsed) * 100}%`;
      stack.append(bar);
    }
    return h("div", {},
      h("div", { class: "eff-head" },
        h("span", { class: `eff-big`, text: fmtPct(e.efficiency) }),
        h("span", { class: "muted", text: `of ${fmtDuration(e.elapsed - e.at_risk)} settled` })),
      stack,
      h("div", { class: "legend" },
        parts.flatMap(([key, label, hint]) => [
          h("span", { class: "key", title: hint }, h("span", { class: `swatch k-${key}` }), label),
          h("span", { class: "val", text: fmtDuration(e[key]) })]),
        h("span", { class: "key" }, h("strong", { text: "Elapsed" })),
        h("span", { class: "val", text: fmtDuration(e.elapsed) })));
  }

  // ---- the timeline -------------------------------------------------------------------------

  function niceStep(span, target) {
    const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800];
    return steps.find((step) => span / step <= target) || steps[steps.length - 1];
  }

  function timeline(d) {
    const attempts = d.attempts;
    if (!attempts.length) return h("div", { class: "empty", text: "No attempt has started yet." });
    const now = status ? status.now : Date.now() / 1000;
    const key = (jobId, attempt) => `${jobId}:${attempt}`;
    const lanes = new Map(attempts.map((a, i) => [key(a.job_id, a.attempt), i]));
    const laneOf = (jobId, attempt) => lanes.get(key(jobId, attempt));
    const times = attempts.flatMap((a) => [a.started, a.ended === null ? now : a.ended]);
    d.events.forEach((e) => { if (laneOf(e.job_id, e.attempt) !== undefined) times.push(e.at); });
    d.actions.forEach((a) => { if (laneOf(a.job_id, a.attempt) !== undefined) times.push(a.created_at); });
    let t0 = Math.min(...times);
    let t1 = Math.max(...times);
    const spread = Math.max(t1 - t0, 10);
    t0 -= spread * 0.02;
    t1 = t0 + spread * 1.05;

    const W = 900, left = 150, right = 16, top = 8, laneH = 58, axisH = 26;
    const H = top + attempts.length * laneH + axisH;
    const x = (t) => left + ((t - t0) / (t1 - t0)) * (W - left - right);
    const svg = s("svg", { class: "chart timeline", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "timeline of the job's attempts" });

    const step = niceStep(t1 - t0, 7);
    for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
      svg.append(s("line", { class: "grid-line", x1: x(t), x2: x(t), y1: top, y2: H - axisH }));
      svg.append(s("text", { x: x(t), y: H - 8, "text-anchor": "middle", text: fmtClock(t, step < 60) }));
    }
    svg.append(s("line", { class: "axis-line", x1: left, x2: W - right, y1: H - axisH, y2: H - axisH }));

    const eventIndex = new Map(d.events.map((e, i) => [e, i]));
    attempts.forEach((a, i) => {
      const y = top + i * laneH;
      const barY = y + 16, barH = 18, mid = barY + barH / 2;
      if (i % 2 === 1) svg.append(s("rect", { x: 0, y, width: W, height: laneH, fill: "#f8fafc" }));
      svg.append(s("text", { class: "lane-label", x: 8, y: y + 26, text: a.label }));
      svg.append(s("text", { class: "lane-sub", x: 8, y: y + 41, text: [a.outcome, a.nodes].filter(Boolean).join(" · ") }));
      const end = a.ended === null ? now : a.ended;
      const saved = a.outcome === "completed" || a.outcome === "ended" ? end : a.last_checkpoint === null ? a.started : Math.min(a.last_checkpoint, end);
      const tail = a.outcome === "running" ? "#93c5fd" : "#fca5a5";
      const tailText = a.outcome === "running" ? "running, not yet saved" : "lost: after the last checkpoint";
      const bar = s("g", {},
        s("title", { text: `${a.label}: ${a.outcome}, ${fmtWhen(a.started)} → ${a.ended === null ? "now" : fmtWhen(a.ended)} (${fmtDuration(end - a.started)})${a.end_reason ? "; " + a.end_reason : ""}` }));
      if (saved > a.started) bar.append(s("rect", { x: x(a.started), y: barY, width: Math.max(1, x(saved) - x(a.started)), height: barH, rx: 3, fill: "#4ade80" }));
      if (end > saved) bar.append(s("rect", { x: x(saved), y: barY, width: Math.max(1, x(end) - x(saved)), height: barH, rx: 3, fill: tail }, s("title", { text: tailText })));
      svg.append(bar);
      if (i > 0) {
        const prev = attempts[i - 1];
        const prevEnd = prev.ended === null ? now : prev.ended;
        if (a.started > prevEnd) {
          svg.append(s("line", { x1: x(prevEnd), x2: x(a.started), y1: mid, y2: mid, stroke: "#f59e0b", "stroke-width": 2, "stroke-dasharray": "4 3" },
            s("title", { text: `restart: ${fmtDuration(a.started - prevEnd)} between the attempts` })));
        }
      }
      for (const t of a.checkpoints) {
        svg.append(s("path", { class: "marker", d: `M${x(t)} ${mid - 7} l6 7 l-6 7 l-6 -7 z`, fill: "#15803d", stroke: "#fff", "stroke-width": 1.5 },
          s("title", { text: `checkpoint saved ${fmtWhen(t)}` })));
      }
    });
    d.events.forEach((e) => {
      const lane = laneOf(e.job_id, e.attempt);
      if (lane === undefined || (e.category !== "anomaly" && e.category !== "verdict" && e.category !== "refusal")) return;
      const y = top + lane * laneH + 16 + 9;
      const link = s("a", { href: `#ev-${eventIndex.get(e)}`, class: "marker" }, s("title", { text: `${fmtWhen(e.at)} ${e.text}${e.line ? "\n" + e.line : ""}` }));
      if (e.category === "anomaly") {
        link.append(s("circle", { cx: x(e.at), cy: y, r: 7, fill: "#dc2626", stroke: "#fff", "stroke-width": 1.5 }),
          s("text", { x: x(e.at), y: y + 4, "text-anchor": "middle", fill: "#fff", "font-size": 10, "font-weight": 700, text: "!" }));
      } else if (e.category === "verdict") {
        link.append(s("rect", { x: x(e.at) - 4, y: y - 21, width: 8, height: 8, rx: 2, fill: "#7c3aed" }));
      } else {
        link.append(s("path", { d: `M${x(e.at) - 6} ${y - 6} l12 12 M${x(e.at) + 6} ${y - 6} l-12 12`, stroke: "#991b1b", "stroke-width": 2.5 }));
      }
      svg.append(link);
    });
    d.actions.forEach((act) => {
      const lane = laneOf(act.job_id, act.attempt);
      if (lane === undefined) return;
      const y = top + lane * laneH + 16 + 18 + 4;
      const colour = act.status === "failed" ? "#dc2626" : act.dry_run ? "#7c3aed" : "#0d9488";
      svg.append(s("a", { href: `#act-${act.id}`, class: "marker" },
        s("path", { d: `M${x(act.created_at)} ${y} l5 8 l-10 0 z`, fill: colour },
          s("title", { text: `${fmtWhen(act.created_at)} ${act.kind} ${act.status}${act.origin !== "agent" ? " by " + act.origin : ""}: ${act.reason}` }))));
    });
    if (attempts.some((a) => a.ended === null)) {
      svg.append(s("line", { x1: x(now), x2: x(now), y1: top, y2: H - axisH, stroke: "#0284c7", "stroke-width": 1, "stroke-dasharray": "3 3" }));
      svg.append(s("text", { x: x(now) - 4, y: top + 9, "text-anchor": "end", fill: "#0284c7", text: "now" }));
    }
    const legendItem = (cls, colour, label) => {
      const i = h("i", { class: cls });
      i.style.background = colour;
      return h("span", {}, i, label);
    };
    return h("div", {}, svg, h("div", { class: "chart-legend" },
      legendItem("", "#4ade80", "saved training"),
      legendItem("", "#fca5a5", "lost work"),
      legendItem("", "#93c5fd", "not yet saved"),
      legendItem("", "#f59e0b", "restart gap"),
      legendItem("diamond", "#15803d", "checkpoint"),
      legendItem("round", "#dc2626", "anomaly"),
      legendItem("", "#7c3aed", "verdict"),
      legendItem("", "#0d9488", "action")));
  }

  // ---- throughput chart ------------------------------------------------------------------------

  function niceNumber(max) {
    const exp = Math.pow(10, Math.floor(Math.log10(max || 1)));
    const f = max / exp;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * exp;
  }

  function throughputChart(d) {
    const points = d.throughput;
    if (!points.length) {
      return h("div", { class: "empty" }, "No throughput reports in this job's logs ",
        h("div", { class: "small", text: "(lines matched by a throughput rule, e.g. 'TFLOP/s/GPU: 402.1')" }));
    }
    const W = 560, H = 250, left = 48, right = 14, top = 12, bottom = 28;
    let t0 = Math.min(...points.map((p) => p.at));
    let t1 = Math.max(...points.map((p) => p.at));
    if (t1 - t0 < 10) { t1 = t0 + 10; }
    const pad = (t1 - t0) * 0.03;
    t0 -= pad; t1 += pad;
    const vmax = niceNumber(Math.max(...points.map((p) => p.value)) * 1.1);
    const x = (t) => left + ((t - t0) / (t1 - t0)) * (W - left - right);
    const y = (v) => top + (1 - v / vmax) * (H - top - bottom);
    const svg = s("svg", { class: "chart throughput", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "throughput over time" });
    for (let i = 0; i <= 4; i += 1) {
      const v = (vmax / 4) * i;
      svg.append(s("line", { class: "grid-line", x1: left, x2: W - right, y1: y(v), y2: y(v) }));
      svg.append(s("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end", text: String(Math.round(v * 10) / 10) }));
    }
    const step = niceStep(t1 - t0, 5);
    for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
      svg.append(s("text", { x: x(t), y: H - 8, "text-anchor": "middle", text: fmtClock(t, step < 60) }));
    }
    svg.append(s("line", { class: "axis-line", x1: left, x2: W - right, y1: H - bottom, y2: H - bottom }));
    const byAttempt = new Map();
    for (const p of points) {
      if (!byAttempt.has(p.attempt)) byAttempt.set(p.attempt, []);
      byAttempt.get(p.attempt).push(p);
    }
    const legend = h("div", { class: "chart-legend" });
    [...byAttempt.entries()].forEach(([attempt, series], i) => {
      const colour = SERIES[i % SERIES.length];
      svg.append(s("polyline", { points: series.map((p) => `${x(p.at)},${y(p.value)}`).join(" "), fill: "none", stroke: colour, "stroke-width": 2, "stroke-linejoin": "round" }));
      for (const p of series) {
        svg.append(s("circle", { class: "marker", cx: x(p.at), cy: y(p.value), r: 3, fill: "#fff", stroke: colour, "stroke-width": 2 },
          s("title", { text: `attempt ${attempt} · ${fmtWhen(p.at)} · ${p.value}` })));
      }
      const swatch = h("i", {});
      swatch.style.background = colour;
      const values = series.map((p) => p.value).sort((a, b) => a - b);
      const half = Math.floor(values.length / 2);
      const median = values.length % 2 ? values[half] : (values[half - 1] + values[half]) / 2;
      legend.append(h("span", {}, swatch, `attempt ${attempt}: median ${Math.round(median * 100) / 100}`));
    });
    return h("div", {}, svg, legend);
  }

  // ---- lists --------------------------------------------------------------------------------

  function verdictList(verdicts) {
    if (!verdicts.length) return h("div", { class: "empty", text: "No failure has been attributed." });
    const tone = { node: "bad", application: "info", infrastructure: "warn", unknown: "idle" };
    return h("div", {}, verdicts.map((v) => h("div", { class: "verdict" },
      h("div", {}, badge(v.fault, tone[v.fault] || "idle"), " ", h("span", { class: "muted small", text: `attempt ${v.attempt} · ${fmtWhen(v.at)}` }),
        v.nodes.length ? h("span", { class: "small", text: `  nodes ${v.nodes.join(", ")}` }) : null),
      h("div", { class: "cause", text: v.cause }),
      v.evidence.length ? h("ul", { class: "evidence" }, v.evidence.map((line) => h("li", { text: line }))) : null)));
  }

  function fileList(files) {
    if (!files.length) return h("div", { class: "empty", text: "No log file found yet." });
    return h("ul", { class: "files" }, files.map((f) => h("li", {},
      h("span", { class: "muted", text: `attempt ${f.attempt}  ` }), f.path, h("span", { class: "muted", text: `  (${f.offset} bytes read)` }))));
  }

  function story(d) {
    if (!d.events.length) return h("div", { class: "empty", text: "Nothing recorded yet." });
    const groups = new Map();
    d.events.forEach((e, i) => {
      const k = e.attempt === null || e.attempt < 0 ? "job" : e.attempt;
      if (!groups.has(k)) groups.set(k, []);
      groups.get(k).push([e, i]);
    });
    const keys = [...groups.keys()].sort((a, b) => (a === "job" ? -1 : b === "job" ? 1 : a - b));
    const list = h("ol", { class: "story" });
    for (const k of keys) {
      const attempt = k === "job" ? null : d.attempts.find((a) => a.attempt === k && a.job_id === d.job.job_id);
      const title = k === "job" ? "The job" : `Attempt ${k}`;
      const sub = attempt
        ? `${fmtWhen(attempt.started)} → ${attempt.ended === null ? "now" : fmtWhen(attempt.ended)}${attempt.nodes ? " · " + attempt.nodes : ""}`
        : "";
      list.append(h("li", { class: "attempt-head" }, title,
        attempt ? badge(attempt.outcome, OUTCOME_TONE[attempt.outcome]) : null, h("span", { class: "muted small", text: sub })));
      for (const [e, i] of groups.get(k)) {
        const [tone, label] = CATEGORY[e.category] || CATEGORY.info;
        list.append(h("li", { class: "ev", id: `ev-${i}` },
          h("time", { text: fmtWhen(e.at), title: new Date(e.at * 1000).toISOString() }),
          h("span", {}, badge(label, tone)),
          h("div", {},
            h("div", { class: "text", text: e.text }),
            // A restart's success rests on the checkpoint line shown just above it.
            e.line && e.category !== "success" ? h("div", { class: `logline${e.category === "checkpoint" ? " ok" : ""}`, text: e.line }) : null,
            e.path && e.category !== "success" ? h("div", { class: "logfile", text: e.path }) : null)));
      }
    }
    return list;
  }

  function actionTable(actions) {
    if (!actions.length) return h("div", { class: "empty", text: "No action yet." });
    return h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, ["When", "Attempt", "Action", "Status", "By", "Tries", "Reason"].map((t) => h("th", { text: t })))),
      h("tbody", {}, actions.map((a) => h("tr", { id: `act-${a.id}` },
        h("td", { class: "nowrap", text: fmtWhen(a.created_at) }),
        h("td", { class: "num", text: String(a.attempt) }),
        h("td", {}, h("code", { text: a.kind }), a.target !== null ? h("span", { class: "muted", text: ` → job ${a.target}` }) : null,
          a.nodes ? h("span", { class: "muted", text: ` ${a.nodes}` }) : null),
        h("td", {}, badge(a.status.replace("_", " "), ACTION_TONE[a.status])),
        h("td", { text: a.origin }),
        h("td", { class: "num", text: String(a.tries) }),
        h("td", {}, h("span", { text: a.reason }), a.error ? h("div", { class: "small", text: a.error }) : null))))));
  }

  // ---- start -----------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", async () => {
    const app = document.getElementById("app");
    try {
      await loadStatus();
    } catch (error) {
      app.replaceChildren(h("section", { class: "panel" }, h("div", { class: "empty", text: `The service cannot read AJR's state: ${error.message}` })));
      return;
    }
    const match = location.pathname.match(/^\/jobs\/(\d+)$/);
    if (match) jobPage(app, match[1]);
    else listPage(app);
  });
})();
