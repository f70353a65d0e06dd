"""Where a figure's files go and how a figure function's return value becomes their bytes."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Iterable

from lens_pipeline.capture.models import slug
from lens_pipeline.draw.registry import FigureSpec, SkipFigure
from lens_pipeline.figures.task import Task


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


def outputs_of(spec: FigureSpec, result: Any) -> dict[str, Any]:
    """Normalise a return value to {key: object}, key a format or a file name."""
    if is_file_dict(spec, result):
        return result
    if isinstance(result, dict) and not result and spec.formats != ("json",):  # e.g. a page per layer, and no layer applies
        raise SkipFigure("the figure function returned no files")
    if len(spec.formats) > 1:
        raise TypeError(f"{spec.name} declares formats {spec.formats}: return a dict of files keyed by format "
                        f"or file name, not a {type(result).__name__}")
    return {spec.formats[0]: result}


def with_image_formats(outputs: dict[str, Any], image_formats: tuple[str, ...]) -> dict[str, Any]:
    """A lone matplotlib figure, in the asked formats (vector: text as paths in SVG, fonts embedded in PDF)."""
    if not image_formats or len(outputs) != 1:
        return outputs
    figure = next(iter(outputs.values()))
    return {fmt: figure for fmt in image_formats} if hasattr(figure, "savefig") else outputs
