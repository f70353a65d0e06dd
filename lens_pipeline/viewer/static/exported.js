// A static export's page (python -m lens_pipeline.export): the viewer, with answers from data files
// written beside it (data/NAME.js, each calling lensExportData(NAME, payload) when a <script> loads
// it: a page opened from file:// may not fetch) or embedded in the page (--single-file). Payloads
// are gzipped JSON in base64. Every answer is the viewer API's own, computed in Python and looked up
// here. Only the figure grid's and the prompt list's filters combine here: the rows the API gave
// for each filter value are intersected (its filters are a conjunction), and the text search matches
// the prompt texts as the API does (a substring of the text, or the start of the hash).
import { start } from "./app.js";
import { ApiError, answerKey, unpack } from "./data.js";

const tables = new Map();  // data file name -> { promise, resolve, asked }

function slot(name) {
  if (!tables.has(name)) {
    const entry = { asked: false };
    entry.promise = new Promise((resolve, reject) => Object.assign(entry, { resolve, reject }));
    tables.set(name, entry);
  }
  return tables.get(name);
}

async function decode(payload) {
  const bytes = Uint8Array.from(atob(payload), (c) => c.charCodeAt(0));
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  return JSON.parse(await new Response(stream).text());
}

window.lensExportData = (name, payload) => {
  const entry = slot(name);
  entry.arrived = true;
  entry.resolve(decode(payload));
};

function load(name) {
  const entry = slot(name);
  if (!entry.arrived && !entry.asked && name !== "index") {  // data/index.js: the page loads it
    entry.asked = true;
    const script = document.createElement("script");
    script.src = `data/${name}.js`;
    script.onerror = () => entry.reject(new ApiError(`data/${name}.js is missing from this export`));
    document.head.append(script);
  }
  return entry.promise;
}

function reply(answer, what) {
  if (!answer) throw new ApiError(`This export holds no answer for ${what}.`);
  if (answer.error !== undefined) throw new ApiError(answer.error);
  return unpack(answer.body);
}

// The ids of the rows every given filter lists (the sets come from the API, one per filter value).
function matching(sets, params, rows, texts) {
  let ids = null;
  for (const [name, values] of Object.entries(sets)) {
    const value = params[name] ?? (name === "status" ? "shown" : undefined);
    if (value === undefined) continue;
    const listed = new Set(values[value] || []);
    ids = ids === null ? [...listed] : ids.filter((id) => listed.has(id));
  }
  ids = ids === null ? Array.from({ length: rows.length }, (_, i) => i) : ids.sort((a, b) => a - b);
  const q = (params.q || "").trim().toLowerCase();
  if (!q) return ids;
  const found = new Set(texts.filter(([, hash, text]) => text.toLowerCase().includes(q) || hash.startsWith(q)).map(([model, hash]) => `${model} ${hash}`));
  return ids.filter((id) => found.has(`${rows[id].model} ${rows[id].prompt_hash}`));
}

function page(ids, rows, params, version) {
  const offset = Number(params.offset || 0);
  const limit = Number(params.limit || 60);
  return { total: ids.length, offset, limit, version, rows: ids.slice(offset, offset + limit).map((id) => rows[id]) };
}

const exportSource = {
  async api(path, params) {
    const index = await load("index");
    const key = answerKey(path, params);
    if (path === "display" || path === "summary") return reply(index.answers[key], path);
    if (path === "figures" || path === "prompts") {
      const rows = path === "figures" ? index.figures : index.prompts;
      return page(matching(index.filters[path], params, rows, index.texts), rows, params, index.version);
    }
    if (path === "figure") {
      const id = index.figure_ids[key];
      if (id === undefined) throw new ApiError(`This export holds no figure ${params.function} for prompt ${params.prompt || "(none)"}.`);
      return index.figures[id];
    }
    const name = index.prompt_files[`${params.model} ${params.prompt}`];
    if (!name) throw new ApiError(`This export does not hold prompt ${params.prompt} of ${params.model}.`);
    return reply((await load(name))[key], `${path} with these parameters (it holds each prompt's current cache)`);
  },
  async text(file) {
    const index = await load("index");
    const name = index.text_files[file.path];
    const answer = name ? (await load(name))[answerKey("file", { path: file.path })] : null;
    return reply(answer, file.path);
  },
  offers: (path) => path !== "compare",
};

const embedded = document.getElementById("lens-data");  // --single-file: every data file in the page
if (embedded) Object.entries(JSON.parse(embedded.textContent)).forEach(([name, payload]) => window.lensExportData(name, payload));
start({ source: exportSource });
