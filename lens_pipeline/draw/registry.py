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

A figure's identity is its name, its params, the cache it was drawn from and its code
(`code_sha256`: the function's source, and for a function defined in a module file, that whole
file): change any of them and the next figures run redraws it.
"""

from __future__ import annotations

import hashlib
import inspect
import marshal
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from lens_pipeline.store.cache import check_needs

Scope = Literal["head", "layer", "prompt", "model"]
SCOPES: tuple[str, ...] = ("head", "layer", "prompt", "model")
# How the viewer shows a figure; recorded in its index rows, so the page never guesses from file names.
VIEWS: dict[str, str] = {
    "image": "the first PNG/SVG/JPEG file, as a picture",
    "knitting": "a knitting pattern: chart, written pattern and every file to download",
    "html": "a self-contained HTML page, in a sandboxed frame",
    "interactive": "an interactive Plotly page (draw.interactive), in a frame sandboxed to run the save path's scripts only",
    "markdown": "Markdown text",
    "json": "a JSON table",
    "text": "plain text",
}
_VIEW_OF_FORMAT = {"png": "image", "svg": "image", "jpg": "image", "jpeg": "image", "html": "html",
                   "md": "markdown", "json": "json", "txt": "text"}


def default_view(formats: tuple[str, ...]) -> str:
    """A picture when the figure writes one, else what its first format is."""
    for fmt in formats:
        if _VIEW_OF_FORMAT.get(fmt) == "image":
            return "image"
    return _VIEW_OF_FORMAT.get(formats[0], "text")


def code_sha256(func: Callable[..., Any]) -> str:
    """What identifies a figure's code: its source (the defining module's whole file when there is
    one, so helpers it calls count too), else its bytecode (a function typed at a bare prompt)."""
    digest = hashlib.sha256()
    module = sys.modules.get(getattr(func, "__module__", "") or "")
    module_file = getattr(module, "__file__", None)
    if module_file and module.__name__ != "__main__" and Path(module_file).is_file():  # type: ignore[union-attr]
        digest.update(Path(module_file).read_bytes())
    try:
        digest.update(inspect.getsource(func).encode())
    except (OSError, TypeError):
        code = getattr(func, "__code__", None)
        digest.update(marshal.dumps(code) if code is not None else repr(func).encode())
    return digest.hexdigest()[:16]


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
    view: str = "image"  # how the viewer shows it (VIEWS)
    code_sha256: str = ""  # see code_sha256(): a change redraws the figure


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
    view: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `func` as a figure; re-registering a name replaces it (notebook re-runs).

    needs: cache arrays or capabilities (lens_pipeline.store.cache.CACHE_ARRAYS, CAPABILITIES) without
      which the figure means nothing; a cache that lacks one gets a `skipped` row with the reason.
    default=False keeps an expensive figure out of runs that do not name it (--figures).
    view: how the viewer shows it (VIEWS); by default from the formats."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, not {scope!r}")
    if isinstance(formats, str):
        formats = (formats,)
    if view is not None and view not in VIEWS:
        raise ValueError(f"view must be one of {list(VIEWS)}, not {view!r}")

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        params = {
            p.name: p.default
            for p in inspect.signature(func).parameters.values()
            if p.default is not inspect.Parameter.empty
        }
        doc = (inspect.getdoc(func) or "").strip().splitlines()
        figure_name = name or func.__name__
        check_needs(tuple(needs), f"figure {figure_name}")
        previous = REGISTRY.get(figure_name)
        if previous is not None and previous.func.__module__ != func.__module__:
            warnings.warn(f"register_figure: {figure_name!r} from {func.__module__} replaces the one from "
                          f"{previous.func.__module__}", stacklevel=2)
        REGISTRY[figure_name] = FigureSpec(
            name=figure_name,
            func=func,
            scope=scope,
            formats=tuple(formats),
            needs=tuple(needs),
            description=doc[0] if doc else "",
            params=params,
            default=default,
            view=view or default_view(tuple(formats)),
            code_sha256=code_sha256(func),
        )
        return func

    return decorate
