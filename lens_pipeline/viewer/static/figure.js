// One figure, shown as its row says (row.view: image, html, markdown, json, text), with its
// status, files and parameters and ways to compare it. A picture of one head's tokens (the server
// says where they lie on it: row.token_grid) is shown large, in whole pixels, with its tokens.
import { api, fileText, offers } from "./data.js";
import { figureImage, fileList, staleBadge, statusNote } from "./figures.js";
import { el, errorBox, hashFor, headLabel, promptTitle } from "./util.js";

// The text of a file the figure wrote, into `box` (a <pre>); JSON is indented.
export async function loadText(file, box, asJson) {
  try {
    const text = await fileText(file);
    box.textContent = asJson ? JSON.stringify(JSON.parse(text), null, 1) : text;
  } catch (error) {
    box.replaceWith(errorBox(`${file.path} could not be loaded (${error.message})`));
  }
}

// The views an interactive figure may ask to open (a click on a head in the 3-D view opens it).
const OPENED_FROM_FRAMES = new Set(["head"]);

// A click in an interactive figure's frame asks for a view by its hash parameters; only a message
// from that frame, naming a view in OPENED_FROM_FRAMES, is followed. Returns the listener's remover.
function followClicks(frame) {
  const listen = (event) => {
    const data = event.data;
    if (event.source !== frame.contentWindow || !data || data.lens !== "open" || typeof data.params !== "object") return;
    const { view, model, prompt, layer, head } = data.params;
    if (OPENED_FROM_FRAMES.has(view)) location.hash = hashFor({ view, model, prompt, layer, head });
  };
  window.addEventListener("message", listen);
  return () => window.removeEventListener("message", listen);
}

// CSS pixels per picture pixel that fit the picture's cells in the window below the box's top (at
// least MIN_PX): a whole number when one comes close, so every cell stays the same size.
const MIN_PX = 400;
function zoomFor(cellsPx, box) {
  const below = window.innerHeight - Math.max(0, box.getBoundingClientRect().top) - 110;  // key labels and caption
  const room = Math.max(MIN_PX, Math.min(box.clientWidth - 200, below, 1000));
  const whole = Math.floor(room / cellsPx);
  return whole >= 1 && whole * cellsPx >= Math.max(MIN_PX, 0.8 * room) ? whole : room / cellsPx;
}

// The picture large and crisp, query tokens down the left, key tokens along the top; the tokens
// are the cache's own (GET /api/cache), the ones the picture holds (grid.first, grid.count).
async function tokenGridFigure(row, grid) {
  let info;
  try {
    info = await api("cache", { model: row.model, prompt: row.prompt_hash, settings: grid.settings_id });
  } catch (error) {
    return figureImage(row, "large");  // its cache is gone (or not in this export): the picture alone
  }
  const tokens = info.shown_tokens.slice(grid.first, grid.first + grid.count);
  if (tokens.length !== grid.count) return figureImage(row, "large");  // not the cache it was drawn from
  const img = el("img", { class: "tg-image", src: row.image.url, alt: `${row.function} ${headLabel(row)}` });
  const keys = el("div", { class: "tg-keys", "aria-label": "key tokens (attended to)" });
  const queries = el("div", { class: "tg-queries", "aria-label": "query tokens (attending)" });
  const box = el("div", { class: "token-grid-figure", dataset: { first: grid.first, count: grid.count } },
    el("span", { class: "tg-corner muted small", text: "query ↓ · key →" }), keys, queries, img);
  const frame = el("div", { class: "figure-box large token-grid-box" }, box);
  img.addEventListener("error", () => frame.replaceChildren(figureImage(row, "large")));
  const place = () => {
    if (!frame.isConnected) {  // loaded before the page drew it: place it once it is there
      requestAnimationFrame(place);
      return;
    }
    const zoom = zoomFor(grid.count * grid.cell, frame);
    const step = grid.cell * zoom;  // CSS pixels per token
    const every = Math.max(1, Math.ceil(11 / step));  // labels no closer than 11 px
    img.style.width = `${img.naturalWidth * zoom}px`;
    img.style.height = `${img.naturalHeight * zoom}px`;
    const slot = (cls, i) => {
      const label = el("span", { class: cls, dataset: { index: grid.first + i }, title: `#${grid.first + i} ${tokens[i]}`,
                                 text: i % every ? "" : tokens[i] });
      label.style[cls === "tg-key" ? "width" : "height"] = `${step}px`;
      label.style.fontSize = `${Math.min(12, Math.max(9, step - 2))}px`;
      return label;
    };
    keys.replaceChildren(...tokens.map((_, i) => slot("tg-key", i)));
    queries.replaceChildren(...tokens.map((_, i) => slot("tg-query", i)));
    box.dataset.zoom = zoom;
  };
  img.addEventListener("load", place);
  return frame;
}

