"""A save path from Python: its current caches, found by model, text and metadata, opened lazily.

    import lens_pipeline
    run = lens_pipeline.open("attn_data")
    paris = run.caches(model="SmolLM2-135M-Instruct", text="Paris")
    for cache in paris:                  # each opened in turn, closed when the loop moves on
        cache["blocks.18.attn.hook_pattern"][6]

Reads the index only (`index.current_caches`): the caches listed are the ones figures are drawn from.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

from lens_pipeline.store import index
from lens_pipeline.store.cache import Cache


class CacheSelection(Sequence[Cache]):
    """Cache rows picked from a save path; indexing opens one, iterating opens each in turn."""

    def __init__(self, save_path: Path, rows: list[dict[str, Any]]):
        self.save_path, self.rows = save_path, rows

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, item: int) -> Cache: ...
    @overload
    def __getitem__(self, item: slice) -> "CacheSelection": ...
    def __getitem__(self, item: int | slice) -> "Cache | CacheSelection":
        if isinstance(item, slice):
            return CacheSelection(self.save_path, self.rows[item])
        return Cache(self.save_path / self.rows[item]["path"])

    def __iter__(self) -> Iterator[Cache]:
        for row in self.rows:
            with Cache(self.save_path / row["path"]) as cache:
                yield cache

    def _table(self) -> list[tuple[str, str, str, str]]:
        return [(row["model"], row["prompt_hash"][:8], str(row.get("n_tokens", "")), " ".join(str(row.get("text", "")).split()))
                for row in self.rows]

    def __repr__(self) -> str:
        lines = [f"{len(self.rows)} cache(s) in {self.save_path}"]
        lines += [f"  {model}  {hash_}  {tokens:>4} tokens  {text[:60]}" for model, hash_, tokens, text in self._table()[:20]]
        return "\n".join(lines + (["  ..."] if len(self.rows) > 20 else []))

    def _repr_html_(self) -> str:
        cells = "".join(
            "<tr>" + "".join(f"<td>{html.escape(value[:80])}</td>" for value in row) + "</tr>" for row in self._table()[:50]
        )
        more = f"<p>… and {len(self.rows) - 50} more</p>" if len(self.rows) > 50 else ""
        return (f"<p><b>{len(self.rows)} cache(s)</b> in <code>{html.escape(str(self.save_path))}</code></p>"
                f"<table><tr><th>model</th><th>prompt</th><th>tokens</th><th>text</th></tr>{cells}</table>{more}")


class SavePath:
    """One save path's index, read once (call `refresh()` after a stage has run)."""

    def __init__(self, save_path: str | os.PathLike[str]):
        self.path = Path(save_path)
        if not index.index_path(self.path).exists():
            raise FileNotFoundError(f"{index.index_path(self.path)} not found; run python -m lens_pipeline.activations first")
        self.refresh()

    def refresh(self) -> None:
        newest = index.latest(index.read_rows(self.path))
        self._caches = list(index.current_caches(newest.values()).values())
        self._figures = [row for row in newest.values() if row["kind"] == "figure"]

    @property
    def models(self) -> list[str]:
        return sorted({row["model"] for row in self._caches})

    def caches(self, model: str | None = None, text: str | None = None, **metadata: Any) -> CacheSelection:
        """Current caches, optionally of one model, whose prompt contains `text` (any case), and whose
        JSONL metadata has each given field equal to the given value."""
        rows = [
            row for row in self._caches
            if (model is None or row["model"] == model)
            and (text is None or text.lower() in str(row.get("text", "")).lower())
            and all((row.get("prompt_metadata") or {}).get(key) == value for key, value in metadata.items())
        ]
        return CacheSelection(self.path, rows)

    def figures(self, function: str | None = None, status: str = "ok") -> list[dict[str, Any]]:
        """Index rows of figures (newest per output), by function and status."""
        return [row for row in self._figures
                if (function is None or row["function"] == function) and (status is None or row.get("status") == status)]

    def __repr__(self) -> str:
        return f"SavePath({str(self.path)!r}: {len(self._caches)} caches of {', '.join(self.models) or 'no model'}, " \
               f"{len(self.figures())} figures)"


def open_save_path(save_path: str | os.PathLike[str]) -> SavePath:
    """The save path's current caches and figures, from its index."""
    return SavePath(save_path)
