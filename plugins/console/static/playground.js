// The Playground: chat with a model through the public API, streaming, with the user's key.
"use strict";

const KEY_STORAGE = "inferegator.playground.key";
const NEW_KEY_STORAGE = "inferegator.newKey";

function storageGet(name) {
  try {
    return window.sessionStorage.getItem(name);
  } catch (err) {
    return null;
  }
}

function storageSet(name, value) {
  try {
    if (value) window.sessionStorage.setItem(name, value);
    else window.sessionStorage.removeItem(name);
  } catch (err) {
    // Storage refused (private mode, quota): the key just is not remembered.
  }
}

function formatUsd(value) {
  return "$" + value.toLocaleString("en-US", { maximumSignificantDigits: 6 });
}

function formatCount(value) {
  return value.toLocaleString("en-US");
}

// The message of an OpenAI-shaped error body ({"error": {"message": ...}}), else the text.
async function errorMessage(response) {
  const text = await response.text().catch(() => "");
  let message = "";
  try {
    const body = JSON.parse(text);
    const error = body && typeof body === "object" ? body.error || body : null;
    if (error && typeof error.message === "string") message = error.message;
    else if (typeof error === "string") message = error;
  } catch (err) {
    message = text.trim().slice(0, 300);
  }
  return `Error ${response.status}${response.statusText ? " " + response.statusText : ""}` +
    (message ? `: ${message}` : ".");
}

// Yields the JSON payload of each "data:" line of a server-sent event stream; stops at [DONE].
async function* sseEvents(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
      const lines = buffer.split("\n");
      buffer = done ? "" : lines.pop();
      for (const raw of lines) {
        const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        if (data) yield JSON.parse(data);
      }
      if (done) return;
    }
  } finally {
    reader.releaseLock();
  }
}

