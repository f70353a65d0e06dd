// Neuron dashboards (lens_pipeline/corpus/neurons.py): pick a layer and neuron of a model's shared
// basis, or type "L12 N345"; see its top contexts as coloured tokens, its histogram, the fraction of
// tokens where it is active and the tokens it promotes and suppresses. The server sends every value
// and colour; this module only draws them.
import { api, legendBar } from "./data.js";
import { emptyView } from "./steps.js";
import { el, formatValue, go, hashFor, hideTooltip, select, showTooltip, tipRow } from "./util.js";

function contextRow(data, context, index) {
  const spans = context.tokens.map((_, i) => {
    const position = context.first + i;
    const span = el("span", { class: "tv", dataset: { position, value: String(context.acts[i]) }, text: context.inline[i] });
    span.style.background = context.colors[i];
    span.style.color = context.text_colors[i];
    if (position === context.position) span.classList.add("peak");
    span.addEventListener("mousemove", (event) => showTooltip(event, el("div", { class: "tip" },
      tipRow("token", el("code", { class: "tok", text: context.shown_tokens[i] }), el("span", { class: "muted", text: ` #${position}` })),
      tipRow("activation", el("strong", { text: formatValue(context.acts[i]) })))));
    span.addEventListener("mouseleave", hideTooltip);
    return span;
  });
  const link = hashFor({ view: "tokens", model: data.model, prompt: context.prompt_hash, settings: context.settings_id,
                         value: "neuron", layer: data.layer, neuron: data.neuron });
  return el("tr", { class: "context", dataset: { rank: index, prompt: context.prompt_hash, position: context.position, value: String(context.value) } },
    el("td", { class: "num", text: formatValue(context.value) }),
    el("td", { class: "token-flow" }, spans),
    el("td", {}, el("a", { href: link, class: "jump", text: "prompt" })));
}

function histogram(data) {
  const top = Math.max(1, ...data.hist);
  return el("div", { class: "histogram", "aria-label": "activation histogram" },
    data.hist.map((count, i) => {
      const bar = el("span");
      bar.style.height = `${(100 * count) / top}%`;  // CSSOM: the page's Content-Security-Policy refuses style attributes
      return el("div", { class: "hist-bar", dataset: { bin: i, count }, title: `${data.hist_labels[i]}: ${count}` }, bar);
    }));
}

function effects(list, title) {
  return el("div", { class: "effects" }, el("h3", { text: title }),
    el("ol", {}, (list || []).map(([id, str, value]) => el("li", { dataset: { token: id } },
      el("code", { class: "tok", text: JSON.stringify(str) }), el("span", { class: "muted", text: ` ${formatValue(value)}` })))));
}

export async function neurons(main, params) {
  const p = Object.fromEntries(params);
  const listing = await api("neurons", { model: p.model });
  if (!listing.models.length) {
    main.replaceChildren(await emptyView("Neurons", "neurons") || el("p", { class: "empty", text: "No neuron dashboards." }));
    return;
  }
  const model = listing.models.includes(p.model) ? p.model : listing.models[0];
  const basis = model === p.model ? listing : await api("neurons", { model });
  const layers = basis.layers.map((row, l) => [l, `layer ${l}`, !row.length]);
  const layer = basis.layers[Number(p.layer)] ? Number(p.layer) : 0;
  const ids = basis.layers[layer].map((n) => n.neuron);
  const neuron = ids.includes(Number(p.neuron)) ? Number(p.neuron) : ids[0];
  const set = (changes) => go(Object.assign({ view: "neurons", model, layer, neuron }, changes));
  const search = el("input", { type: "search", name: "find", placeholder: "L12 N345", "aria-label": "Find a neuron" });
  search.addEventListener("change", () => {
    const match = /^\s*L?(\d+)\D+(\d+)\s*$/i.exec(search.value);
    if (match) set({ layer: match[1], neuron: match[2] });
  });
  const body = el("div", { class: "neuron-body" }, el("p", { class: "muted", text: "Loading…" }));
  main.replaceChildren(el("div", { class: "page" },
    el("h1", { text: "Neuron dashboards" }),
    el("p", { class: "muted", text: `${model} · ${basis.prompts} prompts · ${basis.tokens} tokens · basis: ${basis.basis.method || "from the caches"}` }),
    el("div", { class: "toolbar" },
      select("Model", "model", listing.models.map((m) => [m, m]), model, (v) => go({ view: "neurons", model: v })),
      select("Layer", "layer", layers, layer, (v) => set({ layer: v, neuron: null })),
      select("Neuron", "neuron", basis.layers[layer].map((n) => [n.neuron, `${n.neuron} (max ${formatValue(n.max)})`]), neuron, (v) => set({ neuron: v })),
      el("label", { class: "field" }, el("span", { text: "Find" }), search)),
    body));
  const data = await api("neuron", { model, layer, neuron });
  body.replaceChildren(
    el("h2", { dataset: { layer: data.layer, neuron: data.neuron }, text: `L${data.layer} N${data.neuron}` }),
    el("p", {}, el("span", { class: "active-fraction", dataset: { value: String(data.active_fraction) },
      text: `active (> ${data.active_above}) on ${(100 * data.active_fraction).toFixed(2)}% of ${data.tokens} tokens` })),
    el("div", { class: "legend" }, el("span", { class: "muted", text: formatValue(data.vmin) }), legendBar(data.cmap),
      el("span", { class: "muted", text: formatValue(data.vmax) })),
    el("table", { class: "contexts" }, el("tbody", {}, data.contexts.map((c, i) => contextRow(data, c, i)))),
    el("h3", { text: "Activation histogram (every token but each prompt's first, signed power-of-two bins)" }), histogram(data),
    data.effects ? el("div", { class: "effect-lists" }, effects(data.effects.promote, "Promotes (direct effect)"),
      effects(data.effects.suppress, "Suppresses")) : el("p", { class: "muted", text: "No direct effects recorded." }));
}
