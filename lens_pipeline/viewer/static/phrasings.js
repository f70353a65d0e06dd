// Compare prompts (lens_pipeline/corpus/compare.py): the prompts of a `group` or `pair` side by side:
// next-token predictions with their Jensen-Shannon divergence, residual norms per layer, per-head
// attention statistics as differences from the first prompt, and the neurons that differ most on
// the aligned tokens, drawn as lines across prompts. The server sends every value and colour.
import { api, legendBar } from "./data.js";
import { emptyView, nextSteps } from "./steps.js";
import { el, formatValue, go, hashFor, select, svgNode } from "./util.js";

const svg = svgNode;

// Lines of one value per x across prompts (x: aligned token or layer), one colour per prompt.
function linePlot(series, colors, labels, title) {
  const width = 520, height = 160, pad = 28;
  const all = series.flat().filter(Number.isFinite);
  const lo = Math.min(0, ...all), hi = Math.max(...all, lo + 1e-9);
  const n = Math.max(...series.map((s) => s.length));
  const x = (i) => pad + (n > 1 ? (i * (width - 2 * pad)) / (n - 1) : 0);
  const y = (v) => height - pad - ((v - lo) * (height - 2 * pad)) / (hi - lo);
  const plot = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "line-plot" });
  plot.append(svg("line", { x1: pad, x2: width - pad, y1: y(0), y2: y(0), class: "zero-line" }));
  series.forEach((values, p) => plot.append(svg("polyline", { fill: "none", stroke: colors[p], "stroke-width": 2, "data-prompt": p,
    points: values.map((v, i) => `${x(i)},${y(v)}`).join(" ") })));
  const label = svg("text", { x: pad, y: 12, "font-size": 11 });
  label.textContent = `${title} (${formatValue(lo)} .. ${formatValue(hi)})`;
  plot.append(label);
  return el("figure", { class: "panel" }, plot, el("figcaption", { class: "muted small", text: labels }));
}

function predictionsTable(data) {
  const k = Math.min(5, data.next_token.top[0].ids.length);
  return el("table", { class: "compare-predictions" },
    el("thead", {}, el("tr", {}, data.prompts.map((prompt, p) => {
      const swatch = el("span", { class: "swatch", text: "■ " });
      swatch.style.color = data.series_colors[p];
      return el("th", {}, swatch, `prompt ${p + 1}`);
    }))),
    el("tbody", {}, Array.from({ length: k }, (_, r) => el("tr", {}, data.next_token.top.map((top, p) =>
      el("td", { dataset: { prompt: p, rank: r, prob: String(top.probs[r]) } },
        el("code", { class: "tok", text: JSON.stringify(top.strs[r]) }), ` ${formatValue(top.probs[r])}`))))));
}

function jsdTable(data) {
  return el("table", { class: "jsd" },
    el("caption", { class: "muted small", text: `Jensen-Shannon divergence at the last position: ${data.next_token.jsd_note}` }),
    el("tbody", {}, data.next_token.jsd.map((row, a) => el("tr", {}, el("th", { text: `prompt ${a + 1}` }),
      row.map((value, b) => el("td", { class: "num", dataset: { a, b, value: String(value) }, text: formatValue(value) }))))));
}

function headGrid(stat, p) {
  const grid = el("div", { class: "head-grid", dataset: { prompt: p } });
  stat.difference_colors[p].slice().reverse().forEach((row, r) => {
    const layer = stat.difference_colors[p].length - 1 - r;
    grid.append(el("div", { class: "head-row" }, row.map((colour, h) => {
      const cell = el("span", { class: "head-cell", dataset: { layer, head: h, value: String(stat.difference[p][layer][h]) },
        title: `L${layer} H${h}: ${formatValue(stat.values[p][layer][h])} (difference ${formatValue(stat.difference[p][layer][h])})` });
      cell.style.background = colour;
      return cell;
    })));
  });
  return grid;
}

