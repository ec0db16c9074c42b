// The operator inbox: the admin API with an admin key kept in sessionStorage.
// No build step and no dependencies; every text from the server is set with textContent.
// Updates come from one server-sent event stream (read with fetch, so the key goes in a
// header); while it is down a fallback poll runs. Refreshes never overlap: a change seen
// during one is fetched right after it, once.
"use strict";

(() => {
  const KEY_STORE = "agent-sessions.admin-key";
  const NAME_STORE = "agent-sessions.operator";
  const FALLBACK_MS = 10000; // the poll while the event stream is down
  const RECONNECT_MS = 3000;
  const DELIVERY = {
    queued: "Queued", retry: "Not sent yet, retrying", sent: "Sent", delivered: "Delivered", read: "Read",
    failed: "Failed", outside_window: "Not sent: outside the 24-hour window",
  };

  const PAGE = 50; // conversations a page adds
  const MAX_PAGE = 200; // the most one request lists (the API's limit)

  const $ = (id) => document.getElementById(id);
  const ui = {
    error: $("error"), who: $("who"), forget: $("forget-key"), keyForm: $("key-form"), key: $("key"),
    main: $("console"), filters: $("filters"), needs: $("filter-needs"), channel: $("filter-channel"),
    agent: $("filter-agent"), list: $("conversations"), empty: $("conversations-empty"), detail: $("detail"),
    title: $("detail-title"), device: $("detail-device"), lock: $("detail-lock"), history: $("history"),
    back: $("back"), takeForm: $("takeover-form"), operator: $("operator"), ttl: $("ttl"),
    replyForm: $("reply-form"), reply: $("reply"), releaseForm: $("release-form"), handTo: $("hand-to"),
    answerHeld: $("answer-held"), more: $("load-more"),
  };

  let key = sessionStorage.getItem(KEY_STORE);
  let open = null; // the device id whose conversation is shown
  let names = {}; // agent key -> display name
  let running = null; // the refresh in flight
  let again = false; // something changed while it ran
  let wantMore = false; // the operator reached the end of the list: append the next page
  let items = []; // the conversations listed, in the inbox's order
  let nextCursor = null; // the page after the last one listed (null: the end)
  let listedFor = null; // the filters the listed pages were fetched with
  let stream = null; // AbortController of the event stream
  let fallback = null; // timer of the fallback poll
  let session = 0; // bumped when the key changes: old loops stop

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function headers(extra) {
    return { Accept: "application/json", Authorization: `Bearer ${key}`, ...extra };
  }

  async function api(method, path, body) {
    const extra = body === undefined ? {} : { "Content-Type": "application/json" };
    const response = await fetch(path, {
      method, headers: headers(extra), cache: "no-store", body: body === undefined ? undefined : JSON.stringify(body),
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
  const agentName = (agentKey) => names[agentKey] || agentKey;

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
    if (!value) return "-";
    const date = new Date(value);
    const today = new Date().toDateString() === date.toDateString();
    return today ? date.toLocaleTimeString([], { timeStyle: "short" })
      : date.toLocaleString([], { dateStyle: "short", timeStyle: "short" });
  }

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function stop() {
    session += 1;
    if (stream) stream.abort();
    stream = null;
    clearTimeout(fallback);
    fallback = null;
  }

  function askForKey() {
    key = null;
    sessionStorage.removeItem(KEY_STORE);
    stop();
    ui.main.hidden = true;
    ui.keyForm.hidden = false;
    ui.who.textContent = "";
    ui.key.focus();
  }

  async function loadAgents() {
    const data = await api("GET", "api/agents");
    names = Object.fromEntries(data.items.map((a) => [a.key, a.display_name]));
    for (const select of [ui.agent, ui.handTo]) {
      const keep = [...select.options].filter((o) => o.value === "" || o.value.startsWith("@"));
      const chosen = select.value;
      const options = data.items.filter((a) => select === ui.agent || a.key !== "human")
        .map((a) => { const o = el("option", a.display_name); o.value = a.key; return o; });
      select.replaceChildren(...keep, ...options);
      select.value = chosen;
    }
  }

  function conversationItem(item) {
    const row = el("li");
    row.dataset.device = item.device_id;
    row.dataset.channel = item.channel;
    row.classList.toggle("open", item.device_id === open);
    row.classList.toggle("needs-person", item.waiting > 0);
    const button = el("button");
    button.type = "button";
    button.addEventListener("click", () => openConversation(item.device_id));
    const last = item.last_message;
    let preview = last ? last.preview : "No messages yet";
    if (last && last.role === "assistant") preview = `${last.agent === "human" ? "You" : agentName(last.agent)}: ${preview}`;
    const tags = el("span", null, "tags");
    tags.append(el("span", item.channel === "whatsapp" ? "WhatsApp" : "Web", `tag channel ${item.channel}`));
    if (item.waiting > 0) tags.append(el("span", `Needs a person (${item.waiting})`, "tag needs"));
    if (item.agent === "human") tags.append(el("span", `Taken over by ${item.operator || "a person"}`, "tag human"));
    else if (item.agent) tags.append(el("span", agentName(item.agent), "tag agent"));
    if (last && last.delivery) tags.append(el("span", DELIVERY[last.delivery] || last.delivery, "tag delivery"));
    button.append(el("span", item.name, "name"), el("span", time(item.last_at), "when"), el("span", preview, "preview"),
      tags);
    row.append(button);
    return row;
  }

  function filters() {
    const query = new URLSearchParams();
    if (ui.needs.checked) query.set("needs_person", "true");
    if (ui.channel.value) query.set("channel", ui.channel.value);
    if (ui.agent.value) query.set("agent", ui.agent.value);
    return query;
  }

  function showList() {
    ui.list.replaceChildren(...items.map(conversationItem));
    ui.empty.hidden = items.length > 0 || nextCursor !== null;
    ui.more.hidden = nextCursor === null;
  }

  // last_at as the server writes it (ISO 8601, UTC) with its fraction of a second in six digits: the
  // server leaves out a fraction of zero, and "...:00Z" sorts after "...:00.000006Z" as a string.
  function instant(iso) {
    return iso.replace(/(\.\d+)?(Z|[+-]\d\d:\d\d)$/, (_, fraction, zone) => (fraction || ".").padEnd(7, "0") + zone);
  }

  // Whether a comes after b in the inbox's order (last_at newest first, then device id).
  function after(a, b) {
    const x = instant(a.last_at), y = instant(b.last_at);
    return x < y || (x === y && a.device_id > b.device_id);
  }

  // The first page again, as long as what is listed (up to MAX_PAGE): a change updates every listed
  // conversation and moves only those that got a message (to the top). Listed ones after the new
  // page's end stay as they were, less those the page lists, with the cursor that follows them.
  // New filters start from one page.
  async function loadList() {
    const query = filters();
    const asked = String(query); // the filters of this request, whatever the form says when it returns
    if (asked !== listedFor) {
      items = [];
      nextCursor = null;
    }
    query.set("limit", String(Math.min(MAX_PAGE, Math.max(PAGE, items.length))));
    const data = await api("GET", `api/inbox?${query}`);
    const fresh = new Set(data.items.map((item) => item.device_id));
    const end = data.items[data.items.length - 1];
    const tail = end ? items.filter((item) => !fresh.has(item.device_id) && after(item, end)) : [];
    if (tail.length === 0) nextCursor = data.next_cursor;
    items = [...data.items, ...tail];
    listedFor = asked;
    showList();
    const shown = items.find((item) => item.device_id === open);
    if (shown) {
      ui.title.textContent = shown.name;
      ui.device.textContent = `${shown.channel === "whatsapp" ? "WhatsApp" : "Web"} · ${shown.device_id}`;
    }
  }

  function showLock(lock) {
    ui.lock.classList.toggle("human", lock.agent === "human");
    if (!lock.agent) ui.lock.textContent = "No agent holds this conversation: the manager answers.";
    else if (lock.agent === "human") {
      ui.lock.textContent = `Taken over${lock.operator ? ` by ${lock.operator}` : ""} until ${time(lock.expires_at)}. `
        + "The bot is silent; messages are held for you.";
    } else ui.lock.textContent = `Held by ${agentName(lock.agent)} until ${time(lock.expires_at)}.`;
    ui.takeForm.hidden = lock.agent === "human";
    ui.releaseForm.hidden = lock.agent !== "human";
  }

  function historyItem(message) {
    const item = el("li", null, message.role);
    item.dataset.id = String(message.id);
    if (message.status === "held") item.classList.add("held");
    if (message.agent === "human") item.classList.add("by-human");
    const who = message.role === "user" ? "User" : agentName(message.agent || "assistant");
    const meta = el("p", `${who} · ${time(message.created_at)}`, "meta");
    if (message.status === "held") meta.append(" · held for a person");
    if (message.delivery) {
      const failed = message.delivery === "failed";
      const label = DELIVERY[message.delivery] || message.delivery;
      meta.append(" · ", el("span", failed && message.error_message ? `${label}: ${message.error_message}` : label,
        `delivery ${message.delivery}`));
      item.dataset.delivery = message.delivery;
    } else if (message.has_error) meta.append(` · error: ${message.error_message || "not delivered"}`);
    item.append(meta, el("p", message.content, "text"));
    return item;
  }

  async function loadConversation() {
    if (open === null) return;
    const id = open;
    const [state, page] = await Promise.all([api("GET", device(id)), api("GET", `${device(id)}/messages?limit=100`)]);
    if (id !== open) return;
    showLock(state.lock);
    const atBottom = ui.history.scrollHeight - ui.history.scrollTop - ui.history.clientHeight < 40;
    ui.history.replaceChildren(...[...page.items].reverse().map(historyItem));
    if (atBottom || ui.history.dataset.device !== id) ui.history.scrollTop = ui.history.scrollHeight;
    ui.history.dataset.device = id;
  }

  // The next page after the listed ones, appended (a conversation already listed is not listed twice).
  async function appendPage() {
    if (nextCursor === null || String(filters()) !== listedFor) return;
    const query = filters();
    query.set("limit", String(PAGE));
    query.set("cursor", nextCursor);
    const data = await api("GET", `api/inbox?${query}`);
    const listed = new Set(items.map((item) => item.device_id));
    items = [...items, ...data.items.filter((item) => !listed.has(item.device_id))];
    nextCursor = data.next_cursor;
    showList();
    document.body.dataset.pages = String(Number(document.body.dataset.pages || 0) + 1);
  }

  // Everything shown, fetched again (more: the next page appended instead); never two at once.
  function refresh(more = false) {
    if (more) wantMore = true;
    else again = true;
    if (running) return running;
    running = (async () => {
      do {
        const full = again;
        if (full) again = false;
        else wantMore = false;
        try {
          if (full) {
            await loadList();
            await loadConversation();
            document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
          } else {
            await appendPage();
          }
        } catch (error) {
          showError(error);
        }
      } while ((again || wantMore) && key);
    })().finally(() => { running = null; });
    return running;
  }

  async function openConversation(id) {
    open = id;
    ui.detail.hidden = false;
    document.body.dataset.view = "conversation";
    clearError();
    for (const row of ui.list.querySelectorAll("li")) row.classList.toggle("open", row.dataset.device === id);
    await refresh();
  }

  async function act(call) {
    clearError();
    try {
      await call();
    } catch (error) {
      showError(error);
    }
    await refresh();
  }

  // The event stream: `event: changed` lines mean "fetch again". While it is down the
  // fallback poll runs, each tick after the previous one finished.
  async function listen(mine) {
    const controller = new AbortController();
    stream = controller;
    try {
      const response = await fetch("api/inbox/events", {
        headers: headers({ Accept: "text/event-stream" }), cache: "no-store", signal: controller.signal,
      });
      if (response.status === 401) throw new ApiError(401, "unauthorized", "");
      if (!response.ok || !response.body) throw new Error(`event stream: ${response.status}`);
      document.body.dataset.stream = "open";
      clearTimeout(fallback);
      fallback = null;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          if (block.split("\n").includes("event: changed")) refresh();
        }
      }
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) { showError(error); return; }
    } finally {
      if (stream === controller) stream = null;
    }
    if (mine !== session) return;
    document.body.dataset.stream = "closed";
    poll(mine);
    setTimeout(() => { if (mine === session && !stream) listen(mine); }, RECONNECT_MS);
  }

  function poll(mine) {
    if (fallback || mine !== session) return;
    fallback = setTimeout(async () => {
      fallback = null;
      if (mine !== session || document.body.dataset.stream === "open") return;
      await refresh();
      poll(mine);
    }, FALLBACK_MS);
  }

  async function start() {
    stop();
    const mine = session;
    ui.keyForm.hidden = true;
    ui.main.hidden = false;
    ui.who.textContent = "Signed in with an admin key (this tab only).";
    ui.operator.value = sessionStorage.getItem(NAME_STORE) || "";
    try { await loadAgents(); } catch (error) { showError(error); }
    await refresh();
    document.body.dataset.ready = "true";
    if (key && mine === session) listen(mine);
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
  ui.filters.addEventListener("change", () => refresh());
  ui.filters.addEventListener("submit", (event) => { event.preventDefault(); refresh(); });
  ui.back.addEventListener("click", () => { document.body.dataset.view = "list"; });
  ui.more.addEventListener("click", () => refresh(true));
  // Scrolling to the end of the list loads the next page, as the button does. During a refresh the
  // request is queued, not dropped: the end stays in view, so no second intersection would come.
  if ("IntersectionObserver" in window) {
    new IntersectionObserver((seen) => {
      if (seen.some((entry) => entry.isIntersecting) && nextCursor !== null) refresh(true);
    }).observe(ui.more);
  }
  ui.takeForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const operator = ui.operator.value.trim();
    sessionStorage.setItem(NAME_STORE, operator);
    act(() => api("POST", `${device(open)}/takeover`, { operator, ttl: Number(ui.ttl.value) }));
  });
  function sendReply() {
    const text = ui.reply.value;
    if (!text.trim()) return;
    act(async () => {
      await api("POST", `${device(open)}/messages`, { text });
      ui.reply.value = "";
    });
  }
  ui.replyForm.addEventListener("submit", (event) => { event.preventDefault(); sendReply(); });
  ui.reply.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      sendReply();
    }
  });
  ui.releaseForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const body = { answer_held: ui.answerHeld.checked };
    if (ui.handTo.value === "@none") body.agent = null;
    else if (ui.handTo.value !== "@resume") body.agent = ui.handTo.value;
    act(() => api("DELETE", `${device(open)}/takeover`, body));
  });

  if (key) start();
  else {
    askForKey();
    document.body.dataset.ready = "true";
  }
})();
