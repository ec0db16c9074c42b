// Reads the AI SDK's UI message stream (SSE: `data: {json part}` events, ending with `data: [DONE]`)
// from a fetch response, calling onPart for each part as it arrives. Comments (keep-alives) are skipped.
"use strict";

window.ChatStream = (() => {
  // Resolves when the stream ends ([DONE] or the body closes); rejects on a network error mid-stream.
  async function read(response, onPart) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
      let end;
      while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
        const data = block.split(/\r?\n/)
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (!data) continue;
        if (data === "[DONE]") {
          reader.cancel().catch(() => {});
          return;
        }
        onPart(JSON.parse(data));
      }
      if (done) return;
    }
  }

  return { read };
})();
