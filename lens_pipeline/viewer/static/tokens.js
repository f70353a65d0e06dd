// Tokens coloured by one value per token. The server computes everything shown here: the values,
// their colours and text colours, the range, the title (lens_pipeline/draw/token_values.py).
import { api, legendBar, openCache, valueKind } from "./data.js";
import { otherSettings, settingsLine } from "./figures.js";
import { el, formatValue, go, hashFor, hideTooltip, promptTitle, select, showTooltip, tipRow } from "./util.js";

function tokenSpan(data, i) {
  const v = data.values[i];
  const span = el("span", { class: "tv", dataset: { index: i, value: String(v) }, text: data.inline[i] });
  span.style.background = data.colors[i];
  span.style.color = data.text_colors[i];
  span.addEventListener("mousemove", (event) => showTooltip(event, el("div", { class: "tip" },
    tipRow("token", el("code", { class: "tok", text: data.shown_tokens[i] }), el("span", { class: "muted", text: ` #${i}` })),
    tipRow("value", el("strong", { dataset: { field: "value", value: String(v) }, text: formatValue(v) })),
    data.shown_labels ? tipRow(data.label_name, el("code", { class: "tok", text: data.shown_labels[i] })) : null)));
  span.addEventListener("mouseleave", hideTooltip);
  return span;
}

export async function tokens(main, params) {
  const p = Object.fromEntries(params);
  const { info, settings } = await openCache(p);
  // What this cache offers; a kind it cannot give stays in the menu, disabled, with the reason.
  const offered = info.value_kinds.filter((kind) => !kind.reason);
  const choice = offered.find((kind) => kind.name === p.value) || offered[0];
  const value = choice.name;
  const layers = choice.layers || [];
  const layer = layers.some(([l]) => String(l) === p.layer) ? Number(p.layer) : (layers.length ? layers[0][0] : null);
  const neurons = choice.by_neuron ? info.neuron_ids[layer] : [];
  const neuron = choice.by_neuron ? (neurons.includes(Number(p.neuron)) ? Number(p.neuron) : neurons[0]) : null;
  const ranges = choice.ranges || [];
  const colourRange = ranges.some(([name]) => name === p.range) ? p.range : (ranges.length ? ranges[0][0] : null);
  const set = (changes) => go(Object.assign({ view: "tokens", model: info.model, prompt: info.prompt_hash, settings, value, layer,
                                              neuron, range: p.range }, changes), true);
  const kinds = info.value_kinds.map((kind) => [kind.name, kind.reason ? `${kind.label} (not available)` : kind.label, Boolean(kind.reason)]);
  const missing = info.value_kinds.filter((kind) => kind.reason);
  const body = el("div", { class: "token-flow", "aria-label": "tokens coloured by value" });
  const legend = el("div", { class: "legend" });
  main.replaceChildren(el("div", { class: "page" },
    el("h1", { text: "Token values" }),
    el("p", { class: "muted", text: `${info.model} · ${info.n_tokens} tokens` }),
    promptTitle(info.text, info.prompt_hash),
    settingsLine(info),
    otherSettings(info, "tokens", { value }),
    info.note ? el("p", { class: "note", text: info.note }) : null,
    el("div", { class: "toolbar" },
      select("Value", "value", kinds, value, (v) => set({ value: v, neuron: null })),
      layers.length ? select("Layer", "layer", layers, layer, (v) => set({ layer: v, neuron: null })) : null,
      choice.by_neuron ? select("Neuron", "neuron", neurons.map((n) => [n, n]), neuron, (v) => set({ neuron: v })) : null,
      ranges.length ? select("Colour range", "range", ranges, colourRange, (v) => set({ range: v })) : null,
      el("a", { class: "button secondary", href: hashFor({ view: "head", model: info.model, prompt: info.prompt_hash, settings,
                                                          layer: Math.min(layer ?? 0, info.n_layers - 1), head: 0 }), text: "Attention heads" })),
    missing.length ? el("p", { class: "muted small unavailable" },
      missing.map((kind) => el("span", { dataset: { value: kind.name }, text: `${kind.label}: ${kind.reason}. ` }))) : null,
    legend, body));
  const data = await api("tokens", { model: info.model, prompt: info.prompt_hash, settings, value, layer, neuron, range: colourRange });
  const kind = valueKind(value);
  legend.replaceChildren(el("span", { class: "legend-title", text: data.title }),
    el("span", { class: "muted", text: formatValue(data.vmin) }), legendBar(data.cmap),
    el("span", { class: "muted", text: `${formatValue(data.vmax)} ${kind ? kind.unit : ""}` }),
    // replaceChildren writes a null as the text "null": leave the note out instead
    ...(data.range_note ? [el("span", { class: "muted", text: `(colour range: ${data.range_note})` })] : []));
  body.replaceChildren(...data.values.map((_, i) => tokenSpan(data, i)));
}
