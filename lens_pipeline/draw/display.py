"""Display facts, defined once in Python: how tokens are written, which colours stand for what,
which text goes on a coloured cell, how a cache's settings and a figure's status are named.

Figures use them directly; the viewer sends them to the page, which only draws: the tables once
(`facts()`, GET /api/display) and display strings and colours in each answer. Nothing here is
written again in JavaScript.
"""

from __future__ import annotations

from typing import Any

from lens_pipeline.draw import colormap
from lens_pipeline.draw.token_values import VALUE_KINDS
from lens_pipeline.store.cache import PATTERN_MAX_ERROR

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

SETTING_LABELS = {  # cache settings (ExtractSettings), in the order they are shown
    "pattern_encoding": "encoding",
    "top_k": "top-k",
    "n_neurons": "neurons per layer",
    "neuron_basis": "neuron basis",
    "logit_lens": "logit lens",
    "hooks": "hooks",
    "max_tokens": "max tokens",
    "dtype": "dtype",
    "attribution": "attribution",
    "ig_steps": "IG steps",
    "ig_baseline": "IG baseline",
    "ig_rule": "IG rule",
    "ig_tolerance": "IG tolerance",
    "ig_max_steps": "IG max steps",
    "logit_attribution": "logit attribution",
    "lens_trajectory": "lens trajectory",
    "lens_resid_mid": "lens after attention",
}
# Shown only when integrated gradients were computed.
IG_SETTINGS = ("ig_steps", "ig_baseline", "ig_rule", "ig_tolerance", "ig_max_steps")


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


def settings_summary(settings: dict[str, Any] | None, resolved: dict[str, Any] | None = None) -> list[list[str]]:
    """[label, value] pairs naming how a cache was made, e.g. ["encoding", "q12 (max error 1.2e-04)"];
    `resolved` (the cache's meta) says what an "auto" setting became, e.g. ["dtype", "auto (float32)"]."""
    settings, resolved = settings or {}, resolved or {}
    pairs = []
    for name in [*SETTING_LABELS, *sorted(set(settings) - set(SETTING_LABELS))]:
        if name not in settings or name in IG_SETTINGS and "ig" not in (settings.get("attribution") or ()):
            continue
        value = settings[name]
        if name == "pattern_encoding" and value in PATTERN_MAX_ERROR:
            error = PATTERN_MAX_ERROR[value]
            text = f"{value} ({f'max error {error:.1e}' if error else 'exact'})"
        elif isinstance(value, bool):
            text = "on" if value else "off"
        elif name == "neuron_ids":  # a shared basis: hundreds of ids, listed in caches/<model>/neuron_basis.json
            text = f"{sum(len(row) for row in value)} shared over {len(value)} layers"
        elif isinstance(value, (list, tuple)):
            text = ", ".join(map(str, value)) or "none"
        else:
            text = str(value)
        if value == "auto" and resolved.get(name) not in (None, "auto"):
            text = f"auto ({resolved[name]})"
        pairs.append([SETTING_LABELS.get(name, name), text])
    return pairs


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
