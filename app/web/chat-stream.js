// Reads server-sent events from a fetch response (fetch, not EventSource, so the device id goes in a header):
// `read` follows the AI SDK's UI message stream (`data: {json part}` events, ending with `data: [DONE]`),
// `events` a stream of named events (the page's GET /api/chat/events). Comments (keep-alives) are skipped.
"use strict";

window.ChatStream = (() => {
  // Calls onBlock({event, data}) for each event as it arrives, until it returns true or the body closes;
  // rejects on a network error mid-stream.
  async function blocks(response, onBlock) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
      let end;
      while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const lines = buffer.slice(0, end).split(/\r?\n/);
        buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
        const field = (name) => lines.filter((line) => line.startsWith(`${name}:`))
          .map((line) => line.slice(name.length + 1).replace(/^ /, ""));
        const data = field("data").join("\n");
        if (!data) continue;
        if (onBlock({ event: field("event")[0] || "message", data })) {
          reader.cancel().catch(() => {});
          return;
        }
      }
      if (done) return;
    }
  }

  // Resolves when the stream ends ([DONE] or the body closes); rejects on a network error mid-stream.
  async function read(response, onPart) {
    await blocks(response, ({ data }) => {
      if (data === "[DONE]") return true;
      onPart(JSON.parse(data));
      return false;
    });
  }

  // Calls onEvent(name, JSON data) for each event; resolves when the server ends the stream.
  async function events(response, onEvent) {
    await blocks(response, ({ event, data }) => {
      onEvent(event, JSON.parse(data));
      return false;
    });
  }

  return { read, events };
})();
