// The chat page's conversation as shown: one message of the log (replies as sanitized markdown via
// chat-render.js, the person's own text as typed), the notes on a stopped or degraded reply, the agents'
// names, the lock line, the suggested answers, and keeping the newest message in view.
"use strict";

window.ChatLog = (() => {
  const { ui, HUMAN } = ChatShared;

  let lock = { agent: null, expires_at: null }; // as the server last said (data-lock, history)

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
      const { data } = await ChatApi.request("GET", "api/chat/agents");
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

  function showChoices(choices) {
    const stick = pinned || atBottom(); // the dock grows or shrinks: the newest message stays in view
    ui.choices.replaceChildren();
    for (const choice of choices || []) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = choice.title;
      button.addEventListener("click", () => ChatSend.send(choice.title, choice.id));
      ui.choices.append(button);
    }
    ui.choices.hidden = ui.choices.childElementCount === 0;
    if (stick) toBottom();
  }

  return {
    time, showLock, atBottom, toBottom, loadAgentNames, who, note, markStopped, markDegraded, messageItem, append,
    showChoices,
  };
})();
