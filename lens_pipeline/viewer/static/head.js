// One attention head, drawn from the exact cached values of the current cache (or, with
// `settings`, of the cache made with those settings).
import { FACTS, api, legendBar, offers, openCache } from "./data.js";
import { otherSettings, settingsLine } from "./figures.js";
import { Heatmap } from "./heatmap.js";
import { clampInt, el, errorBox, formatValue, hashFor, note, onKeys, promptTitle, range, rgb, select } from "./util.js";

export async function head(main, params) {
  const p = Object.fromEntries(params);
  const { info, settings } = await openCache(p);
  const labels = info.shown_tokens;
  const state = { layer: clampInt(p.layer, 0, info.n_layers - 1), head: clampInt(p.head, 0, info.n_heads - 1),
                  scale: FACTS.scales.some(([name]) => name === p.scale) ? p.scale : FACTS.scales[0][0], token: p.token === undefined ? null : clampInt(p.token, 0, info.n_tokens - 1) };
  const patterns = new Map();
  const canvas = el("canvas", { class: "heatmap", "aria-label": "attention heatmap" });
  const status = el("div", { class: "heat-status", role: "status" });
  const title = el("h1", {});
  const chips = el("div", { class: "token-strip", "aria-label": "tokens: click one to highlight its row and column" });
  const detail = el("div", { class: "token-detail" });
  const nav = el("div", { class: "head-nav", role: "grid", "aria-label": "layers and heads" });
  const scaleSelect = select("Colour scale", "scale", FACTS.scales, state.scale,
    (v) => { state.scale = v; heatmap.options.scale = v; heatmap.paintCells(); heatmap.draw(); syncUrl(); });
  const layerSelect = select("Layer", "layer", range(info.n_layers).map((l) => [l, l]), state.layer, (v) => move(+v, state.head));
  const headSelect = select("Head", "head", range(info.n_heads).map((h) => [h, h]), state.head, (v) => move(state.layer, +v));
  const compareModels = el("a", { class: "button secondary", text: "Same head in other models" });
  const compareLayers = el("a", { class: "button secondary", text: "This head across layers" });
  const figuresLink = el("a", { class: "button secondary", text: "Figures of this head" });
  const layerLink = el("a", { class: "button secondary", text: "All heads of this layer" });
  const overviewLink = el("a", { class: "button secondary", text: "All layers × heads" });
  const maskedKey = el("span", { class: "masked-key" });
  maskedKey.style.background = rgb(FACTS.masked);

  labels.forEach((label, i) => chips.append(el("button", { type: "button", class: "chip-token", dataset: { index: i },
    title: `token #${i}`, text: label, onclick: () => choose(state.token === i ? null : i) })));
  for (let l = 0; l < info.n_layers; l++) {
    const rowEl = el("div", { class: "nav-row", role: "row" }, el("span", { class: "nav-label", text: `L${l}` }));
    for (let h = 0; h < info.n_heads; h++) {
      rowEl.append(el("button", { type: "button", class: "nav-cell", role: "gridcell", title: `layer ${l}, head ${h}`,
        dataset: { layer: l, head: h }, "aria-label": `layer ${l} head ${h}`, onclick: () => move(l, h) }));
    }
    nav.append(rowEl);
  }
  const heatmap = new Heatmap(canvas, { labels, values: labels.map(() => labels.map(() => 0)), causal: info.causal },
    { scale: state.scale, onSelect: (i) => choose(i) });

  main.replaceChildren(el("div", { class: "page" },
    title,
    el("p", { class: "muted", text: `${info.model} · ${info.family} · ${info.causal ? "causal" : "bidirectional"} · ${info.n_tokens} tokens` }),
    promptTitle(info.text, info.prompt_hash),
    settingsLine(info),
    otherSettings(info, "head", { layer: state.layer, head: state.head }),
    el("div", { class: "toolbar" }, layerSelect, headSelect, scaleSelect,
      el("span", { class: "hint muted" }, "keys: ", el("kbd", { text: "←" }), el("kbd", { text: "→" }), " head · ",
        el("kbd", { text: "↑" }), el("kbd", { text: "↓" }), " layer · ", el("kbd", { text: "j" }), el("kbd", { text: "k" }),
        " next/previous head · ", el("kbd", { text: "Esc" }), " clear")),
    el("div", { class: "actions" }, layerLink, overviewLink, offers("compare") ? [compareModels, compareLayers] : null,
      offers("figures") ? figuresLink : null),
    el("div", { class: "head-layout" },
      el("div", { class: "heat-wrap" }, status, canvas,
        el("div", { class: "legend" }, el("span", { class: "muted", text: `${FACTS.attention.label} ${FACTS.attention.vmin}` }),
          legendBar(FACTS.attention.cmap), el("span", { class: "muted", text: String(FACTS.attention.vmax) }),
          maskedKey, el("span", { class: "muted", text: "masked (future)" })),
        el("p", { class: "muted small", text: "Rows: query tokens. Columns: key tokens. Click a token or a label to highlight its row and column." })),
      el("div", { class: "head-side" }, el("h2", { text: "Tokens" }), chips, detail, el("h2", { text: "Layers × heads" }), nav))));

  function syncUrl() {
    note({ view: "head", model: info.model, prompt: info.prompt_hash, settings, layer: state.layer, head: state.head,
           scale: state.scale === FACTS.scales[0][0] ? "" : state.scale, token: state.token ?? "" });
    const base = { model: info.model, prompt: info.prompt_hash, layer: state.layer, head: state.head };
    layerLink.href = hashFor({ view: "overview", model: info.model, prompt: info.prompt_hash, settings, layer: state.layer });
    overviewLink.href = hashFor({ view: "overview", model: info.model, prompt: info.prompt_hash, settings });
    compareModels.href = hashFor(Object.assign({ view: "compare", across: "models" }, base));
    compareLayers.href = hashFor(Object.assign({ view: "compare", across: "layers" }, base));
    figuresLink.href = hashFor({ view: "grid", model: info.model, prompt: info.prompt_hash, layer: state.layer, head: state.head });
  }

  function choose(token) {
    state.token = token;
    heatmap.select(token);
    chips.querySelectorAll(".chip-token").forEach((chip) => chip.classList.toggle("selected", Number(chip.dataset.index) === token));
    detail.replaceChildren();
    if (token !== null && heatmap.data.values.length) {
      const values = heatmap.data.values;
      const asQuery = values[token].map((v, k) => [v ?? 0, k]).sort((a, b) => b[0] - a[0]).slice(0, 5);
      const asKey = values.map((row, q) => [row[token] ?? 0, q]).sort((a, b) => b[0] - a[0]).slice(0, 5);
      const list = (pairs) => el("ol", {}, pairs.map(([v, i]) =>
        el("li", {}, el("code", { class: "tok", text: labels[i] }), el("span", { class: "muted", text: ` #${i} ` }), formatValue(v))));
      detail.append(el("h3", {}, "Selected ", el("code", { class: "tok", text: labels[token] }), ` #${token}`),
        el("div", { class: "two-col" },
          el("div", {}, el("h4", { text: "attends to (as query)" }), list(asQuery)),
          el("div", {}, el("h4", { text: "attended by (as key)" }), list(asKey))));
    }
    syncUrl();
  }

  let request = 0;
  async function move(layer, head) {
    state.layer = Math.min(info.n_layers - 1, Math.max(0, layer));
    state.head = Math.min(info.n_heads - 1, Math.max(0, head));
    layerSelect.querySelector("select").value = state.layer;
    headSelect.querySelector("select").value = state.head;
    title.replaceChildren("Attention ", el("span", { class: "badge", text: `L${state.layer} H${state.head}` }));
    nav.querySelectorAll(".nav-cell").forEach((b) => b.classList.toggle("current",
      Number(b.dataset.layer) === state.layer && Number(b.dataset.head) === state.head));
    syncUrl();
    const key = `${state.layer}/${state.head}`;
    const mine = ++request;
    status.replaceChildren();
    canvas.classList.add("loading");
    try {
      if (!patterns.has(key)) patterns.set(key, await api("pattern", { model: info.model, prompt: info.prompt_hash, settings, layer: state.layer, head: state.head }));
      if (mine !== request) return;
      const data = patterns.get(key);
      heatmap.setData({ labels: data.shown_tokens, values: data.values, causal: data.causal });
      canvas.dataset.layer = state.layer;
      canvas.dataset.head = state.head;
      canvas.classList.remove("loading");
      choose(state.token);
    } catch (error) {
      if (mine === request) {
        canvas.classList.remove("loading");
        status.replaceChildren(errorBox(error.message));
      }
    }
  }

  function onKey(event) {
    if (event.target.closest("input, select, textarea") || event.altKey || event.ctrlKey || event.metaKey) return;
    const steps = { ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0] };
    if (steps[event.key]) {
      event.preventDefault();
      move(state.layer + steps[event.key][0], state.head + steps[event.key][1]);
    } else if (event.key === "j" || event.key === "k") {
      const flat = state.layer * info.n_heads + state.head + (event.key === "j" ? 1 : -1);
      const total = info.n_layers * info.n_heads;
      const wrapped = (flat + total) % total;
      move(Math.floor(wrapped / info.n_heads), wrapped % info.n_heads);
    } else if (event.key === "Escape") {
      choose(null);
    }
  }
  const stopKeys = onKeys(onKey);
  await move(state.layer, state.head);
  return stopKeys;
}
