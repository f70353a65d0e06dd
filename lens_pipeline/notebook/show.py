"""Interactive views of a cache inline in Jupyter (JupyterLab, Notebook 7, VS Code), offline.

    from lens_pipeline.notebook import show
    show.head(cache, 18, 6)                  # one head: exact weights on hover, click a token
    show.layer(cache, 18)                    # every head of layer 18
    show.overview(cache)                     # layers × heads; click a head to open it
    show.tokens(cache, kind="resid_norm", layer=12)   # kinds: lens_pipeline.draw.token_values.VALUE_KINDS
    show.predictions(cache)                  # next-token predictions at each position
    show.why(cache, position=12)             # why the token after position 12: attribution, heads, lens
    show.cause(cache, 18, 6)                 # testing causes: patching and ablation; one head's numbers together

`cache` is a `lens_pipeline.store.cache.Cache` or a cache file's path. Each call returns a `LensView`
(an anywidget widget) drawn by the viewer's own ES modules (lens_pipeline/viewer/static, made one module
string by lens_pipeline.viewer.bundle, shipped in the wheel: nothing is fetched from a network).
It asks the kernel for data with the viewer's API (viewer.CacheApi); the first view's answers
travel in the widget state, so a saved notebook still shows it without a kernel.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Sequence

import anywidget
import traitlets

from lens_pipeline.draw.token_values import VALUE_KINDS, kind_choices
from lens_pipeline.store.cache import Cache
from lens_pipeline.viewer import CacheApi
from lens_pipeline.viewer.bundle import bundle, stylesheet
from lens_pipeline.viewer.cause import has_causes
from lens_pipeline.viewer.transport import answer_key, ask

EMBED_BYTES = 2_000_000  # answers embedded in the widget state beyond the first one's, at most


@functools.cache
def widget_module() -> str:
    """The widget's ES module: the stylesheet, the bundled viewer and anywidget's entry point."""
    return (f"const LENS_STYLE = {json.dumps(stylesheet())};\n{bundle('widget')}"
            "export default { render: (context) => lensViewer().render(context, LENS_STYLE) };\n")


class LensView(anywidget.AnyWidget):
    """One view of a cache; `params` names it as the viewer's URL would (view, layer, head, ...)."""

    _esm = widget_module()
    params = traitlets.Dict().tag(sync=True)
    answers = traitlets.Dict().tag(sync=True)  # answer_key -> {"body"} or {"error", "status"}
    routes = traitlets.List(traitlets.Unicode()).tag(sync=True)  # the endpoints the kernel answers

    def __init__(self, cache: Cache, view: str, first: Sequence[tuple[str, dict[str, Any]]],
                 more: Sequence[tuple[str, dict[str, Any]]] = (), **params: Any):
        """`first`: the (endpoint, parameters) the view asks first, embedded in the widget state;
        `more`: what it may ask next, embedded while under EMBED_BYTES."""
        self.cache = cache
        self.api = CacheApi(self.cache)
        where = {"model": self.cache.model, "prompt": self.cache.prompt_hash}
        answers, size = {}, 0
        for i, (path, asked) in enumerate([("display", {}), ("cache", where), *first, *more]):
            kept = ask(self.api, path, {**where, **asked} if path != "display" else {})
            size += len(json.dumps(kept))
            if i >= 2 + len(first) and size > EMBED_BYTES:
                break  # the page asks the kernel for the rest
            answers[answer_key(path, {**where, **asked} if path != "display" else {})] = kept
        super().__init__(params={"view": view, **where, **{k: v for k, v in params.items() if v is not None}},
                         answers=answers, routes=[route.removeprefix("/api/") for route in self.api.routes])
        self.on_msg(self._answer)

    def _answer(self, widget: Any, content: dict[str, Any], buffers: Any) -> None:
        if isinstance(content, dict) and content.get("type") == "api":
            reply = ask(self.api, str(content.get("path", "")), dict(content.get("params") or {}))
            self.send({"type": "answer", "id": content.get("id"), **reply})

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.params.items() if k not in ("model", "prompt"))
        return f"LensView({shown}; {self.cache!r})"


def _open(cache: Cache | str | os.PathLike[str]) -> Cache:
    return cache if isinstance(cache, Cache) else Cache(cache)


def _pick(given: Any, offered: list[Any], what: str, where: str) -> Any:
    """`given`, else the first offered (None when nothing is); ValueError when it is not offered."""
    if not offered:
        return None
    if given is None:
        return offered[0]
    if given not in offered:
        raise ValueError(f"{what} {given!r} is not offered; {where}: {', '.join(map(str, offered[:10]))}"
                         f"{' ...' if len(offered) > 10 else ''}")
    return given


def _check_head(cache: Cache, layer: int, head: int | None = None) -> None:
    if not 0 <= layer < cache.n_layers:
        raise ValueError(f"layer {layer} is out of range: {cache.model} has layers 0..{cache.n_layers - 1}")
    if head is not None and not 0 <= head < cache.n_heads:
        raise ValueError(f"head {head} is out of range: {cache.model} has heads 0..{cache.n_heads - 1}")


