"""One value per token, read from a cache: the single definition the `token_values` figure
(builtins/tokens.py) and the viewer (/api/tokens, and through it the page) both use.

A value kind (residual norm, top-1 probability, logit lens, neuron, ...) is declared once with
`register_value_kind`: its label, unit, colour map, colour range rule, the cache arrays and
capabilities it needs (`Cache.missing`), which layers it has, and how to read it. A kind that a
cache cannot serve (no such arrays; next-token values of an encoder without a trained LM head)
is offered with the reason instead of values.

    tv = per_token_values(cache, "resid_norm", layer=3)
    tv.values, tv.vmin, tv.vmax, tv.colors()      # float32 [T], its colour range, '#rrggbb' per token
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from lens_pipeline.draw import colormap
from lens_pipeline.store.cache import Cache

RANGES = {"skip_first": "all but the first token", "all": "all tokens"}  # how a data range is taken


class ValueUnavailable(ValueError):
    """This cache cannot give this value (missing arrays, no LM head, a layer or neuron out of range)."""


@dataclass(frozen=True)
class Reading:
    """What a kind's reader returns for one (layer, neuron)."""

    values: np.ndarray  # [T]
    title: str  # one line saying exactly what the values are
    short: str  # a row name, e.g. "residual norm", "L7 N123"
    labels: list[str] | None = None  # a string per token shown with its value (e.g. the predicted token)


@dataclass(frozen=True)
class ValueKind:
    name: str  # as in URLs and the API
    label: str  # for menus
    unit: str
    cmap: str  # colormap.lut name
    needs: tuple[str, ...]  # cache arrays or capabilities (lens_pipeline.store.cache.CACHE_ARRAYS, CAPABILITIES)
    read: Callable[[Cache, int | None, int | None], Reading]  # (cache, layer, neuron)
    layers: Callable[[Cache], list[tuple[int, str]]] | None = None  # layer choices (value, label); None: no layer
    fixed_range: tuple[float, float] | None = None  # e.g. probabilities 0..1; None: the values' own range
    signed: bool = False  # range symmetric around 0, for a diverging colour map
    label_name: str = ""  # what `Reading.labels` are, e.g. "top-1"
    by_neuron: bool = False  # takes a neuron among those the cache stores for the layer

    def facts(self) -> dict[str, Any]:
        """The kind as the page sees it (GET /api/display)."""
        return {"name": self.name, "label": self.label, "unit": self.unit, "cmap": self.cmap,
                "range": list(self.fixed_range) if self.fixed_range else None, "signed": self.signed,
                "has_layers": self.layers is not None, "by_neuron": self.by_neuron, "label_name": self.label_name}


VALUE_KINDS: dict[str, ValueKind] = {}


def register_value_kind(kind: ValueKind) -> ValueKind:
    """Add (or replace) a value kind; the figure and the viewer offer it from then on."""
    VALUE_KINDS[kind.name] = kind
    return kind


@dataclass(frozen=True)
class TokenValues:
    """One value per token with the colour scale it is shown on."""

    kind: str
    layer: int | None
    neuron: int | None
    name: str
    title: str
    values: np.ndarray  # [T]
    labels: list[str] | None
    vmin: float
    vmax: float
    cmap: str
    range_note: str = ""  # how the range was taken, when it was not the kind's fixed range

    def colors(self) -> list[str]:
        return colormap.hex_colors(self.values, self.cmap, self.vmin, self.vmax)


def _check_layer(layer: int | None, top: int, what: str) -> int:
    if layer is None or not 0 <= layer <= top:
        raise ValueUnavailable(f"layer {layer} is out of range: {what} exist for 0..{top}")
    return layer


def colour_range(kind: ValueKind, values: np.ndarray, skip_first: bool) -> tuple[float, float]:
    """The kind's fixed range, else the values' own (without the first token when asked: it is
    often an attention sink whose residual norm dwarfs every other); symmetric when signed."""
    if kind.fixed_range:
        return kind.fixed_range
    shown = values[1:] if skip_first and len(values) > 1 else values
    shown = shown[np.isfinite(shown)]
    if not shown.size:
        return (-1.0, 1.0) if kind.signed else (0.0, 1.0)
    if kind.signed:
        limit = float(np.abs(shown).max()) or 1.0
        return -limit, limit
    return float(shown.min()), float(shown.max())


def unavailable(cache: Cache, kind: ValueKind) -> str:
    """Why `cache` cannot give `kind` ("" when it can)."""
    missing = cache.missing(kind.needs)
    if kind.by_neuron and not missing and not cache.neuron_ids.size:
        missing = ["no neurons are stored (activations ran with --neurons 0)"]
    return "; ".join(missing)