function shown(row) {
  if (row.status === "error" || row.status === "skipped") return null;  // statusNote says why
  if (row.view === "image" && row.image && row.token_grid) return tokenGridFigure(row, row.token_grid);
  if (row.view === "image" || !row.main) return figureImage(row, "large");
  if (row.view === "html") {
    // Served with a sandboxing CSP; the frame is sandboxed as well: no script, no navigation.
    return el("iframe", { class: "figure-html", src: row.main.url, sandbox: "", title: `${row.function} (HTML)`, loading: "lazy" });
  }
  if (row.view === "interactive") {
    // Plotly draws it: scripts may run, from the save path only (the server's CSP), in an origin of its own.
    // From a file: URL (an export) a frame sandboxed without same-origin may not load file scripts, and every
    // file is an origin of its own there anyway, so same-origin gives the frame nothing of this page.
    const sandbox = location.protocol === "file:" ? "allow-scripts allow-same-origin" : "allow-scripts";
    return el("iframe", { class: "figure-html figure-interactive", src: row.main.url, sandbox,
                          title: `${row.function} (interactive)` });
  }
  const box = el("pre", { class: "figure-text", dataset: { view: row.view }, text: "Loading…" });
  loadText(row.main, box, row.view === "json");
  return box;
}

export async function figure(main, params) {
  const p = Object.fromEntries(params);
  const row = await api("figure", { model: p.model, prompt: p.prompt, function: p.function, layer: p.layer, head: p.head });
  const base = { model: row.model, prompt: row.prompt_hash, function: row.function, layer: row.layer, head: row.head };
  const actions = el("div", { class: "actions" },
    offers("compare") ? el("a", { class: "button", href: hashFor(Object.assign({ view: "compare", across: "models" }, base)), text: "Compare across models" }) : null,
    row.layer !== null && offers("compare") ? el("a", { class: "button", href: hashFor(Object.assign({ view: "compare", across: "layers" }, base)), text: "Compare across layers" }) : null,
    // The head view opens on the colour scale the picture was drawn with.
    row.layer !== null && row.head !== null && row.prompt_hash ?
      el("a", { class: "button", href: hashFor({ view: "head", model: row.model, prompt: row.prompt_hash, layer: row.layer, head: row.head,
                                                 scale: row.params.scale }), text: "Interactive head" }) : null,
    row.prompt_hash ? el("a", { class: "button secondary", href: hashFor({ view: "tokens", model: row.model, prompt: row.prompt_hash, layer: row.layer ?? 0 }), text: "Token values" }) : null);
  const figureBox = await shown(row);
  main.replaceChildren(el("div", { class: "page", dataset: { status: row.status } },
    el("h1", {}, row.function, " ", el("span", { class: "badge", text: headLabel(row) || row.scope }), staleBadge(row)),
    el("p", { class: "muted", text: row.model }),
    row.prompt_hash ? promptTitle(row.text, row.prompt_hash) : null,
    statusNote(row),
    actions,
    figureBox,
    row.files.length ? [el("h2", { text: "Files" }), fileList(row)] : null,
    el("h2", { text: "Parameters" }),
    el("pre", { class: "params", text: JSON.stringify(row.params, null, 1) + `\ncreated ${row.created}` +
      (row.cache_path ? `\ndrawn from ${row.cache_path}` : "") })));
  return row.view === "interactive" && figureBox ? followClicks(figureBox) : null;
}
