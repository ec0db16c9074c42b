// The operator inbox: the admin API with an admin key kept in sessionStorage.
// No build step and no dependencies; every text from the server is set with textContent.
// Updates come from one server-sent event stream (read with fetch, so the key goes in a
// header); while it is down a fallback poll runs. Refreshes never overlap: a change seen
// during one is fetched right after it, once.
// Plain scripts, run in the order console.html lists them, each sharing what the others use as one
// object on window (state more than one reads or writes: ConsoleShared.state): console-shared.js
// (elements, state, requests, errors), console-list.js (the list and its pages),
// console-conversation.js (the open conversation and the actions on it) and this file: the key,
// the refresh, the event stream and fallback poll, and the page's start.
"use strict";

(() => {
  const { ui, state, NAME_STORE, ApiError, headers, api, el, showError, clearError } = ConsoleShared;
  const KEY_STORE = "agent-sessions.admin-key";
  const FALLBACK_MS = 10000; // the poll while the event stream is down
  const RECONNECT_MS = 3000;

  state.key = sessionStorage.getItem(KEY_STORE);
  let running = null; // the refresh in flight
  let again = false; // something changed while it ran
  let wantMore = false; // the operator reached the end of the list: append the next page
  let stream = null; // AbortController of the event stream
  let fallback = null; // timer of the fallback poll
  let session = 0; // bumped when the key changes: old loops stop

  function stop() {
    session += 1;
    if (stream) stream.abort();
    stream = null;
    clearTimeout(fallback);
    fallback = null;
  }

  function askForKey() {
    state.key = null;
    sessionStorage.removeItem(KEY_STORE);
    stop();
    ui.main.hidden = true;
    ui.keyForm.hidden = false;
    ui.who.textContent = "";
    ui.key.focus();
  }

  async function loadAgents() {
    const data = await api("GET", "api/agents");
    state.names = Object.fromEntries(data.items.map((a) => [a.key, a.display_name]));
    for (const select of [ui.agent, ui.handTo]) {
      const keep = [...select.options].filter((o) => o.value === "" || o.value.startsWith("@"));
      const chosen = select.value;
      const options = data.items.filter((a) => select === ui.agent || a.key !== "human")
        .map((a) => { const o = el("option", a.display_name); o.value = a.key; return o; });
      select.replaceChildren(...keep, ...options);
      select.value = chosen;
    }
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
            await ConsoleList.loadList();
            await ConsoleConversation.loadConversation();
            document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
          } else {
            await ConsoleList.appendPage();
          }
        } catch (error) {
          showError(error);
        }
      } while ((again || wantMore) && state.key);
    })().finally(() => { running = null; });
    return running;
  }

  window.ConsoleInbox = { refresh, askForKey };

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
    if (state.key && mine === session) listen(mine);
  }

  ui.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = ui.key.value.trim();
    ui.key.value = "";
    sessionStorage.setItem(KEY_STORE, state.key);
    clearError();
    start();
  });
  ui.forget.addEventListener("click", askForKey);

  if (state.key) start();
  else {
    askForKey();
    document.body.dataset.ready = "true";
  }
})();
