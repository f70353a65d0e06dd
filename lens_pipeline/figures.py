"""The figures stage: every registered figure function over every cache -> files + index rows.

    python -m lens_pipeline.figures --save-path attn_data --figures 'attention_*' --workers 2

From a notebook:

    from lens_pipeline.draw.registry import register_figure
    from lens_pipeline.figures import run_figures

    @register_figure(scope="prompt", formats="png")
    def my_figure(cache): ...

    run_figures("attn_data", figures=["my_figure"], display=True)

Work is split per prompt: a worker opens a cache once, draws every figure of that prompt
(heads in layer order, so each layer is decoded once), and hands the index rows back to the
parent, the index's only writer. Figures already recorded as ok for the same cache and params
are skipped; failed ones are recorded with their error and retried on the next run.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import errno
import fnmatch
import functools
import html
import importlib
import importlib.util
import inspect
import io
import json
import multiprocessing
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from tqdm.auto import tqdm

from lens_pipeline.capture.models import slug
from lens_pipeline.distributed import DistributedError
from lens_pipeline.draw import interactive
from lens_pipeline.draw.registry import REGISTRY, FigureSpec, SkipFigure
from lens_pipeline.store import index
from lens_pipeline.store.cache import Cache, CacheError, remove_orphan_temp_files, write_atomic
from lens_pipeline.store.integrity import ContentCheck


class FigureParamError(ValueError):
    """A figure name, option or option value that does not exist or does not fit; nothing was drawn."""


@dataclass(frozen=True)
class Task:
    """One figure call: a function, and the layer/head it is for (None where not applicable)."""

    function: str
    layer: int | None = None
    head: int | None = None


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


@dataclass
class FiguresSummary:
    """What a figures run did; `rows` are the rows it wrote, `current` the up-to-date rows it kept."""

    written: int = 0
    skipped: int = 0  # already up to date
    failed: int = 0
    stale: int = 0
    not_applicable: dict[str, int] = field(default_factory=dict)  # reason -> figures it kept from being drawn
    rows: list[dict[str, Any]] = field(default_factory=list, repr=False)
    current: list[dict[str, Any]] = field(default_factory=list, repr=False)
    seconds: float = 0.0

    def not_applicable_lines(self, most: int = 3) -> list[str]:
        """Why planned figures were not drawn (their function raised SkipFigure), the commonest first."""
        ranked = sorted(self.not_applicable.items(), key=lambda item: (-item[1], item[0]))
        lines = [f"{count} not applicable: {reason}" for reason, count in ranked[:most]]
        if len(ranked) > most:
            lines.append(f"... and {sum(count for _, count in ranked[most:])} more for {len(ranked) - most} other "
                         f"reason(s) (rows with status skipped in the index)")
        return lines

    def __repr__(self) -> str:
        errors = [row for row in self.rows if row["status"] == "error"]
        text = (f"FiguresSummary({self.written} written, {self.skipped} already up to date, {self.failed} failed, "
                f"{self.stale} marked stale, {sum(self.not_applicable.values())} not applicable; {self.seconds:.1f} s)")
        text += "".join(f"\n  {line}" for line in self.not_applicable_lines())
        for row in errors[:3]:
            text += f"\n  error: {row['function']} on {row.get('prompt_hash', '')[:8]}: {row['error']}"
        return text + (f"\n  ... and {len(errors) - 3} more errors (see .rows)" if len(errors) > 3 else "")


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


def figure_folder(model: str, prompt_hash: str) -> str:
    return f"figures/{slug(model)}/{prompt_hash or '_model'}"


def figure_stem(spec: FigureSpec, task: Task) -> str:
    stem = spec.name
    if task.layer is not None:
        stem += f".L{task.layer:02d}"
    if task.head is not None:
        stem += f".H{task.head:02d}"
    return stem


def figure_paths(spec: FigureSpec, model: str, prompt_hash: str, task: Task, keys: Iterable[str]) -> dict[str, str]:
    """Output key -> path relative to the save path. One folder per prompt; a multi-file
    figure gets a sub-folder of its own."""
    stem, folder, keys = figure_stem(spec, task), figure_folder(model, prompt_hash), list(keys)
    if len(keys) == 1 and "." not in keys[0]:
        return {keys[0]: f"{folder}/{stem}.{keys[0]}"}
    return {key: f"{folder}/{stem}/{key if '.' in key else f'{spec.name}.{key}'}" for key in keys}


def remove_other_outputs(
    save_path: Path, spec: FigureSpec, model: str, prompt_hash: str, task: Task, keep: Iterable[str],
) -> None:
    """Remove what an earlier run of this figure wrote and this one did not (its single files in
    any declared format, and anything else in its own sub-folder); `keep` are relative paths."""
    keep = set(keep)
    folder = save_path / figure_folder(model, prompt_hash)
    stem = figure_stem(spec, task)
    candidates = [folder / f"{stem}.{fmt}" for fmt in spec.formats]
    own = folder / stem
    if own.is_dir():
        candidates += [p for p in own.iterdir() if p.is_file() and not p.name.startswith(".")]
    for path in candidates:
        if path.is_file() and path.relative_to(save_path).as_posix() not in keep:
            path.unlink(missing_ok=True)
    if own.is_dir() and not any(own.iterdir()):
        own.rmdir()


def close_figures(objects: Iterable[Any]) -> None:
    """Free the matplotlib figures among a figure function's outputs."""
    import matplotlib.pyplot as plt

    for obj in objects:
        if hasattr(obj, "savefig"):
            plt.close(obj)


