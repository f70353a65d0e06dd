// lens viewer: one page, no libraries, nothing from the network.
// Every prompt, token and file name is untrusted text: it only ever reaches the page through
// textContent / attributes (see el()), never through innerHTML.
"use strict";

const PAGE_SIZE = 60;
const POLL_MS = 5000;

// ------------------------------------------------------------------ small helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

class ApiError extends Error {}

async function api(path, params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== null && value !== undefined && value !== "") query.set(key, value);
  }
  let response;
  try {
    response = await fetch(`/api/${path}?${query}`);
  } catch (error) {
    throw new ApiError("The viewer server cannot be reached. Is it still running?");
  }
  let body = null;
  try {
    body = await response.json();
  } catch (error) {
    throw new ApiError(`The server answered ${response.status} without JSON.`);
  }
  if (!response.ok) throw new ApiError(body && body.error ? body.error : `HTTP ${response.status}`);
  return body;
}

function errorBox(message) {
  return el("div", { class: "error-box", role: "alert" }, el("strong", { text: "Error: " }), message);
}

function showBanner(message) {
  const banner = document.getElementById("banner");
  banner.textContent = message;
  banner.hidden = !message;
}

// Whitespace made visible, so " the" and "the" do not look the same.
function showToken(token) {
  return String(token).replace(/\n/g, "↵").replace(/\t/g, "⇥").replace(/ /g, "·") || "∅";
}

function headLabel(row) {
  const parts = [];
  if (row.layer !== null && row.layer !== undefined) parts.push(`L${row.layer}`);
  if (row.head !== null && row.head !== undefined) parts.push(`H${row.head}`);
  return parts.join(" ");
}

function formatValue(value) {
  if (value === null || value === undefined) return "n/a";
  if (value === 0) return "0";
  const abs = Math.abs(value);
  return abs >= 1e4 || abs < 1e-4 ? value.toExponential(4) : String(Number(value.toPrecision(6)));
}

function formatBytes(bytes) {
  if (bytes === null || bytes === undefined) return "";
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

function isKnitting(row) {
  return (row.files || []).some((f) => f.path.endsWith("chart.svg"));
}

// ------------------------------------------------------------------ URL state

function readHash() {
  return new URLSearchParams(location.hash.replace(/^#/, ""));
}

function hashFor(params) {
  const clean = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") clean.set(key, value);
  }
  return "#" + clean.toString();
}

function go(params, replace = false) {
  const hash = hashFor(params);
  if (hash === location.hash) return;
  if (replace) {
    history.replaceState(null, "", hash);
    route();
  } else {
    location.hash = hash;
  }
}

function figureLink(row) {
  const view = isKnitting(row) ? "knit" : "figure";
  return hashFor({ view, model: row.model, prompt: row.prompt_hash, function: row.function,
                   layer: row.layer, head: row.head });
}

// ------------------------------------------------------------------ colour maps

// Attention: viridis, the colour map of the figures stage's PNGs (matplotlib's, 17 stops).
const VIRIDIS = [[68, 1, 84], [72, 24, 106], [71, 45, 123], [66, 64, 134], [59, 82, 139], [51, 99, 141],
  [44, 114, 142], [38, 130, 142], [33, 145, 140], [31, 160, 136], [40, 174, 128], [63, 188, 115], [94, 201, 98],
  [132, 212, 75], [173, 220, 48], [216, 226, 25], [253, 231, 37]];
// Token backgrounds: light to dark blue, so the token text stays readable.
const BLUES = [[247, 251, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]];
// Signed values (neuron activations): matplotlib's RdBu_r, centred on 0.
const DIVERGING = [[5, 48, 97], [32, 101, 171], [67, 147, 195], [144, 196, 221], [209, 229, 240], [247, 246, 246],
  [253, 219, 199], [243, 164, 129], [214, 96, 77], [177, 24, 43], [103, 0, 31]];
const MASKED = [236, 238, 242]; // the causal mask: future keys, no weight at all

function ramp(stops, t) {
  t = Math.min(1, Math.max(0, t || 0));
  const x = t * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(x));
  const f = x - i;
  return stops[i].map((c, j) => Math.round(c + (stops[i + 1][j] - c) * f));
}

function rgb(colour) {
  return `rgb(${colour[0]}, ${colour[1]}, ${colour[2]})`;
}

function isDark(colour) {
  return 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] < 140;
}

// ------------------------------------------------------------------ the heatmap

class Heatmap {
  // values[q][k]: exact weights from the cache; tokens label the rows (queries) and columns (keys).
  constructor(canvas, data, options) {
    this.canvas = canvas;
    this.options = Object.assign({ maxSize: 640, labels: true, scale: "linear" }, options);
    this.selected = null;
    this.hover = null;
    this.setData(data);
    canvas.addEventListener("mousemove", (e) => this.onMove(e));
    canvas.addEventListener("mouseleave", () => this.onLeave());
    canvas.addEventListener("click", (e) => this.onClick(e));
  }

  setData(data) {
    this.data = data;
    this.n = data.tokens.length;
    this.layout();
    this.paintCells();
    this.draw();
  }

