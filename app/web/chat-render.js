// Markdown for the chat page's replies: marked renders, DOMPurify sanitizes, both served from our own
// origin (web/vendor/, copied by `make install` from the pinned npm packages in web/). Raw HTML in a
// reply is shown as text, images as their alt text, and only http(s) and mailto links keep an href.
// Without the two files (npm was missing at install) replies are plain text, and the console says so.
"use strict";

window.ChatRender = (() => {
  const TAGS = [
    "p", "br", "strong", "em", "del", "code", "pre", "blockquote", "ul", "ol", "li", "a",
    "h1", "h2", "h3", "h4", "h5", "h6", "hr", "table", "thead", "tbody", "tr", "th", "td",
  ];
  const SAFE_URL = /^(?:https?:|mailto:)/i;
  const escape = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

  let parser = null;
  let purify = null;
  if (window.marked && window.marked.Marked && window.DOMPurify && window.DOMPurify.isSupported) {
    parser = new window.marked.Marked({
      gfm: true,
      breaks: true,
      async: false,
      renderer: {
        html: (token) => escape(typeof token === "string" ? token : token.text),
        image: (token) => escape(token.text || ""),
      },
    });
    purify = window.DOMPurify;
    purify.addHook("afterSanitizeAttributes", (node) => {
      if (node.tagName === "A") {
        if (node.hasAttribute("href")) {
          node.setAttribute("target", "_blank");
          node.setAttribute("rel", "noopener noreferrer nofollow");
        }
      }
    });
  } else {
    console.warn("chat: the markdown renderer (web/vendor/) is missing, so replies are shown as plain text; "
      + "run `make install` with npm available to build it");
  }

  // Fills el with text rendered as sanitized markdown (or as plain text without the renderer).
  function markdown(el, text) {
    if (!parser) {
      el.classList.add("plain");
      el.textContent = text;
      return;
    }
    const html = parser.parse(text);
    const fragment = purify.sanitize(html, {
      ALLOWED_TAGS: TAGS, ALLOWED_ATTR: ["href", "title", "start"], ALLOWED_URI_REGEXP: SAFE_URL,
      ALLOW_DATA_ATTR: false, RETURN_DOM_FRAGMENT: true,
    });
    el.replaceChildren(fragment);
  }

  return { markdown, available: () => parser !== null };
})();