def render(obj: Any, fmt: str, close: bool = True) -> bytes:
    """A figure function's return value -> file bytes in `fmt` (a matplotlib figure is closed
    afterwards unless `close` is False)."""
    if isinstance(obj, bytes):
        return obj
    if isinstance(obj, str):
        return obj.encode("utf-8")
    if isinstance(obj, (dict, list)):
        return json.dumps(obj, ensure_ascii=False, indent=1).encode("utf-8")
    buffer = io.BytesIO()
    if hasattr(obj, "savefig"):  # a matplotlib Figure
        import matplotlib.pyplot as plt

        # No creation dates or random ids in the file: the same figure gives the same bytes.
        metadata = {"pdf": {"CreationDate": None}, "svg": {"Date": None}}.get(fmt)
        with plt.rc_context({"svg.hashsalt": "lens_pipeline"}):  # else SVG ids are salted with a random uuid
            obj.savefig(buffer, format=fmt, dpi=100, bbox_inches="tight", metadata=metadata)
        if close:
            plt.close(obj)
        return buffer.getvalue()
    if hasattr(obj, "save") and hasattr(obj, "mode"):  # a PIL image
        options = {"compress_level": 1} if fmt == "png" else {}  # speed over a few % of bytes
        obj.save(buffer, format=fmt.upper(), **options)
        return buffer.getvalue()
    raise TypeError(f"cannot write a {type(obj).__name__} as {fmt}; return bytes, str, dict, a PIL image or a matplotlib figure")


def is_file_dict(spec: FigureSpec, result: Any) -> bool:
    """Whether a return value is several files: a dict keyed by declared formats or by file names
    ending in one ("L03.png"). A one-format figure may return one (a page per layer); a JSON
    figure's dict of data has other keys and is its content."""
    return isinstance(result, dict) and bool(result) and all(
        isinstance(key, str) and (key in spec.formats or ("." in key and key.rsplit(".", 1)[1] in spec.formats))
        for key in result)


def _outputs(spec: FigureSpec, result: Any) -> dict[str, Any]:
    """Normalise a return value to {key: object}, key a format or a file name."""
    if is_file_dict(spec, result):
        return result
    if isinstance(result, dict) and not result and spec.formats != ("json",):  # e.g. a page per layer, and no layer applies
        raise SkipFigure("the figure function returned no files")
    if len(spec.formats) > 1:
        raise TypeError(f"{spec.name} declares formats {spec.formats}: return a dict of files keyed by format "
                        f"or file name, not a {type(result).__name__}")
    return {spec.formats[0]: result}


def _call(spec: FigureSpec, target: Any, task: Task, params: dict[str, Any]) -> Any:
    if spec.scope == "head":
        return spec.func(target, task.layer, task.head, **params)
    if spec.scope == "layer":
        return spec.func(target, task.layer, **params)
    return spec.func(target, **params)


DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)  # the save path, not the figure, is at fault


@dataclass(frozen=True)
class DrawInput:
    """Where a figure's input came from: recorded in its row, part of its identity."""

    model: str
    prompt_hash: str  # "" for model-scope figures
    cache_sha256: str | None  # the cache's sha256 (model scope: a fingerprint of all of them)
    cache_path: str | None


@dataclass(frozen=True)
class DrawOptions:
    """How every figure of a run is drawn (travels to worker processes)."""

    raise_errors: bool = False
    image_formats: tuple[str, ...] = ()  # matplotlib figures written in these formats instead of their own


