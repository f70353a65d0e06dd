"""Which figures a run draws and with which options: names, globs, --param values, --import,
and how --list describes each. Every bad name or value is one FigureParamError naming it."""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import importlib.util
import inspect
import json
import sys
import traceback
from pathlib import Path
from typing import Any, Iterable, Sequence

from lens_pipeline.draw.registry import REGISTRY, FigureSpec


class FigureParamError(ValueError):
    """A figure name, option or option value that does not exist or does not fit; nothing was drawn."""


def load_builtins() -> None:
    """Register the built-in figures (the same decorator a user's functions use)."""
    import lens_pipeline.draw.builtins  # noqa: F401  (importing registers them)


def import_figures(name: str) -> None:
    """Register a user's figures for a run from the shell: a Python file's path or a module name."""
    path = Path(name)
    try:
        if name.endswith(".py") or path.exists():
            if not path.is_file():
                raise FigureParamError(f"--import {name}: no such file")
            module_name = f"lens_user_figures.{path.stem}"  # a real module: its file hashes into the figures' identity
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            sys.modules[module_name] = module
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            importlib.import_module(name)
    except FigureParamError:
        raise
    except ImportError as error:
        raise FigureParamError(f"--import {name}: {error}") from None
    except Exception as error:  # the user's module failed while loading: say where, in one line
        where = traceback.extract_tb(error.__traceback__)[-1]
        raise FigureParamError(f"--import {name}: {type(error).__name__}: {error} ({where.filename}:{where.lineno})") from None


def _option_type(spec: FigureSpec, option: str) -> str:
    """The option's annotation as written (e.g. "int | None"), else its default's type."""
    annotation = inspect.signature(spec.func).parameters[option].annotation
    if annotation is inspect.Parameter.empty:
        default = spec.params[option]
        return "any" if default is None else type(default).__name__
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))


def describe_figure(spec: FigureSpec) -> str:
    """A figure as --list shows it: name, scope, formats, what it draws, then each option."""
    optional = "  (only when named with --figures)" if not spec.default else ""
    lines = [f"{spec.name}  [{spec.scope}; {','.join(spec.formats)}]  {spec.description}{optional}"]
    if spec.needs:
        lines.append(f"    needs: {', '.join(spec.needs)}")
    for option, default in spec.params.items():
        kind = _option_type(spec, option)
        lines.append(f"    --param {spec.name}.{option}=…  ({kind}, default {json.dumps(default)})")
    return "\n".join(lines)


def _close_names(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(close)}?" if close else ""


def select_figures(patterns: Sequence[str] | None) -> list[FigureSpec]:
    """Registered figures whose name matches any glob (the default set when none given)."""
    if not patterns:
        return [spec for spec in REGISTRY.values() if spec.default]
    chosen = [spec for name, spec in REGISTRY.items() if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in REGISTRY):
            raise FigureParamError(f"--figures {pattern!r} matches no registered figure{_close_names(pattern, REGISTRY)} "
                                   f"(python -m lens_pipeline.figures --list)")
    return chosen


def _fits(value: Any, default: Any) -> bool:
    """Whether `value` may stand where the option's default does (None defaults take anything)."""
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, (int, float)):
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return is_number and (isinstance(default, float) or isinstance(value, int))
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def check_params(specs: Sequence[FigureSpec], params: dict[str, dict[str, Any]]) -> None:
    """Every override names a figure of this run and one of its options, with a value of the
    option's type; else FigureParamError naming it and the closest valid names."""
    chosen = {spec.name: spec for spec in specs}
    for figure, options in params.items():
        if figure not in chosen:
            where = "is not among the figures this run draws" if figure in REGISTRY else "is not a registered figure"
            raise FigureParamError(f"--param {figure}.…: {figure!r} {where}{_close_names(figure, chosen or REGISTRY)}")
        spec = chosen[figure]
        for option, value in options.items():
            if option not in spec.params:
                options_list = ", ".join(spec.params) or "none"
                raise FigureParamError(f"--param {figure}.{option}: {figure} has no option {option!r}"
                                       f"{_close_names(option, spec.params)} (its options: {options_list})")
            default = spec.params[option]
            if not _fits(value, default):
                raise FigureParamError(f"--param {figure}.{option}={json.dumps(value)}: expected a "
                                       f"{type(default).__name__} like its default {json.dumps(default)}")


def parse_range(spec: str | None) -> set[int] | None:
    """'0-3,7' -> {0, 1, 2, 3, 7}; None or '' -> None (all)."""
    if not spec:
        return None
    values: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                low, high = part.split("-", 1)
                values.update(range(int(low), int(high) + 1))
            elif part:
                values.add(int(part))
        except ValueError:
            raise FigureParamError(f"bad range {spec!r}: use numbers and ranges like 0-3,7") from None
    return values


def effective_params(spec: FigureSpec, overrides: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    """A figure's keyword defaults with the caller's overrides on top: what is called and recorded."""
    return {**spec.params, **(overrides or {}).get(spec.name, {})}
