"""What a figures run draws and how, as one object."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from lens_pipeline.figures.choose import parse_range


@dataclass(frozen=True)
class FiguresSettings:
    """What to draw and how, as one object: built by keyword from the CLI or from Python."""

    figures: tuple[str, ...] = ()  # globs over registered names; () = the default set
    models: tuple[str, ...] = ()
    prompts: tuple[str, ...] = ()  # prompt-hash prefixes
    layers: frozenset[int] | None = None
    heads: frozenset[int] | None = None
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # {figure: {option: value}}
    workers: int = 1
    ray: str | None = None
    force: bool = False
    raise_errors: bool = False  # stop at the first error and re-raise it (drawn in this process)
    image_formats: tuple[str, ...] = ()  # e.g. ("svg", "pdf"): matplotlib figures written in these instead
    progress: bool = True
    display: bool = False  # in Jupyter: show this call's figures (drawn now or already done), captioned
    display_limit: int | None = 12

    @classmethod
    def build(cls, **options: Any) -> "FiguresSettings":
        """From keywords as a caller writes them: lists for tuples, '0-3,7' strings for layers/heads."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(options) - known
        if unknown:
            raise TypeError(f"unknown figures option(s) {sorted(unknown)}; known: {sorted(known)}")
        for name in ("figures", "models", "prompts", "image_formats"):
            if options.get(name) is not None:
                options[name] = tuple(options[name])
            else:
                options.pop(name, None)
        for name in ("layers", "heads"):
            value = options.get(name)
            options[name] = None if value is None or isinstance(value, str) and not value else (
                frozenset(parse_range(value) or ()) if isinstance(value, str) else frozenset(value))
        options["params"] = options.get("params") or {}
        return cls(**options)
