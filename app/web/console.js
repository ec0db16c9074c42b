// The operator console: the session admin API with an admin key kept in sessionStorage.
// No build step and no dependencies; every text from the server is set with textContent.
"use strict";

(() => {
  const KEY_STORE = "agent-sessions.admin-key";
  const NAME_STORE = "agent-sessions.operator";
  const POLL_MS = 3000;
  const SVG = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);
  const ui = {
    error: $("error"), who: $("who"), forget: $("forget-key"), keyForm: $("key-form"), key: $("key"),
    main: $("console"), figures: $("figures"), chart: $("chart"), filters: $("filters"),
    agent: $("filter-agent"), status: $("filter-status"), sessions: $("sessions"), empty: $("sessions-empty"),
    detail: $("detail"), device: $("detail-device"), lock: $("detail-lock"), history: $("history"),
    context: $("context"), audit: $("audit"), takeForm: $("takeover-form"), operator: $("operator"),
    ttl: $("ttl"), replyForm: $("reply-form"), reply: $("reply"), releaseForm: $("release-form"),
    answerHeld: $("answer-held"),
  };

  let key = sessionStorage.getItem(KEY_STORE);
  let open = null; // the device id whose conversation is shown
  let timer = null;

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json", Authorization: `Bearer ${key}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method, headers, cache: "no-store", body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await response.json(); } catch { data = null; }
    if (!response.ok) {
      const error = data && data.error ? data.error : {};
      throw new ApiError(response.status, error.code || `http_${response.status}`, error.message || "");
    }
    return data;
  }

  const device = (id) => `api/sessions/${encodeURIComponent(id)}`;

  function readable(error) {
    if (!(error instanceof ApiError)) return "Could not reach the server. Retrying shortly.";
    if (error.status === 401) return "The admin key was refused (401). Enter a valid key.";
    if (error.status === 404) return "That conversation does not exist (404): it may have been erased.";
    if (error.code === "not_taken_over") return "Take the conversation over first (409): no person holds it now.";
    if (error.code === "outside_window") {
      return "Outside WhatsApp's 24-hour window (409): only a template can be sent to this user now.";
    }
    if (error.status === 409) return `Conflict (409): ${error.message}`;
    if (error.status === 422) return `Refused (422): ${error.message}`;
    if (error.status === 503) return "The session store is unavailable (503). Retrying shortly.";
    return `The request failed (${error.status}): ${error.message}`;
  }

  function showError(error) {
    ui.error.textContent = readable(error);
    ui.error.hidden = false;
    if (error instanceof ApiError && error.status === 401) askForKey();
  }

  function clearError() {
    ui.error.hidden = true;
    ui.error.textContent = "";
  }

  function time(value) {
    return value ? new Date(value).toLocaleString([], { dateStyle: "short", timeStyle: "medium" }) : "-";
  }

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function askForKey() {
    key = null;
    sessionStorage.removeItem(KEY_STORE);
    clearInterval(timer);
    timer = null;
    ui.main.hidden = true;
    ui.keyForm.hidden = false;
    ui.who.textContent = "";
    ui.key.focus();
  }

  function drawChart(locks) {
    const entries = Object.entries(locks).sort((a, b) => b[1] - a[1]);
    ui.chart.replaceChildren();
    const rowHeight = 22;
    const height = Math.max(1, entries.length) * rowHeight + 4;
    ui.chart.setAttribute("height", String(height));
    ui.chart.setAttribute("viewBox", `0 0 320 ${height}`);
    const top = Math.max(1, ...entries.map(([, count]) => count));
    if (entries.length === 0) {
      const text = document.createElementNS(SVG, "text");
      text.setAttribute("x", "0");
      text.setAttribute("y", "15");
      text.textContent = "No active locks";
      ui.chart.append(text);
    }
    entries.forEach(([agent, count], index) => {
      const y = index * rowHeight + 2;
      const label = document.createElementNS(SVG, "text");
      label.setAttribute("x", "0");
      label.setAttribute("y", String(y + 14));
      label.textContent = agent;
      const bar = document.createElementNS(SVG, "rect");
      bar.setAttribute("x", "100");
      bar.setAttribute("y", String(y + 2));
      bar.setAttribute("height", "16");
      bar.setAttribute("width", String(Math.max(2, Math.round((180 * count) / top))));
      bar.dataset.agent = agent;
      bar.dataset.count = String(count);
      if (agent === "human") bar.classList.add("human");
      const value = document.createElementNS(SVG, "text");
      value.setAttribute("x", String(106 + Math.round((180 * count) / top)));
      value.setAttribute("y", String(y + 14));
      value.textContent = String(count);
      ui.chart.append(label, bar, value);
    });
  }

  async function loadStats() {
    const stats = await api("GET", "api/stats");
    const rows = [
      ["Active locks", Object.values(stats.active_locks_by_agent).reduce((a, b) => a + b, 0)],
      ["Expired, awaiting cleanup", stats.expired_pending],
      ["Messages in the last hour", stats.messages_last_hour],
      ["Last cleanup", stats.last_cleanup ? time(stats.last_cleanup.at) : "never"],
    ];
    ui.figures.replaceChildren(...rows.flatMap(([name, value]) => [el("dt", name), el("dd", value)]));
    drawChart(stats.active_locks_by_agent);
  }

  async function loadList() {
    const query = new URLSearchParams({ limit: "100" });
    if (ui.agent.value.trim()) query.set("agent", ui.agent.value.trim());
    if (ui.status.value) query.set("status", ui.status.value);
    const data = await api("GET", `api/sessions?${query}`);
    ui.sessions.replaceChildren(...data.items.map((item) => {
      const row = el("tr");
      row.dataset.device = item.device_id;
      row.classList.toggle("open", item.device_id === open);
      row.classList.toggle("taken", item.active_agent === "human");
      const button = el("button", item.device_id);
      button.type = "button";
      button.title = item.device_id;
      button.addEventListener("click", () => openConversation(item.device_id));
      const first = el("td");
      first.append(button);
      row.append(first, el("td", item.status), el("td", item.active_agent || "-"),
        el("td", time(item.last_activity_at)), el("td", item.message_count));
      return row;
    }));
    ui.empty.hidden = data.items.length > 0;
  }

  function showLock(lock, operator) {
    ui.lock.classList.toggle("human", lock.agent === "human");
    if (!lock.agent) ui.lock.textContent = "No agent holds this conversation: the manager answers.";
    else if (lock.agent === "human") {
      ui.lock.textContent = `Taken over${operator ? ` by ${operator}` : ""} until ${time(lock.expires_at)}. `
        + "The bot is silent; messages are held for you.";
    } else ui.lock.textContent = `Held by ${lock.agent} until ${time(lock.expires_at)}.`;
  }

  function historyItem(message) {
    const item = el("li", null, message.role);
    item.dataset.id = String(message.id);
    if (message.status === "held") item.classList.add("held");
    if (message.agent === "human") item.classList.add("by-human");
    const who = message.role === "user" ? "User" : (message.agent || "assistant");
    const parts = [who, `arrived ${time(message.created_at)}`];
    if (message.sent_at) parts.push(`sent ${time(message.sent_at)}`);
    if (message.status === "held") parts.push("held for a person");
    if (message.has_error) parts.push(`error: ${message.error_message || "not delivered"}`);
    item.append(el("p", parts.join(" · "), "meta"), el("p", message.content, "text"));
    return item;
  }

  async function loadConversation() {
    if (open === null) return;
    const id = open;
    const [state, page, audit] = await Promise.all([
      api("GET", device(id)), api("GET", `${device(id)}/messages?limit=100`), api("GET", `${device(id)}/audit`),
    ]);
    if (id !== open) return;
    ui.device.textContent = `${id} · ${state.status} · session ${state.session_id || "-"}`;
    showLock(state.lock, state.lock.operator);
    ui.history.replaceChildren(...[...page.items].reverse().map(historyItem));
    ui.context.textContent = JSON.stringify(state.context, null, 2);
    ui.audit.replaceChildren(...audit.items.map((row) => el(
      "li", `${time(row.at)} · ${row.event} · ${row.from_agent || "-"} → ${row.to_agent || "-"}`,
    )));
  }

  async function openConversation(id) {
    open = id;
    ui.detail.hidden = false;
    clearError();
    for (const row of ui.sessions.querySelectorAll("tr")) row.classList.toggle("open", row.dataset.device === id);
    try { await loadConversation(); } catch (error) { showError(error); }
  }

  // One refresh of everything shown; errors are shown and the next tick tries again.
  async function refresh() {
    try {
      await Promise.all([loadStats(), loadList(), loadConversation()]);
      document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
    } catch (error) {
      showError(error);
    }
  }

  async function act(call) {
    clearError();
    try {
      await call();
      await refresh();
    } catch (error) {
      showError(error);
    }
  }

  function start() {
    ui.keyForm.hidden = true;
    ui.main.hidden = false;
    ui.who.textContent = "Signed in with an admin key (this tab only).";
    ui.operator.value = sessionStorage.getItem(NAME_STORE) || "";
    refresh().finally(() => { document.body.dataset.ready = "true"; });
    clearInterval(timer);
    timer = setInterval(refresh, POLL_MS);
  }

  ui.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    key = ui.key.value.trim();
    ui.key.value = "";
    sessionStorage.setItem(KEY_STORE, key);
    clearError();
    start();
  });
  ui.forget.addEventListener("click", askForKey);
  ui.filters.addEventListener("submit", (event) => {
    event.preventDefault();
    act(loadList);
  });
  ui.takeForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const operator = ui.operator.value.trim();
    sessionStorage.setItem(NAME_STORE, operator);
    act(() => api("POST", `${device(open)}/takeover`, { operator, ttl: Number(ui.ttl.value) }));
  });
  ui.replyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = ui.reply.value;
    act(async () => {
      await api("POST", `${device(open)}/messages`, { text });
      ui.reply.value = "";
    });
  });
  ui.releaseForm.addEventListener("submit", (event) => {
    event.preventDefault();
    act(() => api("DELETE", `${device(open)}/takeover`, { answer_held: ui.answerHeld.checked }));
  });

  if (key) start();
  else {
    askForKey();
    document.body.dataset.ready = "true";
  }
})();