  layout() {
    const n = this.n;
    let cell = Math.max(1, Math.min(26, Math.floor(this.options.maxSize / Math.max(1, n))));
    if (n > this.options.maxSize) cell = this.options.maxSize / n;
    this.cell = cell;
    this.showLabels = this.options.labels && cell >= 9;
    const ctx = this.canvas.getContext("2d");
    this.font = `${Math.min(12, Math.floor(cell) - 1)}px ui-monospace, "DejaVu Sans Mono", Menlo, monospace`;
    let margin = 4;
    if (this.showLabels) {
      ctx.font = this.font;
      const widest = Math.max(...this.data.tokens.map((t) => ctx.measureText(showToken(t)).width));
      margin = Math.min(140, Math.ceil(widest) + 12);
    }
    this.left = margin;
    this.top = margin;
    const size = cell * n;
    this.cssWidth = Math.ceil(this.left + size + 4);
    this.cssHeight = Math.ceil(this.top + size + 4);
    const dpr = window.devicePixelRatio || 1;
    this.canvas.width = Math.round(this.cssWidth * dpr);
    this.canvas.height = Math.round(this.cssHeight * dpr);
    this.canvas.style.width = `${this.cssWidth}px`;
    this.canvas.style.height = `${this.cssHeight}px`;
    // Geometry for tests and tools: where cell (q, k) lies in CSS pixels.
    Object.assign(this.canvas.dataset, { originX: this.left, originY: this.top, cell: this.cell, n });
  }

  paintCells() {
    // One pixel per cell, then scaled up without smoothing: fast for 1000+ tokens.
    const n = this.n;
    const off = document.createElement("canvas");
    off.width = n;
    off.height = n;
    const ctx = off.getContext("2d");
    const image = ctx.createImageData(n, n);
    const sqrt = this.options.scale === "sqrt";
    for (let q = 0; q < n; q++) {
      const row = this.data.values[q];
      for (let k = 0; k < n; k++) {
        const masked = this.data.causal && k > q;
        const v = row[k] === null ? 0 : row[k];
        const colour = masked ? MASKED : ramp(VIRIDIS, sqrt ? Math.sqrt(v) : v);
        const at = 4 * (q * n + k);
        image.data[at] = colour[0];
        image.data[at + 1] = colour[1];
        image.data[at + 2] = colour[2];
        image.data[at + 3] = 255;
      }
    }
    ctx.putImageData(image, 0, 0);
    this.cells = off;
  }

  draw() {
    const ctx = this.canvas.getContext("2d");
    const dpr = window.devicePixelRatio || 1;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, this.cssWidth, this.cssHeight);
    const size = this.cell * this.n;
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(this.cells, this.left, this.top, size, size);
    const sel = this.selected;
    if (sel !== null) {
      // Dim everything but the selected token's row (as query) and column (as key); the causal
      // mask stays as it is (clip to the staircase of real cells, k <= q).
      ctx.save();
      if (this.data.causal) {
        ctx.beginPath();
        ctx.moveTo(this.left, this.top);
        for (let q = 0; q < this.n; q++) {
          ctx.lineTo(this.left + (q + 1) * this.cell, this.top + q * this.cell);
          ctx.lineTo(this.left + (q + 1) * this.cell, this.top + (q + 1) * this.cell);
        }
        ctx.lineTo(this.left, this.top + size);
        ctx.closePath();
        ctx.clip();
      }
      ctx.fillStyle = "rgba(15, 23, 42, 0.5)";
      ctx.fillRect(this.left, this.top, size, sel * this.cell);
      ctx.fillRect(this.left, this.top + (sel + 1) * this.cell, size, size - (sel + 1) * this.cell);
      ctx.fillRect(this.left, this.top + sel * this.cell, sel * this.cell, this.cell);
      ctx.fillRect(this.left + (sel + 1) * this.cell, this.top + sel * this.cell, size - (sel + 1) * this.cell, this.cell);
      ctx.restore();
      ctx.strokeStyle = "#f59e0b";
      ctx.lineWidth = 2;
      ctx.strokeRect(this.left, this.top + sel * this.cell, size, this.cell);
      ctx.strokeRect(this.left + sel * this.cell, this.top, this.cell, size);
    }
    if (this.hover) {
      const x = this.left + this.hover.k * this.cell;
      const y = this.top + this.hover.q * this.cell;
      ctx.lineWidth = 3;
      ctx.strokeStyle = "#0f172a";
      ctx.strokeRect(x, y, this.cell, this.cell);
      ctx.lineWidth = 1.5;
      ctx.strokeStyle = "#ffffff";
      ctx.strokeRect(x, y, this.cell, this.cell);
    }
    ctx.strokeStyle = "#cbd5e1";
    ctx.lineWidth = 1;
    ctx.strokeRect(this.left - 0.5, this.top - 0.5, size + 1, size + 1);
    if (this.showLabels) this.drawLabels(ctx);
  }

  drawLabels(ctx) {
    ctx.font = this.font;
    ctx.textBaseline = "middle";
    const clip = this.left - 8;
    this.data.tokens.forEach((token, i) => {
      const text = showToken(token);
      const strong = i === this.selected || (this.hover && (i === this.hover.q || i === this.hover.k));
      ctx.fillStyle = i === this.selected ? "#b45309" : strong ? "#111827" : "#475569";
      // Query labels left of each row, right-aligned.
      ctx.textAlign = "right";
      ctx.fillText(text, this.left - 6, this.top + (i + 0.5) * this.cell, clip);
      // Key labels above each column, rotated.
      ctx.save();
      ctx.translate(this.left + (i + 0.5) * this.cell, this.top - 6);
      ctx.rotate(-Math.PI / 2);
      ctx.textAlign = "left";
      ctx.fillText(text, 0, 0, clip);
      ctx.restore();
    });
  }

  // Which cell or label is under a mouse event: {q, k} for a cell, {token} for a label.
  hit(event) {
    const box = this.canvas.getBoundingClientRect();
    const x = event.clientX - box.left - this.left;
    const y = event.clientY - box.top - this.top;
    const size = this.cell * this.n;
    const q = Math.floor(y / this.cell);
    const k = Math.floor(x / this.cell);
    if (x >= 0 && y >= 0 && x < size && y < size) return { q, k };
    if (x < 0 && y >= 0 && y < size) return { token: q };
    if (y < 0 && x >= 0 && x < size) return { token: k };
    return null;
  }

  onMove(event) {
    const hit = this.hit(event);
    const cell = hit && hit.q !== undefined ? hit : null;
    const changed = JSON.stringify(cell) !== JSON.stringify(this.hover);
    this.hover = cell;
    if (changed) this.draw();
    if (cell) {
      showTooltip(event, this.tooltipFor(cell.q, cell.k));
    } else {
      hideTooltip();
    }
    this.canvas.style.cursor = hit ? "pointer" : "default";
  }

  onLeave() {
    this.hover = null;
    hideTooltip();
    this.draw();
  }

  onClick(event) {
    const hit = this.hit(event);
    if (!hit) return;
    const token = hit.token !== undefined ? hit.token : hit.q;
    if (this.options.onSelect) this.options.onSelect(token === this.selected ? null : token);
  }

  select(token) {
    this.selected = token;
    this.draw();
  }

  tooltipFor(q, k) {
    const tokens = this.data.tokens;
    const value = this.data.values[q][k];
    const masked = this.data.causal && k > q;
    return el("div", { class: "tip", dataset: { q, k } },
      el("div", { class: "tip-row" }, el("span", { class: "tip-key", text: "query" }),
        el("code", { class: "tok", dataset: { field: "query" }, text: showToken(tokens[q]) }),
        el("span", { class: "muted", text: ` #${q}` })),
      el("div", { class: "tip-row" }, el("span", { class: "tip-key", text: "key" }),
        el("code", { class: "tok", dataset: { field: "key" }, text: showToken(tokens[k]) }),
        el("span", { class: "muted", text: ` #${k}` })),
      el("div", { class: "tip-row" }, el("span", { class: "tip-key", text: "weight" }),
        el("strong", { dataset: { field: "weight", value: String(value) }, text: formatValue(value) }),
        masked ? el("span", { class: "muted", text: " (masked: future token)" }) : null));
  }
}