def _with_image_formats(outputs: dict[str, Any], image_formats: tuple[str, ...]) -> dict[str, Any]:
    """A lone matplotlib figure, in the asked formats (vector: text as paths in SVG, fonts embedded in PDF)."""
    if not image_formats or len(outputs) != 1:
        return outputs
    figure = next(iter(outputs.values()))
    return {fmt: figure for fmt in image_formats} if hasattr(figure, "savefig") else outputs


def draw(
    spec: FigureSpec, target: Any, task: Task, params: dict[str, Any], save_path: Path, source: DrawInput,
    options: DrawOptions = DrawOptions(),
) -> dict[str, Any]:
    """Run one figure function, write its files, and return its index row (ok, skipped or error).
    Its folder then holds exactly the files of this row."""
    row: dict[str, Any] = dict(
        model=source.model, prompt_hash=source.prompt_hash, function=spec.name, scope=spec.scope,
        layer=task.layer, head=task.head, params=params, cache_sha256=source.cache_sha256,
        cache_path=source.cache_path, code_sha256=spec.code_sha256, view=spec.view,
    )
    if options.image_formats:
        row["image_formats"] = list(options.image_formats)
    started = time.perf_counter()
    files: list[dict[str, Any]] = []
    try:
        missing = target.missing(spec.needs) if spec.needs and hasattr(target, "missing") else []
        if missing:
            raise SkipFigure("; ".join(missing))
        outputs = _with_image_formats(_outputs(spec, _call(spec, target, task, params)), options.image_formats)
        paths = figure_paths(spec, source.model, source.prompt_hash, task, outputs)
        for key, obj in outputs.items():
            fmt = key.rsplit(".", 1)[-1]
            if fmt == "html" and interactive.is_interactive(obj):  # a page loading the save path's one copy of Plotly
                data, row["assets"] = interactive.page_bytes(obj, save_path, paths[key])
                row["view"] = interactive.VIEW
            else:
                data = render(obj, fmt, close=False)  # one figure may be written in several formats
            write_atomic(save_path / paths[key], data, durable=False)
            files.append({"path": paths[key], "format": fmt, "bytes": len(data), "sha256": index.sha256_bytes(data)})
        close_figures(outputs.values())
    except SkipFigure as reason:
        remove_other_outputs(save_path, spec, source.model, source.prompt_hash, task, keep=())
        return index.make_row("figure", status="skipped", reason=str(reason), **row)
    except Exception as error:  # a broken figure is recorded and retried next run; the others go on
        if isinstance(error, OSError) and error.errno in DISK_ERRNOS:  # no row: none of its new files stay
            index.discard_unrecorded(save_path, [dict(row, kind="figure", status="ok", files=files)])
            raise
        if options.raise_errors:
            raise
        return index.make_row("figure", status="error", error=f"{type(error).__name__}: {error}",
                              traceback=traceback.format_exc(), **row)
    remove_other_outputs(save_path, spec, source.model, source.prompt_hash, task, keep=[f["path"] for f in files])
    primary = files[0]
    return index.make_row(
        "figure", path=primary["path"], format=primary["format"], bytes=primary["bytes"],
        sha256=primary["sha256"], files=files, seconds=round(time.perf_counter() - started, 5), **row,
    )



def _tasks_for(spec: FigureSpec, cache: Cache, layers: frozenset[int] | None, heads: frozenset[int] | None) -> list[Task]:
    layer_range = [layer for layer in range(cache.n_layers) if layers is None or layer in layers]
    if spec.scope == "head":
        return [Task(spec.name, layer, head) for layer in layer_range for head in range(cache.n_heads)
                if heads is None or head in heads]
    if spec.scope == "layer":
        return [Task(spec.name, layer) for layer in layer_range]
    return [Task(spec.name)]


Jobs = list[tuple[Task, dict[str, Any]]]


def _draw_prompt(save_path: Path, cache_row: dict[str, Any], jobs: Jobs, options: DrawOptions) -> list[dict[str, Any]]:
    """Worker: open one cache once and draw all of its figures, layer by layer."""
    source = DrawInput(cache_row["model"], cache_row["prompt_hash"], cache_row.get("sha256"), cache_row["path"])
    path = save_path / cache_row["path"]
    try:
        try:  # the bytes the index records, or no figure: a flipped byte keeps the size
            if source.cache_sha256 and index.sha256_file(path) != source.cache_sha256:
                raise CacheError(f"{path}: does not match its recorded sha256 (corrupt or changed); "
                                 f"rerun the activations stage")
        except OSError as error:
            raise CacheError(f"{path}: cannot read it ({error.strerror or error})") from None
        cache = Cache(path)
    except CacheError as error:
        if options.raise_errors:
            raise
        return [
            index.make_row("figure", model=source.model, prompt_hash=source.prompt_hash, function=task.function,
                           scope=REGISTRY[task.function].scope, layer=task.layer, head=task.head, params=params,
                           cache_sha256=source.cache_sha256, cache_path=source.cache_path,
                           code_sha256=REGISTRY[task.function].code_sha256, view=REGISTRY[task.function].view,
                           status="error", error=str(error))
            for task, params in jobs
        ]
    rows: list[dict[str, Any]] = []
    with cache:
        try:
            for task, params in jobs:
                rows.append(draw(REGISTRY[task.function], cache, task, params, save_path, source, options))
        except OSError as error:  # disk full: these rows never reach the index, so their files go
            if error.errno in DISK_ERRNOS:
                index.discard_unrecorded(save_path, rows)
            raise
    return rows


