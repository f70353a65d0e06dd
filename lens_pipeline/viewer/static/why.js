// "Why this token": click a position, see why the model predicted the token after it: the input
// attribution over its context, the heads and MLPs that wrote the target's logit (click a head to
// open it, or, when the cache also tests causes, to see its patching and ablation in the cause
// view), and the lens trajectory at that position. Python reads, colours and names everything
// (lens_pipeline/viewer/why.py, GET /api/why; heads by their roles); this module draws it.
import { api, legendBar, openCache } from "./data.js";
import { settingsLine } from "./figures.js";
import { el, formatValue, go, hashFor, painted, promptTitle, range, tip, tipRow } from "./util.js";

function signedLegend(title, colored) {
  return el("div", { class: "legend" }, el("span", { class: "legend-title", text: title }),
    el("span", { class: "muted", text: formatValue(colored.vmin) }), legendBar(colored.cmap),
    el("span", { class: "muted", text: formatValue(colored.vmax) }),
    el("span", { class: "muted", text: colored.signed ? "red adds to the target's logit, blue takes away" :
      "how strongly the target's logit responds to the token (a size, no direction)" }));
}

// The prompt as clickable tokens; explained positions underlined, the chosen one outlined.
function positionPicker(data, choose) {
  const explained = new Set(data.target_positions);
  return el("div", { class: "token-flow why-picker", "aria-label": "choose a position" },
    data.inline.map((text, i) => el("button", {
      class: `why-token${explained.has(i) ? " explained" : ""}${i === data.position ? " selected" : ""}`,
      type: "button", dataset: { position: i }, title: `position ${i}${explained.has(i) ? " (explained)" : ""}`,
      text, onclick: () => choose(i) })));
}

function attributionPanel(data) {
  if (!data.attributions.length) return el("p", { class: "muted", text: "No input attribution in this cache (made without --attribution)." });
  return data.attributions.map((method) => el("section", { class: "why-method", dataset: { method: method.name } },
    el("h3", { text: method.label }),
    method.note ? el("p", { class: "muted small", text: method.note }) : null,
    signedLegend("attribution", method),
    el("div", { class: "token-flow" }, method.values.map((v, i) => tip(painted(
      el("span", { class: "tv", dataset: { index: i, value: String(v) }, text: data.inline[i] }), method.colors[i], method.text_colors[i]),
      tipRow("token", el("code", { class: "tok", text: data.shown_tokens[i] }), el("span", { class: "muted", text: ` #${i}` })),
      tipRow(method.label, el("strong", { dataset: { field: "value" }, text: formatValue(v) }))))),
    el("p", { class: "muted small", text: `sum over the context: ${formatValue(method.total)}` })));
}

function logitPanel(data, where) {
  const logit = data.logit;
  if (!logit) return el("p", { class: "muted", text: "No logit attribution in this cache (made without --logit-attribution)." });
  const headLink = (l, h) => hashFor(Object.assign({ view: "head", layer: l, head: h }, where));
  const causeLink = (l, h) => hashFor(Object.assign({ view: "cause", layer: l, head: h }, where));
  const cell = (l, h) => {
    const i = l * logit.n_heads + h;
    const v = logit.heads.values[i];
    return el("td", {}, tip(painted(el("a", { class: "why-cell", href: data.tests_causes ? causeLink(l, h) : headLink(l, h),
                                              dataset: { layer: l, head: h, value: String(v) },
                                              "aria-label": `${logit.labels[i]}: ${formatValue(v)}` }),
                                    logit.heads.colors[i], logit.heads.text_colors[i]),
      tipRow("head", el("strong", { text: logit.labels[i] })), tipRow("logit part", el("strong", { text: formatValue(v) })),
      el("div", { class: "muted small", text: data.tests_causes ? "click for its patching, ablation and roles" : "click to open this head" })));
  };
  const rows = range(logit.n_layers).map((l) => el("tr", {},
    el("th", { scope: "row", class: "muted small", text: `L${l}` }), range(logit.n_heads).map((h) => cell(l, h)),
    el("td", { class: "why-mlp-gap" }),
    el("td", {}, tip(painted(el("span", { class: "why-cell", dataset: { layer: l, mlp: "1", value: String(logit.mlp.values[l]) } }),
                             logit.mlp.colors[l], logit.mlp.text_colors[l]),
      tipRow("MLP", el("strong", { text: `layer ${l}` })), tipRow("logit part", el("strong", { text: formatValue(logit.mlp.values[l]) }))))));
  return [
    signedLegend("heads", logit.heads),
    signedLegend("MLPs", logit.mlp),
    el("div", { class: "why-logit" },
      el("table", { class: "why-grid", "aria-label": "logit attribution: layers × heads, then MLP" },
        el("thead", {}, el("tr", {}, el("th"), range(logit.n_heads).map((h) => el("th", { class: "muted small", text: `H${h}` })),
          el("th"), el("th", { class: "muted small", text: "MLP" }))),
        el("tbody", {}, rows)),
      el("div", { class: "why-top" }, el("h3", { text: "Heads that wrote it most" }),
        el("ol", {}, logit.top_heads.map((t) => el("li", {},
          el("a", { href: headLink(t.layer, t.head), dataset: { layer: t.layer, head: t.head }, text: t.label }),
          el("span", { text: ` ${formatValue(t.value)}` }),
          data.tests_causes ? [" · ", el("a", { class: "why-cause", href: causeLink(t.layer, t.head), dataset: { layer: t.layer, head: t.head },
                                                text: "causes" })] : null))),
        el("p", { class: "muted small" }, `embeddings ${formatValue(logit.embed)} · biases ${formatValue(logit.bias)} · `,
          `all parts sum to ${formatValue(logit.sum)}`))),
  ];
}

