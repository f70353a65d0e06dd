"""One figure call: run the function, write its files atomically, return its index row."""

from __future__ import annotations

import errno
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lens_pipeline.draw import interactive
from lens_pipeline.draw.registry import FigureSpec, SkipFigure
from lens_pipeline.figures.files import (
    close_figures,
    figure_paths,
    outputs_of,
    remove_other_outputs,
    render,
    with_image_formats,
)
from lens_pipeline.figures.task import Task
from lens_pipeline.store import index
from lens_pipeline.store.cache import write_atomic


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
        outputs = with_image_formats(outputs_of(spec, _call(spec, target, task, params)), options.image_formats)
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
