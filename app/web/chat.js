// The web chat page: talks to /api/chat as one device, whose id it keeps in localStorage.
// No build step and no dependencies; every text from the server is set with textContent.
"use strict";

(() => {
  const STORE_KEY = "agent-sessions.device-id";
  const PAGE_SIZE = 50;
  const SEND_ATTEMPTS = 4; // tries per message on network errors, with the same Idempotency-Key
  const POLL_LIMIT_MS = 120000; // how long a queued (202) message is polled for before giving up
  const PERSON_POLL_MS = 2000; // how often the page looks for a person's replies while one holds the conversation
  const HUMAN = "human"; // the lock holder while a person has taken the conversation over

  const $ = (id) => document.getElementById(id);
  const ui = {
    log: $("log"), empty: $("empty"), older: $("older"), status: $("status"), lock: $("lock"),
    error: $("error"), errorText: $("error-text"), retry: $("retry"), choices: $("choices"),
    form: $("composer"), input: $("message"), send: $("send"),
    newConversation: $("new-conversation"), deleteHistory: $("delete-history"),
    sessions: $("sessions-list"), viewing: $("viewing"), back: $("back-to-current"),
  };

  let deviceId = localStorage.getItem(STORE_KEY);
  let busy = false;
  let viewing = null; // the session id of an earlier conversation being read, or null
  let nextBefore = null;
  let retryAction = null;
  let lockAgent = null; // the agent holding the lock, as the server last said
  let following = false; // polling for a person's replies

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

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

  // One request as this device. A rejected fetch (TypeError) is a network error.
  async function request(method, path, { body, key, device = true } = {}) {
    const headers = { Accept: "application/json" };
    if (device) headers["X-Device-ID"] = deviceId;
    if (key) headers["Idempotency-Key"] = key;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method, headers, cache: "no-store", body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    if (response.status !== 204) {
      try { data = await response.json(); } catch { data = null; }
    }
    if (!response.ok) {
      const error = data && data.error ? data.error : {};
      throw new ApiError(response.status, error.code || `http_${response.status}`, error.message || "");
    }
    return { status: response.status, data };
  }

  // Runs call; if the server refuses the device id (it signs ids, or ours is damaged), gets a
  // new id (from POST /api/devices when ids are signed, else a fresh UUID) and runs it once more.
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
    document.body.dataset.busy = waiting ? "true" : "false";
  }

  function time(value) {
    const date = new Date(value);
    const today = new Date().toDateString() === date.toDateString();
    const options = today ? { hour: "2-digit", minute: "2-digit" }
      : { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit" };
    return date.toLocaleString([], options);
  }

  function showLock(lock) {
    ui.lock.textContent = "";
    lockAgent = lock ? lock.agent : null;
    if (lockAgent === HUMAN) {
      ui.lock.append("A person is handling this conversation", lock.expires_at ? ` until ${time(lock.expires_at)}` : "");
      followPerson();
      return;
    }
    if (!lock || !lock.agent) {
      ui.lock.textContent = "No agent is handling this conversation.";
      return;
    }
    const agent = document.createElement("strong");
    agent.textContent = lock.agent;
    ui.lock.append("Handled by ", agent, ` until ${time(lock.expires_at)}`);
  }

  function messageItem({ id, role, content, agent, created_at: createdAt }, { pending = false, degraded = false } = {}) {
    const item = document.createElement("li");
    item.className = `msg ${role === "user" ? "user" : "assistant"}`;
    if (id !== undefined && id !== null) item.dataset.id = String(id);
    item.classList.toggle("pending", pending);
    item.classList.toggle("degraded", degraded);
    const who = document.createElement("p");
    who.className = "who";
    const name = document.createElement("strong");
    name.textContent = role === "user" ? "You" : (agent === HUMAN ? "A person" : (agent || "assistant"));
    who.append(name);
    if (createdAt) who.append(` · ${time(createdAt)}`);
    const text = document.createElement("p");
    text.className = "text";
    text.textContent = content;
    item.append(who, text);
    if (degraded) {
      const note = document.createElement("p");
      note.className = "note";
      note.textContent = "Limited reply: the service is degraded and this conversation was not saved.";
      item.append(note);
    }
    return item;
  }

  function append(item) {
    ui.log.append(item);
    ui.empty.hidden = true;
    item.scrollIntoView({ block: "nearest" });
    return item;
  }

  function clearLog() {
    ui.log.replaceChildren();
    ui.empty.hidden = false;
    ui.older.hidden = true;
    nextBefore = null;
  }

  function showChoices(choices) {
    ui.choices.replaceChildren();
    for (const choice of choices || []) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = choice.title;
      button.addEventListener("click", () => send(choice.title, choice.id));
      ui.choices.append(button);
    }
    ui.choices.hidden = ui.choices.childElementCount === 0;
  }

  function messagesPath(before) {
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (before) query.set("before", String(before));
    if (viewing) query.set("session_id", viewing);
    return `api/chat/messages?${query}`;
  }

  // The newest page of the shown session, oldest first; then any reply still owed.
  async function loadHistory() {
    const { data } = await asDevice(() => request("GET", messagesPath()));
    clearLog();
    for (const message of [...data.items].reverse()) append(messageItem(message));
    nextBefore = data.next_before;
    ui.older.hidden = nextBefore === null;
    const newest = data.items[0];
    return !viewing && newest && newest.role === "user" ? newest.id : null; // a reply still owed
  }

  // While a person holds the conversation their replies arrive without a request of ours:
  // poll the history and show what is new, until the lock passes back to the bot.
  async function followPerson() {
    if (following) return;
    following = true;
    try {
      while (lockAgent === HUMAN) {
        await sleep(PERSON_POLL_MS);
        if (busy || viewing || lockAgent !== HUMAN) continue;
        let data;
        try {
          ({ data } = await asDevice(() => request("GET", "api/chat/messages?limit=1")));
        } catch {
          continue; // shown on the next try; a person's reply is never lost, only late
        }
        const newest = data.items[0];
        const shown = [...ui.log.querySelectorAll(".msg")];
        const known = shown.length > 0 && shown.every((item) => item.dataset.id);
        const last = known ? Number(shown[shown.length - 1].dataset.id) : null;
        if (newest && (!known || newest.id !== last)) {
          await loadHistory();
          if (newest.role === "assistant" && newest.agent === HUMAN) setStatus("");
        }
      }
    } finally {
      following = false;
    }
  }

  async function loadOlder() {
    if (nextBefore === null) return;
    const { data } = await asDevice(() => request("GET", messagesPath(nextBefore)));
    const first = ui.log.firstChild;
    for (const message of [...data.items].reverse()) ui.log.insertBefore(messageItem(message), first);
    nextBefore = data.next_before;
    ui.older.hidden = nextBefore === null;
  }

  async function loadSessions() {
    const { data } = await asDevice(() => request("GET", "api/chat/sessions"));
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

  async function postMessage(body, key) {
    for (let attempt = 1; ; attempt += 1) {
      try {
        return await asDevice(() => request("POST", "api/chat", { body, key }));
      } catch (error) {
        if (error instanceof ApiError || attempt >= SEND_ATTEMPTS) throw error;
        await sleep(500 * 2 ** (attempt - 1)); // network error: the same key makes the resend safe
      }
    }
  }

  // A queued message: poll the history until its reply is there (bounded), then show it.
  async function waitForReply(messageId, resend) {
    setStatus("Your message is queued; waiting for the reply", true);
    const deadline = Date.now() + POLL_LIMIT_MS;
    let delay = 1000;
    while (Date.now() < deadline) {
      await sleep(delay);
      delay = Math.min(delay * 1.5, 5000);
      let data;
      try {
        ({ data } = await asDevice(() => request("GET", "api/chat/messages?limit=20")));
      } catch (error) {
        if (error instanceof ApiError) throw error;
        continue; // a network blip: keep polling
      }
      const reply = data.items.find((item) => item.reply_to === messageId);
      if (reply) {
        append(messageItem(reply));
        const mine = ui.log.querySelector(".msg.pending");
        if (mine) mine.classList.remove("pending");
        setStatus("");
        if (resend) {
          // The same key returns the stored answer with the lock as it stands now.
          try { showLock((await resend()).data.lock); } catch { /* the reply is shown; the lock line waits */ }
        }
        return;
      }
    }
    setStatus("Your message is saved and will be answered; reload the page later to see the reply.");
  }

  async function send(text, choiceId) {
    if (busy || !text.trim()) return;
    busy = true;
    ui.send.disabled = true;
    clearError();
    showChoices([]);
    const key = uuid4();
    const body = choiceId ? { message: text, choice_id: choiceId } : { message: text };
    const mine = append(messageItem({ role: "user", content: text, created_at: new Date().toISOString() }, { pending: true }));
    ui.input.value = "";

    const attempt = async () => {
      clearError();
      setStatus("Waiting for the reply", true);
      try {
        const result = await postMessage(body, key);
        if (result.status === 202) {
          await waitForReply(result.data.message_id, () => request("POST", "api/chat", { body, key }));
          return;
        }
        const reply = result.data;
        mine.classList.remove("pending");
        if (reply.reply === null) {
          // A person has taken the conversation over: the message is kept for them.
          showLock(reply.lock);
          setStatus("A person will answer you here.");
          return;
        }
        append(messageItem(
          { role: "assistant", content: reply.reply, agent: reply.agent, created_at: new Date().toISOString() },
          { degraded: reply.degraded },
        ));
        showLock(reply.lock);
        showChoices(reply.choices);
        setStatus(reply.degraded ? "The service is degraded: this reply was not saved." : "");
      } catch (error) {
        setStatus("");
        showError(error, error instanceof ApiError && error.status < 500 ? null : async () => {
          busy = true;
          ui.send.disabled = true;
          try { await attempt(); } finally { busy = false; ui.send.disabled = false; }
        });
      }
    };

    try {
      await attempt();
      await loadSessions().catch(() => {});
    } finally {
      busy = false;
      ui.send.disabled = false;
    }
  }

  // Start afresh on the server (a new session, or nothing left at all), then show an empty conversation.
  async function restart(method, path, status, retry) {
    clearError();
    try {
      await asDevice(() => request(method, path));
      viewing = null;
      ui.viewing.hidden = true;
      ui.form.hidden = false;
      clearLog();
      showChoices([]);
      showLock(null);
      setStatus(status);
      await loadSessions();
    } catch (error) {
      showError(error, retry);
    }
    ui.input.focus();
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
    if (!deviceId) setDevice(uuid4());
    clearError();
    let owed = null;
    try {
      owed = await loadHistory();
      await loadSessions();
    } catch (error) {
      showError(error, start);
      return;
    }
    const newest = ui.log.lastElementChild;
    if (newest && newest.classList.contains("assistant") && newest.querySelector(".who strong").textContent === "A person") {
      lockAgent = HUMAN; // a person answered last: look for more of their replies
      followPerson();
    } else if (owed !== null) {
      // Reloaded while a message waited for its answer: show it when it comes.
      busy = true;
      ui.send.disabled = true;
      try {
        await waitForReply(owed, null);
      } catch (error) {
        showError(error, start);
      } finally {
        busy = false;
        ui.send.disabled = false;
      }
    }
  }

  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    send(ui.input.value, null);
  });
  ui.retry.addEventListener("click", () => { if (retryAction) retryAction(); });
  ui.older.addEventListener("click", () => loadOlder().catch((error) => showError(error, loadOlder)));
  ui.newConversation.addEventListener("click", newConversation);
  ui.deleteHistory.addEventListener("click", deleteHistory);
  ui.back.addEventListener("click", () => view(null));

  setStatus("");
  // data-ready tells scripts (and the browser tests) that the history has been shown.
  start().finally(() => { document.body.dataset.ready = "true"; });
})();
