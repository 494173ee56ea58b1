// llmhub pages: live status dots, connectivity tests, and the playground's streamed answer.
// Plain fetch, no build step. Every page works without it except the live parts.
(() => {
  "use strict";

  const STATUS_POLL_MS = 2000;
  const TEST_POLL_MS = 1000;
  const csrfToken = () => document.body.dataset.csrfToken;
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function getJSON(url) {
    const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
    return response.json();
  }

  // --- Header menu (narrow screens): the button shows and hides the links; Escape closes them --------------

  function menuSetUp() {
    const button = document.querySelector(".menu-toggle");
    if (!button) return;
    const menu = document.getElementById(button.getAttribute("aria-controls"));
    const show = (open) => {
      menu.classList.toggle("open", open);
      button.setAttribute("aria-expanded", String(open));
    };
    button.addEventListener("click", () => show(!menu.classList.contains("open")));
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && menu.classList.contains("open")) {
        show(false);
        button.focus();
      }
    });
  }

  // --- Status dots: [data-status-ref] elements follow /models/status/ -------------------------------------

  function statusApply(element, info) {
    element.dataset.status = info.status;
    element.title = info.title;
    const text = element.querySelector(".status-text");
    if (text) text.textContent = info.status;
  }

  // A model picker's option: "Demo · healthy · $0.50 / $1.50" (pages_tags.option_label), disabled ones aside.
  function optionApply(option, info) {
    option.dataset.status = info.status;
    if (!option.disabled) option.textContent = `${option.dataset.name} · ${info.status} · ${option.dataset.detail}`;
  }

  async function statusRefresh() {
    const url = document.body.dataset.statusUrl;
    const dots = document.querySelectorAll("[data-status-ref]");
    if (!url || !dots.length) return;
    const { models } = await getJSON(url);
    for (const dot of dots) {
      const info = models[dot.dataset.statusRef];
      if (info) statusApply(dot, info);
    }
    for (const option of document.querySelectorAll("option[data-option-ref]")) {
      const info = models[option.dataset.optionRef];
      if (info) optionApply(option, info);
    }
    document.dispatchEvent(new Event("llmhub:statuses"));
  }

  function statusPoll() {
    if (!document.querySelector("[data-status-ref]")) return;
    const tick = async () => {
      try {
        if (!document.hidden) await statusRefresh();
      } catch (error) {
        console.warn("status refresh failed", error);
      } finally {
        setTimeout(tick, STATUS_POLL_MS);
      }
    };
    setTimeout(tick, STATUS_POLL_MS);
  }

  // --- Connectivity tests: a Test button starts one, its panel follows it until it finishes ----------------

  function testPanelShow(panel, html) {
    panel.innerHTML = html;  // rendered and escaped by the server (pages/_test_result.html)
    panel.hidden = false;
    const row = panel.closest("tr.test-output");
    if (row) row.hidden = false;
  }

  function testHistoryAdd(payload) {
    const history = document.querySelector("[data-test-history]");
    if (!history) return;
    const existing = history.querySelector(`tr[data-test-id="${payload.id}"]`);
    const template = document.createElement("template");
    template.innerHTML = payload.row.trim();
    if (existing) existing.replaceWith(template.content);
    else history.prepend(template.content);
    document.querySelector("[data-test-history-empty]")?.remove();
  }

  async function testRun(button) {
    const panel = document.getElementById(button.getAttribute("aria-controls"));
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    try {
      const response = await fetch(button.dataset.testUrl, {
        method: "POST",
        headers: { Accept: "application/json", "X-CSRFToken": csrfToken() },
        credentials: "same-origin",
      });
      let payload = await response.json();
      if (!response.ok) {
        testPanelShow(panel, "");
        panel.append(errorParagraph(payload.error?.message || `HTTP ${response.status}`));
        return;
      }
      for (;;) {
        testPanelShow(panel, payload.html);
        testHistoryAdd(payload);
        if (payload.finished) break;
        await sleep(TEST_POLL_MS);
        payload = await getJSON(payload.url);
      }
      await statusRefresh();
    } catch (error) {
      testPanelShow(panel, "");
      panel.append(errorParagraph("The test could not be followed: " + error.message));
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  }

  function errorParagraph(message) {
    const paragraph = document.createElement("p");
    paragraph.className = "form-error";
    paragraph.textContent = message;
    return paragraph;
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-test-url]");
    if (button) testRun(button);
  });

  // --- Models page: search and filters (rows stay in place; a provider with no row left is hidden) ---------

  function modelFilters(form) {
    const value = (name) => form.querySelector(`[data-filter="${name}"]`);
    const table = document.querySelector("table.models");
    const count = form.querySelector("[data-filter-count]");
    const empty = document.querySelector("[data-filter-empty]");
    const apply = () => {
      const text = value("text").value.trim().toLowerCase();
      const provider = value("provider").value;
      const capability = value("capability").value;
      const status = value("status").value;
      const usableOnly = value("usable").checked;
      let shown = 0;
      let total = 0;
      for (const group of table.tBodies) {
        let groupShown = 0;
        for (const row of group.querySelectorAll("tr[data-model-ref]")) {
          const rowStatus = row.querySelector("[data-status-ref]")?.dataset.status;
          const visible = (!text || row.dataset.search.includes(text))
            && (!provider || row.dataset.provider === provider)
            && (!capability || row.dataset.capabilities.split(" ").includes(capability))
            && (!status || rowStatus === status)
            && (!usableOnly || row.dataset.usable === "yes");
          row.hidden = !visible;
          const output = row.nextElementSibling;
          if (output?.classList.contains("test-output") && !visible) output.hidden = true;
          total += 1;
          if (visible) groupShown += 1;
        }
        group.hidden = groupShown === 0;
        shown += groupShown;
      }
      count.textContent = shown === total ? "" : `${shown} of ${total} models shown`;
      empty.hidden = shown > 0;
    };
    form.addEventListener("input", apply);
    form.addEventListener("submit", (event) => event.preventDefault());
    document.addEventListener("llmhub:statuses", () => {
      if (value("status").value) apply();
    });
  }

  // --- Playground: POST the form, read the server-sent events as they arrive --------------------------------

  function sseParse(block) {
    const event = { name: "message", data: "" };
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") event.name = value;
      else if (field === "data") data.push(value);
    }
    event.data = data.join("\n");
    return event;
  }

  async function* sseEvents(response) {
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (block.trim()) yield sseParse(block);
      }
    }
  }

  function attemptText(attempt) {
    const status = attempt.upstream_status ? `HTTP ${attempt.upstream_status}, ` : "";
    const message = attempt.message ? `: ${attempt.message}` : "";
    return `${attempt.model} failed (${status}${attempt.outcome}, ${Math.round(attempt.latency_ms)} ms)${message}`;
  }

  function playground(form) {
    const section = document.querySelector("section.answer");
    const answer = section.querySelector("[data-answer]");
    const error = section.querySelector("[data-answer-error]");
    const fallback = section.querySelector("[data-fallback]");
    const stat = (name) => section.querySelector(`[data-stat="${name}"]`);
    const submit = form.querySelector("button[type=submit]");

    const taskShow = () => {
      const task = form.querySelector("input[name=task]:checked").value;
      for (const fieldset of form.querySelectorAll("fieldset[data-task]")) {
        const active = fieldset.dataset.task === task;
        fieldset.hidden = !active;
        fieldset.disabled = !active;
      }
    };
    form.addEventListener("change", (event) => {
      if (event.target.name === "task") taskShow();
    });
    taskShow();

    const attemptsShow = (attempts) => {
      const failed = (attempts || []).filter((attempt) => attempt.outcome !== "ok");
      const list = fallback.querySelector("[data-fallback-list]");
      list.replaceChildren(...failed.map((attempt) => {
        const item = document.createElement("li");
        item.textContent = attemptText(attempt);
        return item;
      }));
      const answered = (attempts || []).find((attempt) => attempt.outcome === "ok");
      fallback.querySelector("[data-fallback-summary]").textContent = answered
        ? `${failed.map((attempt) => attempt.model).join(", ")} failed; ${answered.model} answered instead.`
        : "every model failed.";
      fallback.hidden = failed.length === 0;
    };

    const errorShow = (message) => {
      error.textContent = message;
      error.hidden = false;
    };

    const reset = () => {
      answer.replaceChildren();
      error.hidden = true;
      fallback.hidden = true;
      for (const name of ["model", "tokens", "cost", "latency"]) stat(name).textContent = "–";
    };

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      reset();
      submit.disabled = true;
      submit.setAttribute("aria-busy", "true");
      section.setAttribute("aria-busy", "true");
      try {
        const response = await fetch(form.action, {
          method: "POST",
          body: new FormData(form),
          headers: { Accept: "text/event-stream", "X-CSRFToken": csrfToken() },
          credentials: "same-origin",
        });
        if (!response.ok) {
          const body = await response.json().catch(() => null);
          const problem = body?.error;
          const fields = problem?.fields ? Object.entries(problem.fields).map(([name, messages]) =>
            `${name}: ${[].concat(messages).join(" ")}`).join("; ") : "";
          errorShow(fields || problem?.message || `HTTP ${response.status}`);
          if (problem?.attempts) attemptsShow(problem.attempts);
          return;
        }
        const text = document.createTextNode("");
        answer.append(text);
        for await (const message of sseEvents(response)) {
          if (message.data === "[DONE]") continue;
          const data = JSON.parse(message.data);
          if (message.name === "meta") {
            stat("model").textContent = `${data.display_name} · ${data.model}`;
            attemptsShow(data.attempts);
          } else if (message.name === "summary") {
            stat("tokens").textContent = `${data.input_tokens} / ${data.output_tokens}${data.estimated ? " (estimated)" : ""}`;
            stat("cost").textContent = `$${data.cost}`;
            stat("latency").textContent = `${Math.round(data.latency_ms)} ms` +
              (data.ttft_ms != null ? ` (first token ${Math.round(data.ttft_ms)} ms)` : "");
          } else if (data.error) {
            errorShow(data.error.message);
          } else {
            for (const choice of data.choices || []) text.appendData(choice.delta?.content || "");
          }
        }
      } catch (failure) {
        errorShow("The answer was cut off: " + failure.message);
      } finally {
        submit.disabled = false;
        submit.removeAttribute("aria-busy");
        section.removeAttribute("aria-busy");
      }
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    menuSetUp();
    statusPoll();
    const filters = document.querySelector("form[data-model-filters]");
    if (filters) modelFilters(filters);
    const form = document.querySelector("form[data-playground]");
    if (form) playground(form);
  });
})();
