// The chat page's news from the server: one event stream per page (GET /api/chat/events, read with
// chat-stream.js) says when there is a newer message or another lock; while it is down a fallback poll
// runs. Either refreshes the history, never two reads at once and never while a reply streams.
"use strict";

window.ChatEvents = (() => {
  const { state, HUMAN, setStatus } = ChatShared;
  const FALLBACK_MS = 10000; // the poll while the event stream is down, each after the previous one
  const RECONNECT_MS = 3000; // a new event stream after one ended or failed

  let latest = null; // what the event stream last said: {newest: message id, lock}
  let again = false; // asked for while one ran
  let polling = false; // the next refresh asks the server for the newest message itself (stream down)
  let fallback = null; // timer of the fallback poll

  // New messages the page did not ask for (a person's reply, a queued message's reply): the history again,
  // when the event stream (or, while it is down, the fallback poll) says there is something newer than
  // what is shown. Never two at once: asked for during one, it runs once more after it; asked for while a
  // reply streams or an earlier conversation is shown, it runs when that ends.
  function refresh() {
    if (state.busy || state.viewing) {
      state.stale = true;
      return state.refreshing || Promise.resolve();
    }
    if (state.refreshing) {
      again = true;
      return state.refreshing;
    }
    state.stale = false;
    state.refreshing = (async () => {
      do {
        again = false;
        try {
          await refreshOnce();
        } catch {
          // the next change or poll tries again: a reply is never lost, only late
        }
      } while (again && !state.busy && !state.viewing);
      if (again) state.stale = true; // a send or an earlier conversation came in between: after it
      again = false;
    })().finally(() => { state.refreshing = null; });
    return state.refreshing;
  }

  async function refreshOnce() {
    if (polling) {
      polling = false;
      const { data } = await ChatApi.asDevice(() => ChatApi.request("GET", "api/chat/messages?limit=1"));
      if (!data.items.length || data.items[0].id <= state.newestId) return;
    } else if (!latest || !(latest.newest > state.newestId)) {
      return;
    }
    const newest = await ChatHistory.loadHistory();
    if (newest && newest.role === "assistant" && newest.agent === HUMAN) setStatus("");
  }

  function changed(data) {
    latest = data;
    ChatLog.showLock(data.lock);
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
      const { response } = await ChatApi.asDevice(() => ChatApi.request("GET", "api/chat/events", { stream: true }));
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

  return { refresh, listen };
})();