def _one_blas_thread() -> None:
    """Workers already fill the cores; a multi-threaded BLAS inside each one oversubscribes them
    (an SVD measured 100x slower on 2 busy cores)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


# --------------------------------------------------------------------------- the plan


@dataclass
class FigurePlan:
    """What a run draws: per cache, the figure calls whose recorded row is missing or out of date
    (other code, params or cache); model-scope calls; and rows of figures that went stale."""

    prompts: list[tuple[dict[str, Any], Jobs]] = field(default_factory=list)
    models: list[tuple[str, list[dict[str, Any]], str, list[tuple[FigureSpec, dict[str, Any]]]]] = field(default_factory=list)
    stale: list[dict[str, Any]] = field(default_factory=list)
    up_to_date: list[dict[str, Any]] = field(default_factory=list)  # recorded rows that need no redraw
    unreadable: list[dict[str, Any]] = field(default_factory=list)
    damaged: list[dict[str, Any]] = field(default_factory=list)  # current caches not holding their recorded bytes
    planned: set[index.Key] = field(default_factory=set)  # the figure keys this run draws

    @property
    def size(self) -> int:
        return sum(len(jobs) for _, jobs in self.prompts) + sum(len(specs) for *_, specs in self.models) + len(self.unreadable)


def is_current(
    row: dict[str, Any] | None, spec: FigureSpec, params: dict[str, Any], cache_sha: str | None, save_path: Path,
    image_formats: tuple[str, ...] = (),
) -> bool:
    """A recorded figure that needs no redraw: same code, params, cache and formats, files intact."""
    if row is None or row.get("status") not in ("ok", "skipped"):
        return False
    if (row.get("params"), row.get("cache_sha256"), row.get("code_sha256")) != (params, cache_sha, spec.code_sha256):
        return False
    if row["status"] == "ok" and tuple(row.get("image_formats") or ()) != image_formats:
        return False
    assets = row.get("assets")  # the shared scripts an interactive page loads: there, at their recorded size
    return row["status"] == "skipped" or (index.is_complete(row, save_path)
                                          and (not assets or index.is_complete({"status": "ok", "files": assets}, save_path)))


def model_fingerprint(cache_rows: Sequence[dict[str, Any]]) -> str:
    """A model-scope figure's input is the set of its model's caches: a new one makes it out of date."""
    return index.sha256_bytes("".join(sorted(r.get("sha256") or "" for r in cache_rows)).encode())


def _to_draw(plan: FigurePlan, row: dict[str, Any] | None, key: index.Key, spec: FigureSpec, params: dict[str, Any],
             source_sha: str | None, save_path: Path, settings: FiguresSettings) -> bool:
    """Whether the figure at `key` is drawn this run (then planned); else its recorded row is kept as up to date."""
    if row is not None and not settings.force and is_current(row, spec, params, source_sha, save_path, settings.image_formats):
        plan.up_to_date.append(row)
        return False
    plan.planned.add(key)
    return True


def plan_figures(save_path: Path, specs: Sequence[FigureSpec], settings: FiguresSettings,
                 newest: dict[index.Key, dict[str, Any]]) -> FigurePlan:
    """Decide what to draw from the index (and each cache's meta.json); draws and writes nothing."""
    plan = FigurePlan()
    current = index.current_caches(newest.values())
    check = ContentCheck(save_path)
    present = {key: row for key, row in current.items() if check.holds(row)}
    check.save()
    selected = lambda row: ((not settings.models or row["model"] in settings.models)  # noqa: E731
                            and (not settings.prompts or any(row["prompt_hash"].startswith(p) for p in settings.prompts)))
    caches = [row for row in present.values() if selected(row)]
    # A cache file that is there but not with its recorded bytes (truncated, flipped): every figure of it
    # is redrawn, which records an error naming the file, and the model's figures leave it out.
    damaged = [row for key, row in current.items() if key not in present and selected(row)
               and (save_path / row["path"]).is_file()]
    plan.damaged = damaged
    figures = {key: row for key, row in newest.items() if row["kind"] == "figure"}
    per_prompt = [s for s in specs if s.scope != "model"]
    shapes: dict[str, Any] = {}  # cache path -> its meta (layers, heads); read from the file only
    for cache_row in caches + damaged if per_prompt else []:
        try:
            with Cache(save_path / cache_row["path"]) as cache:  # reads only meta.json
                shapes[cache_row["path"]] = cache
        except CacheError:
            plan.unreadable.append(cache_row)
    by_model = {row["model"]: shapes[row["path"]] for row in caches + damaged if row["path"] in shapes}
    for cache_row in caches + damaged if per_prompt else []:
        # An unreadable cache gets its model's layers and heads, so its error rows have the keys
        # the figures will have once it is recomputed (and are replaced by them).
        shape = shapes.get(cache_row["path"]) or by_model.get(cache_row["model"])
        jobs = []
        for spec in per_prompt:
            params = effective_params(spec, settings.params)
            for task in _tasks_for(spec, shape, settings.layers, settings.heads) if shape else [Task(spec.name)]:
                key = ("figure", cache_row["model"], cache_row["prompt_hash"], task.function, task.layer, task.head, "")
                recorded = None if cache_row in damaged else figures.get(key)
                if _to_draw(plan, recorded, key, spec, params, cache_row.get("sha256"), save_path, settings):
                    jobs.append((task, params))
        if jobs:
            plan.prompts.append((cache_row, jobs))
    for model in sorted({row["model"] for row in caches}):
        rows = [row for row in caches if row["model"] == model]
        fingerprint = model_fingerprint(rows)
        todo = []
        for spec in (s for s in specs if s.scope == "model"):
            params = effective_params(spec, settings.params)
            key = ("figure", model, "", spec.name, None, None, "")
            if _to_draw(plan, figures.get(key), key, spec, params, fingerprint, save_path, settings):
                todo.append((spec, params))
        if todo:
            plan.models.append((model, rows, fingerprint, todo))
    plan.stale = stale_rows(figures, present, plan.planned, {(r["model"], r["prompt_hash"]): r for r in damaged})
    return plan


def stale_rows(figures: dict[index.Key, dict[str, Any]], current: dict[tuple[str, str], dict[str, Any]],
               planned: set[index.Key], damaged: dict[tuple[str, str], dict[str, Any]] | None = None,
               ) -> list[dict[str, Any]]:
    """Rows marking as stale each ok figure (not redrawn now) whose cache is gone, damaged (known to the
    figures stage, which checks content) or no longer current."""
    damaged = damaged or {}
    by_model: dict[str, list[dict[str, Any]]] = {}
    for row in current.values():
        by_model.setdefault(row["model"], []).append(row)
    stale = []
    for key, row in figures.items():
        if row.get("status") != "ok" or key in planned:
            continue
        model, prompt_hash = row.get("model", ""), row.get("prompt_hash", "")
        if prompt_hash:
            cache = current.get((model, prompt_hash))
            if (model, prompt_hash) in damaged:
                reason = (f"its cache {damaged[model, prompt_hash]['path']} does not hold its recorded bytes "
                          f"(corrupt or changed); rerun the activations stage")
            elif cache is None:
                reason = "its cache is gone (file deleted, pruned or failed); rerun the activations stage"
            elif row.get("cache_sha256") != cache.get("sha256"):
                reason = f"drawn from another cache than the current one ({cache['path']}); rerun figures to redraw"
            else:
                continue
        elif model not in by_model:
            reason = f"no current cache of {model} is left"
        elif row.get("cache_sha256") != model_fingerprint(by_model[model]):
            reason = f"drawn from another set of {model}'s caches; rerun figures to redraw"
        else:
            continue
        stale.append(dict(row, status="stale", reason=reason))
    return stale


# --------------------------------------------------------------------------- recording


class Recorder:
    """The index's only writer in a figures run: appends rows, counts them, reports errors in one
    line each (figure, prompt hash and first words, layer/head where they apply)."""

    def __init__(self, save_path: Path, texts: dict[tuple[str, str], str], total: int, progress: bool):
        self.save_path, self.texts = save_path, texts
        self.summary = FiguresSummary()
        self.bar = tqdm(total=total, desc="figures", unit="fig", disable=not progress or total == 0)

    def describe(self, row: dict[str, Any]) -> str:
        where = f"{row['function']} on "
        if row.get("prompt_hash"):
            words = " ".join(self.texts.get((row["model"], row["prompt_hash"]), "").split()[:6])
            where += f"{row['model']} {row['prompt_hash'][:8]} \"{words}…\""
        else:
            where += f"{row['model']} (all prompts)"
        where += f" L{row['layer']}" if row.get("layer") is not None else ""
        where += f" H{row['head']}" if row.get("head") is not None else ""
        return where

    def __call__(self, rows: list[dict[str, Any]]) -> None:
        try:
            index.append_rows(self.save_path, rows)
        except index.IndexWriteError:  # disk full: no file may outlive the row that failed to land
            index.discard_unrecorded(self.save_path, rows)
            raise
        self.summary.rows.extend(rows)
        for row in rows:
            if row["status"] == "error":
                self.summary.failed += 1
                tqdm.write(f"error: {self.describe(row)}: {row['error']}", file=sys.stderr)
            elif row["status"] == "ok":
                self.summary.written += 1
            elif row["status"] == "skipped":
                reason = f"{row['function']}: {row.get('reason', '')}"
                self.summary.not_applicable[reason] = self.summary.not_applicable.get(reason, 0) + 1
        self.bar.update(len(rows))

    def close(self) -> None:
        self.bar.close()


# --------------------------------------------------------------------------- backends


def draw_here(save_path: Path, plan: FigurePlan, options: DrawOptions) -> Iterator[list[dict[str, Any]]]:
    for cache_row, jobs in plan.prompts:
        yield _draw_prompt(save_path, cache_row, jobs, options)


def draw_in_processes(save_path: Path, plan: FigurePlan, workers: int, options: DrawOptions) -> Iterator[list[dict[str, Any]]]:
    # fork keeps figures registered in a notebook's __main__ visible to the workers.
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_one_blas_thread) as pool:
        futures = [pool.submit(_draw_prompt, save_path, cache_row, jobs, options) for cache_row, jobs in plan.prompts]
        for future in as_completed(futures):
            yield future.result()


