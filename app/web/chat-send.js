// The chat page's turns: sending a message to POST /api/chat/stream (retried on network errors with the
// same message id), following the reply's UI message stream (chat-stream.js) into its bubble as it is
// written, picking up turns still in flight (after a reload, or a queued message), and Stop.
"use strict";

window.ChatSend = (() => {
  const { ui, state, LIMIT, length, showError, clearError, setStatus } = ChatShared;
  const CHAT_ID = "web"; // the device holds one conversation: the id only names the resume URL
  const SEND_ATTEMPTS = 4; // tries per message on network errors, with the same message id (idempotent)
  const RESUMES = 20; // streams followed in a row after a reload (each a turn in flight)

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // Follows one UI message stream into a reply bubble: text as it comes, a restart resets it,
  // stopped / degraded / held / queued as the server says. Returns what it saw.
  async function follow(response) {
    const seen = { text: "", status: null, choices: [], replyTo: null, agent: null, ended: false };
    let item = null; // the reply's bubble, made when there is something to show
    let body = null;
    const bubble = () => {
      if (!item) {
        item = ChatLog.append(ChatLog.messageItem({ role: "assistant", content: "", agent: seen.agent }));
        item.classList.add("streaming");
        if (seen.replyTo) item.dataset.replyTo = seen.replyTo;
        body = item.querySelector(".text");
      }
      return item;
    };
    let drawn = -1;
    const draw = () => {
      if (!item || drawn === seen.text.length) return;
      const stick = ChatLog.atBottom();
      ChatRender.markdown(body, seen.text);
      drawn = seen.text.length;
      if (stick) ChatLog.toBottom();
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
            ChatLog.markStopped(bubble());
          } else if (status === "degraded") {
            ChatLog.markDegraded(bubble());
          }
          if (status !== "restarted") seen.status = status;
          break;
        }
        case "data-lock":
          ChatLog.showLock({ agent: part.data.agent, expires_at: part.data.expires_at });
          seen.agent = part.data.answered_by;
          if (item) item.querySelector(".who strong").textContent = ChatLog.who("assistant", seen.agent);
          break;
        case "data-choices":
          seen.choices = part.data || [];
          break;
        case "error":
          seen.status = "error";
          ChatLog.note(bubble(), "error-note", part.errorText || "This reply could not be shown.");
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
    ChatLog.showChoices(seen.choices);
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
      const result = await ChatApi.asDevice(
        () => ChatApi.request("GET", `api/chat/stream/${CHAT_ID}/stream`, { stream: true }),
      );
      if (result.status === 204) break;
      ChatComposer.setBusy(true, true);
      const seen = await follow(result.response);
      followed += 1;
      settle(seen);
    }
    return followed;
  }

  async function openStream(body) {
    for (let attempt = 1; ; attempt += 1) {
      try {
        return await ChatApi.asDevice(() => ChatApi.request("POST", "api/chat/stream", { body, stream: true }));
      } catch (error) {
        if (error instanceof ChatApi.ApiError || attempt >= SEND_ATTEMPTS) throw error;
        await sleep(500 * 2 ** (attempt - 1)); // network error: the same message id makes the resend safe
      }
    }
  }

  async function send(text, choiceId) {
    if (state.busy || state.viewing || !text.trim()) return;
    if (length(text) > LIMIT) { // refused, never cut: the count says by how much
      ChatComposer.updateCount();
      ui.input.focus();
      return;
    }
    ChatComposer.setBusy(true);
    if (state.refreshing) await state.refreshing; // it ends now (busy): its redraw must not take this message away
    clearError();
    ChatLog.showChoices([]);
    const body = { id: CHAT_ID, messages: [{ id: ChatApi.uuid4(), role: "user", parts: [{ type: "text", text }] }] };
    if (choiceId) body.choice_id = choiceId;
    const mine = ChatLog.append(
      ChatLog.messageItem({ role: "user", content: text, created_at: new Date().toISOString() }),
    );
    mine.classList.add("pending");
    ui.input.value = "";
    ChatComposer.updateCount();

    const attempt = async () => {
      clearError();
      setStatus("Sending", true);
      try {
        const { response } = await openStream(body);
        mine.classList.remove("pending");
        ChatComposer.setBusy(true, true);
        let seen;
        try {
          seen = await follow(response);
        } catch (error) {
          // The connection dropped mid-reply; the turn goes on on the server: follow it again.
          if (error instanceof ChatApi.ApiError) throw error;
          await resumeAll();
          await ChatHistory.loadHistory();
          setStatus("");
          return;
        }
        settle(seen);
        if (seen.status === "queued") { // still waiting behind other messages: keep following
          setStatus("Your message is queued; waiting for the reply", true);
          await resumeAll();
          await ChatHistory.loadHistory();
          setStatus("");
        }
      } catch (error) {
        setStatus("");
        ChatComposer.setBusy(true);
        showError(error, error instanceof ChatApi.ApiError && error.status < 500 ? null : async () => {
          ChatComposer.setBusy(true);
          try { await attempt(); } finally { ChatComposer.setBusy(false); }
        });
      }
    };

    try {
      await attempt();
      await ChatHistory.loadSessions().catch(() => {});
    } finally {
      ChatComposer.setBusy(false);
    }
  }

  async function stop() {
    ui.stop.disabled = true;
    setStatus("Stopping", true);
    try {
      await ChatApi.asDevice(() => ChatApi.request("POST", "api/chat/stop"));
    } catch (error) {
      ui.stop.disabled = false;
      showError(error, stop);
    }
  }

  return { resumeAll, send, stop };
})();