export async function phrasings(main, params) {
  const p = Object.fromEntries(params);
  const summaryModels = (await api("summary")).models.map((m) => (typeof m === "string" ? m : m.name));
  const model = summaryModels.includes(p.model) ? p.model : summaryModels[0];
  if (!model) {
    main.replaceChildren(await emptyView("Compare prompts", "phrasings") || el("p", { class: "empty", text: "No prompts." }));
    return;
  }
  const groups = (await api("prompt_groups", { model })).groups;
  const group = groups.some((g) => g.name === p.group) ? p.group : (p.prompts ? "" : groups[0]?.name || "");
  const stat = p.stat || "entropy";
  const set = (changes) => go(Object.assign({ view: "phrasings", model, group, prompts: p.prompts, stat }, changes));
  const body = el("div", {}, el("p", { class: "muted", text: "Loading…" }));
  main.replaceChildren(el("div", { class: "page" }, el("h1", { text: "Compare prompts" }),
    el("div", { class: "toolbar" },
      select("Model", "model", summaryModels.map((m) => [m, m]), model, (v) => go({ view: "phrasings", model: v })),
      select("Group", "group", groups.map((g) => [g.name, `${g.name} (${g.prompts.length})`]), group, (v) => set({ group: v, prompts: null }))),
    body));
  if (!group && !p.prompts) {
    body.replaceChildren(nextSteps(await api("next_steps", { view: "phrasings", model })));
    return;
  }
  const data = await api("compare_prompts", { model, group, prompts: group ? null : p.prompts });
  const stats = Object.entries(data.head_statistics);
  const chosen = data.heads[stat] ? stat : stats[0][0];
  const neurons = data.neurons.lines || [];
  const heads = hashFor({ view: "compare", across: "prompts", model, prompts: data.prompts.map((q) => q.prompt_hash).join(","), layer: 0, head: 0 });
  body.replaceChildren(
    el("ol", { class: "compare-prompts" }, data.prompts.map((prompt, i) => {
      const item = el("li", { dataset: { prompt: prompt.prompt_hash } }, el("span", { class: "swatch", text: "■ " }), prompt.text, " ",
        el("a", { href: hashFor({ view: "tokens", model, prompt: prompt.prompt_hash }), text: "tokens" }));
      item.firstChild.style.color = data.series_colors[i];
      return item;
    })),
    el("p", {}, el("a", { class: "button secondary", href: heads, text: "Same head, side by side" })),
    el("h2", { text: "Next token after the last position" }), predictionsTable(data), jsdTable(data),
    el("h2", { text: "Residual norm per layer (last position)" }),
    linePlot(data.resid_norms.last, data.series_colors, "x: before layer 0, then after each layer", "L2 norm"),
    el("h2", { text: "Attention statistics per head: difference from prompt 1" }),
    el("div", { class: "toolbar" }, select("Statistic", "stat", stats.map(([name, label]) => [name, label]), chosen, (v) => set({ stat: v })),
      el("span", { class: "muted", text: formatValue(-data.heads[chosen].limit) }), legendBar(data.cmap),
      el("span", { class: "muted", text: formatValue(data.heads[chosen].limit) })),
    el("div", { class: "compare" }, data.prompts.map((_, i) => el("figure", { class: "panel" }, headGrid(data.heads[chosen], i),
      el("figcaption", { class: "muted small", text: `prompt ${i + 1}: rows = layers (0 at the bottom), columns = heads` })))),
    el("h2", { text: "Neurons that differ most on aligned tokens" }),
    el("p", { class: "muted small", text: `Alignment: ${data.alignment.method}; ${data.alignment.common.length} tokens shared by every prompt.` }),
    neurons.length ? el("div", { class: "compare" }, neurons.map((line) => el("div", { class: "neuron-line", dataset: { layer: line.layer, neuron: line.neuron } },
      linePlot(line.values, data.series_colors, `aligned tokens: ${data.alignment.common.map((i) => data.prompts[0].tokens[i]).join(" | ")}`,
        `L${line.layer} N${line.neuron}`),
      el("a", { href: hashFor({ view: "neurons", model, layer: line.layer, neuron: line.neuron }), text: "dashboard" }))))
      : el("p", { class: "muted", text: data.neurons.reason || "" }));
}
