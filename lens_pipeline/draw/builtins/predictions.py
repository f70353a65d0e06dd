"""What the model predicts next: top-k bars per position, a position x rank probability heatmap,
and the logit lens (each layer's top token read through the final norm and unembedding).

Position p shows the prediction made after reading token p, i.e. for token p + 1.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from lens_pipeline.draw import colormap
from lens_pipeline.draw.builtins.plotting import evenly_spaced, label_ticks, new_figure, title_for, token_label, token_labels
from lens_pipeline.draw.registry import register_figure
from lens_pipeline.store.cache import Cache

BAR_COLOR = "#4c72b0"
ACTUAL_COLOR = "#dd8452"  # the token that really came next
MAX_CELL_TEXTS = 1500  # above this many cells, text labels would be an unreadable smear


def _annotate_cells(axes, probs: np.ndarray, texts: np.ndarray, cmap: str, fontsize: float) -> None:  # type: ignore[no-untyped-def]
    """Write each cell's token in black or white, whichever reads on the cell's colour."""
    colors = colormap.hex_colors(probs, cmap, 0.0, 1.0)
    for (row, col), text, color in zip(np.ndindex(probs.shape), texts.reshape(-1), colors):
        axes.text(col, row, token_label(str(text), 8), ha="center", va="center", fontsize=fontsize,
                  color=colormap.text_color(color))


def _last_positions(cache: Cache, max_positions: int) -> list[int]:
    return list(range(max(0, cache.n_tokens - max_positions), cache.n_tokens))


@register_figure(scope="prompt", formats="png", needs=("topk_ids", "lm_head"))
def topk_bars(cache: Cache, max_positions: int = 12, k: int | None = None) -> Figure:
    """Top-k next-token probabilities as bars, for up to max_positions positions (actual next token in orange)."""
    positions = evenly_spaced(cache.n_tokens, max_positions)
    k = min(k or cache.topk_ids.shape[1], cache.topk_ids.shape[1])
    tokens, ids = cache.tokens, cache.token_ids
    cols = min(4, len(positions))
    rows = math.ceil(len(positions) / cols)
    figure = new_figure(3.2 * cols, 0.25 * k * rows + 1.2 * rows + 0.8)
    figure.suptitle(title_for(cache, f"top-{k} next-token predictions"), fontsize=10)
    for slot, position in enumerate(positions):
        axes = figure.add_subplot(rows, cols, slot + 1)
        probs = cache.topk_probs[position, :k]
        actual = ids[position + 1] if position + 1 < cache.n_tokens else None
        colors = [ACTUAL_COLOR if token_id == actual else BAR_COLOR for token_id in cache.topk_ids[position, :k]]
        axes.barh(range(k), probs, color=colors)
        axes.set_yticks(range(k), token_labels(cache.topk_strs[position, :k]), fontsize=7)
        axes.invert_yaxis()  # rank 1 on top
        axes.set_xlim(0, 1)
        axes.tick_params(axis="x", labelsize=7)
        axes.set_title(f"#{position} after “{token_label(tokens[position])}”", fontsize=8)
    return figure


@register_figure(scope="prompt", formats="png", needs=("topk_ids", "lm_head"))
def topk_heatmap(cache: Cache, max_positions: int = 60) -> Figure:
    """Rank x position heatmap of next-token probabilities, each cell labelled with its token."""
    positions = _last_positions(cache, max_positions)
    probs = cache.topk_probs[positions].T  # [k, positions]
    k = probs.shape[0]
    figure = new_figure(min(40.0, max(6.0, 2.5 + 0.55 * len(positions))), 1.8 + 0.3 * k)
    axes = figure.add_subplot()
    image = axes.imshow(probs, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    if probs.size <= MAX_CELL_TEXTS:
        _annotate_cells(axes, probs, cache.topk_strs[positions].T, "viridis", 6)
    label_ticks(axes, "x", token_labels([cache.tokens[p] for p in positions]))
    axes.set_xlabel("after token" + (f" (last {len(positions)} of {cache.n_tokens})" if len(positions) < cache.n_tokens else ""))
    axes.set_yticks(range(k), [str(rank + 1) for rank in range(k)], fontsize=7)
    axes.set_ylabel("rank")
    axes.set_title(title_for(cache, "next-token probabilities"), fontsize=9)
    figure.colorbar(image, ax=axes, pad=0.01, label="probability")
    return figure


@register_figure(scope="prompt", formats="png", needs=("logit_lens_ids", "lm_head"))
def logit_lens(cache: Cache, max_positions: int = 30) -> Figure:
    """Logit lens: each layer's top next token and its probability at each position (last max_positions)."""
    positions = _last_positions(cache, max_positions)
    probs = cache.array("logit_lens_probs").astype(np.float32)[:, positions]  # [L, positions]
    texts = cache.array("logit_lens_strs")[:, positions]
    n_layers = probs.shape[0]
    figure = new_figure(min(40.0, max(6.0, 2.5 + 0.6 * len(positions))), min(30.0, 1.8 + 0.28 * n_layers))
    axes = figure.add_subplot()
    image = axes.imshow(probs, aspect="auto", origin="lower", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    if probs.size <= MAX_CELL_TEXTS:
        _annotate_cells(axes, probs, texts, "viridis", 6)
    label_ticks(axes, "x", token_labels([cache.tokens[p] for p in positions]))
    axes.set_xlabel("after token" + (f" (last {len(positions)} of {cache.n_tokens})" if len(positions) < cache.n_tokens else ""))
    axes.set_yticks(range(n_layers), [str(layer) for layer in range(n_layers)], fontsize=7)
    axes.set_ylabel("layer (residual after it)")
    axes.set_title(title_for(cache, "logit lens: top-1 token per layer"), fontsize=9)
    figure.colorbar(image, ax=axes, pad=0.01, label="probability")
    return figure