// ------------------------------------------------------------------ tooltip

function showTooltip(event, content) {
  const tip = document.getElementById("tooltip");
  tip.replaceChildren(content);
  tip.hidden = false;
  const pad = 14;
  const box = tip.getBoundingClientRect();
  let x = event.clientX + pad;
  let y = event.clientY + pad;
  if (x + box.width > window.innerWidth - 4) x = event.clientX - box.width - pad;
  if (y + box.height > window.innerHeight - 4) y = event.clientY - box.height - pad;
  tip.style.left = `${Math.max(4, x)}px`;
  tip.style.top = `${Math.max(4, y)}px`;
}

function hideTooltip() {
  document.getElementById("tooltip").hidden = true;
}

// ------------------------------------------------------------------ shared pieces

let SUMMARY = null;

async function loadSummary() {
  SUMMARY = await api("summary");
  const models = SUMMARY.models.map((m) => m.name).join(", ") || "no models yet";
  document.getElementById("summary").textContent =
    `${SUMMARY.save_path} · ${models} · ${SUMMARY.n_caches} prompt caches · ${SUMMARY.n_figures} figures` +
    (SUMMARY.n_errors ? ` · ${SUMMARY.n_errors} failed` : "") +
    (SUMMARY.bad_lines ? ` · ${SUMMARY.bad_lines} unreadable index lines skipped` : "");
  return SUMMARY;
}

function select(label, name, options, value, onChange) {
  const control = el("select", { name, "aria-label": label, onchange: (e) => onChange(e.target.value) },
    options.map(([optionValue, text]) => el("option", { value: optionValue, text, selected: String(optionValue) === String(value ?? "") })));
  return el("label", { class: "field" }, el("span", { text: label }), control);
}

function promptTitle(text, hash) {
  return el("p", { class: "prompt-text", title: hash ? `prompt ${hash}` : null }, text || "(no prompt text in the index)");
}

function figureImage(row, className) {
  if (row.status === "skipped") {
    return el("div", { class: `figure-missing skipped ${className || ""}` }, el("strong", { text: "Skipped" }),
      el("span", { text: row.error || "this figure does not apply here" }));
  }
  if (row.status !== "ok") {
    return el("div", { class: `figure-missing ${className || ""}` }, el("strong", { text: "Figure failed" }),
      el("span", { text: row.error || "no error message recorded" }));
  }
  const box = el("div", { class: `figure-box ${className || ""}` });
  const url = (row.files.find((f) => /\.(png|svg|jpe?g|webp|gif)$/i.test(f.path)) || {}).url || row.url;
  if (!/\.(png|svg|jpe?g|webp|gif)$/i.test(url || "")) {
    box.append(el("div", { class: "figure-missing" }, el("strong", { text: row.format || "file" }),
      el("span", { text: "not an image; open it below" })));
    return box;
  }
  const img = el("img", { src: url, alt: `${row.function} ${headLabel(row)}`, loading: "lazy", decoding: "async" });
  img.addEventListener("error", () => {
    box.replaceChildren(el("div", { class: "figure-missing" }, el("strong", { text: "Image unavailable" }),
      el("span", { text: `${row.path} is missing or unreadable` })));
  });
  box.append(img);
  return box;
}

function fileList(row) {
  const files = row.files.length ? row.files : (row.path ? [{ path: row.path, url: row.url, bytes: row.bytes, format: row.format }] : []);
  return el("ul", { class: "files" }, files.map((f) =>
    el("li", {}, el("a", { href: f.url, download: f.path.split("/").pop(), text: f.path.split("/").pop() }),
      el("span", { class: "muted", text: ` ${f.format || ""} ${formatBytes(f.bytes)}` }))));
}

