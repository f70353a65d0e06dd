"""Matplotlib helpers the built-in figures share: Agg figures kept out of pyplot, and token
strings made safe to draw as labels.

Figures are made with `matplotlib.figure.Figure` on an Agg canvas, never through pyplot: no
global figure list to leak memory into, and a notebook's own backend is left alone.
"""

from __future__ import annotations

import functools

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lens_pipeline.draw import display

MISSING_GLYPH = "□"


def new_figure(width: float, height: float) -> Figure:
    """A figure (inches) drawn by Agg in DejaVu Sans, matplotlib's default font."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


@functools.cache
def _font_charmap() -> frozenset[int]:
    from matplotlib import font_manager, ft2font

    path = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans"))
    return frozenset(ft2font.FT2Font(path).get_charmap())


@functools.lru_cache(maxsize=65536)  # the same tokens recur across a prompt's figures
def token_label(token: str, max_chars: int = 16) -> str:
    """A token as matplotlib should draw it, literally: whitespace made visible, '$' escaped (it
    would start mathtext), characters the font lacks replaced by □, long tokens shortened."""
    token = display.token_inline(token)  # the viewer's whitespace rule: a bare space would be invisible
    charmap = _font_charmap()
    token = "".join(c if ord(c) in charmap else MISSING_GLYPH for c in token)
    if len(token) > max_chars:
        token = token[: max_chars - 1] + "…"
    return token.replace("$", r"\$")


def token_labels(tokens: list[str] | np.ndarray, max_chars: int = 16) -> list[str]:
    return [token_label(str(t), max_chars) for t in tokens]


def evenly_spaced(n: int, limit: int) -> list[int]:
    """Up to `limit` indices of range(n), spread out and always including the first and last."""
    if n <= limit:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, limit)})


def label_ticks(axes: Axes, axis: str, labels: list[str], max_labels: int = 120, fontsize: float = 8) -> None:
    """Tick every position with its label; thin them to `max_labels` so long prompts stay legible."""
    step = max(1, -(-len(labels) // max_labels))
    positions = list(range(0, len(labels), step))
    shown = [labels[i] for i in positions]
    if axis == "x":
        axes.set_xticks(positions, shown, rotation=90, fontsize=fontsize)
    else:
        axes.set_yticks(positions, shown, fontsize=fontsize)


def title_for(cache: object, what: str) -> str:
    """'<what> · <model> · <prompt hash>' — the same heading on every built-in figure."""
    return token_label(f"{what} · {cache.model} · {cache.prompt_hash}", max_chars=200)  # type: ignore[attr-defined]
