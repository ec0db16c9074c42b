// The operator inbox's list: the conversations in the inbox's order under the filters, paged ("Load more",
// or scrolling to its end), and a change refetching the first page as long as what is listed.
"use strict";

window.ConsoleList = (() => {
  const { ui, state, DELIVERY, api, agentName, time, el } = ConsoleShared;
  const PAGE = 50; // conversations a page adds
  const MAX_PAGE = 200; // the most one request lists (the API's limit)

  let items = []; // the conversations listed, in the inbox's order
  let nextCursor = null; // the page after the last one listed (null: the end)
  let listedFor = null; // the filters the listed pages were fetched with

  function conversationItem(item) {
    const row = el("li");
    row.dataset.device = item.device_id;
    row.dataset.channel = item.channel;
    row.classList.toggle("open", item.device_id === state.open);
    row.classList.toggle("needs-person", item.waiting > 0);
    const button = el("button");
    button.type = "button";
    button.addEventListener("click", () => ConsoleConversation.openConversation(item.device_id));
    const last = item.last_message;
    let preview = last ? last.preview : "No messages yet";
    if (last && last.role === "assistant") preview = `${last.agent === "human" ? "You" : agentName(last.agent)}: ${preview}`;
    const tags = el("span", null, "tags");
    tags.append(el("span", item.channel === "whatsapp" ? "WhatsApp" : "Web", `tag channel ${item.channel}`));
    if (item.waiting > 0) tags.append(el("span", `Needs a person (${item.waiting})`, "tag needs"));
    if (item.agent === "human") tags.append(el("span", `Taken over by ${item.operator || "a person"}`, "tag human"));
    else if (item.agent) tags.append(el("span", agentName(item.agent), "tag agent"));
    if (last && last.delivery) tags.append(el("span", DELIVERY[last.delivery] || last.delivery, "tag delivery"));
    button.append(el("span", item.name, "name"), el("span", time(item.last_at), "when"), el("span", preview, "preview"),
      tags);
    row.append(button);
    return row;
  }

  function filters() {
    const query = new URLSearchParams();
    if (ui.needs.checked) query.set("needs_person", "true");
    if (ui.channel.value) query.set("channel", ui.channel.value);
    if (ui.agent.value) query.set("agent", ui.agent.value);
    return query;
  }

  function showList() {
    ui.list.replaceChildren(...items.map(conversationItem));
    ui.empty.hidden = items.length > 0 || nextCursor !== null;
    ui.more.hidden = nextCursor === null;
  }

  // last_at as the server writes it (ISO 8601, UTC) with its fraction of a second in six digits: the
  // server leaves out a fraction of zero, and "...:00Z" sorts after "...:00.000006Z" as a string.
  function instant(iso) {
    return iso.replace(/(\.\d+)?(Z|[+-]\d\d:\d\d)$/, (_, fraction, zone) => (fraction || ".").padEnd(7, "0") + zone);
  }

  // Whether a comes after b in the inbox's order (last_at newest first, then device id).
  function after(a, b) {
    const x = instant(a.last_at), y = instant(b.last_at);
    return x < y || (x === y && a.device_id > b.device_id);
  }

  // The first page again, as long as what is listed (up to MAX_PAGE): a change updates every listed
  // conversation and moves only those that got a message (to the top). Listed ones after the new
  // page's end stay as they were, less those the page lists, with the cursor that follows them.
  // New filters start from one page.
  async function loadList() {
    const query = filters();
    const asked = String(query); // the filters of this request, whatever the form says when it returns
    if (asked !== listedFor) {
      items = [];
      nextCursor = null;
    }
    query.set("limit", String(Math.min(MAX_PAGE, Math.max(PAGE, items.length))));
    const data = await api("GET", `api/inbox?${query}`);
    const fresh = new Set(data.items.map((item) => item.device_id));
    const end = data.items[data.items.length - 1];
    const tail = end ? items.filter((item) => !fresh.has(item.device_id) && after(item, end)) : [];
    if (tail.length === 0) nextCursor = data.next_cursor;
    items = [...data.items, ...tail];
    listedFor = asked;
    showList();
    const shown = items.find((item) => item.device_id === state.open);
    if (shown) {
      ui.title.textContent = shown.name;
      ui.device.textContent = `${shown.channel === "whatsapp" ? "WhatsApp" : "Web"} · ${shown.device_id}`;
    }
  }

  // The next page after the listed ones, appended (a conversation already listed is not listed twice).
  async function appendPage() {
    if (nextCursor === null || String(filters()) !== listedFor) return;
    const query = filters();
    query.set("limit", String(PAGE));
    query.set("cursor", nextCursor);
    const data = await api("GET", `api/inbox?${query}`);
    const listed = new Set(items.map((item) => item.device_id));
    items = [...items, ...data.items.filter((item) => !listed.has(item.device_id))];
    nextCursor = data.next_cursor;
    showList();
    document.body.dataset.pages = String(Number(document.body.dataset.pages || 0) + 1);
  }

  ui.filters.addEventListener("change", () => ConsoleInbox.refresh());
  ui.filters.addEventListener("submit", (event) => { event.preventDefault(); ConsoleInbox.refresh(); });
  ui.more.addEventListener("click", () => ConsoleInbox.refresh(true));
  // Scrolling to the end of the list loads the next page, as the button does. During a refresh the
  // request is queued, not dropped: the end stays in view, so no second intersection would come.
  if ("IntersectionObserver" in window) {
    new IntersectionObserver((seen) => {
      if (seen.some((entry) => entry.isIntersecting) && nextCursor !== null) ConsoleInbox.refresh(true);
    }).observe(ui.more);
  }

  return { loadList, appendPage };
})();
