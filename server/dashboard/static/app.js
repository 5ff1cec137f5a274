// Spinup dashboard: live updates over one server-sent event stream per tab, buttons, panels.
// No build step, no framework: the server renders HTML; this swaps fragments and numbers in.
"use strict";

(function () {
  const body = document.body;
  const page = body.dataset.page;
  const agent = body.dataset.agent || null;
  const HISTORY = 150;

  // helpers ---------------------------------------------------------------------------------

  function $(selector, root) { return (root || document).querySelector(selector); }
  function $all(selector, root) { return Array.from((root || document).querySelectorAll(selector)); }

  function toast(text, kind) {
    const box = $("#toasts");
    if (!box) return null;
    const item = document.createElement("div");
    item.className = "toast" + (kind ? " " + kind : "");
    item.textContent = text;
    box.appendChild(item);
    if (kind !== "busy") setTimeout(() => item.remove(), kind === "error" ? 9000 : 4500);
    return item;
  }

  async function fetchText(url) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
    if (response.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname); }
    return { ok: response.ok, text: await response.text() };
  }

  function ago(iso) {
    if (!iso) return "";
    const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (seconds < 5) return "just now";
    if (seconds < 60) return Math.floor(seconds) + " s ago";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min ago";
    if (seconds < 86400) return Math.floor(seconds / 3600) + " h ago";
    return Math.floor(seconds / 86400) + " d ago";
  }

  function refreshTimes(root) {
    $all("time[data-at]", root).forEach((el) => {
      const at = el.dataset.at;
      if (!at) return;
      el.title = new Date(at).toLocaleString();
      el.textContent = ago(at);
    });
  }

  // sparklines ------------------------------------------------------------------------------

  function parseValues(text) {
    if (!text) return [];
    return text.split(",").map((v) => (v === "" ? null : Number(v)));
  }

  function drawSpark(svg) {
    const values = svg._values || (svg._values = parseValues(svg.dataset.values));
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const known = values.filter((v) => v !== null);
    if (known.length < 2) return;
    const isMem = svg.dataset.spark === "mem";
    const limit = Number(svg.dataset.limit || 0);
    const top = isMem ? Math.max(...known, 1) * 1.15 : Math.max(...known, 5) * 1.1;
    const scale = isMem && limit && Math.max(...known) > limit * 0.5 ? limit : top;
    const n = values.length;
    const span = Math.max(n, 30);
    const points = [];
    values.forEach((v, i) => {
      if (v === null) return;
      const x = ((span - n + i) / (span - 1)) * 100;
      const y = 23 - Math.min(1, v / scale) * 21;
      points.push(x.toFixed(2) + "," + y.toFixed(2));
    });
    const ns = "http://www.w3.org/2000/svg";
    const area = document.createElementNS(ns, "polygon");
    const first = points[0].split(",")[0];
    const last = points[points.length - 1].split(",")[0];
    area.setAttribute("points", first + ",24 " + points.join(" ") + " " + last + ",24");
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.join(" "));
    svg.appendChild(area);
    svg.appendChild(line);
  }

  function pushSpark(svg, value) {
    const values = svg._values || (svg._values = parseValues(svg.dataset.values));
    values.push(value === undefined ? null : value);
    while (values.length > HISTORY) values.shift();
    drawSpark(svg);
  }

  function setFields(root, values) {
    $all("[data-field]", root).forEach((el) => {
      const key = el.dataset.field;
      if (!(key in values) || key === "state" || key === "last_kind" || key === "last_at") return;
      el.textContent = values[key];
    });
  }

  function setState(root, state) {
    $all('[data-field="state"]', root).forEach((el) => {
      el.textContent = state;
      el.className = "badge s-" + state;
    });
  }

  // the live stream -------------------------------------------------------------------------

  const live = $("#live");
  let source = null;

  function liveState(state, text) {
    if (!live) return;
    live.dataset.state = state;
    $(".live-text", live).textContent = text;
  }

  function connect(handlers) {
    const url = "/stream" + (agent ? "?agent=" + encodeURIComponent(agent) : "");
    source = new EventSource(url);
    source.onopen = () => liveState("live", "live");
    source.onerror = () => liveState("down", "reconnecting…");
    Object.entries(handlers).forEach(([name, fn]) => {
      source.addEventListener(name, (message) => {
        let data = {};
        try { data = JSON.parse(message.data); } catch (e) { return; }
        fn(data);
      });
    });
    source.addEventListener("close", () => { source.close(); liveState("down", "server stopped"); });
  }

  // agents page -----------------------------------------------------------------------------

  let sortKey = null;
  let sortDir = 1;

  function sortRows() {
    if (!sortKey) return;
    const tbody = $("#agent-rows");
    const rows = $all("tr[data-agent]", tbody);
    const numeric = ["cpu", "mem", "disk", "pids"].includes(sortKey);
    rows.sort((a, b) => {
      const key = sortKey === "name" ? "agent" : sortKey;
      const x = a.dataset[key] || "";
      const y = b.dataset[key] || "";
      const cmp = numeric ? Number(x) - Number(y) : x.localeCompare(y);
      return cmp * sortDir || a.dataset.agent.localeCompare(b.dataset.agent);
    });
    rows.forEach((row) => tbody.appendChild(row));
  }

  function applyFilter() {
    const input = $("#filter");
    const text = input ? input.value.trim().toLowerCase() : "";
    $all("tr[data-agent]").forEach((row) => {
      row.hidden = text !== "" && !(row.dataset.search || "").toLowerCase().includes(text);
    });
  }

  function summarize() {
    const rows = $all("tr[data-agent]");
    const counts = {};
    rows.forEach((row) => { counts[row.dataset.state] = (counts[row.dataset.state] || 0) + 1; });
    const parts = [rows.length + (rows.length === 1 ? " agent" : " agents")];
    ["running", "paused", "stopped", "hibernated", "missing"].forEach((s) => { if (counts[s]) parts.push(counts[s] + " " + s); });
    const summary = $("#summary");
    if (summary) summary.textContent = parts.join(" · ");
  }

  let reloadingRows = false;
  async function reloadRows() {
    if (reloadingRows) return;
    reloadingRows = true;
    try {
      const { ok, text } = await fetchText("/fragments/agents");
      if (ok) {
        $("#agent-rows").innerHTML = text;
        $all("svg[data-spark]").forEach(drawSpark);
        refreshTimes();
        sortRows();
        applyFilter();
        summarize();
      }
    } finally {
      reloadingRows = false;
    }
  }

  function agentsPage() {
    $all("th[data-sort]").forEach((th) => {
      th.addEventListener("click", () => {
        const key = th.dataset.sort;
        sortDir = sortKey === key ? -sortDir : (["cpu", "mem", "disk", "pids", "last"].includes(key) ? -1 : 1);
        sortKey = key;
        $all("th[data-sort]").forEach((other) => other.removeAttribute("aria-sort"));
        th.setAttribute("aria-sort", sortDir > 0 ? "ascending" : "descending");
        sortRows();
      });
    });
    const filter = $("#filter");
    if (filter) filter.addEventListener("input", applyFilter);
    summarize();
    connect({
      usage(data) {
        const names = data.names || [];
        const shown = $all("tr[data-agent]").map((row) => row.dataset.agent);
        if (names.length !== shown.length || names.some((n) => !shown.includes(n))) { reloadRows(); return; }
        Object.entries(data.agents || {}).forEach(([name, values]) => {
          const row = $('tr[data-agent="' + CSS.escape(name) + '"]');
          if (!row) return;
          setFields(row, values);
          setState(row, values.state);
          row.dataset.state = values.state;
          row.dataset.cpu = values.cpu === null ? -1 : values.cpu;
          row.dataset.mem = values.mem === null ? -1 : values.mem;
          row.dataset.disk = values.disk === null ? -1 : values.disk;
          row.dataset.pids = values.pids === null ? -1 : values.pids;
          const cpu = $('svg[data-spark="cpu"]', row);
          const mem = $('svg[data-spark="mem"]', row);
          if (cpu) pushSpark(cpu, values.cpu);
          if (mem) pushSpark(mem, values.mem);
        });
        sortRows();
        summarize();
      },
      event(data) {
        const row = $('tr[data-agent="' + CSS.escape(data.agent || "") + '"]');
        if (!row) {
          if (data.kind === "created") reloadRows();
          return;
        }
        const kind = $('[data-field="last_kind"]', row);
        const at = $('[data-field="last_at"]', row);
        if (kind) { kind.textContent = data.kind; kind.className = "kind"; }
        if (at) { at.dataset.at = data.at; at.textContent = ago(data.at); }
        row.dataset.last = data.at;
        if (data.kind === "tool-call" && data.client) {
          const harness = $('[data-field="harness"]', row);
          if (harness) harness.textContent = data.client;
          row.dataset.harness = data.client;
        }
        if (data.kind === "removed") reloadRows();
      },
      resync() { reloadRows(); },
    });
  }

  // agent page ------------------------------------------------------------------------------

  const PANEL_KINDS = [
    [/^exec/, ["execs"]],
    [/^process-/, ["processes"]],
    [/^port-/, ["ports"]],
    [/^(snapshot-|machine-restored|forked|rebuilt)/, ["snapshots", "header"]],
    [/^(paused|resumed|killed|machine-|idle)/, ["header", "processes"]],
    [/^(policy-changed|secret-|packages-)/, ["policy", "header"]],
  ];
  const pending = new Map();

  function refreshPanel(name) {
    if (pending.has(name)) return;
    pending.set(name, setTimeout(async () => {
      pending.delete(name);
      const section = $('[data-panel="' + name + '"]');
      if (!section) return;
      const open = $all("details[open]", section).map((d) => d.dataset.exec);
      const { ok, text } = await fetchText("/agents/" + encodeURIComponent(agent) + "/panel/" + name);
      if (!ok) return;
      section.innerHTML = text;
      open.forEach((id) => {
        const details = $('details[data-exec="' + CSS.escape(id) + '"]', section);
        if (details) { details.open = true; loadExec(details); }
      });
      refreshTimes(section);
      scrollTails(section);
    }, 250));
  }

  function refreshAll() { ["header", "processes", "execs", "snapshots", "ports", "policy"].forEach(refreshPanel); }

  function filterTimeline() {
    const kind = $("#kind-filter") ? $("#kind-filter").value : "";
    $all("#timeline .ev").forEach((ev) => { ev.hidden = kind !== "" && ev.dataset.kind !== kind; });
  }

  function addEvent(data) {
    const list = $("#timeline");
    if (!list || $('.ev[data-id="' + data.id + '"]', list)) return;
    const holder = document.createElement("ol");
    holder.innerHTML = data.html;
    const item = holder.firstElementChild;
    if (!item) return;
    item.classList.add("new");
    list.insertBefore(item, list.firstChild);
    const empty = $("#timeline-empty");
    if (empty) empty.remove();
    const select = $("#kind-filter");
    if (select && !$all("option", select).some((o) => o.value === data.kind)) {
      const option = document.createElement("option");
      option.value = option.textContent = data.kind;
      select.appendChild(option);
    }
    refreshTimes(item);
    filterTimeline();
    while (list.children.length > 500) list.removeChild(list.lastChild);
  }

  function scrollTails(root) { $all("pre.tail", root).forEach((pre) => { pre.scrollTop = pre.scrollHeight; }); }

  async function fillTail(pre, process, stream) {
    const url = "/agents/" + encodeURIComponent(agent) + "/processes/" + encodeURIComponent(process) +
      "/output?stream=" + stream + "&offset=" + pre.dataset.next;
    const response = await fetch(url, { credentials: "same-origin" });
    if (!response.ok) return;
    const data = await response.json();
    appendTail(pre, data.data, data.next_offset);
  }

  function appendTail(pre, text, next) {
    const stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
    pre.appendChild(document.createTextNode(text));
    pre.dataset.next = next;
    while (pre.textContent.length > 64 * 1024 && pre.firstChild) pre.removeChild(pre.firstChild);
    if (stick) pre.scrollTop = pre.scrollHeight;
  }

  function onOutput(data) {
    const selector = 'pre.tail[data-process="' + CSS.escape(data.id) + '"][data-stream="' + data.stream + '"]';
    const pre = $(selector);
    if (!pre) { refreshPanel("processes"); return; }
    const next = Number(pre.dataset.next || 0);
    if (data.offset === next) appendTail(pre, data.data, data.next_offset);
    else if (data.next_offset > next) fillTail(pre, data.id, data.stream);
  }

  async function loadExec(details) {
    const box = $(".exec-output", details);
    if (!box || box.dataset.loaded === "1") return;
    box.dataset.loaded = "1";
    const { text } = await fetchText("/agents/" + encodeURIComponent(agent) + "/execs/" + encodeURIComponent(details.dataset.exec));
    box.innerHTML = text;
  }

  async function openPath(path) {
    const box = $("#files-body");
    if (!box) return;
    const { text } = await fetchText("/agents/" + encodeURIComponent(agent) + "/files?path=" + encodeURIComponent(path));
    box.innerHTML = text;
    box.dataset.path = path;
    refreshTimes(box);
  }

  function askLabel() {
    const dialog = $("#snapshot-dialog");
    const input = $("#snapshot-label");
    input.value = "";
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok" ? input.value : null), { once: true });
      dialog.showModal();
      input.focus();
    });
  }

  function confirmAction(text, danger) {
    const dialog = $("#confirm-dialog");
    $("#confirm-text").textContent = text;
    $("#confirm-ok").className = "btn " + (danger ? "danger" : "primary");
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.showModal();
    });
  }

  const ACTION_WORDS = {
    pause: "Pausing", resume: "Resuming", kill: "Killing", start: "Starting", stop: "Stopping",
    hibernate: "Hibernating", snapshot: "Taking a snapshot", restore: "Restoring", signal: "Signalling",
  };

  async function runAction(button) {
    const action = button.dataset.action;
    const form = new URLSearchParams();
    if (action === "snapshot") {
      const label = await askLabel();
      if (label === null) return;
      form.set("label", label);
    }
    if (button.dataset.confirm && !(await confirmAction(button.dataset.confirm, button.classList.contains("danger") || action !== "restore"))) return;
    if (button.dataset.snapshot) form.set("snapshot", button.dataset.snapshot);
    if (button.dataset.process) form.set("process", button.dataset.process);
    if (button.dataset.signal) form.set("signal", button.dataset.signal);
    button.disabled = true;
    const busy = toast((ACTION_WORDS[action] || action) + "…", "busy");
    try {
      const response = await fetch("/agents/" + encodeURIComponent(agent) + "/actions/" + action, {
        method: "POST", credentials: "same-origin", body: form,
        headers: { Accept: "application/json" },
      });
      let data = {};
      try { data = await response.json(); } catch (e) { data = { ok: false, error: "The server answered " + response.status + "." }; }
      if (response.ok && data.ok) toast(data.message);
      else toast(data.error || "The action failed.", "error");
    } catch (e) {
      toast("The server did not answer: " + e.message, "error");
    } finally {
      if (busy) busy.remove();
      button.disabled = false;
      refreshAll();
    }
  }

  function agentPage() {
    const select = $("#kind-filter");
    if (select) select.addEventListener("change", filterTimeline);
    document.addEventListener("click", (e) => {
      const button = e.target.closest("[data-action]");
      if (button) { e.preventDefault(); runAction(button); return; }
      const diff = e.target.closest("[data-diff]");
      if (diff) {
        e.preventDefault();
        const box = $(".diff", diff.closest(".snap"));
        if (!box.hidden) { box.hidden = true; return; }
        box.hidden = false;
        box.innerHTML = '<p class="muted">Comparing…</p>';
        fetchText("/agents/" + encodeURIComponent(agent) + "/diff?source=" + encodeURIComponent(diff.dataset.diff) +
          "&target=" + encodeURIComponent(diff.dataset.target)).then(({ text }) => { box.innerHTML = text; });
        return;
      }
      const link = e.target.closest("[data-path]");
      if (link) { e.preventDefault(); openPath(link.dataset.path); }
    });
    document.addEventListener("toggle", (e) => {
      if (e.target.matches && e.target.matches("details[data-exec]") && e.target.open) loadExec(e.target);
    }, true);
    const files = $("#files-body");
    if (files) openPath(files.dataset.start);
    scrollTails();
    let lastState = $('#panel-header [data-field="state"]') ? $('#panel-header [data-field="state"]').textContent : "";
    connect({
      usage(data) {
        const values = (data.agents || {})[agent];
        if (!values) return;
        setFields($("#stats"), values);
        const cpu = $('#stats svg[data-spark="cpu"]');
        const mem = $('#stats svg[data-spark="mem"]');
        if (cpu) pushSpark(cpu, values.cpu);
        if (mem) pushSpark(mem, values.mem);
        if (values.state !== lastState) { lastState = values.state; refreshPanel("header"); }
      },
      event(data) {
        addEvent(data);
        PANEL_KINDS.forEach(([pattern, panels]) => { if (pattern.test(data.kind)) panels.forEach(refreshPanel); });
        if (data.kind === "removed") location.href = "/";
      },
      output: onOutput,
      resync() { refreshAll(); },
    });
  }

  // login page ------------------------------------------------------------------------------

  function loginPage() {
    const form = $("#login-form");
    if (!form) return;
    const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (match) {
      history.replaceState(null, "", location.pathname + location.search);
      $("#token").value = decodeURIComponent(match[1]);
      form.submit();
    }
  }

  // start -----------------------------------------------------------------------------------

  $all("svg[data-spark]").forEach(drawSpark);
  refreshTimes();
  setInterval(() => refreshTimes(), 5000);
  if ($("#login-form")) loginPage();
  else if (page === "agents") agentsPage();
  else if (page === "agent") agentPage();
})();
