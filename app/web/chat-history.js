// The chat page's history as stored: the newest page of the shown conversation, earlier pages on "Show
// earlier messages", the list of the device's conversations, and reading an earlier one (no composer then).
"use strict";

window.ChatHistory = (() => {
  const { ui, state, showError, clearError } = ChatShared;
  const PAGE_SIZE = 50;

  let nextBefore = null;

  function clearLog() {
    ui.log.replaceChildren();
    ui.empty.hidden = false;
    ui.older.hidden = true;
    nextBefore = null;
    state.newestId = 0;
  }

  function messagesPath(before) {
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (before) query.set("before", String(before));
    if (state.viewing) query.set("session_id", state.viewing);
    return `api/chat/messages?${query}`;
  }

  // The newest page of the shown session, oldest first. Returns the newest item (or undefined).
  async function loadHistory() {
    const { data } = await ChatApi.asDevice(() => ChatApi.request("GET", messagesPath()));
    clearLog();
    for (const message of [...data.items].reverse()) ChatLog.append(ChatLog.messageItem(message));
    nextBefore = data.next_before;
    ui.older.hidden = nextBefore === null;
    state.newestId = data.items.length ? data.items[0].id : 0;
    ChatLog.toBottom();
    return data.items[0];
  }

  async function loadOlder() {
    if (nextBefore === null) return;
    const { data } = await ChatApi.asDevice(() => ChatApi.request("GET", messagesPath(nextBefore)));
    const height = ui.scroller.scrollHeight;
    const first = ui.log.firstChild;
    for (const message of [...data.items].reverse()) ui.log.insertBefore(ChatLog.messageItem(message), first);
    ui.scroller.scrollTop += ui.scroller.scrollHeight - height; // keep what was on screen in place
    nextBefore = data.next_before;
    ui.older.hidden = nextBefore === null;
  }

  async function loadSessions() {
    const { data } = await ChatApi.asDevice(() => ChatApi.request("GET", "api/chat/sessions"));
    const stick = ChatLog.atBottom(); // the list sits above the log: keep the newest message where it was
    ui.sessions.replaceChildren();
    data.items.forEach((session, index) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      const current = index === 0 && session.status !== "ended";
      const count = `${session.message_count} message${session.message_count === 1 ? "" : "s"}`;
      const started = session.started_at ? ChatLog.time(session.started_at) : "unknown start";
      button.textContent = `${current ? "Current conversation" : "Conversation"} · started ${started} · ${count}`;
      button.classList.toggle("current", current);
      if (current) button.setAttribute("aria-current", "true");
      button.dataset.sessionId = session.session_id || "";
      button.addEventListener("click", () => view(current ? null : session.session_id));
      item.append(button);
      ui.sessions.append(item);
    });
    ui.past.hidden = data.items.length === 0;
    if (stick) ChatLog.toBottom();
  }

  async function view(sessionId) {
    state.viewing = sessionId;
    ui.viewing.hidden = state.viewing === null;
    ui.form.hidden = state.viewing !== null;
    ChatLog.showChoices([]);
    clearError();
    try {
      await loadHistory();
    } catch (error) {
      showError(error, () => view(sessionId));
    }
    (state.viewing === null ? ui.input : ui.back).focus();
  }

  return { clearLog, loadHistory, loadOlder, loadSessions, view };
})();
