// The chat page's requests: this device's id (kept in localStorage, asked of POST /api/devices on a first
// visit, renewed when the server refuses it), one request as this device, and the API's errors (ApiError).
"use strict";

window.ChatApi = (() => {
  const STORE_KEY = "agent-sessions.device-id";

  let deviceId = localStorage.getItem(STORE_KEY);

  function uuid4() {
    if (crypto.randomUUID) return crypto.randomUUID();
    // crypto.randomUUID needs a secure context; getRandomValues does not.
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }

  function setDevice(id) {
    deviceId = id;
    localStorage.setItem(STORE_KEY, id);
  }

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function failure(response) {
    let data = null;
    try { data = await response.json(); } catch { data = null; }
    const error = data && data.error ? data.error : {};
    return new ApiError(response.status, error.code || `http_${response.status}`, error.message || "");
  }

  // One request as this device; a rejected fetch (TypeError) is a network error. stream: the
  // response itself (for an event stream), else its JSON.
  async function request(method, path, { body, device = true, stream = false } = {}) {
    const headers = { Accept: stream ? "text/event-stream" : "application/json" };
    if (device) headers["X-Device-ID"] = deviceId;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method, headers, cache: "no-store", body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!response.ok) throw await failure(response);
    if (stream || response.status === 204) return { status: response.status, response, data: null };
    let data = null;
    try { data = await response.json(); } catch { data = null; }
    return { status: response.status, data };
  }

  // A first visit asks the server for its id, so the first chat request already carries one the
  // server accepts (signed when it signs ids). If that fails, a random UUID does where ids are not signed.
  async function ensureDevice() {
    if (deviceId) return;
    try {
      const { data } = await request("POST", "api/devices", { device: false });
      setDevice(data.device_id);
    } catch {
      setDevice(uuid4());
    }
  }

  // Runs call; if the server refuses the device id (it signs ids, or ours is damaged), gets a new
  // id (POST /api/devices, else a fresh UUID) and runs it once more.
  async function asDevice(call) {
    try {
      return await call();
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      if (error.code === "invalid_device_signature") {
        const { data } = await request("POST", "api/devices", { device: false });
        setDevice(data.device_id);
        return call();
      }
      if (error.code === "invalid_device_id" || error.code === "missing_device_id") {
        setDevice(uuid4());
        return call();
      }
      throw error;
    }
  }

  return { ApiError, uuid4, request, ensureDevice, asDevice };
})();
