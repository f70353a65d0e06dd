// A notebook widget (anywidget): one of the viewer's views (head, overview, tokens, predictions)
// drawn by the viewer's own modules, in a shadow root so the notebook's styles and the viewer's
// stay apart. Answers come from the widget state (those Python embedded for the first view, so a
// saved notebook still shows it without a kernel), else from the kernel by custom message
// (lens_pipeline/notebook/show.py answers with the viewer's API). Links between views stay in the widget,
// with a back button.
import { start } from "./app.js";
import { ApiError, answerKey, unpack } from "./data.js";
import { el, hashFor } from "./util.js";

const TIMEOUT_MS = 120000;

function kernelSource(model) {
  const waiting = new Map();
  let next = 0;
  const onMessage = (message) => {
    if (!message || message.type !== "answer" || !waiting.has(message.id)) return;
    waiting.get(message.id)(message);
    waiting.delete(message.id);
  };
  model.on("msg:custom", onMessage);
  function ask(path, params) {
    const kept = (model.get("answers") || {})[answerKey(path, params)];
    if (kept) return Promise.resolve(kept);
    const id = ++next;
    return new Promise((resolve, reject) => {
      waiting.set(id, resolve);
      model.send({ type: "api", id, path, params });
      setTimeout(() => {
        if (waiting.delete(id)) reject(new ApiError(`No answer from the kernel for ${path}: is it still running?`));
      }, TIMEOUT_MS);
    });
  }
  return {
    async api(path, params) {
      const answer = await ask(path, params);
      if (answer.error !== undefined) throw new ApiError(answer.error);
      return unpack(answer.body);
    },
    text: async (file) => { throw new ApiError(`${file.path}: a notebook view opens no saved files`); },
    offers: (path) => (model.get("routes") || []).includes(path),
    stop: () => model.off("msg:custom", onMessage),
  };
}

// The view state lives in the widget; `go` keeps the previous view for the back button.
function widgetNavigator(first, back) {
  let hash = first;
  const earlier = [];
  const listeners = [];
  const show = () => {
    back.hidden = !earlier.length;
    listeners.forEach((listener) => listener());
  };
  back.addEventListener("click", () => {
    if (!earlier.length) return;
    hash = earlier.pop();
    show();
  });
  return {
    read: () => hash,
    go(next, replace) {
      if (next === hash) return;
      if (!replace) earlier.push(hash);
      hash = next;
      show();
    },
    note: (next) => { hash = next; },
    listen: (listener) => listeners.push(listener),
  };
}

export function render({ model, el: host }, style) {
  // Keys pressed in the widget are its own (JupyterLab's shortcuts skip elements marked so).
  host.setAttribute("data-lm-suppress-shortcuts", "true");
  const root = host.attachShadow({ mode: "open" });
  const back = el("button", { type: "button", class: "secondary widget-back", text: "← back", hidden: true });
  const frame = el("div", { class: "lens-widget", tabindex: "0" },
    el("div", { class: "widget-bar" }, back, el("span", { class: "muted small", text: "lens_pipeline" })),
    el("div", { id: "banner", class: "banner", role: "alert", hidden: true }),
    el("main", { id: "main", "aria-live": "polite" }, el("p", { class: "muted pad", text: "Loading…" })),
    el("div", { id: "tooltip", class: "tooltip", role: "tooltip", hidden: true }));
  const sheet = document.createElement("style");
  sheet.textContent = style;
  root.append(sheet, frame);
  const params = model.get("params") || {};
  const navigator = widgetNavigator(hashFor(params), back);
  // In-widget links (#view=...) change the widget's view, never the notebook page's address.
  root.addEventListener("click", (event) => {
    const link = event.composedPath().find((node) => node.tagName === "A");
    const href = link && link.getAttribute("href");
    if (!href || !href.startsWith("#")) return;
    event.preventDefault();
    navigator.go(href, false);
  });
  const source = kernelSource(model);
  start({ root, source, navigator, fallback: params.view });
  return () => source.stop();
}
