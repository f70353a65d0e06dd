// Shared helpers: DOM building, the page root, the view state (URL hash), the tooltip, small form
// controls, formatting. Every prompt, token and file name is untrusted text: it only ever reaches
// the page through textContent / attributes (see el()), never through innerHTML.

// The root the views draw in: this document (the viewer, a static export) or a notebook widget's
// shadow root. Each holds #main, #tooltip and (the full page) #banner and #summary.
let ROOT = document;

export function setRoot(root) {
  ROOT = root;
}

export function byId(id) {
  return ROOT.getElementById(id);
}

// Keys pressed while the focus is in the root (the whole page, or inside the widget); returns
// a function that stops listening.
export function onKeys(handler) {
  ROOT.addEventListener("keydown", handler);
  return () => ROOT.removeEventListener("keydown", handler);
}

// An SVG element with attributes. The SVG namespace is read from the HTML parser (it puts <svg> there),
// so no namespace address is written in the page's scripts.
const SVG_NS = new DOMParser().parseFromString("<svg></svg>", "text/html").body.firstChild.namespaceURI;
export function svgNode(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  return node;
}

export function el(tag, attrs, ...children) {
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

export function errorBox(message) {
  return el("div", { class: "error-box", role: "alert" }, el("strong", { text: "Error: " }), message);
}

export function showBanner(message) {
  const banner = byId("banner");
  if (!banner) return;
  banner.textContent = message;
  banner.hidden = !message;
}

export function headLabel(row) {
  const parts = [];
  if (row.layer !== null && row.layer !== undefined) parts.push(`L${row.layer}`);
  if (row.head !== null && row.head !== undefined) parts.push(`H${row.head}`);
  return parts.join(" ");
}

export function formatValue(value) {
  if (value === null || value === undefined) return "n/a";
  if (value === 0) return "0";
  const abs = Math.abs(value);
  return abs >= 1e4 || abs < 1e-4 ? value.toExponential(4) : String(Number(value.toPrecision(6)));
}

export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined) return "";
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

export function clampInt(value, low, high) {
  const n = parseInt(value, 10);
  return Number.isFinite(n) ? Math.min(high, Math.max(low, n)) : low;
}

export function range(n) {
  return Array.from({ length: n }, (_, i) => i);
}

// A colour of the page's theme (style.css: :root, or :host in a widget), so no colour is written in the scripts.
export function themeColour(name) {
  return getComputedStyle(ROOT.host || document.documentElement).getPropertyValue(name).trim();
}

export function rgb(colour) {
  return `rgb(${colour[0]}, ${colour[1]}, ${colour[2]})`;
}

// ------------------------------------------------------------------ view state

// Where the view's parameters live, as a hash string ("#view=head&layer=3"): the page's URL
// (the viewer, a static export) or a notebook widget's own state (see widget.js).
export const hashNavigator = {
  read: () => location.hash,
  // Show another view: a new history entry, or (replace) the same entry with new parameters.
  go(hash, replace) {
    if (hash === location.hash) return;
    if (replace) {
      history.replaceState(null, "", hash);
      window.dispatchEvent(new HashChangeEvent("hashchange"));
    } else {
      location.hash = hash;
    }
  },
  note: (hash) => history.replaceState(null, "", hash),  // record the view without showing it again
  listen: (callback) => window.addEventListener("hashchange", callback),
};
let NAV = hashNavigator;

export function useNavigator(navigator) {
  NAV = navigator;
}

export function readHash() {
  return new URLSearchParams(NAV.read().replace(/^#/, ""));
}

export function hashFor(params) {
  const clean = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") clean.set(key, value);
  }
  return "#" + clean.toString();
}

export function go(params, replace = false) {
  NAV.go(hashFor(params), replace);
}

export function note(params) {
  NAV.note(hashFor(params));
}

export function listen(callback) {
  NAV.listen(callback);
}

// ------------------------------------------------------------------ tooltip

export function showTooltip(event, content) {
  const tip = byId("tooltip");
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

export function hideTooltip() {
  const tip = byId("tooltip");
  if (tip) tip.hidden = true;
}

// One "key: value" line of a tooltip.
export function tipRow(key, ...value) {
  return el("div", { class: "tip-row" }, el("span", { class: "tip-key", text: key }), ...value);
}

// ------------------------------------------------------------------ small controls

export function select(label, name, options, value, onChange) {
  const control = el("select", { name, "aria-label": label, onchange: (e) => onChange(e.target.value) },
    options.map(([optionValue, text, disabled]) => el("option", { value: optionValue, text, disabled: Boolean(disabled),
      selected: String(optionValue) === String(value ?? "") })));
  return el("label", { class: "field" }, el("span", { text: label }), control);
}

// A search box that updates the URL a moment after typing stops.
export function searchBox(value, onSearch) {
  const search = el("input", { type: "search", name: "q", placeholder: "text in the prompt…", value: value || "",
    "aria-label": "Search prompts" });
  let timer = null;
  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => onSearch(search.value.trim()), 250);
  });
  return el("label", { class: "field" }, el("span", { text: "Prompt" }), search);
}

export function promptTitle(text, hash) {
  return el("p", { class: "prompt-text", title: hash ? `prompt ${hash}` : null }, text || "(no prompt text in the index)");
}

// Load more rows when the sentinel scrolls into view (server-side paging).
export function pager(container, sentinel, fetchPage, renderRow, onTotal) {
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

// A cell painted with the colours Python computed for it.
export function painted(node, colour, textColour) {
  node.style.background = colour;
  node.style.color = textColour;
  return node;
}

// A hover tooltip of tipRow rows on a node.
export function tip(node, ...rows) {
  node.addEventListener("mousemove", (event) => showTooltip(event, el("div", { class: "tip" }, ...rows)));
  node.addEventListener("mouseleave", hideTooltip);
  return node;
}
