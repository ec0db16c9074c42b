// The web chat page: one device (its id in localStorage) talking to /api/chat/stream, the AI SDK's UI
// message stream. Replies appear as they are written, Stop asks the server to stop the turn, and a reload
// in mid-reply picks the stream up again. New messages that come without a request of the page (a person's
// reply during a takeover, a queued message's reply) and the lock come from one event stream per page
// (GET /api/chat/events); while it is down a fallback poll runs. Reads of the history never overlap.
// Replies are rendered as sanitized markdown (chat-render.js); everything else from the server is set with
// textContent. No build step.
"use strict";

(() => {
  const STORE_KEY = "agent-sessions.device-id";
  const CHAT_ID = "web"; // the device holds one conversation: the id only names the resume URL
  const PAGE_SIZE = 50;
  const LIMIT = 4096; // characters (code points) per message, as the API counts them
  const NEAR_LIMIT = LIMIT - 200; // the count shows from here
  const SEND_ATTEMPTS = 4; // tries per message on network errors, with the same message id (idempotent)
  const RESUMES = 20; // streams followed in a row after a reload (each a turn in flight)
  const FALLBACK_MS = 10000; // the poll while the event stream is down, each after the previous one
  const RECONNECT_MS = 3000; // a new event stream after one ended or failed
  const HUMAN = "human"; // the lock holder while a person has taken the conversation over

  const $ = (id) => document.getElementById(id);
  const ui = {
    scroller: $("scroller"), log: $("log"), empty: $("empty"), older: $("older"), status: $("status"),
    lock: $("lock"), error: $("error"), errorText: $("error-text"), retry: $("retry"), choices: $("choices"),
    form: $("composer"), input: $("message"), send: $("send"), stop: $("stop"), count: $("count"),
    newConversation: $("new-conversation"), deleteHistory: $("delete-history"),
    past: $("past"), sessions: $("sessions-list"), viewing: $("viewing"), back: $("back-to-current"),
  };

  let deviceId = localStorage.getItem(STORE_KEY);
  let busy = false; // a message is being sent or a reply streams
  let viewing = null; // the session id of an earlier conversation being read, or null
  let nextBefore = null;
  let newestId = 0; // the newest message id shown from history
  let retryAction = null;
  let lock = { agent: null, expires_at: null }; // as the server last said (data-lock, history)
  let latest = null; // what the event stream last said: {newest: message id, lock}
  let refreshing = null; // the history refresh in flight (a promise)
  let again = false; // asked for while one ran
  let stale = false; // asked for while a reply streamed or an earlier conversation was shown
  let polling = false; // the next refresh asks the server for the newest message itself (stream down)
  let fallback = null; // timer of the fallback poll

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const length = (text) => [...text].length; // code points, as the server counts

  function uuid4() {
    if (crypto.randomUUID) return crypto.randomUUID();
    // crypto.randomUUID needs a secure context; getRandomValues does not.
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }

  function setDevice(id) {
    deviceId = id;
    localStorage.setItem(STORE_KEY, id);
  }

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function failure(response) {
    let data = null;
    try { data = await response.json(); } catch { data = null; }
    const error = data && data.error ? data.error : {};
    return new ApiError(response.status, error.code || `http_${response.status}`, error.message || "");
  }

  // One request as this device; a rejected fetch (TypeError) is a network error. stream: the
  // response itself (for an event stream), else its JSON.
  async function request(method, path, { body, device = true, stream = false } = {}) {
    const headers = { Accept: stream ? "text/event-stream" : "application/json" };
    if (device) headers["X-Device-ID"] = deviceId;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method, headers, cache: "no-store", body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!response.ok) throw await failure(response);
    if (stream || response.status === 204) return { status: response.status, response, data: null };
    let data = null;
    try { data = await response.json(); } catch { data = null; }
    return { status: response.status, data };
  }

  // A first visit asks the server for its id, so the first chat request already carries one the
  // server accepts (signed when it signs ids). If that fails, a random UUID does where ids are not signed.
  async function ensureDevice() {
    if (deviceId) return;
    try {
      const { data } = await request("POST", "api/devices", { device: false });
      setDevice(data.device_id);
    } catch {
      setDevice(uuid4());
    }
  }

  // Runs call; if the server refuses the device id (it signs ids, or ours is damaged), gets a new
  // id (POST /api/devices, else a fresh UUID) and runs it once more.
  async function asDevice(call) {
    try {
      return await call();
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      if (error.code === "invalid_device_signature") {
        const { data } = await request("POST", "api/devices", { device: false });
        setDevice(data.device_id);
        return call();
      }
      if (error.code === "invalid_device_id" || error.code === "missing_device_id") {
        setDevice(uuid4());
        return call();
      }
      throw error;
    }
  }

  function readable(error) {
    if (error instanceof ApiError) {
      if (error.status === 413 || error.status === 422) return "That message could not be sent: it is empty or too long.";
      if (error.status === 503) return "The chat is not available right now. Please try again in a moment.";
      if (error.status === 429) return "You are sending messages too quickly. Please wait a minute and try again.";
      if (error.status === 404) return "That conversation no longer exists.";
      if (error.status >= 500) return "Something went wrong on our side. Please try again.";
      return `The request was refused (${error.status}). Please reload the page.`;
    }
    return "Could not reach the server. Check your connection and try again.";
  }

  function showError(error, action) {
    ui.errorText.textContent = readable(error);
    retryAction = action || null;
    ui.retry.hidden = !action;
    ui.error.hidden = false;
  }

  function clearError() {
    ui.error.hidden = true;
    ui.errorText.textContent = "";
    retryAction = null;
  }

  function setStatus(text, waiting = false) {
    ui.status.textContent = text;
    ui.status.classList.toggle("waiting", waiting);
  }

  // busy: Send gives way to Stop while a reply streams; data-busy tells the tests.
  function setBusy(value, streaming = false) {
    busy = value;
    document.body.dataset.busy = value ? "true" : "false";
    ui.stop.hidden = !streaming;
    ui.stop.disabled = false;
    ui.send.hidden = streaming;
    updateCount();
    if (!value && stale) refresh();
  }

  function time(value) {
    const date = new Date(value);
    const today = new Date().toDateString() === date.toDateString();
    const options = today ? { hour: "2-digit", minute: "2-digit" }
      : { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" };
    return date.toLocaleString([], options);
  }

  function showLock(next) {
    lock = next || { agent: null, expires_at: null };
    ui.lock.textContent = "";
    if (lock.agent === HUMAN) {
      ui.lock.append("A person is handling this conversation", lock.expires_at ? ` until ${time(lock.expires_at)}` : "");
    } else if (!lock.agent) {
      ui.lock.textContent = "No agent is handling this conversation.";
    } else {
      const agent = document.createElement("strong");
      agent.textContent = agentName(lock.agent);
      ui.lock.append("Handled by ", agent, lock.expires_at ? ` until ${time(lock.expires_at)}` : "");
    }
  }

  // Near the bottom (or told to), keep the newest message in view as the log grows.
  function atBottom() {
    const s = ui.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
  }

  function toBottom() {
    ui.scroller.scrollTop = ui.scroller.scrollHeight;
    pinned = true;
  }

  // When the conversation's box changes size (choices or a longer message in the dock, a phone's
  // keyboard), the newest message stays in view if it was.
  let pinned = true;
  ui.scroller.addEventListener("scroll", () => { pinned = atBottom(); }, { passive: true });
  new ResizeObserver(() => { if (pinned) toBottom(); }).observe(ui.scroller);

  // What people see for each agent key (GET api/chat/agents); a key it does not name is shown as it is.
  let agentNames = {};

  async function loadAgentNames() {
    try {
      const { data } = await request("GET", "api/chat/agents");
      agentNames = Object.fromEntries(data.items.map((item) => [item.key, item.display_name]));
    } catch {
      agentNames = {}; // the keys, then: the conversation still works
    }
  }

  function agentName(agent) {
    return agentNames[agent] || agent;
  }

  function who(role, agent) {
    if (role === "user") return "You";
    return agent === HUMAN ? "A person" : (agent ? agentName(agent) : "assistant");
  }

  function note(item, kind, text) {
    let el = item.querySelector(`.note.${kind}`);
    if (!el) {
      el = document.createElement("p");
      el.className = `note ${kind}`;
      item.append(el);
    }
    el.textContent = text;
  }

  function markStopped(item) {
    item.classList.add("stopped");
    note(item, "stopped-note", "Stopped: the reply was cut short here.");
  }

  function markDegraded(item) {
    item.classList.add("degraded");
    note(item, "degraded-note", "Limited reply: the service is degraded and this conversation was not saved.");
  }

  // One message of the log. Replies are markdown; the person's own text is shown as typed.
  function messageItem({ id, role, content, agent, created_at: createdAt, reply_to: replyTo, stopped }) {
    const item = document.createElement("li");
    item.className = `msg ${role === "user" ? "user" : "assistant"}`;
    if (id !== undefined && id !== null) item.dataset.id = String(id);
    if (replyTo) item.dataset.replyTo = String(replyTo);
    const line = document.createElement("p");
    line.className = "who";
    const name = document.createElement("strong");
    name.textContent = who(role, agent);
    line.append(name);
    if (createdAt) line.append(` · ${time(createdAt)}`);
    const text = document.createElement("div");
    text.className = "text";
    if (role === "user") text.textContent = content;
    else ChatRender.markdown(text, content);
    item.append(line, text);
    if (stopped) markStopped(item);
    return item;
  }

  function append(item) {
    ui.log.append(item);
    ui.empty.hidden = true;
    toBottom();
    return item;
  }

  function clearLog() {
    ui.log.replaceChildren();
    ui.empty.hidden = false;
    ui.older.hidden = true;
    nextBefore = null;
    newestId = 0;
  }

  function showChoices(choices) {
    const stick = pinned || atBottom(); // the dock grows or shrinks: the newest message stays in view
    ui.choices.replaceChildren();
    for (const choice of choices || []) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = choice.title;
      button.addEventListener("click", () => send(choice.title, choice.id));
      ui.choices.append(button);
    }
    ui.choices.hidden = ui.choices.childElementCount === 0;
    if (stick) toBottom();
  }

  function messagesPath(before) {
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (before) query.set("before", String(before));
    if (viewing) query.set("session_id", viewing);
    return `api/chat/messages?${query}`;
  }

  // The newest page of the shown session, oldest first. Returns the newest item (or undefined).
  async function loadHistory() {
    const { data } = await asDevice(() => request("GET", messagesPath()));
    clearLog();
    for (const message of [...data.items].reverse()) append(messageItem(message));
    nextBefore = data.next_before;
    ui.older.hidden = nextBefore === null;
    newestId = data.items.length ? data.items[0].id : 0;
    toBottom();
    return data.items[0];
  }

  async function loadOlder() {
    if (nextBefore === null) return;
    const { data } = await asDevice(() => request("GET", messagesPath(nextBefore)));
    const height = ui.scroller.scrollHeight;
    const first = ui.log.firstChild;
    for (const message of [...data.items].reverse()) ui.log.insertBefore(messageItem(message), first);
    ui.scroller.scrollTop += ui.scroller.scrollHeight - height; // keep what was on screen in place
    nextBefore = data.next_before;
    ui.older.hidden = nextBefore === null;
  }

  // New messages the page did not ask for (a person's reply, a queued message's reply): the history again,
  // when the event stream (or, while it is down, the fallback poll) says there is something newer than
  // what is shown. Never two at once: asked for during one, it runs once more after it; asked for while a
  // reply streams or an earlier conversation is shown, it runs when that ends.
  function refresh() {
    if (busy || viewing) {
      stale = true;
      return refreshing || Promise.resolve();
    }
    if (refreshing) {
      again = true;
      return refreshing;
    }
    stale = false;
    refreshing = (async () => {
      do {
        again = false;
        try {
          await refreshOnce();
        } catch {
          // the next change or poll tries again: a reply is never lost, only late
        }
      } while (again && !busy && !viewing);
      if (again) stale = true; // a send or an earlier conversation came in between: after it
      again = false;
    })().finally(() => { refreshing = null; });
    return refreshing;
  }

  async function refreshOnce() {
    if (polling) {
      polling = false;
      const { data } = await asDevice(() => request("GET", "api/chat/messages?limit=1"));
      if (!data.items.length || data.items[0].id <= newestId) return;
    } else if (!latest || !(latest.newest > newestId)) {
      return;
    }
    const newest = await loadHistory();
    if (newest && newest.role === "assistant" && newest.agent === HUMAN) setStatus("");
  }

  function changed(data) {
    latest = data;
    showLock(data.lock);
    refresh();
  }

  // The page's one event stream, read with fetch so the device id goes in its header as on every other
  // request. When it ends (the server closes it every few minutes) or fails, a new one opens after
  // RECONNECT_MS; while none is open, the fallback poll runs.
  let listening = false;
  function listen() {
    if (listening) return;
    listening = true;
    followEvents();
  }

  async function followEvents() {
    try {
      const { response } = await asDevice(() => request("GET", "api/chat/events", { stream: true }));
      document.body.dataset.stream = "open";
      clearTimeout(fallback);
      fallback = null;
      await ChatStream.events(response, (name, data) => { if (name === "changed") changed(data); });
    } catch {
      // down: the fallback poll covers it until a new stream opens
    }
    document.body.dataset.stream = "closed";
    poll();
    setTimeout(followEvents, RECONNECT_MS);
  }

  function poll() {
    if (fallback) return;
    fallback = setTimeout(async () => {
      fallback = null;
      if (document.body.dataset.stream === "open") return;
      polling = true;
      await refresh();
      poll();
    }, FALLBACK_MS);
  }

  async function loadSessions() {
    const { data } = await asDevice(() => request("GET", "api/chat/sessions"));
    const stick = atBottom(); // the list sits above the log: keep the newest message where it was
    ui.sessions.replaceChildren();
    data.items.forEach((session, index) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      const current = index === 0 && session.status !== "ended";
      const count = `${session.message_count} message${session.message_count === 1 ? "" : "s"}`;
      const started = session.started_at ? time(session.started_at) : "unknown start";
      button.textContent = `${current ? "Current conversation" : "Conversation"} · started ${started} · ${count}`;
      button.classList.toggle("current", current);
      if (current) button.setAttribute("aria-current", "true");
      button.dataset.sessionId = session.session_id || "";
      button.addEventListener("click", () => view(current ? null : session.session_id));
      item.append(button);
      ui.sessions.append(item);
    });
    ui.past.hidden = data.items.length === 0;
    if (stick) toBottom();
  }

  async function view(sessionId) {
    viewing = sessionId;
    ui.viewing.hidden = viewing === null;
    ui.form.hidden = viewing !== null;
    showChoices([]);
    clearError();
    try {
      await loadHistory();
    } catch (error) {
      showError(error, () => view(sessionId));
    }
    (viewing === null ? ui.input : ui.back).focus();
  }

  // Follows one UI message stream into a reply bubble: text as it comes, a restart resets it,
  // stopped / degraded / held / queued as the server says. Returns what it saw.
  async function follow(response) {
    const seen = { text: "", status: null, choices: [], replyTo: null, agent: null, ended: false };
    let item = null; // the reply's bubble, made when there is something to show
    let body = null;
    const bubble = () => {
      if (!item) {
        item = append(messageItem({ role: "assistant", content: "", agent: seen.agent }));
        item.classList.add("streaming");
        if (seen.replyTo) item.dataset.replyTo = seen.replyTo;
        body = item.querySelector(".text");
      }
      return item;
    };
    let drawn = -1;
    const draw = () => {
      if (!item || drawn === seen.text.length) return;
      const stick = atBottom();
      ChatRender.markdown(body, seen.text);
      drawn = seen.text.length;
      if (stick) toBottom();
    };
    let frame = 0;
    const schedule = () => { if (!frame) frame = requestAnimationFrame(() => { frame = 0; draw(); }); };
    setStatus("Waiting for the reply", true);
    const onPart = (part) => {
      switch (part.type) {
        case "start":
          seen.replyTo = String(part.messageId || "").replace(/^reply-/, "") || null;
          break;
        case "text-delta":
          if (!seen.text) setStatus("");
          seen.text += part.delta;
          bubble();
          schedule();
          break;
        case "tool-input-available":
          setStatus(`Using ${part.toolName}`, true);
          break;
        case "tool-output-available":
          setStatus("Writing", true);
          break;
        case "data-status": {
          const status = part.data && part.data.status;
          if (status === "restarted") { // a rerun replaces the text written so far
            seen.text = "";
            drawn = -1;
            draw();
          } else if (status === "stopped") {
            markStopped(bubble());
          } else if (status === "degraded") {
            markDegraded(bubble());
          }
          if (status !== "restarted") seen.status = status;
          break;
        }
        case "data-lock":
          showLock({ agent: part.data.agent, expires_at: part.data.expires_at });
          seen.agent = part.data.answered_by;
          if (item) item.querySelector(".who strong").textContent = who("assistant", seen.agent);
          break;
        case "data-choices":
          seen.choices = part.data || [];
          break;
        case "error":
          seen.status = "error";
          note(bubble(), "error-note", part.errorText || "This reply could not be shown.");
          break;
        case "finish":
          seen.ended = true;
          break;
        default:
          break;
      }
    };
    try {
      await ChatStream.read(response, onPart);
    } finally {
      if (frame) cancelAnimationFrame(frame);
      draw();
      if (item) item.classList.remove("streaming");
    }
    return seen;
  }

  // After a stream: the choices offered, and what the status line should say.
  function settle(seen) {
    showChoices(seen.choices);
    if (seen.status === "held") setStatus("A person will answer you here.");
    else if (seen.status === "degraded") setStatus("The service is degraded: this reply was not saved.");
    else if (seen.status === "stopped") setStatus("Stopped.");
    else setStatus("");
  }

  // Picks up turns in flight (after a reload, or a reply that was still queued), one stream after
  // another, until the server says none is left (204); then the history shows every reply as stored.
  async function resumeAll() {
    let followed = 0;
    for (let turn = 0; turn < RESUMES; turn += 1) {
      const result = await asDevice(() => request("GET", `api/chat/stream/${CHAT_ID}/stream`, { stream: true }));
      if (result.status === 204) break;
      setBusy(true, true);
      const seen = await follow(result.response);
      followed += 1;
      settle(seen);
    }
    return followed;
  }

  async function openStream(body) {
    for (let attempt = 1; ; attempt += 1) {
      try {
        return await asDevice(() => request("POST", "api/chat/stream", { body, stream: true }));
      } catch (error) {
        if (error instanceof ApiError || attempt >= SEND_ATTEMPTS) throw error;
        await sleep(500 * 2 ** (attempt - 1)); // network error: the same message id makes the resend safe
      }
    }
  }

  async function send(text, choiceId) {
    if (busy || viewing || !text.trim()) return;
    if (length(text) > LIMIT) { // refused, never cut: the count says by how much
      updateCount();
      ui.input.focus();
      return;
    }
    setBusy(true);
    if (refreshing) await refreshing; // it ends now (busy): its redraw must not take this message away
    clearError();
    showChoices([]);
    const body = { id: CHAT_ID, messages: [{ id: uuid4(), role: "user", parts: [{ type: "text", text }] }] };
    if (choiceId) body.choice_id = choiceId;
    const mine = append(messageItem({ role: "user", content: text, created_at: new Date().toISOString() }));
    mine.classList.add("pending");
    ui.input.value = "";
    updateCount();

    const attempt = async () => {
      clearError();
      setStatus("Sending", true);
      try {
        const { response } = await openStream(body);
        mine.classList.remove("pending");
        setBusy(true, true);
        let seen;
        try {
          seen = await follow(response);
        } catch (error) {
          // The connection dropped mid-reply; the turn goes on on the server: follow it again.
          if (error instanceof ApiError) throw error;
          await resumeAll();
          await loadHistory();
          setStatus("");
          return;
        }
        settle(seen);
        if (seen.status === "queued") { // still waiting behind other messages: keep following
          setStatus("Your message is queued; waiting for the reply", true);
          await resumeAll();
          await loadHistory();
          setStatus("");
        }
      } catch (error) {
        setStatus("");
        setBusy(true);
        showError(error, error instanceof ApiError && error.status < 500 ? null : async () => {
          setBusy(true);
          try { await attempt(); } finally { setBusy(false); }
        });
      }
    };

    try {
      await attempt();
      await loadSessions().catch(() => {});
    } finally {
      setBusy(false);
    }
  }

  async function stop() {
    ui.stop.disabled = true;
    setStatus("Stopping", true);
    try {
      await asDevice(() => request("POST", "api/chat/stop"));
    } catch (error) {
      ui.stop.disabled = false;
      showError(error, stop);
    }
  }

  // The count shows near the limit; over it, Send is refused and the count says by how much.
  function updateCount() {
    const n = length(ui.input.value);
    const over = n > LIMIT;
    ui.count.hidden = n < NEAR_LIMIT;
    ui.count.classList.toggle("over", over);
    ui.count.textContent = over
      ? `${n} / ${LIMIT} characters: too long to send, remove ${n - LIMIT}.`
      : `${n} / ${LIMIT} characters`;
    ui.input.setAttribute("aria-invalid", over ? "true" : "false");
    ui.send.disabled = busy || over;
  }

  // Start afresh on the server (a new session, or nothing left at all), then show an empty conversation.
  async function restart(method, path, status, retry) {
    clearError();
    setBusy(true); // a history refresh waits until the log is cleared, then shows the new (empty) session
    try {
      if (refreshing) await refreshing;
      await asDevice(() => request(method, path));
      viewing = null;
      ui.viewing.hidden = true;
      ui.form.hidden = false;
      clearLog();
      showChoices([]);
      showLock(null);
      setStatus(status);
      ui.input.focus();
      await loadSessions();
    } catch (error) {
      showError(error, retry);
      ui.input.focus();
    } finally {
      setBusy(false);
    }
  }

  async function newConversation() {
    if (busy) return;
    await restart("POST", "api/chat/new", "A new conversation has started.", newConversation);
  }

  async function deleteHistory() {
    if (busy) return;
    if (!window.confirm("Delete your whole chat history? This cannot be undone.")) return;
    await restart("DELETE", "api/chat/history", "Your history has been deleted.", deleteHistory);
  }

  async function start() {
    clearError();
    await ensureDevice();
    await loadAgentNames();
    let newest;
    try {
      newest = await loadHistory();
      await loadSessions();
    } catch (error) {
      showError(error, start);
      return;
    }
    document.body.dataset.ready = "true";
    // A reply still being written (or owed) is picked up where it is.
    setBusy(true);
    try {
      const followed = await resumeAll();
      if (followed > 0 || (newest && newest.role === "user")) await loadHistory();
    } catch (error) {
      showError(error, start);
    } finally {
      setBusy(false);
    }
    // From here the lock and new messages come from the event stream (its first event says both at once).
    listen();
  }

  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    send(ui.input.value, null);
  });
  ui.input.addEventListener("keydown", (event) => {
    // Enter sends, Shift+Enter is a new line; Enter that ends an IME composition is neither.
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send(ui.input.value, null);
    }
  });
  ui.input.addEventListener("input", updateCount);
  ui.stop.addEventListener("click", stop);
  ui.retry.addEventListener("click", () => { if (retryAction) retryAction(); });
  ui.older.addEventListener("click", () => loadOlder().catch((error) => showError(error, loadOlder)));
  ui.newConversation.addEventListener("click", newConversation);
  ui.deleteHistory.addEventListener("click", deleteHistory);
  ui.back.addEventListener("click", () => view(null));

  setStatus("");
  setBusy(false);
  // data-ready tells scripts (and the browser tests) that the history has been shown (or could not be).
  start().finally(() => { document.body.dataset.ready = "true"; });
})();