// Load more rows when the sentinel scrolls into view (server-side paging).
function pager(container, sentinel, fetchPage, renderRow, onTotal) {
  let offset = 0;
  let total = Infinity;
  let busy = false;
  let stopped = false;
  const observer = new IntersectionObserver(async (entries) => {
    if (!entries.some((e) => e.isIntersecting) || busy || stopped || offset >= total) return;
    busy = true;
    try {
      const page = await fetchPage(offset);
      if (stopped) return;
      total = page.total;
      onTotal(page.total);
      page.rows.forEach((row) => container.append(renderRow(row)));
      offset += page.rows.length;
      if (offset >= total || !page.rows.length) {
        observer.disconnect();
        sentinel.hidden = true;
      }
    } catch (error) {
      stopped = true;
      sentinel.replaceWith(errorBox(error.message));
    } finally {
      busy = false;
      // Still on screen (short pages): ask again.
      if (!stopped && offset < total) {
        observer.unobserve(sentinel);
        observer.observe(sentinel);
      }
    }
  }, { rootMargin: "800px" });
  observer.observe(sentinel);
  return () => { stopped = true; observer.disconnect(); };
}

// ------------------------------------------------------------------ views

const views = {};
let current = { name: null, cleanup: null, update: null };

// Figures: filters + a lazily loaded grid.
views.grid = (main, params) => {
  const state = Object.fromEntries(params);
  const results = el("section", { class: "results" });
  const count = el("p", { class: "muted count", "data-total": "" });
  const models = SUMMARY.models.map((m) => [m.name, `${m.name} (${m.figures})`]);
  const functions = SUMMARY.functions.map((f) => [f.name, `${f.name} (${f.count})`]);
  const set = (key, value) => go(Object.assign({}, Object.fromEntries(readHash()), { view: "grid", [key]: value }), true);
  const search = el("input", { type: "search", name: "q", placeholder: "text in the prompt…", value: state.q || "",
    "aria-label": "Search prompts" });
  let timer = null;
  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => set("q", search.value.trim()), 250);
  });
  const filters = el("aside", { class: "filters" },
    el("h2", { text: "Filter" }),
    select("Model", "model", [["", "all models"], ...models], state.model, (v) => set("model", v)),
    el("label", { class: "field" }, el("span", { text: "Prompt" }), search),
    state.prompt ? el("div", { class: "chip" }, el("span", { text: `prompt ${state.prompt}` }),
      el("button", { type: "button", class: "link", "aria-label": "clear prompt", text: "×", onclick: () => set("prompt", "") })) : null,
    select("Function", "function", [["", "all functions"], ...functions], state.function, (v) => set("function", v)),
    el("div", { class: "field-row" },
      select("Layer", "layer", [["", "any"], ...SUMMARY.layers.map((l) => [l, l])], state.layer, (v) => set("layer", v)),
      select("Head", "head", [["", "any"], ...SUMMARY.heads.map((h) => [h, h])], state.head, (v) => set("head", v))),
    select("Status", "status", [["", "drawn + failed"], ["ok", "drawn"], ["error", "failed"], ["skipped", "skipped"], ["all", "all"]],
      state.status, (v) => set("status", v)),
    el("button", { type: "button", class: "secondary", text: "Clear filters", onclick: () => go({ view: "grid" }) }),
    el("p", { class: "hint muted", text: "Tip: the address bar holds every filter, so a view can be shared." }));

  main.replaceChildren(el("div", { class: "layout" }, filters, el("div", { class: "content" }, count, results)));

  if (!SUMMARY.index_exists) {
    results.append(el("div", { class: "empty" }, el("h2", { text: "No index yet" }),
      el("p", { text: "This save path has no index.jsonl. Run python -m lens_pipeline.activations, then python -m lens_pipeline.figures." })));
    return null;
  }
  if (!SUMMARY.n_figures) {
    results.append(el("div", { class: "empty" }, el("h2", { text: "No figures yet" }),
      el("p", {}, "Run python -m lens_pipeline.figures to draw them. Meanwhile the ",
        el("a", { href: "#view=prompts", text: "prompts" }), " page opens every cached head interactively.")));
    return null;
  }
  const grid = el("div", { class: "grid" });
  const sentinel = el("div", { class: "sentinel muted", text: "Loading…" });
  results.append(grid, sentinel);
  const query = { model: state.model, q: state.q, prompt: state.prompt, function: state.function,
                  layer: state.layer, head: state.head, status: state.status };
  const stop = pager(grid, sentinel,
    (offset) => api("figures", Object.assign({ offset, limit: PAGE_SIZE }, query)),
    (row) => figureCard(row),
    (total) => {
      count.textContent = `${total.toLocaleString()} figure${total === 1 ? "" : "s"}`;
      count.dataset.total = total;
      if (!total) sentinel.replaceWith(el("p", { class: "empty", text: "No figure matches these filters." }));
    });
  return stop;
};

function figureCard(row) {
  const label = headLabel(row);
  return el("a", { class: "card", href: figureLink(row),
      dataset: { model: row.model, function: row.function, layer: row.layer ?? "", head: row.head ?? "", prompt: row.prompt_hash } },
    isKnitting(row) ? figureImage(Object.assign({}, row, { files: row.files.filter((f) => f.path.endsWith("chart.svg")) }), "thumb")
                    : figureImage(row, "thumb"),
    el("div", { class: "card-body" },
      el("div", { class: "card-title", title: row.function, text: row.function }),
      el("div", { class: "card-meta" }, label ? el("span", { class: "badge", text: label }) : null,
        el("span", { class: "muted small", text: row.model })),
      row.text ? el("div", { class: "card-text", text: row.text }) : null));
}

