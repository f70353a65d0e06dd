// Prompts: every cached (model, prompt), its current cache's settings, and ways into the cache views.
import { SUMMARY, api } from "./data.js";
import { settingsLine } from "./figures.js";
import { el, errorBox, go, hashFor, pager, readHash, searchBox, select } from "./util.js";

const PAGE_SIZE = 60;

function promptCard(row) {
  return el("article", { class: "prompt-card", dataset: { model: row.model, prompt: row.prompt_hash } },
    el("div", { class: "prompt-meta" }, el("span", { class: "badge", text: row.model }),
      el("span", { class: "muted small", text: `${row.n_tokens ?? "?"} tokens · ${row.prompt_hash}` +
        (row.n_settings > 1 ? ` · cached with ${row.n_settings} settings` : "") })),
    el("p", { class: "prompt-text", text: row.text }),
    row.status !== "ok" ? errorBox(row.error || "this cache failed") : [
      settingsLine(row),
      el("div", { class: "actions" },
        el("a", { class: "button", href: hashFor({ view: "head", model: row.model, prompt: row.prompt_hash, layer: 0, head: 0 }), text: "Attention heads" }),
        el("a", { class: "button secondary", href: hashFor({ view: "tokens", model: row.model, prompt: row.prompt_hash }), text: "Token values" }),
        el("a", { class: "button secondary", href: hashFor({ view: "overview", model: row.model, prompt: row.prompt_hash }), text: "Layers × heads" }),
        el("a", { class: "button secondary", href: hashFor({ view: "predictions", model: row.model, prompt: row.prompt_hash }), text: "Predictions" }),
        row.explains ? el("a", { class: "button secondary", href: hashFor({ view: "why", model: row.model, prompt: row.prompt_hash }),
                                 text: "Why this token" }) : null,
        row.tests_causes ? el("a", { class: "button secondary", href: hashFor({ view: "cause", model: row.model, prompt: row.prompt_hash }),
                                     text: "Testing causes" }) : null,
        el("a", { class: "button secondary", href: hashFor({ view: "grid", model: row.model, prompt: row.prompt_hash }), text: "Figures" }))]);
}

export function prompts(main, params) {
  const state = Object.fromEntries(params);
  const set = (key, value) => go(Object.assign({}, Object.fromEntries(readHash()), { view: "prompts", [key]: value }), true);
  const count = el("p", { class: "muted count" });
  const list = el("div", { class: "prompt-list" });
  const sentinel = el("div", { class: "sentinel muted", text: "Loading…" });
  const filters = el("aside", { class: "filters" }, el("h2", { text: "Filter" }),
    select("Model", "model", [["", "all models"], ...SUMMARY.models.map((m) => [m.name, m.name])], state.model, (v) => set("model", v)),
    searchBox(state.q, (v) => set("q", v)));
  main.replaceChildren(el("div", { class: "layout" }, filters, el("div", { class: "content" }, count, list, sentinel)));
  return pager(list, sentinel, (offset) => api("prompts", { model: state.model, q: state.q, offset, limit: PAGE_SIZE }),
    promptCard, (total) => { count.textContent = `${total} cached prompt${total === 1 ? "" : "s"}`; });
}
