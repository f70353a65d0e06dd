// Every head of one layer, or every layer × head of a prompt (bertviz's "model view"), as small
// heatmaps of the exact cached weights, each loaded as it scrolls into view; click one to open it.
import { api, openCache } from "./data.js";
import { settingsLine } from "./figures.js";
import { Heatmap } from "./heatmap.js";
import { clampInt, el, errorBox, go, hashFor, promptTitle, range, select } from "./util.js";

const SIZE = { layer: 260, all: 84 };  // CSS pixels of each heatmap

export async function overview(main, params) {
  const p = Object.fromEntries(params);
  const { info, settings } = await openCache(p);
  const one = p.layer !== undefined && p.layer !== "";
  const layer = one ? clampInt(p.layer, 0, info.n_layers - 1) : null;
  const size = one ? SIZE.layer : SIZE.all;
  const where = { model: info.model, prompt: info.prompt_hash, settings };
  const cells = el("div", { class: `overview ${one ? "one-layer" : "all-layers"}`, role: "grid",
                            "aria-label": one ? `heads of layer ${layer}` : "layers × heads" });
  cells.style.setProperty("--heads", info.n_heads);
  const observer = new IntersectionObserver((entries) => entries.forEach((entry) => {
    if (!entry.isIntersecting) return;
    observer.unobserve(entry.target);
    entry.target.load();
  }), { rootMargin: "300px" });

  function cell(l, h) {
    const box = el("div", { class: "overview-body" });
    const link = el("a", { class: "overview-cell", role: "gridcell", href: hashFor(Object.assign({ view: "head", layer: l, head: h }, where)),
                           title: `open layer ${l}, head ${h}`, dataset: { layer: l, head: h } },
      box, el("span", { class: "overview-label", text: one ? `head ${h}` : `H${h}` }));
    link.load = async () => {
      try {
        const data = await api("pattern", Object.assign({ layer: l, head: h }, where));
        const canvas = el("canvas", { class: "heatmap small", dataset: { layer: l, head: h } });
        box.replaceChildren(canvas);
        new Heatmap(canvas, { labels: data.shown_tokens, values: data.values, causal: data.causal }, { maxSize: size, labels: one });
      } catch (error) {
        box.replaceChildren(errorBox(error.message));
      }
    };
    observer.observe(link);
    return link;
  }

  for (const l of one ? [layer] : range(info.n_layers)) {
    cells.append(el("span", { class: "overview-layer", text: `L${l}` }), ...range(info.n_heads).map((h) => cell(l, h)));
  }
  main.replaceChildren(el("div", { class: "page" },
    el("h1", {}, one ? "Attention heads of a layer " : "Attention: layers × heads ",
      el("span", { class: "badge", text: one ? `L${layer}` : `${info.n_layers} × ${info.n_heads}` })),
    el("p", { class: "muted", text: `${info.model} · ${info.n_tokens} tokens · rows: query tokens, columns: key tokens; click a head to open it` }),
    promptTitle(info.text, info.prompt_hash),
    settingsLine(info),
    el("div", { class: "toolbar" },
      select("Layer", "layer", [["", "all layers"], ...range(info.n_layers).map((l) => [l, l])], one ? layer : "",
        (v) => go(Object.assign({ view: "overview", layer: v }, where), true))),
    cells));
  return () => observer.disconnect();
}
