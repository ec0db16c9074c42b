// The web chat page: one device (its id in localStorage) talking to /api/chat/stream, the AI SDK's UI
// message stream. Replies appear as they are written, Stop asks the server to stop the turn, and a reload
// in mid-reply picks the stream up again. New messages that come without a request of the page (a person's
// reply during a takeover, a queued message's reply) and the lock come from one event stream per page
// (GET /api/chat/events); while it is down a fallback poll runs. Reads of the history never overlap.
// Replies are rendered as sanitized markdown (chat-render.js); everything else from the server is set with
// textContent. No build step: plain scripts, run in the order index.html lists them, each sharing what
// the others use as one object on window (state more than one reads or writes: ChatShared.state):
// chat-shared.js (elements, state, status and errors), chat-api.js (the device and its requests),
// chat-log.js (the conversation as shown), chat-history.js (the stored history, earlier conversations),
// chat-events.js (the event stream and fallback poll), chat-send.js (sending, streaming, resuming) and
// this file: the composer, starting afresh, and the page's start.
"use strict";

(() => {
  const { ui, state, LIMIT, NEAR_LIMIT, length, showError, clearError, setStatus } = ChatShared;

  // busy: Send gives way to Stop while a reply streams; data-busy tells the tests.
  function setBusy(value, streaming = false) {
    state.busy = value;
    document.body.dataset.busy = value ? "true" : "false";
    ui.stop.hidden = !streaming;
    ui.stop.disabled = false;
    ui.send.hidden = streaming;
    updateCount();
    if (!value && state.stale) ChatEvents.refresh();
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
    ui.send.disabled = state.busy || over;
  }

  window.ChatComposer = { setBusy, updateCount };

  // Start afresh on the server (a new session, or nothing left at all), then show an empty conversation.
  async function restart(method, path, status, retry) {
    clearError();
    setBusy(true); // a history refresh waits until the log is cleared, then shows the new (empty) session
    try {
      if (state.refreshing) await state.refreshing;
      await ChatApi.asDevice(() => ChatApi.request(method, path));
      state.viewing = null;
      ui.viewing.hidden = true;
      ui.form.hidden = false;
      ChatHistory.clearLog();
      ChatLog.showChoices([]);
      ChatLog.showLock(null);
      setStatus(status);
      ui.input.focus();
      await ChatHistory.loadSessions();
    } catch (error) {
      showError(error, retry);
      ui.input.focus();
    } finally {
      setBusy(false);
    }
  }

  async function newConversation() {
    if (state.busy) return;
    await restart("POST", "api/chat/new", "A new conversation has started.", newConversation);
  }

  async function deleteHistory() {
    if (state.busy) return;
    if (!window.confirm("Delete your whole chat history? This cannot be undone.")) return;
    await restart("DELETE", "api/chat/history", "Your history has been deleted.", deleteHistory);
  }

  async function start() {
    clearError();
    await ChatApi.ensureDevice();
    await ChatLog.loadAgentNames();
    let newest;
    try {
      newest = await ChatHistory.loadHistory();
      await ChatHistory.loadSessions();
    } catch (error) {
      showError(error, start);
      return;
    }
    document.body.dataset.ready = "true";
    // A reply still being written (or owed) is picked up where it is.
    setBusy(true);
    try {
      const followed = await ChatSend.resumeAll();
      if (followed > 0 || (newest && newest.role === "user")) await ChatHistory.loadHistory();
    } catch (error) {
      showError(error, start);
    } finally {
      setBusy(false);
    }
    // From here the lock and new messages come from the event stream (its first event says both at once).
    ChatEvents.listen();
  }

  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    ChatSend.send(ui.input.value, null);
  });
  ui.input.addEventListener("keydown", (event) => {
    // Enter sends, Shift+Enter is a new line; Enter that ends an IME composition is neither.
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      ChatSend.send(ui.input.value, null);
    }
  });
  ui.input.addEventListener("input", updateCount);
  ui.stop.addEventListener("click", ChatSend.stop);
  ui.retry.addEventListener("click", () => { if (state.retryAction) state.retryAction(); });
  const { loadOlder } = ChatHistory;
  ui.older.addEventListener("click", () => loadOlder().catch((error) => showError(error, loadOlder)));
  ui.newConversation.addEventListener("click", newConversation);
  ui.deleteHistory.addEventListener("click", deleteHistory);
  ui.back.addEventListener("click", () => ChatHistory.view(null));

  setStatus("");
  setBusy(false);
  // data-ready tells scripts (and the browser tests) that the history has been shown (or could not be).
  start().finally(() => { document.body.dataset.ready = "true"; });
})();
