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

  // Shows a test until it finishes (polling its URL), then refreshes the status dots.
  async function testFollow(panel, payload) {
    for (;;) {
      testPanelShow(panel, payload.html);
      testHistoryAdd(payload);
      if (payload.finished) break;
      await sleep(TEST_POLL_MS);
      payload = await getJSON(payload.url);
    }
    await statusRefresh();
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
      await testFollow(panel, payload);
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

  // --- Own-model form: "Fetch models" lists what the endpoint's /models offers, as suggestions ---------------

  async function endpointModelsFetch(button) {
    const form = button.closest("form");
    const status = form.querySelector("[data-fetch-models-status]");
    const list = form.querySelector("#endpoint-models");
    const body = new FormData();
    for (const name of ["base_url", "api_key"]) body.append(name, form.elements.namedItem(name)?.value || "");
    body.append("model_id", button.dataset.modelId || "");
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    status.textContent = "Asking the endpoint…";
    try {
      const response = await fetch(button.dataset.fetchModels, {
        method: "POST", body, credentials: "same-origin", headers: { Accept: "application/json", "X-CSRFToken": csrfToken() },
      });
      const payload = await response.json().catch(() => null);
      if (!response.ok) {
        status.textContent = payload?.error?.message || `HTTP ${response.status}`;
        return;
      }
      list.replaceChildren(...payload.models.map((id) => Object.assign(document.createElement("option"), { value: id })));
      const typed = form.elements.namedItem("model").value.trim();
      const missing = typed && !payload.models.includes(typed) ? ` "${typed}" is not among them.` : "";
      status.textContent = payload.models.length
        ? `${payload.models.length} model${payload.models.length === 1 ? "" : "s"}: ${payload.models.join(", ")}.${missing}`
        : "The endpoint lists no model.";
    } catch (error) {
      status.textContent = "Could not ask: " + error.message;
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-fetch-models]");
    if (button) endpointModelsFetch(button);
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

  // What the page says for each refusal or failure of /playground/stream/ (the API's error shape).
  const FIELD_LABELS = {
    messages: "Message", prompt: "Message", text: "Text to translate", target_language: "Target language",
    source_language: "Source language", temperature: "Temperature", max_tokens: "Max tokens", model: "Model",
  };

  function friendlyError(status, problem) {
    if (!problem) {
      if (status === 403) return "Your session has expired: reload the page (and log in again) to go on.";
      return `llmhub answered HTTP ${status} without an explanation: try again in a moment.`;
    }
    const code = problem.code;
    if (code === "invalid" && problem.fields) {
      return Object.entries(problem.fields).map(([name, messages]) => {
        const text = [].concat(messages).map((message) => typeof message === "string" ? message
          : JSON.stringify(message)).join(" ");
        if (name === "non_field_errors") return /prompt|messages/.test(text) ? "Type a message first." : text;
        return `${FIELD_LABELS[name] || name}: ${text}`;
      }).join(" ");
    }
    if (status === 429) {
      const wait = problem.retry_after ? ` Try again in ${Math.ceil(problem.retry_after)} s.` : " Try again shortly.";
      return `You have reached a limit: ${problem.message}${wait}`;
    }
    if (status === 502 || status === 504) {
      return problem.attempts?.length ? "No model could answer. See below what was tried." : `No model could answer: ${problem.message}`;
    }
    if (status === 503) return `llmhub cannot answer right now (${problem.message}). Try again in a moment.`;
    if (status === 404) return `${problem.message} Pick another model.`;
    return problem.message || `HTTP ${status}`;
  }

  const CODE_KEY = "lh-YOUR-API-KEY";

  function shellQuote(text) {
    return `'${text.replace(/'/g, "'\\''")}'`;
  }

  function indent(text, spaces) {
    return text.split("\n").map((line, index) => (index ? " ".repeat(spaces) : "") + line).join("\n");
  }

  // The request the page would send, as code to run elsewhere: curl, Python with openai, JavaScript.
  function codeFor(language, request, urls) {
    if (request.task === "translation") {
      const body = JSON.stringify(request.body, null, 2);
      const url = `${urls.api}/api/translate/`;
      if (language === "curl") {
        return `curl ${url} \\\n  -H "Authorization: Bearer ${CODE_KEY}" \\\n  -H "Content-Type: application/json" \\\n  -d ${shellQuote(body)}`;
      }
      if (language === "python") {
        return `import httpx\n\nresponse = httpx.post(\n    "${url}",\n    headers={"Authorization": "Bearer ${CODE_KEY}"},\n    json=${indent(body, 4)},\n    timeout=120,\n)\nprint(response.json()["text"])`;
      }
      return `const response = await fetch("${url}", {\n  method: "POST",\n  headers: { Authorization: "Bearer ${CODE_KEY}", "Content-Type": "application/json" },\n  body: JSON.stringify(${indent(body, 2)}),\n});\nconsole.log((await response.json()).text);`;
    }
    const body = { model: request.body.model, messages: request.body.messages };
    if (request.body.temperature !== undefined) body.temperature = request.body.temperature;
    if (request.body.max_tokens !== undefined) body.max_tokens = request.body.max_tokens;
    if (language === "curl") {
      return `curl ${urls.v1}/chat/completions \\\n  -H "Authorization: Bearer ${CODE_KEY}" \\\n  -H "Content-Type: application/json" \\\n  -d ${shellQuote(JSON.stringify({ ...body, stream: true }, null, 2))}`;
    }
    const settings = Object.entries(body).filter(([name]) => name !== "messages" && name !== "model");
    if (language === "python") {
      const extra = settings.map(([name, value]) => `    ${name}=${value},\n`).join("");
      return `from openai import OpenAI\n\nclient = OpenAI(base_url="${urls.v1}", api_key="${CODE_KEY}")\nstream = client.chat.completions.create(\n    model=${JSON.stringify(body.model)},\n    messages=${indent(JSON.stringify(body.messages, null, 4), 4)},\n${extra}    stream=True,\n)\nfor chunk in stream:\n    if chunk.choices:\n        print(chunk.choices[0].delta.content or "", end="", flush=True)`;
    }
    const extra = settings.map(([name, value]) => `  ${name}: ${value},\n`).join("");
    return `import OpenAI from "openai";\n\nconst client = new OpenAI({ baseURL: "${urls.v1}", apiKey: "${CODE_KEY}" });\nconst stream = await client.chat.completions.create({\n  model: ${JSON.stringify(body.model)},\n  messages: ${indent(JSON.stringify(body.messages, null, 2), 2)},\n${extra}  stream: true,\n});\nfor await (const chunk of stream) process.stdout.write(chunk.choices[0]?.delta?.content ?? "");`;
  }

  function playground(form) {
    const field = (name) => form.elements.namedItem(name);
    const log = form.querySelector("[data-log]");
    const error = form.querySelector("[data-answer-error]");
    const fallback = form.querySelector("[data-fallback]");
    const stat = (name) => form.querySelector(`[data-stat="${name}"]`);
    const send = form.querySelector("[data-send]");
    const stop = form.querySelector("[data-stop]");
    const composer = field("prompt");
    const composerLabel = form.querySelector("[data-composer-label]");
    const modelSelect = field("model");
    const defaultOption = modelSelect.options[0];
    const codeText = form.querySelector("[data-code-text]");
    const urls = { v1: form.dataset.v1Url, api: form.dataset.apiUrl };
    const history = [];  // the conversation so far: {role, content}, sent whole every turn
    let codeLanguage = "curl";
    let controller = null;

    const task = () => form.querySelector("input[name=task]:checked").value;
    const numberOf = (name) => {
      const value = field(name).value.trim();
      return value === "" ? undefined : Number(value);
    };

    // The request as the page sends it: the history, the system prompt first, and the message being written.
    const request = (text) => {
      if (task() === "translation") {
        const body = { text, target_language: field("target_language").value.trim() };
        if (field("source_language").value.trim()) body.source_language = field("source_language").value.trim();
        if (modelSelect.value) body.model = modelSelect.value;
        return { task: "translation", body };
      }
      const system = field("system").value.trim();
      const messages = [...(system ? [{ role: "system", content: system }] : []), ...history,
        { role: "user", content: text }];
      const body = { model: modelSelect.value || defaultOption.dataset.defaultGeneration || undefined, messages };
      if (numberOf("temperature") !== undefined) body.temperature = numberOf("temperature");
      if (numberOf("max_tokens") !== undefined) body.max_tokens = numberOf("max_tokens");
      return { task: "generation", body };
    };

    const codeShow = () => {
      const current = request(composer.value.trim() || (task() === "translation" ? "Good morning" : "Your next message"));
      if (current.task === "translation" && !current.body.model) {
        current.body.model = defaultOption.dataset.defaultTranslation || undefined;
      }
      codeText.textContent = codeFor(codeLanguage, current, urls);
      for (const button of form.querySelectorAll("[data-code-lang]")) {
        button.setAttribute("aria-pressed", String(button.dataset.codeLang === codeLanguage));
        if (button.dataset.codeLang === "python") {
          button.textContent = current.task === "translation" ? "Python" : "Python (openai)";
        }
      }
    };

    const taskShow = () => {
      for (const fieldset of form.querySelectorAll("fieldset[data-task]")) {
        const active = fieldset.dataset.task === task();
        fieldset.hidden = !active;
        fieldset.disabled = !active;
      }
      const translating = task() === "translation";
      composerLabel.textContent = translating ? "Text to translate" : "Message";
      composer.placeholder = translating ? "A text in any language…" : "Ask anything…";
      defaultOption.textContent = defaultOption.dataset[translating ? "labelTranslation" : "labelGeneration"];
      codeShow();
    };

    const turnAdd = (role, text, who) => {
      const turn = document.createElement("div");
      turn.className = "pg-turn";
      turn.dataset.role = role;
      const name = document.createElement("div");
      name.className = "pg-who";
      name.textContent = who;
      const body = document.createElement("div");
      body.className = "pg-text";
      body.textContent = text;
      turn.append(name, body);
      log.append(turn);
      turn.scrollIntoView({ block: "nearest" });
      return turn;
    };

    const attemptsShow = (attempts) => {
      attempts = attempts || [];
      const failed = attempts.filter((attempt) => attempt.outcome !== "ok");
      const answered = attempts.find((attempt) => attempt.outcome === "ok");
      const list = fallback.querySelector("[data-fallback-list]");
      list.replaceChildren(...failed.map((attempt) => {
        const item = document.createElement("li");
        item.textContent = attemptText(attempt);
        return item;
      }));
      let summary;
      if (answered) summary = `${failed.map((attempt) => attempt.model).join(", ")} failed; ${answered.model} answered instead.`;
      else if (failed.length === 1) summary = `one model was tried, ${failed[0].model}, and it failed; no other model could take over.`;
      else summary = `${failed.length} models were tried in turn, and each failed.`;
      fallback.querySelector("[data-fallback-summary]").textContent = summary;
      fallback.hidden = failed.length === 0;
    };

    const routeShow = (route) => {
      stat("route").textContent = route ? `${route.policy}: ${route.reason}` : "–";
      const list = form.querySelector("[data-route-list]");
      list.replaceChildren(...(route?.candidates || []).map((candidate) => {
        const item = document.createElement("li");
        item.textContent = `${candidate.model}: ${candidate.outcome} (${candidate.reason})`;
        return item;
      }));
      form.querySelector("[data-route]").hidden = !route;
    };

    const errorShow = (message) => {
      error.textContent = message;
      error.hidden = false;
    };

    const busy = (on) => {
      send.disabled = on;
      stop.disabled = !on;
      send.toggleAttribute("aria-busy", on);
      log.toggleAttribute("aria-busy", on);
    };

    const reset = () => {
      error.hidden = true;
      fallback.hidden = true;
      for (const name of ["model", "tokens", "cost", "latency", "route"]) stat(name).textContent = "–";
      form.querySelector("[data-route]").hidden = true;
    };

    form.addEventListener("change", (event) => {
      if (event.target.name === "task") taskShow();
      else codeShow();
    });
    form.addEventListener("input", codeShow);
    composer.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        if (!send.disabled) form.requestSubmit(send);
      }
    });
    stop.addEventListener("click", () => controller?.abort());
    form.querySelector("[data-new-chat]").addEventListener("click", () => {
      controller?.abort();
      history.length = 0;
      log.replaceChildren();
      reset();
      codeShow();
      composer.focus();
    });
    for (const button of form.querySelectorAll("[data-code-lang]")) {
      button.addEventListener("click", () => {
        codeLanguage = button.dataset.codeLang;
        codeShow();
      });
    }
    form.querySelector("[data-code-copy]").addEventListener("click", async (event) => {
      try {
        await navigator.clipboard.writeText(codeText.textContent);
        event.target.textContent = "Copied";
      } catch {
        event.target.textContent = "Select and copy";
      }
      setTimeout(() => { event.target.textContent = "Copy"; }, 2000);
    });

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      reset();
      const text = composer.value.trim();
      if (!text) {
        errorShow(task() === "translation" ? "Type a text to translate first." : "Type a message first.");
        composer.focus();
        return;
      }
      const current = request(text);
      if (current.task === "translation" && !current.body.target_language) {
        errorShow("Target language: give one, e.g. fr or pt-BR.");
        field("target_language").focus();
        return;
      }
      if (current.task === "generation" && !modelSelect.value) delete current.body.model;  // the server resolves it
      const userTurn = turnAdd("user", text, current.task === "translation" ? "Text" : "You");
      const answerTurn = turnAdd("assistant", "", "…");
      const answerText = answerTurn.querySelector(".pg-text");
      answerText.dataset.answer = "";
      composer.value = "";
      controller = new AbortController();
      busy(true);
      let reply = "";
      let finished = false;
      try {
        const response = await fetch(form.action, {
          method: "POST",
          body: JSON.stringify({ task: current.task, ...current.body }),
          headers: { Accept: "text/event-stream", "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
          credentials: "same-origin",
          signal: controller.signal,
        });
        const type = response.headers.get("content-type") || "";
        if (!response.ok || !type.startsWith("text/event-stream")) {
          const body = type.includes("json") ? await response.json().catch(() => null) : null;
          const status = response.ok ? 403 : response.status;  // a login page instead of a stream: the session ended
          errorShow(friendlyError(status, body?.error));
          if (body?.error?.attempts) attemptsShow(body.error.attempts);
          userTurn.remove();
          answerTurn.remove();
          composer.value = text;  // nothing was sent: the message is back to be retried
          return;
        }
        for await (const message of sseEvents(response)) {
          if (message.data === "[DONE]") continue;
          const data = JSON.parse(message.data);
          if (message.name === "meta") {
            stat("model").textContent = `${data.display_name} · ${data.model}`;
            answerTurn.querySelector(".pg-who").textContent = data.display_name;
            attemptsShow(data.attempts);
            routeShow(data.route);
          } else if (message.name === "summary") {
            finished = true;
            stat("tokens").textContent = `${data.input_tokens} / ${data.output_tokens}${data.estimated ? " (estimated)" : ""}`;
            stat("cost").textContent = `$${data.cost}`;
            stat("latency").textContent = `${Math.round(data.latency_ms)} ms` +
              (data.ttft_ms != null ? ` (first token ${Math.round(data.ttft_ms)} ms)` : "");
            // Thumbs on the answer (static/llmhub/feedback.js): they feed the router's learned preferences.
            if (data.request_id) window.llmhubFeedback?.attach(answerTurn, data.request_id);
          } else if (data.error) {
            errorShow(`The answer broke off: ${data.error.message}`);
          } else {
            for (const choice of data.choices || []) reply += choice.delta?.content || "";
            answerText.textContent = reply;
          }
        }
      } catch (failure) {
        if (failure.name === "AbortError") {
          answerTurn.dataset.stopped = "";
          const note = document.createElement("div");
          note.className = "pg-note muted";
          note.textContent = "Stopped: the rest was not generated (the usage log records a partial answer).";
          answerTurn.append(note);
          stat("tokens").textContent = "stopped";
        } else {
          errorShow("The connection to llmhub was lost: " + failure.message + ". Try again.");
        }
      } finally {
        controller = null;
        busy(false);
        if (current.task === "generation" && answerTurn.isConnected) {
          history.push({ role: "user", content: text }, { role: "assistant", content: reply });
        }
        if (!finished && !reply && answerTurn.isConnected && !answerTurn.hasAttribute("data-stopped")) {
          answerText.textContent = "(no answer)";
        }
        codeShow();
        composer.focus();
      }
    });

    taskShow();
  }

  document.addEventListener("DOMContentLoaded", () => {
    menuSetUp();
    statusPoll();
    for (const panel of document.querySelectorAll("[data-follow-test]")) {  // a model just added: its first test
      getJSON(panel.dataset.followTest).then((payload) => testFollow(panel, payload))
        .catch((error) => console.warn("test follow failed", error));
    }
    const filters = document.querySelector("form[data-model-filters]");
    if (filters) modelFilters(filters);
    const form = document.querySelector("form[data-playground]");
    if (form) playground(form);
  });
})();
