// "Testing causes": what happens to the prediction when part of the clean run is put into the
// corrupted run (activation patching) or a head or MLP is knocked out (ablation). The prompt's
// page shows a layers × positions heatmap per patched site and the layers × heads grids; click a
// head to see together its direct logit attribution, its patching effect (per position too), its
// ablation effect and its detector scores. Python reads, colours and words everything
// (lens_pipeline/viewer/cause.py, GET /api/cause and /api/cause_head); this module draws it.
import { api, legendBar, openCache } from "./data.js";
import { settingsLine } from "./figures.js";
import { el, formatValue, hashFor, painted, promptTitle, range, tip, tipRow } from "./util.js";

function legend(title, colored, meaning) {
  return el("div", { class: "legend" }, el("span", { class: "legend-title", text: title }),
    el("span", { class: "muted", text: formatValue(colored.vmin) }), legendBar(colored.cmap),
    el("span", { class: "muted", text: formatValue(colored.vmax) }),
    meaning ? el("span", { class: "muted", text: meaning }) : null);
}

// The clean and the corrupted tokens, one above the other; changed positions and the metric's position marked.
function tokenPair(data) {
  const changed = new Set(data.changed);
  const row = (name, tokens) => el("div", { class: "cause-run", dataset: { run: name } },
    el("span", { class: "muted small cause-run-name", text: name }),
    el("span", { class: "token-flow" }, tokens.map((text, i) => el("span", {
      class: `cause-token${changed.has(i) ? " changed" : ""}${i === data.target_position ? " measured" : ""}`,
      dataset: { position: i }, title: `position ${i}${i === data.target_position ? " (the metric is read after it)" : ""}`,
      text }))));
  return el("div", { class: "cause-runs" }, row("clean", data.inline), data.has_corrupt ? row("corrupted", data.corrupt_inline) : null);
}

function siteGrid(data, site) {
  const [nLayers, nTokens] = site.shape;
  const cell = (l, t) => {
    const i = l * nTokens + t;
    const v = site.values[l][t];
    return el("td", {}, tip(painted(el("span", { class: "cause-cell", dataset: { site: site.site, layer: l, position: t, value: String(v) } }),
                                    site.colors[i], site.text_colors[i]),
      tipRow("layer", el("strong", { text: String(l) })),
      tipRow("position", el("code", { class: "tok", text: data.shown_tokens[t] }), el("span", { class: "muted", text: ` #${t}` })),
      tipRow("restored", el("strong", { text: formatValue(v) }))));
  };
  return el("section", { class: "cause-site", dataset: { site: site.site } },
    el("h3", { text: `Patched: ${site.label}` }),
    legend("restored", site, "1 = the clean run's metric, 0 = the corrupted run's"),
    el("div", { class: "cause-scroll" }, el("table", { class: "cause-grid", "aria-label": `patching of ${site.array}: layers × positions` },
      el("thead", {}, el("tr", {}, el("th"), range(nTokens).map((t) => el("th", {
        class: `cause-col${data.changed.includes(t) ? " changed" : ""}`, title: `position ${t}`, text: data.inline[t] })))),
      el("tbody", {}, range(nLayers).map((l) => el("tr", {},
        el("th", { scope: "row", class: "muted small", text: `L${l}` }), range(nTokens).map((t) => cell(l, t))))))));
}

// A layers × heads grid whose cells open that head's card; an MLP column where given.
function headGrid(data, colored, what, where, selected, mlp) {
  const labels = data.heads.labels;
  const cell = (l, h) => {
    const i = l * data.n_heads + h;
    const v = colored.values[l][h];
    const isSelected = selected && selected.layer === l && selected.head === h;
    return el("td", {}, tip(painted(el("a", {
      class: `cause-cell head${isSelected ? " selected" : ""}`, href: hashFor(Object.assign({ view: "cause", layer: l, head: h }, where)),
      dataset: { layer: l, head: h, value: String(v) }, "aria-label": `${labels[i]}: ${formatValue(v)}` }), colored.colors[i], colored.text_colors[i]),
      tipRow("head", el("strong", { text: labels[i] })), tipRow(what, el("strong", { text: formatValue(v) })),
      el("div", { class: "muted small", text: "click for this head's causes" })));
  };
  const mlpCell = (l) => el("td", {}, tip(painted(el("span", { class: "cause-cell", dataset: { mlp: l, value: String(mlp.values[l]) } }),
                                                  mlp.colors[l], mlp.text_colors[l]),
    tipRow("MLP", el("strong", { text: `layer ${l}` })), tipRow(what, el("strong", { text: formatValue(mlp.values[l]) }))));
  return el("table", { class: "cause-grid heads", "aria-label": `${what}: layers × heads${mlp ? ", then MLP" : ""}` },
    el("thead", {}, el("tr", {}, el("th"), range(data.n_heads).map((h) => el("th", { class: "muted small", text: `H${h}` })),
      mlp ? [el("th"), el("th", { class: "muted small", text: "MLP" })] : null)),
    el("tbody", {}, range(data.n_layers).map((l) => el("tr", {},
      el("th", { scope: "row", class: "muted small", text: `L${l}` }), range(data.n_heads).map((h) => cell(l, h)),
      mlp ? [el("td", { class: "why-mlp-gap" }), mlpCell(l)] : null))));
}