function setup() {
  const root = document.getElementById("playground");
  if (!root) return;
  const $ = (id) => document.getElementById(id);
  const form = $("pg-form");
  const model = $("pg-model");
  const keyInput = $("pg-key");
  const system = $("pg-system");
  const maxTokens = $("pg-max-tokens");
  const prompt = $("pg-prompt");
  const send = $("pg-send");
  const stop = $("pg-stop");
  const clear = $("pg-clear");
  const log = $("pg-log");
  const status = $("pg-status");
  const ttft = $("pg-ttft");
  const tokens = $("pg-tokens");
  const cost = $("pg-cost");
  const apiBase = (root.dataset.apiBase || "/v1").replace(/\/+$/, "");

  const messages = []; // the conversation so far, without the system prompt
  let controller = null;
  let conversation = 0; // bumped by "New conversation": a late answer is then dropped

  const fresh = storageGet(NEW_KEY_STORAGE);
  if (fresh) {
    storageSet(NEW_KEY_STORAGE, null);
    storageSet(KEY_STORAGE, fresh);
  }
  keyInput.value = fresh || storageGet(KEY_STORAGE) || "";
  keyInput.addEventListener("input", () => storageSet(KEY_STORAGE, keyInput.value.trim()));

  function say(text, isError = false) {
    status.textContent = text;
    status.className = isError ? "notice error" : "";
  }

  function busy(on) {
    send.disabled = on;
    stop.disabled = !on;
    log.setAttribute("aria-busy", on ? "true" : "false");
  }

  function addTurn(who, text, className) {
    const empty = $("pg-empty");
    if (empty) empty.remove();
    const turn = document.createElement("div");
    turn.className = "pg-turn";
    const label = document.createElement("p");
    label.className = "who-said";
    label.textContent = who;
    const content = document.createElement("div");
    content.className = className;
    content.textContent = text;
    turn.append(label, content);
    log.append(turn);
    return content;
  }

  function newAnswer(modelId) {
    const previous = $("pg-answer");
    if (previous) previous.removeAttribute("id");
    const answer = addTurn(`Assistant · ${modelId}`, "", "pg-answer");
    answer.id = "pg-answer";
    return answer;
  }

  function prices() {
    const option = model.selectedOptions[0];
    const price = (name) => Number.parseFloat(option ? option.dataset[name] : "") || 0;
    return { prompt: price("prompt"), completion: price("completion"), cached: price("cached") };
  }

  function showUsage(usage, price) {
    const promptTokens = usage.prompt_tokens || 0;
    const completionTokens = usage.completion_tokens || 0;
    const details = usage.prompt_tokens_details;
    const cached = Math.min((details && details.cached_tokens) || 0, promptTokens);
    tokens.textContent = `${formatCount(promptTokens)} prompt + ${formatCount(completionTokens)}` +
      ` completion = ${formatCount(promptTokens + completionTokens)}` +
      (cached ? ` (${formatCount(cached)} cached)` : "");
    const usd = ((promptTokens - cached) * price.prompt + cached * price.cached +
      completionTokens * price.completion) / 1e6;
    cost.textContent = formatUsd(usd);
    cost.dataset.usd = String(usd);
  }

  async function run() {
    const key = keyInput.value.trim();
    const text = prompt.value;
    if (!model.value) {
      say("No model to call: this service has none configured.", true);
      return;
    }
    if (!key) {
      say("Paste one of your API keys first.", true);
      keyInput.focus();
      return;
    }
    if (!text.trim()) {
      say("Type a message first.", true);
      prompt.focus();
      return;
    }
    const modelId = model.value;
    const price = prices();
    const body = {
      model: modelId,
      messages: [
        ...(system.value.trim() ? [{ role: "system", content: system.value }] : []),
        ...messages,
        { role: "user", content: text },
      ],
      stream: true,
      stream_options: { include_usage: true },
    };
    const limit = Number.parseInt(maxTokens.value, 10);
    if (Number.isInteger(limit) && limit > 0) body.max_tokens = limit;

    const question = addTurn("You", text, "pg-question");
    const answer = newAnswer(modelId);
    const current = conversation;
    prompt.value = "";
    ttft.textContent = "—";
    tokens.textContent = "—";
    cost.textContent = "—";
    delete cost.dataset.usd;
    say("Sending…");
    busy(true);
    controller = new AbortController();
    const started = performance.now();
    let first = null;
    let finish = null;
    let usage = null;
    try {
      const response = await fetch(`${apiBase}/chat/completions`, {
        method: "POST",
        headers: {
          "Authorization": `Bearer ${key}`,
          "Content-Type": "application/json",
          "Accept": "text/event-stream",
        },
        body: JSON.stringify(body),
        signal: controller.signal,
        credentials: "omit",
      });
      if (!response.ok) throw new Error(await errorMessage(response));
      if (!response.body) throw new Error("This browser cannot read a streamed response.");
      say("Answering…");
      for await (const chunk of sseEvents(response.body)) {
        if (chunk.error) {
          throw new Error(chunk.error.message || "The model failed while answering.");
        }
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          const content = choice.delta && choice.delta.content;
          if (content) {
            if (first === null) {
              first = performance.now();
              ttft.textContent = `${Math.round(first - started)} ms`;
            }
            answer.append(content);
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
      messages.push({ role: "user", content: text }, { role: "assistant", content: answer.textContent });
      if (usage) showUsage(usage, price);
      if (first === null) answer.textContent = "(no text in the answer)";
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      say(finish === "length" ? `Stopped at the token limit after ${seconds} s.` : `Done in ${seconds} s.`);
    } catch (err) {
      if (current !== conversation) return;
      if (err.name === "AbortError") {
        if (answer.textContent) {
          messages.push({ role: "user", content: text }, { role: "assistant", content: answer.textContent });
        } else {
          answer.closest(".pg-turn").remove();
          question.closest(".pg-turn").remove();
          if (!prompt.value) prompt.value = text;
        }
        say("Stopped.");
      } else {
        if (!answer.textContent) {
          answer.closest(".pg-turn").remove();
          question.closest(".pg-turn").remove();
        }
        if (!prompt.value) prompt.value = text;
        const message = err instanceof TypeError
          ? `Could not reach the API (${err.message}).`
          : err instanceof SyntaxError ? "The API sent a response this page could not read." : err.message;
        say(message, true);
      }
    } finally {
      controller = null;
      busy(false);
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!controller) run();
  });
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  stop.addEventListener("click", () => {
    if (controller) controller.abort();
  });
  clear.addEventListener("click", () => {
    conversation += 1;
    if (controller) controller.abort();
    messages.length = 0;
    log.replaceChildren();
    ttft.textContent = "—";
    tokens.textContent = "—";
    cost.textContent = "—";
    delete cost.dataset.usd;
    say("New conversation.");
    prompt.focus();
  });
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setup);
else setup();