// Prompts: every cached (model, prompt), with ways into the cache views.
views.prompts = (main, params) => {
  const state = Object.fromEntries(params);
  const set = (key, value) => go(Object.assign({}, Object.fromEntries(readHash()), { view: "prompts", [key]: value }), true);
  const search = el("input", { type: "search", name: "q", placeholder: "text in the prompt…", value: state.q || "", "aria-label": "Search prompts" });
  let timer = null;
  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => set("q", search.value.trim()), 250);
  });
  const count = el("p", { class: "muted count" });
  const list = el("div", { class: "prompt-list" });
  const sentinel = el("div", { class: "sentinel muted", text: "Loading…" });
  const filters = el("aside", { class: "filters" }, el("h2", { text: "Filter" }),
    select("Model", "model", [["", "all models"], ...SUMMARY.models.map((m) => [m.name, m.name])], state.model, (v) => set("model", v)),
    el("label", { class: "field" }, el("span", { text: "Prompt" }), search));
  main.replaceChildren(el("div", { class: "layout" }, filters, el("div", { class: "content" }, count, list, sentinel)));
  return pager(list, sentinel, (offset) => api("prompts", { model: state.model, q: state.q, offset, limit: PAGE_SIZE }),
    (row) => el("article", { class: "prompt-card", dataset: { model: row.model, prompt: row.prompt_hash } },
      el("div", { class: "prompt-meta" }, el("span", { class: "badge", text: row.model }),
        el("span", { class: "muted small", text: `${row.n_tokens ?? "?"} tokens · ${row.prompt_hash}` })),
      el("p", { class: "prompt-text", text: row.text }),
      row.status !== "ok" ? errorBox(row.error || "this cache failed") :
        el("div", { class: "actions" },
          el("a", { class: "button", href: hashFor({ view: "head", model: row.model, prompt: row.prompt_hash, layer: 0, head: 0 }), text: "Attention heads" }),
          el("a", { class: "button secondary", href: hashFor({ view: "tokens", model: row.model, prompt: row.prompt_hash }), text: "Token values" }),
          el("a", { class: "button secondary", href: hashFor({ view: "grid", model: row.model, prompt: row.prompt_hash }), text: "Figures" }))),
    (total) => { count.textContent = `${total} cached prompt${total === 1 ? "" : "s"}`; });
};

// One figure, large, with its files and ways to compare it.
views.figure = async (main, params) => {
  const p = Object.fromEntries(params);
  const row = await api("figure", { model: p.model, prompt: p.prompt, function: p.function, layer: p.layer, head: p.head });
  const base = { model: row.model, prompt: row.prompt_hash, function: row.function, layer: row.layer, head: row.head };
  const actions = el("div", { class: "actions" },
    el("a", { class: "button", href: hashFor(Object.assign({ view: "compare", across: "models" }, base)), text: "Compare across models" }),
    row.layer !== null ? el("a", { class: "button", href: hashFor(Object.assign({ view: "compare", across: "layers" }, base)), text: "Compare across layers" }) : null,
    row.layer !== null && row.head !== null && row.prompt_hash ?
      el("a", { class: "button secondary", href: hashFor({ view: "head", model: row.model, prompt: row.prompt_hash, layer: row.layer, head: row.head }), text: "Interactive head" }) : null,
    row.prompt_hash ? el("a", { class: "button secondary", href: hashFor({ view: "tokens", model: row.model, prompt: row.prompt_hash, layer: row.layer ?? 0 }), text: "Token values" }) : null);
  main.replaceChildren(el("div", { class: "page" },
    el("h1", {}, row.function, " ", el("span", { class: "badge", text: headLabel(row) || row.scope })),
    el("p", { class: "muted", text: row.model }),
    row.prompt_hash ? promptTitle(row.text, row.prompt_hash) : null,
    actions,
    figureImage(row, "large"),
    el("h2", { text: "Files" }), fileList(row),
    el("h2", { text: "Parameters" }),
    el("pre", { class: "params", text: JSON.stringify(row.params, null, 1) + `\ncreated ${row.created}` })));
};

// Knitting: the chart, the written pattern, and every file to download.
views.knit = async (main, params) => {
  const p = Object.fromEntries(params);
  const row = await api("figure", { model: p.model, prompt: p.prompt, function: p.function, layer: p.layer, head: p.head });
  const chart = row.files.find((f) => f.path.endsWith("chart.svg"));
  const text = row.files.find((f) => f.path.endsWith("pattern.txt")) || row.files.find((f) => f.path.endsWith("pattern.md"));
  const pattern = el("pre", { class: "pattern", text: "Loading the pattern…" });
  const chartBox = el("div", { class: "chart" });
  if (chart) {
    const img = el("img", { src: chart.url, alt: "knitting chart", class: "chart-img" });
    img.addEventListener("error", () => chartBox.replaceChildren(errorBox(`${chart.path} is missing or unreadable`)));
    chartBox.append(img);
  } else {
    chartBox.append(errorBox("this figure has no chart.svg"));
  }
  main.replaceChildren(el("div", { class: "page" },
    el("h1", {}, "Knitting pattern ", el("span", { class: "badge", text: row.function })),
    el("p", { class: "muted", text: `${row.model} ${headLabel(row)}` }),
    row.prompt_hash ? promptTitle(row.text, row.prompt_hash) : null,
    row.status !== "ok" ? errorBox(row.error || "this figure failed") : null,
    el("div", { class: "knit" }, chartBox,
      el("div", { class: "knit-side" }, el("h2", { text: "Download" }), fileList(row),
        el("h2", { text: "Pattern" }), pattern))));
  if (!text) {
    pattern.textContent = "This figure has no pattern.txt or pattern.md.";
    return;
  }
  try {
    const response = await fetch(text.url);
    if (!response.ok) throw new Error(`${text.path}: HTTP ${response.status}`);
    pattern.textContent = await response.text();
  } catch (error) {
    pattern.replaceWith(errorBox(`the pattern text could not be loaded (${error.message})`));
  }
};