def per_token_values(cache: Cache, kind: str, layer: int | None = None, neuron: int | None = None,
                 skip_first: bool = False) -> TokenValues:
    """The values of `kind` for every token of `cache`. Raises ValueUnavailable with the reason
    when the cache cannot give them (unknown kind, missing arrays, no LM head, bad layer/neuron)."""
    spec = VALUE_KINDS.get(kind)
    if spec is None:
        raise ValueUnavailable(f"unknown value {kind!r}; values: {', '.join(VALUE_KINDS)}")
    reason = unavailable(cache, spec)
    if reason:
        raise ValueUnavailable(f"{spec.label}: {reason}")
    reading = spec.read(cache, layer if spec.layers else None, neuron if spec.by_neuron else None)
    values = np.asarray(reading.values)
    vmin, vmax = colour_range(spec, values, skip_first)
    note = RANGES["skip_first" if skip_first and len(values) > 1 else "all"] if not spec.fixed_range else ""
    return TokenValues(spec.name, layer if spec.layers else None, neuron if spec.by_neuron else None, reading.short,
                       reading.title, values, reading.labels, vmin, vmax, spec.cmap, note)


def kind_choices(cache: Cache) -> list[dict[str, Any]]:
    """Per kind, what this cache offers (layers as (value, label), ranges), or the reason it cannot."""
    choices = []
    for spec in VALUE_KINDS.values():
        reason = unavailable(cache, spec)
        choice: dict[str, Any] = {"name": spec.name, "label": spec.label, "reason": reason}
        if not reason:
            choice["layers"] = spec.layers(cache) if spec.layers else None
            choice["by_neuron"] = spec.by_neuron  # the neurons are the cache's neuron_ids[layer]
            choice["ranges"] = None if spec.fixed_range else [[name, text] for name, text in RANGES.items()]
        choices.append(choice)
    return choices


# --------------------------------------------------------------------------- the built-in kinds


def _resid_layers(cache: Cache) -> list[tuple[int, str]]:
    return [(0, "0 (embeddings)")] + [(n, f"{n} (after layer {n - 1})") for n in range(1, cache.n_layers + 1)]


def _model_layers(cache: Cache) -> list[tuple[int, str]]:
    return [(layer, str(layer)) for layer in range(cache.n_layers)]


def _read_resid(cache: Cache, layer: int | None, neuron: int | None) -> Reading:
    layer = _check_layer(layer, cache.n_layers, "residual norms (0 = embeddings, L = after layer L-1)")
    where = "of the embeddings" if layer == 0 else f"after layer {layer - 1}"
    return Reading(cache.resid_norms[layer], f"L2 norm of the residual stream {where}", "residual norm")


def _read_top1(cache: Cache, layer: int | None, neuron: int | None) -> Reading:
    return Reading(cache.topk_probs[:, 0].astype(np.float32), "probability of the model's most likely next token",
                   "top-1 probability", [str(s) for s in cache.topk_strs[:, 0]])


def _read_logit_lens(cache: Cache, layer: int | None, neuron: int | None) -> Reading:
    layer = _check_layer(layer, cache.n_layers - 1, "logit lens layers")
    return Reading(cache.array("logit_lens_probs")[layer].astype(np.float32),
                   f"logit lens after layer {layer}: probability of its top-1 token", f"logit lens L{layer}",
                   [str(s) for s in cache.array("logit_lens_strs")[layer]])


def _read_neuron(cache: Cache, layer: int | None, neuron: int | None) -> Reading:
    layer = _check_layer(layer, cache.n_layers - 1, "neuron layers")
    ids = cache.neuron_ids[layer].tolist()
    if neuron not in ids:
        asked = "no neuron was given" if neuron is None else f"neuron {neuron} is not stored for layer {layer}"
        raise ValueUnavailable(f"{asked}; the neurons stored for layer {layer}: "
                               f"{', '.join(map(str, ids[:8]))}{' ...' if len(ids) > 8 else ''}")
    return Reading(cache.neuron_acts[layer, ids.index(neuron)], f"MLP neuron {neuron} of layer {layer} (post-activation)",
                   f"L{layer} N{neuron}")


register_value_kind(ValueKind("resid_norm", "residual norm", "L2 norm", colormap.ATTENTION_CMAP, ("resid_norms",),
                              _read_resid, layers=_resid_layers))
register_value_kind(ValueKind("top1_prob", "top-1 next-token probability", "probability", colormap.ATTENTION_CMAP,
                              ("topk_probs", "lm_head"), _read_top1, fixed_range=(0.0, 1.0), label_name="top-1"))
register_value_kind(ValueKind("logit_lens", "logit lens top-1 probability", "probability", colormap.ATTENTION_CMAP,
                              ("logit_lens_probs", "lm_head"), _read_logit_lens, layers=_model_layers,
                              fixed_range=(0.0, 1.0), label_name="top-1"))
register_value_kind(ValueKind("neuron", "MLP neuron activation", "activation", colormap.SIGNED_CMAP,
                              ("neuron_acts",), _read_neuron, layers=_model_layers, signed=True, by_neuron=True))
