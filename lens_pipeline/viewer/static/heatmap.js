// The attention heatmap: one canvas, exact cached weights on hover, a token's row and column
// highlighted on click. Used by the single-head view and the side-by-side comparison.
import { FACTS, colourAt } from "./data.js";
import { el, formatValue, hideTooltip, showTooltip, themeColour, tipRow } from "./util.js";

// The canvas strokes and label colours, from style.css.
function heatmapTheme() {
  return {
    dim: themeColour("--heat-dim"), selected: themeColour("--heat-selected"), hoverOuter: themeColour("--heat-hover-outer"),
    hoverInner: themeColour("--heat-hover-inner"), frame: themeColour("--heat-frame"), label: themeColour("--heat-label"),
    labelStrong: themeColour("--ink"), labelSelected: themeColour("--warn"),
  };
}

export class Heatmap {
  // values[q][k]: exact weights from the cache; labels (tokens as the server writes them) name the
  // rows (queries) and columns (keys). Colours: the display facts' attention table.
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
    this.n = data.labels.length;
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
      const widest = Math.max(...this.data.labels.map((t) => ctx.measureText(t).width));
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
    const edges = this.options.scale === "linear" ? null : FACTS.scale_edges[this.options.scale];
    const { cmap, vmin, vmax } = FACTS.attention;
    const table = FACTS.colormaps[cmap];
    for (let q = 0; q < n; q++) {
      const row = this.data.values[q];
      for (let k = 0; k < n; k++) {
        const masked = this.data.causal && k > q;
        const v = row[k] === null ? 0 : row[k];
        const colour = masked ? FACTS.masked : edges ? table[binIndex(edges, v)] : colourAt(table, v, vmin, vmax);
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
    const theme = heatmapTheme();
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
      ctx.fillStyle = theme.dim;
      ctx.fillRect(this.left, this.top, size, sel * this.cell);
      ctx.fillRect(this.left, this.top + (sel + 1) * this.cell, size, size - (sel + 1) * this.cell);
      ctx.fillRect(this.left, this.top + sel * this.cell, sel * this.cell, this.cell);
      ctx.fillRect(this.left + (sel + 1) * this.cell, this.top + sel * this.cell, size - (sel + 1) * this.cell, this.cell);
      ctx.restore();
      ctx.strokeStyle = theme.selected;
      ctx.lineWidth = 2;
      ctx.strokeRect(this.left, this.top + sel * this.cell, size, this.cell);
      ctx.strokeRect(this.left + sel * this.cell, this.top, this.cell, size);
    }
    if (this.hover) {
      const x = this.left + this.hover.k * this.cell;
      const y = this.top + this.hover.q * this.cell;
      ctx.lineWidth = 3;
      ctx.strokeStyle = theme.hoverOuter;
      ctx.strokeRect(x, y, this.cell, this.cell);
      ctx.lineWidth = 1.5;
      ctx.strokeStyle = theme.hoverInner;
      ctx.strokeRect(x, y, this.cell, this.cell);
    }
    ctx.strokeStyle = theme.frame;
    ctx.lineWidth = 1;
    ctx.strokeRect(this.left - 0.5, this.top - 0.5, size + 1, size + 1);
    if (this.showLabels) this.drawLabels(ctx, theme);
  }

  drawLabels(ctx, theme) {
    ctx.font = this.font;
    ctx.textBaseline = "middle";
    const clip = this.left - 8;
    this.data.labels.forEach((text, i) => {
      const strong = i === this.selected || (this.hover && (i === this.hover.q || i === this.hover.k));
      ctx.fillStyle = i === this.selected ? theme.labelSelected : strong ? theme.labelStrong : theme.label;
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
    const labels = this.data.labels;
    const value = this.data.values[q][k];
    const masked = this.data.causal && k > q;
    return el("div", { class: "tip", dataset: { q, k } },
      tipRow("query", el("code", { class: "tok", dataset: { field: "query" }, text: labels[q] }),
        el("span", { class: "muted", text: ` #${q}` })),
      tipRow("key", el("code", { class: "tok", dataset: { field: "key" }, text: labels[k] }),
        el("span", { class: "muted", text: ` #${k}` })),
      tipRow("weight", el("strong", { dataset: { field: "weight", value: String(value) }, text: formatValue(value) }),
        masked ? el("span", { class: "muted", text: " (masked: future token)" }) : null));
  }
}

// The colour index i with edges[i] <= v < edges[i + 1]: a scale's edges come from Python (display.facts).
function binIndex(edges, v) {
  let lo = 0;
  let hi = edges.length - 2;
  if (!(v >= edges[1])) return 0;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (v >= edges[mid]) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}
