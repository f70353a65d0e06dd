"""What the model predicts next: top-k bars per position, a position x rank probability heatmap,
and the logit lens (each layer's top token read through the final norm and unembedding).

Position p shows the prediction made after reading token p, i.e. for token p + 1. Drawn on a
PIL canvas (lens_pipeline.draw.canvas): long prompts are split into panels of `per_panel`
positions stacked top to bottom, so cell text stays at canvas.FONT_PX and the image fits the
viewer's width; each panel says which positions it holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from lens_pipeline.draw import canvas, colormap
from lens_pipeline.draw.builtins.plotting import evenly_spaced, title_for, token_label, token_labels
from lens_pipeline.draw.registry import register_figure
from lens_pipeline.store.cache import Cache

BAR_COLOR = "#4c72b0"
ACTUAL_COLOR = "#dd8452"  # the token that really came next
LEGEND = [(BAR_COLOR, "the model's top-k guesses for the next token (bar = probability)"),
          (ACTUAL_COLOR, "the token that actually came next")]
CELL_W, CELL_H = 64, 18
PROB_TICKS = [(0.0, "0"), (0.5, "0.5"), (1.0, "1")]


def _rgb(hex_color: str) -> tuple[int, int, int]:
    return tuple(bytes.fromhex(hex_color[1:]))  # type: ignore[return-value]


def _last_positions(cache: Cache, max_positions: int) -> list[int]:
    return list(range(max(0, cache.n_tokens - max_positions), cache.n_tokens))


@dataclass(frozen=True)
class PanelLayout:
    """How probability_panels lays out its cells: the title and note above them, what the rows are
    (`row_axis`, e.g. "rank"; bottom_up: row 0 drawn at the bottom, as layers grow upwards) and
    `per_panel` positions a panel."""

    title: str
    note: str
    row_axis: str
    per_panel: int
    bottom_up: bool = False


def probability_panels(layout: PanelLayout, probs: np.ndarray, texts: np.ndarray, positions: list[int], n_tokens: int,
                       row_labels: list[str], col_tokens: list[str]) -> canvas.Canvas:
    """[rows, positions] probabilities as labelled cells (text = the token), in panels of positions
    stacked top to bottom as `layout` says; row_labels name the rows, col_tokens the positions."""
    title, note, row_axis, per_panel, bottom_up = (layout.title, layout.note, layout.row_axis, layout.per_panel,
                                                   layout.bottom_up)
    rows = probs.shape[0]
    index = colormap.to_index(probs)
    label_w = 10 + max(canvas.text_width(label) for label in [*row_labels, row_axis])
    n_pages = -(-len(positions) // per_panel)  # balanced: 13 positions make panels of 7 and 6, not 12 and 1
    pages = [list(map(int, page)) for page in np.array_split(np.arange(len(positions)), n_pages)]
    width = min(canvas.MAX_WIDTH, label_w + max(map(len, pages)) * CELL_W + 90)
    line = canvas.line_height()
    note_lines = canvas.wrapped_lines(note, width - 12)
    panel_h = line + 4 + rows * CELL_H + line + 8
    picture = canvas.Canvas(width, 8 + canvas.line_height(canvas.TITLE_PX) + note_lines * line + 6 + len(pages) * panel_h)
    picture.text(6, 4, canvas.fit_text(title, width - 12, canvas.TITLE_PX), canvas.TITLE_PX)
    y = picture.wrap(6, 6 + canvas.line_height(canvas.TITLE_PX), note, width - 12) + 6
    order = slice(None, None, -1) if bottom_up else slice(None)
    for page in pages:
        first, last = positions[page[0]], positions[page[-1]]
        picture.text(label_w, y, f"positions {first}–{last} of 0–{n_tokens - 1}", color=canvas.MUTED)
        top = y + line + 4
        grid = picture.heatmap(label_w, top, index[order][:, page], "viridis", CELL_W, CELL_H)
        picture.cell_texts(grid, np.vectorize(lambda s: token_label(str(s), 12), otypes=[object])(texts[order][:, page]),
                           index[order][:, page], "viridis")
        picture.frame(grid)
        picture.y_labels(grid, row_labels[order])
        picture.text(label_w - 4, top - 2, row_axis, color=canvas.MUTED, anchor="rb")
        picture.x_labels(grid, [col_tokens[i] for i in page])
        picture.colorbar(label_w + grid.width + 10, top, grid.height, "viridis", PROB_TICKS, "probability")
        y = top + grid.height + line + 8
    return picture


def topk_heatmap_canvas(cache: Cache, max_positions: int = 60, per_panel: int = 12) -> canvas.Canvas:
    positions = _last_positions(cache, max_positions)
    probs = cache.topk_probs[positions].T  # [k, positions]
    k = probs.shape[0]
    shown = f"the last {len(positions)} of {cache.n_tokens} positions" if len(positions) < cache.n_tokens else "every position"
    note = (f"Row r = the model's rank-r guess for the next token after reading the token under the column; "
            f"cell text = that guess, colour = its probability (linear, 0 to 1). Rows 1..{k}; {shown}.")
    layout = PanelLayout(title_for(cache, "next-token probabilities"), note, "rank", per_panel)
    return probability_panels(layout, probs, cache.topk_strs[positions].T, positions, cache.n_tokens,
                              [str(r + 1) for r in range(k)], token_labels([cache.tokens[p] for p in positions], 12))


@register_figure(scope="prompt", formats="png", needs=("topk_ids", "lm_head"))
def topk_heatmap(cache: Cache, max_positions: int = 60, per_panel: int = 12) -> Image.Image:
    """Rank x position heatmap of next-token probabilities, each cell labelled with its token (panels of per_panel positions)."""
    return topk_heatmap_canvas(cache, max_positions, per_panel).finish()


def logit_lens_canvas(cache: Cache, max_positions: int = 24, per_panel: int = 12) -> canvas.Canvas:
    positions = _last_positions(cache, max_positions)
    probs = cache.array("logit_lens_probs").astype(np.float32)[:, positions]  # [L, positions]
    texts = cache.array("logit_lens_strs")[:, positions]
    shown = f"the last {len(positions)} of {cache.n_tokens} positions" if len(positions) < cache.n_tokens else "every position"
    note = ("Row = the residual stream after that layer, read through the final norm and unembedding; cell text = its "
            f"top next token, colour = that token's probability (linear, 0 to 1); layer 0 at the bottom; {shown}.")
    layout = PanelLayout(title_for(cache, "logit lens: top-1 token per layer"), note, "layer", per_panel, bottom_up=True)
    return probability_panels(layout, probs, texts, positions, cache.n_tokens, [str(layer) for layer in range(probs.shape[0])],
                              token_labels([cache.tokens[p] for p in positions], 12))


@register_figure(scope="prompt", formats="png", needs=("logit_lens_ids", "lm_head"))
def logit_lens(cache: Cache, max_positions: int = 24, per_panel: int = 12) -> Image.Image:
    """Logit lens: each layer's top next token and its probability at each position (last max_positions, in panels)."""
    return logit_lens_canvas(cache, max_positions, per_panel).finish()


