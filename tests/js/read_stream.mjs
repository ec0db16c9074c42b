// Reads a streamed reply with the AI SDK's own client code (DefaultChatTransport and
// readUIMessageStream) and prints the final UI message as JSON (null: nothing to resume).
// usage: node read_stream.mjs send|resume <api url> <device id> [text]
import { DefaultChatTransport, readUIMessageStream } from "ai";

const [mode, api, device, text] = process.argv.slice(2);
const transport = new DefaultChatTransport({ api, headers: { "X-Device-ID": device } });
const chatId = "chat-1";
let stream;
if (mode === "send") {
  stream = await transport.sendMessages({
    chatId,
    trigger: "submit-message",
    messageId: undefined,
    messages: [{ id: `u-${Date.now()}`, role: "user", parts: [{ type: "text", text }] }],
    abortSignal: undefined,
  });
} else {
  stream = await transport.reconnectToStream({ chatId });
}
if (stream === null) {
  console.log("null");
} else {
  let last = null;
  for await (const message of readUIMessageStream({ stream, onError: (e) => { throw e; } })) {
    last = message;
  }
  console.log(JSON.stringify(last));
}