def head(cache: Cache | str | os.PathLike[str], layer: int, head: int, token: int | None = None) -> LensView:
    """One attention head from the exact cached weights: hover a cell for its value, click a token
    to highlight its row and column and list what it attends to; ←/→ ↑/↓ move (widget focused)."""
    cache = _open(cache)
    _check_head(cache, layer, head)
    return LensView(cache, "head", [("pattern", {"layer": layer, "head": head})], layer=layer, head=head, token=token)


def layer(cache: Cache | str | os.PathLike[str], layer: int) -> LensView:
    """Every head of one layer; click one to open it."""
    cache = _open(cache)
    _check_head(cache, layer)
    heads = [("pattern", {"layer": layer, "head": h}) for h in range(cache.n_heads)]
    return LensView(cache, "overview", [], heads, layer=layer)


def overview(cache: Cache | str | os.PathLike[str]) -> LensView:
    """Every layer × head (bertviz's model view); click a head to open it."""
    cache = _open(cache)
    heads = [("pattern", {"layer": la, "head": h}) for la in range(cache.n_layers) for h in range(cache.n_heads)]
    return LensView(cache, "overview", [], heads)


def tokens(cache: Cache | str | os.PathLike[str], kind: str = "resid_norm", layer: int | None = None,
           neuron: int | None = None, range: str | None = None) -> LensView:
    """The tokens coloured by one value each (`kind`: resid_norm, top1_prob, logit_lens, neuron, or
    any kind registered in lens_pipeline.draw.token_values); hover a token for its value. `layer`,
    `neuron` and the colour `range` (skip_first, all) default to the first the cache offers."""
    cache = _open(cache)
    choice = next((c for c in kind_choices(cache) if c["name"] == kind), None)
    if choice is None:
        raise ValueError(f"unknown value kind {kind!r}; kinds: {', '.join(VALUE_KINDS)}")
    if choice["reason"]:
        raise ValueError(f"{choice['label']}: {choice['reason']}")
    layers = [value for value, _ in choice["layers"] or []]
    layer = _pick(layer, layers, "layer", f"the layers of {kind}")
    stored = cache.neuron_ids[layer].tolist() if choice["by_neuron"] else []
    neuron = _pick(neuron, stored, "neuron", f"the neurons stored for layer {layer}")
    range = _pick(range, [name for name, _ in choice["ranges"] or []], "range", "the colour ranges")
    asked = {"value": kind, "layer": layer, "neuron": neuron, "range": range}
    return LensView(cache, "tokens", [("tokens", asked)], **asked)


def predictions(cache: Cache | str | os.PathLike[str]) -> LensView:
    """The model's top-k next tokens at each position with their probabilities, and the token
    that came next (caches of models with a trained LM head)."""
    cache = _open(cache)
    missing = cache.missing(("topk_probs", "lm_head"))
    if missing:
        raise ValueError(f"no next-token predictions in {cache.path.name}: {'; '.join(missing)}")
    return LensView(cache, "predictions", [("predictions", {})])


def why(cache: Cache | str | os.PathLike[str], position: int | None = None) -> LensView:
    """Why the model predicted the token after `position` (default: the last explained position):
    the input attribution over its context, the heads and MLPs that wrote the target's logit (click
    a head to open it) and the lens trajectory there; click another token to explain it (caches
    made with --attribution, --logit-attribution or --lens-trajectory)."""
    cache = _open(cache)
    if not cache.has("target_positions") and not cache.has("lens_actual_probs"):
        raise ValueError(f"{cache.path.name} explains no prediction: make it with --attribution, --logit-attribution "
                         "or --lens-trajectory")
    if position is not None and not 0 <= position < cache.n_tokens:
        raise ValueError(f"position {position} is out of range: the prompt has tokens 0..{cache.n_tokens - 1}")
    return LensView(cache, "why", [("why", {"position": position} if position is not None else {})], position=position)


def cause(cache: Cache | str | os.PathLike[str], layer: int | None = None, head: int | None = None) -> LensView:
    """Testing causes (docs/causal.md): the patching metric and its two runs, patching per layer and
    position, the heads' patching and ablation and the MLPs'; with `layer` and `head`, that head's
    direct logit attribution, patching effect (per position too), ablation effect and detector
    scores together. Click a head to see its numbers (caches made with --ablate, or with --patch on
    a prompt with a "corrupt" field)."""
    cache = _open(cache)
    if not has_causes(cache):
        raise ValueError(f"{cache.path.name} tests no causes: make it with --ablate, or with --patch on a prompt line "
                         'with a "corrupt" field (docs/causal.md)')
    if (layer is None) != (head is None):
        raise ValueError("give both layer and head, or neither")
    first: list[tuple[str, dict[str, Any]]] = [("cause", {})]
    if layer is not None and head is not None:
        _check_head(cache, layer, head)
        first.append(("cause_head", {"layer": layer, "head": head}))
    heads = [("cause_head", {"layer": la, "head": h}) for la in range(cache.n_layers) for h in range(cache.n_heads)
             if (la, h) != (layer, head)]
    return LensView(cache, "cause", first, heads, layer=layer, head=head)