BAR_ROW = 18
PANEL_W = 288


def topk_bars_canvas(cache: Cache, max_positions: int = 12, k: int | None = None) -> tuple[canvas.Canvas, dict[int, tuple]]:
    """The picture, and for each position drawn: (x of probability 0, px per unit, y of each bar's top)."""
    positions = evenly_spaced(cache.n_tokens, max_positions)
    k = min(k or cache.topk_ids.shape[1], cache.topk_ids.shape[1])
    ids, tokens = cache.token_ids, cache.tokens
    cols = min(3, len(positions))
    rows = math.ceil(len(positions) / cols)
    line = canvas.line_height()
    panel_h = line + 4 + k * BAR_ROW + line + 10
    width = cols * PANEL_W + 12
    picture = canvas.Canvas(width, 8 + canvas.line_height(canvas.TITLE_PX) + 2 * line + 10 + rows * panel_h)
    picture.text(6, 4, canvas.fit_text(title_for(cache, f"top-{k} next-token predictions"), width - 12, canvas.TITLE_PX),
                 canvas.TITLE_PX)
    y0 = 8 + canvas.line_height(canvas.TITLE_PX)
    picture.legend(6, y0, [(_rgb(c), text) for c, text in LEGEND[:1]])
    picture.legend(6, y0 + line, [(_rgb(c), text) for c, text in LEGEND[1:]])
    y0 += 2 * line + 10
    label_w, bar_w = 96, PANEL_W - 96 - 40
    bars: dict[int, tuple] = {}
    blue, orange = _rgb(BAR_COLOR), _rgb(ACTUAL_COLOR)
    picture.inks |= {blue, orange}
    for slot, position in enumerate(positions):
        px = 6 + (slot % cols) * PANEL_W
        py = y0 + (slot // cols) * panel_h
        picture.text(px, py, canvas.fit_text(f"#{position} after “{token_label(tokens[position])}”", PANEL_W - 12))
        top, left = py + line + 4, px + label_w
        probs = cache.topk_probs[position, :k]
        actual = ids[position + 1] if position + 1 < cache.n_tokens else None
        tops = []
        for rank in range(k):
            by = top + rank * BAR_ROW
            tops.append(by)
            color = orange if cache.topk_ids[position, rank] == actual else blue
            length = int(round(float(probs[rank]) * bar_w))
            if length:
                picture.draw.rectangle((left, by + 2, left + length - 1, by + BAR_ROW - 3), fill=color)
            picture.text(left - 4, by + BAR_ROW / 2, canvas.fit_text(token_label(str(cache.topk_strs[position, rank]), 14),
                                                                    label_w - 6), anchor="rm")
            picture.text(left + length + 3, by + BAR_ROW / 2, f"{float(probs[rank]):.2f}", color=canvas.MUTED, anchor="lm")
        axis_y = top + k * BAR_ROW + 1
        picture.draw.line((left, top, left, axis_y), fill=canvas.FRAME)
        picture.draw.line((left, axis_y, left + bar_w, axis_y), fill=canvas.FRAME)
        for value, text in PROB_TICKS:
            picture.text(left + value * bar_w, axis_y + 1, text, color=canvas.MUTED, anchor="mt")
        bars[position] = (left, bar_w, tops)
    return picture, bars


@register_figure(scope="prompt", formats="png", needs=("topk_ids", "lm_head"))
def topk_bars(cache: Cache, max_positions: int = 12, k: int | None = None) -> Image.Image:
    """Top-k next-token probabilities as bars, for up to max_positions positions (legend: actual next token in orange)."""
    return topk_bars_canvas(cache, max_positions, k)[0].finish()