function headsPanel(data, where, selected) {
  const heads = data.heads;
  const blocks = [];
  if (heads.patch) {
    blocks.push(el("div", { class: "cause-block", dataset: { grid: "patch_heads" } },
      el("h3", { text: "Patched: each head's output at every position" }),
      legend("restored", heads.patch, "1 = clean"), headGrid(data, heads.patch, "restored", where, selected, null)));
  }
  if (heads.ablate || data.mlp) {
    const colored = heads.ablate || data.mlp;
    blocks.push(el("div", { class: "cause-block", dataset: { grid: "ablate_heads" } },
      el("h3", { text: `Ablated (${data.ablation}): ${data.ablation_label}` }),
      legend(heads.ablate ? `heads (${data.units})` : `MLPs (${data.units})`, colored, null),
      heads.ablate && data.mlp ? legend(`MLPs (${data.units})`, data.mlp, null) : null,
      heads.ablate ? headGrid(data, heads.ablate, `effect (${data.units})`, where, selected, data.mlp) :
        el("table", { class: "cause-grid heads", "aria-label": "MLP ablation per layer" }, el("tbody", {},
          range(data.n_layers).map((l) => el("tr", {}, el("th", { scope: "row", class: "muted small", text: `L${l}` }),
            el("td", {}, painted(el("span", { class: "cause-cell", dataset: { mlp: l, value: String(data.mlp.values[l]) },
                                              title: formatValue(data.mlp.values[l]) }), data.mlp.colors[l], data.mlp.text_colors[l]))))))));
  }
  if (heads.top) {
    blocks.push(el("div", { class: "why-top" },
      el("h3", { text: heads.ranked_by === "patch_heads" ? "Heads that restore the most" : "Heads whose ablation matters most" }),
      el("ol", {}, heads.top.map((t) => el("li", {},
        el("a", { href: hashFor(Object.assign({ view: "cause", layer: t.layer, head: t.head }, where)), dataset: { layer: t.layer, head: t.head },
                  text: t.label }),
        el("span", { class: "muted", text: [t.patch === null ? null : ` restored ${formatValue(t.patch)}`,
          t.ablate === null ? null : ` ablation ${formatValue(t.ablate)}`].filter(Boolean).join(" ·") }))))));
  }
  if (!blocks.length) return el("p", { class: "muted", text: "No head patching or ablation in this cache (made without --patch heads or --ablate)." });
  return el("div", { class: "why-logit" }, blocks);
}

function valueCell(entry, text) {
  return painted(el("td", { class: "cause-value", dataset: { value: String(entry.value) }, text }), entry.color, entry.text_color);
}

function rankText(entry, of) {
  return `rank ${entry.rank} of ${of} by size`;
}

