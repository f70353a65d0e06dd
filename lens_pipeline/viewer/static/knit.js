// Knitting: the chart, the written pattern, and every file to download. Which file is the chart
// and which the pattern, the server says (row.main, row.pattern).
import { api } from "./data.js";
import { loadText } from "./figure.js";
import { fileList, staleBadge, statusNote } from "./figures.js";
import { el, errorBox, headLabel, promptTitle } from "./util.js";

export async function knit(main, params) {
  const p = Object.fromEntries(params);
  const row = await api("figure", { model: p.model, prompt: p.prompt, function: p.function, layer: p.layer, head: p.head });
  const pattern = el("pre", { class: "pattern", text: "Loading the pattern…" });
  const chartBox = el("div", { class: "chart" });
  if (row.main) {
    const img = el("img", { src: row.main.url, alt: "knitting chart", class: "chart-img" });
    img.addEventListener("error", () => chartBox.replaceChildren(errorBox(`${row.main.path} is missing or unreadable`)));
    chartBox.append(img);
  } else {
    chartBox.append(errorBox("this figure has no chart"));
  }
  main.replaceChildren(el("div", { class: "page", dataset: { status: row.status } },
    el("h1", {}, "Knitting pattern ", el("span", { class: "badge", text: row.function }), staleBadge(row)),
    el("p", { class: "muted", text: `${row.model} ${headLabel(row)}` }),
    row.prompt_hash ? promptTitle(row.text, row.prompt_hash) : null,
    statusNote(row),
    el("div", { class: "knit" }, chartBox,
      el("div", { class: "knit-side" }, el("h2", { text: "Download" }), fileList(row),
        el("h2", { text: "Pattern" }), pattern))));
  if (row.pattern) await loadText(row.pattern, pattern, false);
  else pattern.textContent = "This figure has no written pattern.";
}