def draw_on_ray(save_path: Path, plan: FigurePlan, address: str, options: DrawOptions) -> Iterable[list[dict[str, Any]]]:
    """The per-prompt plan on Ray workers (one per CPU slot), a few prompts per shard; each
    shard's rows come back here, the index's only writer. The figure specs travel with the work,
    so functions registered in a notebook draw on the workers too. SAVE_PATH must be a folder
    every worker sees (one machine, or a shared file system)."""
    from lens_pipeline import distributed

    specs = [REGISTRY[name] for name in sorted({task.function for _, jobs in plan.prompts for task, _ in jobs})]
    setup = functools.partial(_register_on_worker, specs)
    work = functools.partial(_draw_shard, save_path=save_path, options=options)
    return distributed.run_shards(setup, work, distributed.chunks(plan.prompts, 2), address=address, use_gpus=False)


def _register_on_worker(specs: list[FigureSpec]) -> None:
    _one_blas_thread()
    for spec in specs:
        REGISTRY[spec.name] = spec


def _draw_shard(
    state: None, shard: list[tuple[dict[str, Any], Jobs]], *, save_path: Path, options: DrawOptions,
) -> list[dict[str, Any]]:
    return [row for cache_row, jobs in shard for row in _draw_prompt(save_path, cache_row, jobs, options)]


