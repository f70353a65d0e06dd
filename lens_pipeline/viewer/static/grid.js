// The figure grid: filters (all in the URL) and a lazily loaded, server-paged grid of cards.
import { FACTS, SUMMARY, api } from "./data.js";
import { figureCard } from "./figures.js";
import { el, go, pager, readHash, searchBox, select } from "./util.js";

const PAGE_SIZE = 60;

export function grid(main, params) {
  const state = Object.fromEntries(params);
  const results = el("section", { class: "results" });
  const count = el("p", { class: "muted count", "data-total": "" });
  const models = SUMMARY.models.map((m) => [m.name, `${m.name} (${m.figures})`]);
  const functions = SUMMARY.functions.map((f) => [f.name, `${f.name} (${f.count})`]);
  const set = (key, value) => go(Object.assign({}, Object.fromEntries(readHash()), { view: "grid", [key]: value }), true);
  // The first status ("shown") is the default, so it travels as no parameter at all.
  const statuses = FACTS.figure_statuses.map(([name, label], i) => [i ? name : "", label]);
  const filters = el("aside", { class: "filters" },
    el("h2", { text: "Filter" }),
    select("Model", "model", [["", "all models"], ...models], state.model, (v) => set("model", v)),
    searchBox(state.q, (v) => set("q", v)),
    state.prompt ? el("div", { class: "chip" }, el("span", { text: `prompt ${state.prompt}` }),
      el("button", { type: "button", class: "link", "aria-label": "clear prompt", text: "×", onclick: () => set("prompt", "") })) : null,
    select("Function", "function", [["", "all functions"], ...functions], state.function, (v) => set("function", v)),
    el("div", { class: "field-row" },
      select("Layer", "layer", [["", "any"], ...SUMMARY.layers.map((l) => [l, l])], state.layer, (v) => set("layer", v)),
      select("Head", "head", [["", "any"], ...SUMMARY.heads.map((h) => [h, h])], state.head, (v) => set("head", v))),
    select("Status", "status", statuses, state.status, (v) => set("status", v)),
    el("button", { type: "button", class: "secondary", text: "Clear filters", onclick: () => go({ view: "grid" }) }),
    el("p", { class: "hint muted", text: "Tip: the address bar holds every filter, so a view can be shared." }));

  main.replaceChildren(el("div", { class: "layout" }, filters, el("div", { class: "content" }, count, results)));

  if (!SUMMARY.index_exists) {
    results.append(el("div", { class: "empty" }, el("h2", { text: "No index yet" }),
      el("p", { text: "This save path has no index.jsonl. Run python -m lens_pipeline.activations, then python -m lens_pipeline.figures." })));
    return null;
  }
  if (!SUMMARY.n_figures && !SUMMARY.n_skipped) {
    results.append(el("div", { class: "empty" }, el("h2", { text: "No figures yet" }),
      el("p", {}, "Run python -m lens_pipeline.figures to draw them. Meanwhile the ",
        el("a", { href: "#view=prompts", text: "prompts" }), " page opens every cached head interactively.")));
    return null;
  }
  const cards = el("div", { class: "grid" });
  const sentinel = el("div", { class: "sentinel muted", text: "Loading…" });
  results.append(cards, sentinel);
  const query = { model: state.model, q: state.q, prompt: state.prompt, function: state.function,
                  layer: state.layer, head: state.head, status: state.status };
  return pager(cards, sentinel,
    (offset) => api("figures", Object.assign({ offset, limit: PAGE_SIZE }, query)),
    figureCard,
    (total) => {
      count.textContent = `${total.toLocaleString()} figure${total === 1 ? "" : "s"}`;
      count.dataset.total = total;
      if (!total) sentinel.replaceWith(el("p", { class: "empty", text: "No figure matches these filters." }));
    });
}
