// Next-token predictions at each position: the cache's top-k tokens with their probabilities,
// coloured by probability, and the token that came next. Python computes the colours and the
// rank of the next token (GET /api/predictions); this module draws them.
import { api, legendBar, openCache } from "./data.js";
import { settingsLine } from "./figures.js";
import { el, formatValue, hashFor, promptTitle, range } from "./util.js";

function predictionCell(data, i, r) {
  const prob = data.top_probs[i][r];
  const cell = el("td", { class: `pred${data.next_rank[i] === r ? " hit" : ""}`, dataset: { rank: r + 1, prob: String(prob) },
                          title: `rank ${r + 1}: ${formatValue(prob)}` },
    el("code", { class: "pred-token", text: data.top_tokens[i][r] }), el("span", { class: "pred-prob", text: formatValue(prob) }));
  cell.style.background = data.colors[i][r];
  cell.style.color = data.text_colors[i][r];
  return cell;
}

export async function predictions(main, params) {
  const p = Object.fromEntries(params);
  const { info, settings } = await openCache(p);
  const data = await api("predictions", { model: info.model, prompt: info.prompt_hash, settings });
  const rows = range(data.shown_tokens.length).map((i) => el("tr", { dataset: { position: i } },
    el("th", { class: "muted", scope: "row" }, info.explains ?
      el("a", { href: hashFor({ view: "why", model: info.model, prompt: info.prompt_hash, settings, position: i }), title: "why this prediction",
                text: String(i) }) : String(i)),
    el("td", {}, el("code", { class: "tok", text: data.shown_tokens[i] })),
    el("td", {}, data.shown_next[i] === null ? el("span", { class: "muted", text: "(end)" }) :
      el("code", { class: "tok", text: data.shown_next[i] }),
      data.next_rank[i] === null ? null : el("span", { class: "muted small", text: ` #${data.next_rank[i] + 1}` })),
    range(data.k).map((r) => predictionCell(data, i, r))));
  main.replaceChildren(el("div", { class: "page" },
    el("h1", {}, "Next-token predictions ", el("span", { class: "badge", text: `top ${data.k}` })),
    el("p", { class: "muted", text: `${info.model} · ${info.n_tokens} tokens · ${data.title}` }),
    promptTitle(info.text, info.prompt_hash),
    settingsLine(info),
    el("div", { class: "actions" },
      el("a", { class: "button secondary", href: hashFor({ view: "tokens", model: info.model, prompt: info.prompt_hash, settings, value: "top1_prob" }),
                text: "Tokens coloured by top-1 probability" }),
      info.explains ? el("a", { class: "button secondary", href: hashFor({ view: "why", model: info.model, prompt: info.prompt_hash, settings }),
                                text: "Why this token" }) : null),
    el("div", { class: "legend" }, el("span", { class: "legend-title", text: "probability" }),
      el("span", { class: "muted", text: formatValue(data.vmin) }), legendBar(data.cmap), el("span", { class: "muted", text: formatValue(data.vmax) }),
      el("span", { class: "pred hit legend-hit", text: "the token that came next" })),
    el("div", { class: "pred-wrap" }, el("table", { class: "predictions" },
      el("thead", {}, el("tr", {}, el("th", { text: "#" }), el("th", { text: "token" }), el("th", { text: "next" }),
        range(data.k).map((r) => el("th", { text: `${r + 1}` })))),
      el("tbody", {}, rows)))));
}
