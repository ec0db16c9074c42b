// The operator inbox's shared parts, loaded before its other scripts: the page's elements, the one object
// holding the state more than one script reads or writes (each keeps the rest to itself), requests to the
// admin API with the admin key, the error line, and the small helpers that put server text on the page.
"use strict";

window.ConsoleShared = (() => {
  const NAME_STORE = "agent-sessions.operator";
  const DELIVERY = {
    queued: "Queued", retry: "Not sent yet, retrying", sent: "Sent", delivered: "Delivered", read: "Read",
    failed: "Failed", outside_window: "Not sent: outside the 24-hour window",
  };

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

  // Read and written by several scripts: always through this object, never copied.
  const state = {
    key: null, // the admin key, as console.js keeps it in sessionStorage
    open: null, // the device id whose conversation is shown
    names: {}, // agent key -> display name
  };

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function headers(extra) {
    return { Accept: "application/json", Authorization: `Bearer ${state.key}`, ...extra };
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
  const agentName = (agentKey) => state.names[agentKey] || agentKey;

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
    if (error instanceof ApiError && error.status === 401) ConsoleInbox.askForKey();
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

  return {
    NAME_STORE, DELIVERY, ui, state, ApiError, headers, api, device, agentName, showError, clearError, time, el,
  };
})();
