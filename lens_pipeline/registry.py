"""The figure registry: a decorator that records what a figure function consumes and writes.

Built-in figures and a user's notebook functions register the same way:

    @register_figure(scope="head", formats=("png",))
    def my_heatmap(cache, layer, head):
        return PIL.Image.fromarray(...)

A function's call signature follows its scope:
    "head":   f(cache, layer, head, **params)
    "layer":  f(cache, layer, **params)
    "prompt": f(cache, **params)
    "model":  f(caches, **params)      (every cache of one model, for comparisons)

It returns one object (PIL image, matplotlib figure, str, bytes, dict/list for json) written in
the first declared format, or a dict {filename_or_format: object} for several files at once
(e.g. {"chart.svg": svg_text, "pattern.md": text}). Keyword parameters with defaults are the
figure's options; their values are recorded in the index row.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

Scope = Literal["head", "layer", "prompt", "model"]
SCOPES: tuple[str, ...] = ("head", "layer", "prompt", "model")


@dataclass(frozen=True)
class FigureSpec:
    name: str
    func: Callable[..., Any]
    scope: Scope
    formats: tuple[str, ...]
    needs: tuple[str, ...]  # cache arrays the figure cannot do without, e.g. ("logit_lens_ids",)
    description: str
    params: dict[str, Any] = field(default_factory=dict)  # keyword defaults, recorded in the index
    default: bool = True  # drawn when no --figures filter is given


REGISTRY: dict[str, FigureSpec] = {}


class SkipFigure(Exception):
    """Raised by a figure function when the figure does not apply to this input (e.g. token labels
    on a prompt too long to read); the stage records it as skipped, not as an error."""


def register_figure(
    scope: Scope = "head",
    formats: tuple[str, ...] | str = ("png",),
    name: str | None = None,
    needs: tuple[str, ...] = (),
    default: bool = True,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `func` as a figure; re-registering a name replaces it (notebook re-runs).
    `default=False` keeps an expensive figure out of runs that do not name it (--figures)."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, not {scope!r}")
    if isinstance(formats, str):
        formats = (formats,)

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        params = {
            p.name: p.default
            for p in inspect.signature(func).parameters.values()
            if p.default is not inspect.Parameter.empty
        }
        doc = (inspect.getdoc(func) or "").strip().splitlines()
        REGISTRY[name or func.__name__] = FigureSpec(
            name=name or func.__name__,
            func=func,
            scope=scope,
            formats=tuple(formats),
            needs=tuple(needs),
            description=doc[0] if doc else "",
            params=params,
            default=default,
        )
        return func

    return decorate