// One attention head, drawn from the exact cached values.
views.head = async (main, params) => {
  const p = Object.fromEntries(params);
  const info = await api("cache", { model: p.model, prompt: p.prompt });
  const state = { layer: clampInt(p.layer, 0, info.n_layers - 1), head: clampInt(p.head, 0, info.n_heads - 1),
                  scale: p.scale === "sqrt" ? "sqrt" : "linear", token: p.token === undefined ? null : clampInt(p.token, 0, info.n_tokens - 1) };
  const patterns = new Map();
  const canvas = el("canvas", { class: "heatmap", "aria-label": "attention heatmap" });
  const status = el("div", { class: "heat-status", role: "status" });
  const title = el("h1", {});
  const chips = el("div", { class: "token-strip", "aria-label": "tokens: click one to highlight its row and column" });
  const detail = el("div", { class: "token-detail" });
  const nav = el("div", { class: "head-nav", role: "grid", "aria-label": "layers and heads" });
  const scaleSelect = select("Colour scale", "scale", [["linear", "linear"], ["sqrt", "square root (shows small weights)"]], state.scale,
    (v) => { state.scale = v; heatmap.options.scale = v; heatmap.paintCells(); heatmap.draw(); syncUrl(); });
  const layerSelect = select("Layer", "layer", range(info.n_layers).map((l) => [l, l]), state.layer, (v) => move(+v, state.head));
  const headSelect = select("Head", "head", range(info.n_heads).map((h) => [h, h]), state.head, (v) => move(state.layer, +v));
  const compareModels = el("a", { class: "button secondary", text: "Same head in other models" });
  const compareLayers = el("a", { class: "button secondary", text: "This head across layers" });
  const figuresLink = el("a", { class: "button secondary", text: "Figures of this head" });

  info.tokens.forEach((token, i) => chips.append(el("button", { type: "button", class: "chip-token", dataset: { index: i },
    title: `token #${i}`, text: showToken(token), onclick: () => choose(state.token === i ? null : i) })));
  for (let l = 0; l < info.n_layers; l++) {
    const rowEl = el("div", { class: "nav-row", role: "row" }, el("span", { class: "nav-label", text: `L${l}` }));
    for (let h = 0; h < info.n_heads; h++) {
      rowEl.append(el("button", { type: "button", class: "nav-cell", role: "gridcell", title: `layer ${l}, head ${h}`,
        dataset: { layer: l, head: h }, "aria-label": `layer ${l} head ${h}`, onclick: () => move(l, h) }));
    }
    nav.append(rowEl);
  }
  const heatmap = new Heatmap(canvas, { tokens: info.tokens, values: info.tokens.map(() => info.tokens.map(() => 0)), causal: info.causal },
    { scale: state.scale, onSelect: (i) => choose(i) });

  main.replaceChildren(el("div", { class: "page" },
    title,
    el("p", { class: "muted", text: `${info.model} · ${info.family} · ${info.causal ? "causal" : "bidirectional"} · ${info.n_tokens} tokens · stored as ${info.pattern_encoding} (max error ${Number(info.pattern_max_error).toPrecision(2)})` }),
    promptTitle(info.text, info.prompt_hash),
    el("div", { class: "toolbar" }, layerSelect, headSelect, scaleSelect,
      el("span", { class: "hint muted" }, "keys: ", el("kbd", { text: "←" }), el("kbd", { text: "→" }), " head · ",
        el("kbd", { text: "↑" }), el("kbd", { text: "↓" }), " layer · ", el("kbd", { text: "j" }), el("kbd", { text: "k" }),
        " next/previous head · ", el("kbd", { text: "Esc" }), " clear")),
    el("div", { class: "actions" }, compareModels, compareLayers, figuresLink),
    el("div", { class: "head-layout" },
      el("div", { class: "heat-wrap" }, status, canvas,
        el("div", { class: "legend" }, el("span", { class: "muted", text: "weight 0" }), legendBar(VIRIDIS), el("span", { class: "muted", text: "1" }),
          el("span", { class: "masked-key" }), el("span", { class: "muted", text: "masked (future)" })),
        el("p", { class: "muted small", text: "Rows: query tokens. Columns: key tokens. Click a token or a label to highlight its row and column." })),
      el("div", { class: "head-side" }, el("h2", { text: "Tokens" }), chips, detail, el("h2", { text: "Layers × heads" }), nav))));

  function syncUrl() {
    const hash = hashFor({ view: "head", model: info.model, prompt: info.prompt_hash, layer: state.layer, head: state.head,
                           scale: state.scale === "sqrt" ? "sqrt" : "", token: state.token ?? "" });
    history.replaceState(null, "", hash);
    const base = { model: info.model, prompt: info.prompt_hash, layer: state.layer, head: state.head };
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
        el("li", {}, el("code", { class: "tok", text: showToken(info.tokens[i]) }), el("span", { class: "muted", text: ` #${i} ` }), formatValue(v))));
      detail.append(el("h3", {}, "Selected ", el("code", { class: "tok", text: showToken(info.tokens[token]) }), ` #${token}`),
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
      if (!patterns.has(key)) patterns.set(key, await api("pattern", { model: info.model, prompt: info.prompt_hash, layer: state.layer, head: state.head }));
      if (mine !== request) return;
      const data = patterns.get(key);
      heatmap.setData({ tokens: data.tokens, values: data.values, causal: data.causal });
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
  document.addEventListener("keydown", onKey);
  await move(state.layer, state.head);
  return () => document.removeEventListener("keydown", onKey);
};

function clampInt(value, low, high) {
  const n = parseInt(value, 10);
  return Number.isFinite(n) ? Math.min(high, Math.max(low, n)) : low;
}

function range(n) {
  return Array.from({ length: n }, (_, i) => i);
}

