// Side by side: a figure (or, without a figure function, the head drawn from each current cache)
// across models or layers; or one head of several prompts (across=prompts&prompts=HASH,HASH).
import { api } from "./data.js";
import { figureImage, figureLink, staleBadge } from "./figures.js";
import { Heatmap } from "./heatmap.js";
import { el, errorBox, hashFor, headLabel, promptTitle, range } from "./util.js";

export async function compare(main, params) {
  const p = Object.fromEntries(params);
  const across = ["layers", "prompts"].includes(p.across) ? p.across : "models";
  const layer = p.layer === undefined || p.layer === "" ? null : Number(p.layer);
  const head = p.head === undefined || p.head === "" ? null : Number(p.head);
  const panels = el("div", { class: "compare" });
  const otherAcross = across === "models" ? "layers" : "models";
  if (across === "prompts") return comparePrompts(main, p, layer ?? 0, head ?? 0);
  const page = el("div", { class: "page" },
    el("h1", {}, `Compare across ${across} `, el("span", { class: "badge", text: [p.function, headLabel({ layer: across === "layers" ? null : layer, head })].filter(Boolean).join(" ") })),
    el("div", { class: "actions" }, el("a", { class: "button secondary", href: hashFor(Object.assign({}, p, { across: otherAcross })), text: `Compare across ${otherAcross} instead` })),
    panels);
  main.replaceChildren(page);
  if (p.function) {
    const result = await api("compare", { across, model: p.model, prompt: p.prompt, function: p.function, layer: p.layer, head: p.head });
    if (result.rows.length && result.rows[0].text) page.insertBefore(promptTitle(result.rows[0].text, p.prompt), panels);
    if (!result.rows.length) panels.append(el("p", { class: "empty", text: "No matching figures." }));
    result.rows.forEach((row) => panels.append(el("figure", { class: "panel", dataset: { model: row.model, layer: row.layer ?? "", status: row.status } },
      el("a", { href: figureLink(row) }, figureImage(row, "")),
      el("figcaption", {}, el("strong", { text: across === "models" ? row.model : `layer ${row.layer}` }), el("span", { class: "muted", text: ` ${headLabel(row)} ` }),
        staleBadge(row)))));
    return;
  }
  // No figure function: draw the head itself from each cache.
  const info = await api("cache", { model: p.model, prompt: p.prompt });
  page.insertBefore(promptTitle(info.text, info.prompt_hash), panels);
  const targets = across === "models"
    ? [{ model: info.model, prompt: info.prompt_hash, layer, head }, ...info.same_text.map((s) => ({ model: s.model, prompt: s.prompt_hash, layer, head }))]
    : range(info.n_layers).map((l) => ({ model: info.model, prompt: info.prompt_hash, layer: l, head }));
  if (across === "models" && targets.length === 1) panels.append(el("p", { class: "muted", text: "No other model has cached this prompt." }));
  const observer = new IntersectionObserver((entries) => entries.forEach((entry) => {
    if (!entry.isIntersecting) return;
    observer.unobserve(entry.target);
    entry.target.load();
  }), { rootMargin: "400px" });
  targets.forEach((t) => {
    const box = el("div", { class: "panel-body" }, el("p", { class: "muted", text: "Loading…" }));
    const panel = el("figure", { class: "panel", dataset: { model: t.model, layer: t.layer } }, box,
      el("figcaption", {}, el("a", { href: hashFor({ view: "head", model: t.model, prompt: t.prompt, layer: t.layer, head: t.head }) },
        el("strong", { text: across === "models" ? t.model : `layer ${t.layer}` })), el("span", { class: "muted", text: ` L${t.layer} H${t.head}` })));
    panel.load = async () => {
      try {
        const data = await api("pattern", t);
        const canvas = el("canvas", { class: "heatmap small" });
        box.replaceChildren(canvas);
        new Heatmap(canvas, { labels: data.shown_tokens, values: data.values, causal: data.causal }, { maxSize: 300, labels: data.shown_tokens.length <= 30 });
      } catch (error) {
        box.replaceChildren(errorBox(error.message));
      }
    };
    panels.append(panel);
    observer.observe(panel);
  });
  return () => observer.disconnect();
}

// One head of each prompt named in p.prompts, side by side, all drawn from their current caches.
async function comparePrompts(main, p, layer, head) {
  const prompts = (p.prompts || "").split(",").filter(Boolean);
  const info = await api("cache", { model: p.model, prompt: prompts[0] });
  const move = (changes) => hashFor(Object.assign({}, p, changes));
  const panels = el("div", { class: "compare" });
  main.replaceChildren(el("div", { class: "page" },
    el("h1", {}, "Compare prompts ", el("span", { class: "badge", text: headLabel({ layer, head }) })),
    el("div", { class: "actions" },
      el("a", { class: "button secondary", href: move({ layer: Math.max(0, layer - 1) }), text: "◀ layer" }),
      el("a", { class: "button secondary", href: move({ layer: Math.min(info.n_layers - 1, layer + 1) }), text: "layer ▶" }),
      el("a", { class: "button secondary", href: move({ head: Math.max(0, head - 1) }), text: "◀ head" }),
      el("a", { class: "button secondary", href: move({ head: Math.min(info.n_heads - 1, head + 1) }), text: "head ▶" })),
    panels));
  for (const prompt of prompts) {
    const box = el("div", { class: "panel-body" }, el("p", { class: "muted", text: "Loading…" }));
    const meta = prompt === prompts[0] ? info : await api("cache", { model: p.model, prompt });
    panels.append(el("figure", { class: "panel", dataset: { prompt, layer, head } }, box,
      el("figcaption", {}, el("a", { href: hashFor({ view: "head", model: p.model, prompt, layer, head }), text: meta.text }))));
    const data = await api("pattern", { model: p.model, prompt, layer, head });
    const canvas = el("canvas", { class: "heatmap small" });
    box.replaceChildren(canvas);
    new Heatmap(canvas, { labels: data.shown_tokens, values: data.values, causal: data.causal }, { maxSize: 300, labels: data.shown_tokens.length <= 30 });
  }
}
