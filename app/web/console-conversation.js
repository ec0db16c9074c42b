// The operator inbox's open conversation: its lock and history, and what the operator does with it (take
// it over, reply as a person, release it to the bot); after each action everything shown is fetched again.
"use strict";

window.ConsoleConversation = (() => {
  const { NAME_STORE, DELIVERY, ui, state, api, device, agentName, showError, clearError, time, el } = ConsoleShared;

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
    if (state.open === null) return;
    const id = state.open;
    const [conversation, page] = await Promise.all([api("GET", device(id)), api("GET", `${device(id)}/messages?limit=100`)]);
    if (id !== state.open) return;
    showLock(conversation.lock);
    const atBottom = ui.history.scrollHeight - ui.history.scrollTop - ui.history.clientHeight < 40;
    ui.history.replaceChildren(...[...page.items].reverse().map(historyItem));
    if (atBottom || ui.history.dataset.device !== id) ui.history.scrollTop = ui.history.scrollHeight;
    ui.history.dataset.device = id;
  }

  async function openConversation(id) {
    state.open = id;
    ui.detail.hidden = false;
    document.body.dataset.view = "conversation";
    clearError();
    for (const row of ui.list.querySelectorAll("li")) row.classList.toggle("open", row.dataset.device === id);
    await ConsoleInbox.refresh();
  }

  async function act(call) {
    clearError();
    try {
      await call();
    } catch (error) {
      showError(error);
    }
    await ConsoleInbox.refresh();
  }

  function sendReply() {
    const text = ui.reply.value;
    if (!text.trim()) return;
    act(async () => {
      await api("POST", `${device(state.open)}/messages`, { text });
      ui.reply.value = "";
    });
  }

  ui.back.addEventListener("click", () => { document.body.dataset.view = "list"; });
  ui.takeForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const operator = ui.operator.value.trim();
    sessionStorage.setItem(NAME_STORE, operator);
    act(() => api("POST", `${device(state.open)}/takeover`, { operator, ttl: Number(ui.ttl.value) }));
  });
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
    act(() => api("DELETE", `${device(state.open)}/takeover`, body));
  });

  return { loadConversation, openConversation };
})();