// Tokens coloured by one value per token (residual norm, top-1 prob, logit lens, a neuron).
views.tokens = async (main, params) => {
  const p = Object.fromEntries(params);
  const info = await api("cache", { model: p.model, prompt: p.prompt });
  const kinds = [["resid_norm", "residual norm"], ["top1_prob", "top-1 next-token probability"]];
  if (info.has_logit_lens) kinds.push(["logit_lens", "logit lens top-1 probability"]);
  if (info.neuron_ids.length && info.neuron_ids[0].length) kinds.push(["neuron", "MLP neuron activation"]);
  const value = kinds.some(([k]) => k === p.value) ? p.value : "resid_norm";
  const maxLayer = value === "resid_norm" ? info.n_layers : info.n_layers - 1;
  const layer = clampInt(p.layer, 0, maxLayer);
  const neurons = info.neuron_ids.length ? info.neuron_ids[Math.min(layer, info.n_layers - 1)] : [];
  const neuron = value === "neuron" ? (neurons.includes(Number(p.neuron)) ? Number(p.neuron) : neurons[0]) : null;
  const colourRange = ["all", "skip_first"].includes(p.range) ? p.range : "skip_first";
  const skipFirst = colourRange === "skip_first" && value !== "top1_prob" && value !== "logit_lens";
  const set = (changes) => go(Object.assign({ view: "tokens", model: info.model, prompt: info.prompt_hash, value, layer, neuron, range: p.range }, changes), true);
  const layerOptions = range(maxLayer + 1).map((l) => [l, value === "resid_norm" ? (l === 0 ? "0 (embeddings)" : `${l} (after layer ${l - 1})`) : l]);
  const body = el("div", { class: "token-flow", "aria-label": "tokens coloured by value" });
  const legend = el("div", { class: "legend" });
  main.replaceChildren(el("div", { class: "page" },
    el("h1", { text: "Token values" }),
    el("p", { class: "muted", text: `${info.model} · ${info.n_tokens} tokens` }),
    promptTitle(info.text, info.prompt_hash),
    info.note ? el("p", { class: "note", text: info.note }) : null,
    el("div", { class: "toolbar" },
      select("Value", "value", kinds, value, (v) => set({ value: v, neuron: null })),
      value !== "top1_prob" ? select("Layer", "layer", layerOptions, layer, (v) => set({ layer: v, neuron: null })) : null,
      value === "neuron" ? select("Neuron", "neuron", neurons.map((n) => [n, n]), neuron, (v) => set({ neuron: v })) : null,
      value === "resid_norm" || value === "neuron" ? select("Colour range", "range",
        [["skip_first", "all but the first token"], ["all", "all tokens"]], colourRange, (v) => set({ range: v })) : null,
      el("a", { class: "button secondary", href: hashFor({ view: "head", model: info.model, prompt: info.prompt_hash, layer: Math.min(layer, info.n_layers - 1), head: 0 }), text: "Attention heads" })),
    legend, body));
  const data = await api("tokens", { model: info.model, prompt: info.prompt_hash, value, layer: value === "top1_prob" ? null : layer, neuron });
  // Probabilities use 0..1; other values their own range, optionally without the first token
  // (often an attention sink whose residual norm dwarfs every other token's).
  const probability = value === "top1_prob" || value === "logit_lens";
  const ranged = data.values.filter((v, i) => v !== null && !(skipFirst && i === 0 && data.values.length > 1));
  const low = probability ? 0 : Math.min(...ranged);
  const high = probability ? 1 : Math.max(...ranged);
  const signed = !probability && low < 0;
  const bound = Math.max(Math.abs(low), Math.abs(high)) || 1;
  const colourOf = (v) => v === null ? MASKED : signed ? ramp(DIVERGING, 0.5 + v / (2 * bound))
    : ramp(BLUES, high > low ? (v - low) / (high - low) : 0.5);
  legend.replaceChildren(el("span", { class: "legend-title", text: data.title }),
    el("span", { class: "muted", text: formatValue(signed ? -bound : low) }),
    legendBar(signed ? DIVERGING : BLUES),
    el("span", { class: "muted", text: formatValue(signed ? bound : high) }),
    skipFirst ? el("span", { class: "muted", text: "(first token left out of the range)" }) : null);
  data.tokens.forEach((token, i) => {
    const v = data.values[i];
    const colour = colourOf(v);
    const span = el("span", { class: "tv", dataset: { index: i, value: String(v) }, text: token === "" ? "∅" : token });
    span.style.background = rgb(colour);
    span.style.color = isDark(colour) ? "#fff" : "#111827";
    span.addEventListener("mousemove", (event) => showTooltip(event, el("div", { class: "tip" },
      el("div", { class: "tip-row" }, el("span", { class: "tip-key", text: "token" }), el("code", { class: "tok", text: showToken(token) }),
        el("span", { class: "muted", text: ` #${i}` })),
      el("div", { class: "tip-row" }, el("span", { class: "tip-key", text: "value" }), el("strong", { dataset: { field: "value", value: String(v) }, text: formatValue(v) })),
      data.labels ? el("div", { class: "tip-row" }, el("span", { class: "tip-key", text: "top-1" }), el("code", { class: "tok", text: showToken(data.labels[i]) })) : null)));
    span.addEventListener("mouseleave", hideTooltip);
    body.append(span);
  });
};

function legendBar(stops) {
  const bar = el("span", { class: "legend-bar" });
  bar.style.background = `linear-gradient(to right, ${stops.map(rgb).join(", ")})`;
  return bar;
}

