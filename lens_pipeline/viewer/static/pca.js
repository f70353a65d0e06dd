// The token PCA over a model's whole prompt set (lens_pipeline/corpus/projection.py): every token on
// the same two axes; pick a prompt to highlight its tokens, in order, with their labels. Coordinates
// and colours come from the server; this module only places them.
import { api } from "./data.js";
import { emptyView } from "./steps.js";
import { el, go, select, svgNode } from "./util.js";

const node = svgNode;

export async function pca(main, params) {
  const p = Object.fromEntries(params);
  const models = (await api("neurons")).models;
  const model = models.includes(p.model) ? p.model : models[0];
  const empty = async () => emptyView("Token PCA over the corpus", "pca", model);
  if (!model) {
    main.replaceChildren(await empty() || el("p", { class: "empty", text: "No corpus PCA." }));
    return;
  }
  let data;
  try {
    data = await api("corpus_pca", { model });
  } catch (error) {
    const steps = await empty();  // not built for this model yet: say how
    if (!steps) throw error;
    main.replaceChildren(steps);
    return;
  }
  const chosen = data.prompts.findIndex((q) => q.prompt_hash === p.prompt);
  const size = 560, pad = 20;
  const all = data.prompts.flatMap((q) => q.coords);
  const [xs, ys] = [all.map((c) => c[0]), all.map((c) => c[1])];
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const px = (x) => pad + ((x - x0) / (x1 - x0 || 1)) * (size - 2 * pad);
  const py = (y) => size - pad - ((y - y0) / (y1 - y0 || 1)) * (size - 2 * pad);
  const plot = node("svg", { width: size, height: size, viewBox: `0 0 ${size} ${size}`, class: "pca-plot" });
  data.prompts.forEach((q, i) => q.coords.forEach(([x, y], t) => {
    if (i !== chosen) plot.append(node("circle", { cx: px(x), cy: py(y), r: 2, fill: data.colors.other, "data-prompt": i, "data-token": t }));
  }));
  if (chosen >= 0) {
    const q = data.prompts[chosen];
    plot.append(node("polyline", { fill: "none", stroke: data.colors.highlight, "stroke-width": 0.7, points: q.coords.map(([x, y]) => `${px(x)},${py(y)}`).join(" ") }));
    q.coords.forEach(([x, y], t) => {
      plot.append(node("circle", { cx: px(x), cy: py(y), r: 3.5, fill: data.colors.highlight, class: "highlighted", "data-token": t }));
      const label = node("text", { x: px(x) + 4, y: py(y) - 3, "font-size": 10 });
      label.textContent = q.tokens[t];
      plot.append(label);
    });
  }
  main.replaceChildren(el("div", { class: "page" }, el("h1", { text: "Token PCA over the corpus" }),
    el("p", { class: "muted", text: `${data.model} · ${data.prompts.length} prompts · ${data.n_tokens} tokens · PC1 ${(100 * data.explained[0]).toFixed(1)}%, PC2 ${(100 * data.explained[1]).toFixed(1)}% · ${data.how}` }),
    el("div", { class: "toolbar" },
      select("Model", "model", models.map((m) => [m, m]), model, (v) => go({ view: "pca", model: v })),
      select("Highlight", "prompt", [["", "(none)"], ...data.prompts.map((q) => [q.prompt_hash, q.text.slice(0, 80)])], p.prompt || "",
        (v) => go({ view: "pca", model, prompt: v }))),
    plot));
}