function lensPanel(data) {
  const lens = data.lens;
  if (!lens) return el("p", { class: "muted", text: "No lens trajectory in this cache (made without --lens-trajectory)." });
  const next = data.next_token === null ? "(end of the prompt: no next token)" : `actual next token ${data.next_token}`;
  return [
    el("p", { class: "muted small", text: `each layer's residual at position ${data.position} through the final norm and unembedding; ${next}` +
      (lens.logprob === null ? "" : `; final log-probability ${formatValue(lens.logprob)}`) }),
    el("div", { class: "legend" }, el("span", { class: "legend-title", text: "p(next)" }), el("span", { class: "muted", text: "0" }),
      legendBar(lens.cmap), el("span", { class: "muted", text: "1" })),
    el("div", { class: "pred-wrap" }, el("table", { class: "predictions why-lens" },
      el("thead", {}, el("tr", {}, ["layer", "p(next)", "rank", "entropy", "KL to output"].map((t) => el("th", { text: t })),
        range(5).map((r) => el("th", { text: String(r + 1) })))),
      el("tbody", {}, lens.rows.map((row, r) => el("tr", { dataset: { row } },
        el("th", { scope: "row", class: "muted", text: row }),
        painted(el("td", { dataset: { field: "p_next" }, text: lens.actual_probs[r] === null ? "–" : formatValue(lens.actual_probs[r]) }),
                lens.colors[r], lens.text_colors[r]),
        el("td", { text: lens.actual_ranks[r] < 0 ? "–" : String(lens.actual_ranks[r] + 1) }),
        el("td", { text: formatValue(lens.entropy[r]) }), el("td", { text: formatValue(lens.kl[r]) }),
        range(5).map((k) => el("td", { class: "pred" }, el("code", { class: "pred-token", text: lens.top_tokens[r][k] }),
          el("span", { class: "pred-prob", text: formatValue(lens.top_probs[r][k]) })))))))),
  ];
}

export async function why(main, params) {
  const p = Object.fromEntries(params);
  const { info, settings } = await openCache(p);
  const where = { model: info.model, prompt: info.prompt_hash, settings };
  const data = await api("why", Object.assign({ position: p.position }, where));
  const choose = (i) => go(Object.assign({ view: "why", position: i }, where), true);
  const target = data.target;
  const heading = target ?
    `After ${data.shown_tokens[data.position]} (position ${data.position}): why ${target.token}` +
      (target.contrast ? ` rather than ${target.contrast}` : "") + ` (${target.what} ${formatValue(target.value)})` :
    `After ${data.shown_tokens[data.position]} (position ${data.position})`;
  main.replaceChildren(el("div", { class: "page why" },
    el("h1", { text: "Why this token" }),
    el("p", { class: "muted", text: `${info.model} · ${info.n_tokens} tokens · click a token to explain the prediction after it ` +
      "(underlined: positions this cache explains)" }),
    promptTitle(info.text, info.prompt_hash),
    settingsLine(info),
    positionPicker(data, choose),
    el("p", { class: "why-heading", text: heading }),
    data.tests_causes ? el("p", {}, el("a", { class: "button secondary why-to-cause", href: hashFor(Object.assign({ view: "cause" }, where)),
                                              text: "Testing causes: patching and ablation" })) : null,
    data.unexplained ? el("p", { class: "note", text: data.unexplained }) : null,
    // el() flattens one level of arrays: the panels' arrays are spread here.
    ...(target ? [el("h2", { text: "Attribution over the context" }), attributionPanel(data),
                  el("h2", { text: "Heads and MLPs that wrote the logit (direct logit attribution)" }), logitPanel(data, where)] : []),
    el("h2", { text: "Lens trajectory at this position" }), lensPanel(data)));
}