def draw_models(save_path: Path, plan: FigurePlan, options: DrawOptions) -> Iterator[list[dict[str, Any]]]:
    """Model-scope figures (comparisons across a model's prompts), after the prompts."""
    for model, rows, fingerprint, todo in plan.models:
        left_out = [row["path"] for row in plan.damaged if row["model"] == model]
        warning = (f"left out {len(left_out)} cache(s) that do not hold their recorded bytes (corrupt or changed; "
                   f"rerun the activations stage): {', '.join(left_out)}") if left_out else None
        opened = [Cache(save_path / row["path"]) for row in rows]
        try:
            for spec, params in todo:
                source = DrawInput(model, "", fingerprint, None)
                row = draw(spec, opened, Task(spec.name), params, save_path, source, options)
                if warning and row["status"] == "ok":
                    row["warnings"] = [warning]
                    tqdm.write(f"warning: {spec.name} on {model}: {warning}", file=sys.stderr)
                yield [row]
        finally:
            for cache in opened:
                cache.close()


def effective_params(spec: FigureSpec, overrides: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    """A figure's keyword defaults with the caller's overrides on top: what is called and recorded."""
    return {**spec.params, **(overrides or {}).get(spec.name, {})}


def run_figures(save_path: str | Path = "attn_data", settings: FiguresSettings | None = None, **options: Any) -> FiguresSummary:
    """Draw figures for the current caches in `save_path`; returns the rows it wrote.

    `settings`, or its fields as keywords: figures (globs over registered names), models (model
    names), prompts (prompt-hash prefixes), layers/heads (sets or '0-3,7' strings), params
    ({figure: {option: value}}, checked before anything is drawn), workers (local processes), ray
    ('auto' or a cluster address), force, raise_errors (stop at the first error and re-raise it,
    drawing in this process), progress, display. Raises FigureParamError for a bad name or value.
    """
    started = time.perf_counter()
    settings = settings or FiguresSettings.build(**options)
    load_builtins()
    save_path = Path(save_path)
    specs = select_figures(settings.figures)
    check_params(specs, settings.params)
    remove_orphan_temp_files(save_path / "figures")
    index.repair(save_path)
    newest = index.latest(index.read_rows(save_path))
    plan = plan_figures(save_path, specs, settings, newest)
    texts = {(r["model"], r["prompt_hash"]): r.get("text", "") for r in index.current_caches(newest.values()).values()}
    recorder = Recorder(save_path, texts, plan.size, settings.progress)
    recorder.summary.skipped = len(plan.up_to_date)
    recorder.summary.current = plan.up_to_date
    recorder.summary.stale = len(plan.stale)
    index.append_rows(save_path, plan.stale)
    try:
        options = DrawOptions(settings.raise_errors, settings.image_formats)
        if settings.raise_errors or not plan.prompts:  # raising needs this process: a worker's traceback is lost
            rows_of_prompts: Iterable[list[dict[str, Any]]] = draw_here(save_path, plan, options)
        elif settings.ray:
            rows_of_prompts = draw_on_ray(save_path, plan, settings.ray, options)
        elif settings.workers > 1 and len(plan.prompts) > 1:
            rows_of_prompts = draw_in_processes(save_path, plan, settings.workers, options)
        else:
            rows_of_prompts = draw_here(save_path, plan, options)
        for rows in rows_of_prompts:
            recorder(rows)
        for rows in draw_models(save_path, plan, options):
            recorder(rows)
    finally:
        recorder.close()
    summary = recorder.summary
    summary.seconds = time.perf_counter() - started
    if settings.display:
        show(summary.current + summary.rows, save_path, settings.display_limit, texts)
    return summary


def caption(row: dict[str, Any], texts: dict[tuple[str, str], str]) -> str:
    """function · model · "prompt start…" · L3 H2 — what a displayed figure is."""
    parts = [row["function"], row["model"]]
    if row.get("prompt_hash"):
        words = " ".join(texts.get((row["model"], row["prompt_hash"]), "").split())
        parts.append(f'{row["prompt_hash"][:8]} "{words[:40]}{"…" if len(words) > 40 else ""}"')
    else:
        parts.append("all prompts")
    where = " ".join(f"{axis}{row[name]}" for axis, name in (("L", "layer"), ("H", "head")) if row.get(name) is not None)
    return " · ".join(parts + ([where] if where else []))


def show(rows: Sequence[dict[str, Any]], save_path: str | Path, limit: int | None = 12,
         texts: dict[tuple[str, str], str] | None = None) -> None:
    """Display figures inline in Jupyter, each with a caption, in a stable order (model, prompt,
    function, layer, head); at most `limit`, saying so when more were left out. A no-op elsewhere."""
    try:
        from IPython.display import HTML, SVG, Image, Markdown, display
    except ImportError:
        return
    viewers = {"png": lambda p: Image(filename=p), "svg": lambda p: SVG(filename=p),
               "html": lambda p: HTML(filename=p), "md": lambda p: Markdown(filename=p)}
    order = lambda row: (row["model"], row.get("prompt_hash", ""), row["function"],  # noqa: E731
                         row.get("layer") if row.get("layer") is not None else -1,
                         row.get("head") if row.get("head") is not None else -1)
    shown_rows = sorted((row for row in rows if row.get("status") == "ok"), key=order)
    kept = shown_rows if limit is None else shown_rows[:limit]
    for row in kept:
        entry = next((f for f in row.get("files", []) if f["format"] in viewers), None)
        if entry is None:
            continue
        label = html.escape(caption(row, texts or {}))
        display(HTML(f"<div style='font: 12px sans-serif; margin-top: 8px'><b>{label}</b></div>"))
        path = str(Path(save_path) / entry["path"])
        interactive_page = row.get("view") == interactive.VIEW and entry["format"] == "html"
        display(HTML(interactive.notebook_html(path)) if interactive_page else viewers[entry["format"]](path))
    if len(kept) < len(shown_rows):
        display(Markdown(f"Showing {len(kept)} of {len(shown_rows)} figures (`display_limit={limit}`): pass "
                         f"`display_limit=None` for all, or narrow with `figures=`, `prompts=`, `layers=`, `heads=`."))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lens_pipeline.figures",
        description="Apply every registered figure function to the caches in SAVE_PATH, write the files "
        "under SAVE_PATH/figures and record each in SAVE_PATH/index.jsonl. Reruns skip what is done.",
    )
    parser.add_argument("--save-path", default="attn_data", help="folder the activations stage wrote (default: %(default)s)")
    parser.add_argument("--figures", default="",
                        help="comma-separated globs over figure names, e.g. 'attention_*,knitting*' (default: all)")
    parser.add_argument("--model", default="", help="comma-separated model names to draw (default: all in the index)")
    parser.add_argument("--prompts", default="", help="comma-separated prompt-hash prefixes (default: all)")
    parser.add_argument("--layers", default="", help="layers for per-layer/per-head figures, e.g. 0-3,7 (default: all)")
    parser.add_argument("--heads", default="", help="heads for per-head figures, e.g. 0,2 (default: all)")
    parser.add_argument("--param", action="append", default=[], metavar="FIGURE.NAME=VALUE",
                        help="override a figure's parameter (JSON value), e.g. knitting_pattern.width=30; repeatable")
    parser.add_argument("--workers", type=int, default=1, help="worker processes, parallel across prompts (default: %(default)s)")
    parser.add_argument("--ray", metavar="auto|ADDRESS", default=None,
                        help="draw on Ray workers (one per CPU slot) instead of local processes; auto = the running "
                        "cluster, else a new local one (pip install 'lens_pipeline[ray]'); SAVE_PATH must be shared")
    parser.add_argument("--force", action="store_true",
                        help="redraw figures even if up to date (not needed after a code, param or cache change: "
                        "those redraw by themselves)")
    parser.add_argument("--raise", dest="raise_errors", action="store_true",
                        help="stop at the first figure that raises and show its full traceback (draws in this process)")
    parser.add_argument("--list", action="store_true",
                        help="list every registered figure with its options (defaults and types) and exit")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="FILE.py|MODULE",
                        help="register your own figures from a Python file or module before running; repeatable")
    parser.add_argument("--format", dest="image_formats", default="", metavar="png,svg,pdf",
                        help="write matplotlib figures in these formats instead of their own (vector: text as "
                        "paths in SVG, fonts embedded in PDF)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _parse_params(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    params: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        figure, dot, name = key.partition(".")
        if not sep or not dot:
            raise FigureParamError(f"--param {item!r}: expected FIGURE.NAME=VALUE")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value  # bare words are strings: mode=round
        params.setdefault(figure, {})[name] = parsed
    return params


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    split = lambda text: [part.strip() for part in text.split(",") if part.strip()]  # noqa: E731
    try:
        load_builtins()
        for name in args.imports:
            import_figures(name)
    except FigureParamError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.list:
        print("\n".join(describe_figure(spec) for spec in sorted(REGISTRY.values(), key=lambda s: s.name)))
        return 0
    if not index.index_path(args.save_path).exists():
        print(f"error: {index.index_path(args.save_path)} not found; run python -m lens_pipeline.activations first",
              file=sys.stderr)
        return 2
    try:
        settings = FiguresSettings.build(
            figures=split(args.figures), models=split(args.model), prompts=split(args.prompts),
            layers=args.layers, heads=args.heads, params=_parse_params(args.param), workers=args.workers,
            ray=args.ray, force=args.force, raise_errors=args.raise_errors, progress=not args.quiet,
            image_formats=split(args.image_formats),
        )
        summary = run_figures(args.save_path, settings)
    except (FigureParamError, DistributedError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except index.IndexWriteError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        if error.errno not in DISK_ERRNOS:
            raise
        print(f"error: cannot write figures to {args.save_path}: {error.strerror} (finished figures are "
              f"recorded; free space and rerun to resume)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished figures are recorded; rerun to resume", file=sys.stderr)
        return 130
    rate = summary.written / summary.seconds if summary.seconds else 0.0
    stale = f", {summary.stale} marked stale" if summary.stale else ""
    not_applicable = sum(summary.not_applicable.values())
    print(f"done: {summary.written} figure(s) written ({rate:.0f}/s), {summary.skipped} already done, "
          f"{summary.failed} failed{stale}" + (f", {not_applicable} not applicable" if not_applicable else "")
          + f"; {summary.seconds:.1f} s", file=sys.stderr)
    for line in summary.not_applicable_lines():
        print(f"  {line}", file=sys.stderr)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
