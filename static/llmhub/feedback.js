// Thumbs up / down on a request's answer (the playground, the usage pages): POST /api/feedback/ with the session's
// CSRF token; the buttons show the stored vote (aria-pressed). A second vote replaces the first.
(() => {
  "use strict";

  const LABELS = { 1: "Good answer", "-1": "Bad answer" };  // as the buttons' labels
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  const show = (widget, score, message) => {
    for (const button of widget.querySelectorAll("button[data-score]")) {
      button.setAttribute("aria-pressed", String(Number(button.dataset.score) === score));
    }
    widget.dataset.score = score == null ? "" : String(score);
    widget.querySelector("[data-feedback-status]").textContent = message;
  };

  const send = async (widget, score) => {
    const body = JSON.stringify({ request_id: widget.dataset.requestId, score });
    // The usage row is written a moment after the answer ends: a 404 right away is tried again shortly.
    for (let attempt = 0; attempt < 4; attempt += 1) {
      const response = await fetch(widget.dataset.url, {
        method: "POST", body, credentials: "same-origin",
        headers: { Accept: "application/json", "Content-Type": "application/json",
                   "X-CSRFToken": document.body.dataset.csrfToken },
      });
      if (response.ok) return response.json();
      if (response.status !== 404 || attempt === 3) {
        const problem = await response.json().catch(() => null);
        throw new Error(problem?.error?.message || `HTTP ${response.status}`);
      }
      await sleep(500 * (attempt + 1));
    }
    return null;
  };

  // The buttons come disabled (a click before this script ran would do nothing) and are enabled here.
  const setUp = (widget) => {
    if ("ready" in widget.dataset) return;
    widget.dataset.ready = "";
    for (const button of widget.querySelectorAll("button[data-score]")) {
      button.disabled = false;
      button.addEventListener("click", async () => {
        const score = Number(button.dataset.score);
        const previous = widget.dataset.score === "" ? null : Number(widget.dataset.score);
        show(widget, score, "Saving…");
        widget.toggleAttribute("aria-busy", true);
        try {
          const saved = await send(widget, score);
          show(widget, saved.score, `Thanks: ${LABELS[saved.score].toLowerCase()} noted.`);
        } catch (failure) {
          show(widget, previous, `Not saved: ${failure.message}`);
        } finally {
          widget.removeAttribute("aria-busy");
        }
      });
    }
  };

  // The playground adds thumbs after each answer: a copy of the page's <template data-feedback-template>.
  const attach = (container, requestId) => {
    const template = document.querySelector("template[data-feedback-template]");
    if (!template) return null;
    const widget = template.content.querySelector("[data-feedback]").cloneNode(true);
    widget.dataset.requestId = requestId;
    container.append(widget);
    setUp(widget);
    return widget;
  };

  window.llmhubFeedback = { attach };
  document.addEventListener("DOMContentLoaded", () => {
    for (const widget of document.querySelectorAll("[data-feedback]")) setUp(widget);
  });
})();
