// A message sent before the chat is ready is sent as soon as it is.
//
// Chainlit ignores Enter (and greys out the send button) until the page's socket is connected and the
// session has started, about half a second after the page opens; the text just stays in the box. Here
// an Enter pressed in that window is remembered, and the message goes out the moment the send button
// is enabled, so a message typed the instant the page opens still gets its answer.
(function () {
  let pending = false;

  function sendIfReady() {
    const send = document.getElementById("chat-submit");
    if (pending && send && !send.disabled) {
      pending = false;
      send.click();
    }
  }

  document.addEventListener("keydown", (event) => {
    const box = event.target;
    if (!box || box.id !== "chat-input" || event.key !== "Enter" || event.shiftKey || event.isComposing) return;
    const send = document.getElementById("chat-submit");
    if (send && send.disabled && (box.value || box.textContent || "").trim()) pending = true;
  }, true);

  new MutationObserver(sendIfReady).observe(document.documentElement,
    { subtree: true, childList: true, attributes: true, attributeFilter: ["disabled"] });
})();
