"""Display facts, defined once in Python: how tokens are written, which colours stand for what,
which text goes on a coloured cell, how a cache's settings and a figure's status are named (the
settings' names are the store's, store/settings_text.py: a cache's notebook view writes them too).

Figures use them directly; the viewer sends them to the page, which only draws: the tables once
(`facts()`, GET /api/display) and display strings and colours in each answer. Nothing here is
written again in JavaScript.
"""

from __future__ import annotations

from typing import Any

from lens_pipeline.draw import colormap
from lens_pipeline.draw.token_values import VALUE_KINDS
from lens_pipeline.store.settings_text import settings_summary  # noqa: F401  (display.settings_summary: the viewer's name)

# Whitespace made visible, so " the" and "the" do not look the same.
WHITESPACE = {"\n": "↵", "\r": "␍", "\t": "⇥"}
SPACE = "·"  # a space inside a token label
BLANK = "␣"  # a space of a whitespace-only token in running text
EMPTY = "∅"  # a token with no characters

ATTENTION = {"cmap": colormap.ATTENTION_CMAP, "vmin": 0.0, "vmax": 1.0, "label": "attention weight"}
ATTRIBUTION_METHODS = {  # input-attribution cache arrays -> how figures and the viewer name them
    "attr_ig": "integrated gradients",
    "attr_grad_x_input": "gradient × input",
    "attr_grad_norm": "gradient L2 norm",
}
SCALES = colormap.SCALES  # attention colour scales, the figures' own (the viewer lists linear first: exact weights)

# Figure rows as the viewer shows them; "shown" is every status but skipped.
FIGURE_STATUSES = {
    "shown": "drawn, stale + failed",
    "ok": "drawn (current)",
    "stale": "stale",
    "error": "failed",
    "skipped": "skipped",
    "all": "all",
}



def _breaks_shown(token: Any) -> str:
    text = str(token)
    for char, shown in WHITESPACE.items():
        text = text.replace(char, shown)
    return text


def token_label(token: Any) -> str:
    """A token standing alone (chips, axis labels, tooltips): every whitespace character visible."""
    return _breaks_shown(token).replace(" ", SPACE) or EMPTY


def token_inline(token: Any) -> str:
    """A token in running text: spaces stay spaces, unless the token is nothing but spaces."""
    text = _breaks_shown(token)
    if not text:
        return EMPTY
    return text if text.strip(" ") else BLANK * len(text)


def facts() -> dict[str, Any]:
    """Everything the page needs to draw, sent once (GET /api/display)."""
    cmaps = {colormap.ATTENTION_CMAP, colormap.SIGNED_CMAP, *(kind.cmap for kind in VALUE_KINDS.values())}
    return {
        # [256][r, g, b]: value v on (vmin, vmax) takes entry floor((v - vmin) / (vmax - vmin) * 256),
        # clipped to 0..255, as colormap.to_index bins it for the figures.
        "colormaps": {name: colormap.lut(name).tolist() for name in sorted(cmaps)},
        "masked": list(bytes.fromhex(colormap.MASKED_COLOR[1:])),  # [r, g, b]: no value (future keys)
        "attention": ATTENTION,
        "scales": [[name, label] for name, label in SCALES.items()],
        # per scale, [257] weights where colour index i starts (colormap.scale_index_edges): the page bins by them
        "scale_edges": {name: colormap.scale_index_edges(name) for name in SCALES},
        "value_kinds": [kind.facts() for kind in VALUE_KINDS.values()],
        "figure_statuses": [[name, label] for name, label in FIGURE_STATUSES.items()],
    }
