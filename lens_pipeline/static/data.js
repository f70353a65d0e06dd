// The server's answers: the JSON API, the display facts (fetched once: colour tables, value kinds,
// labels; defined in lens_pipeline/display.py) and the index summary (re-fetched when it changes).
import { rgb } from "./util.js";

export class ApiError extends Error {}

export async function api(path, params) {
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

export let FACTS = null;
export let SUMMARY = null;

export async function loadFacts() {
  if (!FACTS) FACTS = await api("display");
  return FACTS;
}

export async function loadSummary() {
  SUMMARY = await api("summary");
  const models = SUMMARY.models.map((m) => m.name).join(", ") || "no models yet";
  document.getElementById("summary").textContent =
    `${SUMMARY.save_path} · ${models} · ${SUMMARY.n_caches} prompt caches · ${SUMMARY.n_figures} figures` +
    (SUMMARY.n_stale ? ` · ${SUMMARY.n_stale} stale` : "") +
    (SUMMARY.n_errors ? ` · ${SUMMARY.n_errors} failed` : "") +
    (SUMMARY.bad_lines ? ` · ${SUMMARY.bad_lines} unreadable index lines skipped` : "");
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
