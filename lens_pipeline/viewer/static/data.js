// Where the page's data comes from, and what it keeps: `api(path, params)` is the one place a view
// asks for data. A source answers it: the viewer's HTTP API (here), a static export's data files
// (exported.js) or a notebook kernel (widget.js); every source gives the API's own answers
// (lens_pipeline/viewer/api.py). Kept: the display facts (fetched once: colour tables, value kinds,
// labels; defined in lens_pipeline/draw/display.py) and the index summary (re-fetched when it changes).
import { byId, rgb } from "./util.js";

export class ApiError extends Error {}

// The viewer's server: GET /api/PATH?QUERY, and saved files by their URL.
export const httpSource = {
  async api(path, params) {
    let response;
    try {
      response = await fetch(`/api/${path}?${new URLSearchParams(params)}`);
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
  },
  async text(file) {
    const response = await fetch(file.url);
    if (!response.ok) throw new Error(`${file.path}: HTTP ${response.status}`);
    return response.text();
  },
  offers: () => true,
};
let SOURCE = httpSource;

export function useSource(source) {
  SOURCE = source;
}

// The parameters a request carries: empty ones left out, every value as text.
function clean(params) {
  const kept = {};
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== null && value !== undefined && value !== "") kept[key] = String(value);
  }
  return kept;
}

export function api(path, params) {
  return SOURCE.api(path, clean(params));
}

// The text of a file a figure wrote (a pattern, Markdown, JSON).
export function fileText(file) {
  return SOURCE.text(file);
}

// Whether the source answers `path` (a notebook widget has no index: no figures, no comparisons).
export function offers(path) {
  return SOURCE.offers(path);
}

// The key of an answer kept in a table (static export, widget state); lens_pipeline.viewer.transport
// writes the same.
export function answerKey(path, params) {
  const pairs = Object.entries(clean(params)).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return JSON.stringify([path, pairs]);
}

// Answers kept in tables carry float arrays packed as little-endian float32 in base64
// ({f32, shape}: lens_pipeline.viewer.transport.pack); unpacked, they are the API's nested lists.
export function unpack(value) {
  if (Array.isArray(value)) return value.map(unpack);
  if (value === null || typeof value !== "object") return value;
  if (typeof value.f32 === "string" && Array.isArray(value.shape)) {
    const bytes = Uint8Array.from(atob(value.f32), (c) => c.charCodeAt(0));
    const flat = new Float32Array(bytes.buffer);
    const nest = (offset, dims) => {
      if (dims.length === 1) return Array.from(flat.subarray(offset, offset + dims[0]), (v) => (Number.isFinite(v) ? v : null));
      const step = dims.slice(1).reduce((a, b) => a * b, 1);
      return Array.from({ length: dims[0] }, (_, i) => nest(offset + i * step, dims.slice(1)));
    };
    return nest(0, value.shape);
  }
  return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, unpack(v)]));
}

// Both are filled in place (a view that imported them sees the new contents).
export const FACTS = {};
export const SUMMARY = {};

export function summaryLoaded() {
  return SUMMARY.version !== undefined;
}

export async function loadFacts() {
  if (!FACTS.colormaps) Object.assign(FACTS, await api("display"));
  return FACTS;
}

export async function loadSummary() {
  Object.assign(SUMMARY, await api("summary"));
  const line = byId("summary");
  if (line) {
    const models = SUMMARY.models.map((m) => m.name).join(", ") || "no models yet";
    line.textContent =
      `${SUMMARY.save_path} · ${models} · ${SUMMARY.n_caches} prompt caches · ${SUMMARY.n_figures} figures` +
      (SUMMARY.n_stale ? ` · ${SUMMARY.n_stale} stale` : "") +
      (SUMMARY.n_errors ? ` · ${SUMMARY.n_errors} failed` : "") +
      (SUMMARY.bad_lines ? ` · ${SUMMARY.bad_lines} unreadable index lines skipped` : "");
  }
  return SUMMARY;
}

// Colour of value v on (vmin, vmax) in a colour table: the bin colormap.to_index gives it.
export function colourAt(table, v, vmin, vmax) {
  const span = vmax > vmin ? vmax - vmin : 1;
  const i = Math.floor(((v - vmin) * table.length) / span);
  return table[Math.min(table.length - 1, Math.max(0, i || 0))];
}

// A legend bar for a colour table, as a CSS gradient of every 16th entry.
export function legendBar(cmap) {
  const table = FACTS.colormaps[cmap];
  const stops = table.filter((_, i) => i % 16 === 0).concat([table[table.length - 1]]);
  const bar = document.createElement("span");
  bar.className = "legend-bar";
  bar.style.background = `linear-gradient(to right, ${stops.map(rgb).join(", ")})`;
  return bar;
}

// A cache's metadata: the current cache of (model, prompt), or the one made with p.settings.
// `settings` is what to pass on to keep reading that same cache ("" for the current one).
export async function openCache(p) {
  const info = await api("cache", { model: p.model, prompt: p.prompt, settings: p.settings });
  return { info, settings: info.is_current ? "" : info.settings_id };
}

export function valueKind(name) {
  return FACTS.value_kinds.find((kind) => kind.name === name);
}
