"""Figures inline in Jupyter, captioned, in a stable order."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Sequence

from lens_pipeline.draw import interactive


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