// Side by side: a figure (or, without a figure function, the cached head) across models or layers.
views.compare = async (main, params) => {
  const p = Object.fromEntries(params);
  const across = p.across === "layers" ? "layers" : "models";
  const layer = p.layer === undefined || p.layer === "" ? null : Number(p.layer);
  const head = p.head === undefined || p.head === "" ? null : Number(p.head);
  const panels = el("div", { class: "compare" });
  const otherAcross = across === "models" ? "layers" : "models";
  const page = el("div", { class: "page" },
    el("h1", {}, `Compare across ${across} `, el("span", { class: "badge", text: [p.function, headLabel({ layer: across === "layers" ? null : layer, head })].filter(Boolean).join(" ") })),
    el("div", { class: "actions" }, el("a", { class: "button secondary", href: hashFor(Object.assign({}, p, { across: otherAcross })), text: `Compare across ${otherAcross} instead` })),
    panels);
  main.replaceChildren(page);
  if (p.function) {
    const result = await api("compare", { across, model: p.model, prompt: p.prompt, function: p.function, layer: p.layer, head: p.head });
    if (result.rows.length && result.rows[0].text) page.insertBefore(promptTitle(result.rows[0].text, p.prompt), panels);
    if (!result.rows.length) panels.append(el("p", { class: "empty", text: "No matching figures." }));
    result.rows.forEach((row) => panels.append(el("figure", { class: "panel", dataset: { model: row.model, layer: row.layer ?? "" } },
      el("a", { href: figureLink(row) }, figureImage(row, "")),
      el("figcaption", {}, el("strong", { text: across === "models" ? row.model : `layer ${row.layer}` }), el("span", { class: "muted", text: ` ${headLabel(row)}` })))));
    return;
  }
  // No figure function: draw the head itself from each cache.
  const info = await api("cache", { model: p.model, prompt: p.prompt });
  page.insertBefore(promptTitle(info.text, info.prompt_hash), panels);
  const targets = across === "models"
    ? [{ model: info.model, prompt: info.prompt_hash, layer, head }, ...info.same_text.map((s) => ({ model: s.model, prompt: s.prompt_hash, layer, head }))]
    : range(info.n_layers).map((l) => ({ model: info.model, prompt: info.prompt_hash, layer: l, head }));
  if (across === "models" && targets.length === 1) panels.append(el("p", { class: "muted", text: "No other model has cached this prompt." }));
  const observer = new IntersectionObserver((entries) => entries.forEach((entry) => {
    if (!entry.isIntersecting) return;
    observer.unobserve(entry.target);
    entry.target.load();
  }), { rootMargin: "400px" });
  targets.forEach((t) => {
    const box = el("div", { class: "panel-body" }, el("p", { class: "muted", text: "Loading…" }));
    const panel = el("figure", { class: "panel", dataset: { model: t.model, layer: t.layer } }, box,
      el("figcaption", {}, el("a", { href: hashFor({ view: "head", model: t.model, prompt: t.prompt, layer: t.layer, head: t.head }) },
        el("strong", { text: across === "models" ? t.model : `layer ${t.layer}` })), el("span", { class: "muted", text: ` L${t.layer} H${t.head}` })));
    panel.load = async () => {
      try {
        const data = await api("pattern", t);
        const canvas = el("canvas", { class: "heatmap small" });
        box.replaceChildren(canvas);
        new Heatmap(canvas, data, { maxSize: 300, labels: data.tokens.length <= 30 });
      } catch (error) {
        box.replaceChildren(errorBox(error.message));
      }
    };
    panels.append(panel);
    observer.observe(panel);
  });
  return () => observer.disconnect();
};

// ------------------------------------------------------------------ routing

async function route() {
  const params = readHash();
  const name = views[params.get("view")] ? params.get("view") : "grid";
  document.querySelectorAll("[data-tab]").forEach((a) => a.classList.toggle("active", a.dataset.tab === name));
  if (current.cleanup) current.cleanup();
  current = { name, cleanup: null };
  hideTooltip();
  const main = document.getElementById("main");
  // Re-rendering replaces the filter inputs: keep the one being typed in focused.
  const active = document.activeElement;
  const focus = active && main.contains(active) && active.name ?
    { name: active.name, start: active.selectionStart, end: active.selectionEnd } : null;
  const token = Symbol(name);
  current.token = token;
  try {
    if (!SUMMARY) await loadSummary();
    const cleanup = await views[name](main, params);
    if (current.token === token) current.cleanup = cleanup || null;
    else if (cleanup) cleanup();
    const again = focus && main.querySelector(`[name="${CSS.escape(focus.name)}"]`);
    if (again) {
      again.focus();
      if (focus.start !== null && again.setSelectionRange) again.setSelectionRange(focus.start, focus.end);
    }
  } catch (error) {
    if (current.token === token) main.replaceChildren(el("div", { class: "page" }, errorBox(error.message),
      el("p", {}, el("a", { href: "#view=grid", text: "Back to the figures" }))));
  }
  document.title = `lens viewer · ${name}`;
}

// Live: the server re-reads the index as it grows; offer the new rows without losing the view.
async function poll() {
  if (document.hidden || !SUMMARY) return;
  try {
    const fresh = await api("summary");
    const button = document.getElementById("new-rows");
    if (fresh.version !== SUMMARY.version) {
      const figures = fresh.n_figures - SUMMARY.n_figures;
      const caches = fresh.n_caches - SUMMARY.n_caches;
      button.textContent = `Index updated (${figures >= 0 ? "+" : ""}${figures} figures, ${caches >= 0 ? "+" : ""}${caches} caches) · show`;
      button.hidden = false;
    }
    showBanner("");
  } catch (error) {
    showBanner(error.message);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("new-rows").addEventListener("click", async (event) => {
    event.target.hidden = true;
    await loadSummary();
    route();
  });
  window.addEventListener("hashchange", route);
  setInterval(poll, POLL_MS);
  route();
});
