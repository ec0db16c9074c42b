// The chat page's shared parts, loaded before its other scripts: the settings more than one of them uses,
// the page's elements, the one object holding the state more than one script reads or writes (each keeps
// the rest to itself), and the status line and error box every part reports to.
"use strict";

window.ChatShared = (() => {
  const LIMIT = 4096; // characters (code points) per message, as the API counts them
  const NEAR_LIMIT = LIMIT - 200; // the count shows from here
  const HUMAN = "human"; // the lock holder while a person has taken the conversation over

  const $ = (id) => document.getElementById(id);
  const ui = {
    scroller: $("scroller"), log: $("log"), empty: $("empty"), older: $("older"), status: $("status"),
    lock: $("lock"), error: $("error"), errorText: $("error-text"), retry: $("retry"), choices: $("choices"),
    form: $("composer"), input: $("message"), send: $("send"), stop: $("stop"), count: $("count"),
    newConversation: $("new-conversation"), deleteHistory: $("delete-history"),
    past: $("past"), sessions: $("sessions-list"), viewing: $("viewing"), back: $("back-to-current"),
  };

  // Read and written by several scripts: always through this object, never copied.
  const state = {
    busy: false, // a message is being sent or a reply streams
    viewing: null, // the session id of an earlier conversation being read, or null
    newestId: 0, // the newest message id shown from history
    retryAction: null, // what the error box's "Try again" runs
    refreshing: null, // the history refresh in flight (a promise)
    stale: false, // a refresh was asked for while a reply streamed or an earlier conversation was shown
  };

  const length = (text) => [...text].length; // code points, as the server counts

  function readable(error) {
    if (error instanceof ChatApi.ApiError) {
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
    state.retryAction = action || null;
    ui.retry.hidden = !action;
    ui.error.hidden = false;
  }

  function clearError() {
    ui.error.hidden = true;
    ui.errorText.textContent = "";
    state.retryAction = null;
  }

  function setStatus(text, waiting = false) {
    ui.status.textContent = text;
    ui.status.classList.toggle("waiting", waiting);
  }

  return { LIMIT, NEAR_LIMIT, HUMAN, ui, state, length, showError, clearError, setStatus };
})();