// One head's card: every number about it together.
function headCard(card, where, info) {
  const rows = [];
  if (card.dla) {
    rows.push(el("tr", { dataset: { field: "dla" } }, el("th", { scope: "row", text: `Direct logit attribution to ${card.dla.target}` }),
      valueCell(card.dla, formatValue(card.dla.value)),
      el("td", { class: "muted small", text: `share of the ${card.dla.what} after position ${card.dla.position}; ${rankText(card.dla, card.of)}` })));
  } else {
    rows.push(el("tr", { dataset: { field: "dla" } }, el("th", { scope: "row", text: "Direct logit attribution" }),
      el("td", { text: "–" }), el("td", { class: "muted small", text: card.dla_missing })));
  }
  if (card.patch) {
    rows.push(el("tr", { dataset: { field: "patch" } }, el("th", { scope: "row", text: "Patched at every position (clean → corrupted)" }),
      valueCell(card.patch, formatValue(card.patch.value)), el("td", { class: "muted small", text: `${card.patch_note}; ${rankText(card.patch, card.of)}` })));
  }
  if (card.attrpatch) {
    rows.push(el("tr", { dataset: { field: "attrpatch" } }, el("th", { scope: "row", text: "Attribution patching estimate" }),
      el("td", { class: "cause-value", dataset: { value: String(card.attrpatch.value) }, text: formatValue(card.attrpatch.value) }),
      el("td", { class: "muted small", text: "the gradient estimate of the value above" })));
  }
  if (card.ablate) {
    rows.push(el("tr", { dataset: { field: "ablate" } }, el("th", { scope: "row", text: "Ablated" }),
      valueCell(card.ablate, `${formatValue(card.ablate.value)} ${card.units}`),
      el("td", { class: "muted small", text: `${card.ablation_label}; ${rankText(card.ablate, card.of)}` })));
  }
  card.roles.forEach((role) => rows.push(el("tr", { dataset: { field: "role", role: role.name } }, el("th", { scope: "row", text: `${role.label} score` }),
    valueCell(role, formatValue(role.value)), el("td", { class: "muted small", text: "detector score in [0, 1] (head roles)" }))));
  const positions = card.patch_positions;
  return el("section", { class: "cause-head", dataset: { layer: card.layer, head: card.head } },
    el("h2", { text: card.label }),
    el("p", { class: "muted small" }, card.metric_text, " · ",
      el("a", { href: hashFor(Object.assign({ view: "head", layer: card.layer, head: card.head }, where)), text: "attention pattern of this head" }),
      info.explains ? [" · ", el("a", { href: hashFor(Object.assign({ view: "why", position: card.target_position }, where)), text: "why this token" })] : null),
    el("table", { class: "predictions cause-card" }, el("tbody", {}, rows)),
    card.causal_check ? el("p", { class: "small cause-check", text: card.causal_check }) : null,
    card.has_roles ? null : el("p", { class: "muted small", text: "No head roles for this model in this save path (docs/causal.md, head roles)." }),
    positions ? [el("h3", { text: "Patched at one position at a time" }), legend("restored", positions, "1 = clean"),
      el("div", { class: "token-flow cause-positions" }, positions.values.map((v, i) => tip(painted(
        el("span", { class: "tv", dataset: { position: i, value: String(v) }, text: positions.inline[i] }), positions.colors[i], positions.text_colors[i]),
        tipRow("token", el("code", { class: "tok", text: positions.shown_tokens[i] }), el("span", { class: "muted", text: ` #${i}` })),
        tipRow("restored", el("strong", { text: formatValue(v) })))))] : null);
}

export async function cause(main, params) {
  const p = Object.fromEntries(params);
  const { info, settings } = await openCache(p);
  const where = { model: info.model, prompt: info.prompt_hash, settings };
  const data = await api("cause", where);
  const hasHead = p.layer !== undefined && p.head !== undefined && p.layer !== "" && p.head !== "";
  const card = hasHead ? await api("cause_head", Object.assign({ layer: p.layer, head: p.head }, where)) : null;
  const selected = card ? { layer: card.layer, head: card.head } : null;
  main.replaceChildren(el("div", { class: "page why cause" },
    el("h1", { text: "Testing causes" }),
    el("p", { class: "muted", text: `${info.model} · ${info.n_tokens} tokens · put part of the clean run into the corrupted run ` +
      "(patching) or knock it out (ablation) and see what the prediction does; click a head for all its numbers" }),
    promptTitle(info.text, info.prompt_hash),
    settingsLine(info),
    el("p", { class: "why-heading", text: data.metric_text }),
    el("p", { class: "muted", text: data.corruption_text }),
    tokenPair(data),
    info.explains ? el("p", {}, el("a", { class: "button secondary", href: hashFor(Object.assign({ view: "why", position: data.target_position }, where)),
                                          text: "Why this token" })) : null,
    card ? headCard(card, where, info) : null,
    el("h2", { text: "Heads and MLPs" }),
    headsPanel(data, where, selected),
    data.sites.length ? [el("h2", { text: "Patching per layer and position" }), el("p", { class: "muted small", text: data.patch_note }),
      ...data.sites.map((site) => siteGrid(data, site))] : null,
    data.attribution_patching.length ? [el("h2", { text: "Attribution patching against exact patching" }),
      el("ul", { class: "cause-fit" }, data.attribution_patching.map((fit) => el("li", { dataset: { site: fit.site } },
        el("strong", { text: fit.site }), ` Pearson r = ${fit.r === null ? "n/a" : formatValue(fit.r)}`)))] : null));
  if (card) main.querySelector(".cause-head").scrollIntoView({ block: "nearest" });  // a click far down the grids
}
