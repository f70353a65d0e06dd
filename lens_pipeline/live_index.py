"""The index as the viewer sees it: index.jsonl followed as it grows (only new lines parsed),
kept as an immutable snapshot per version with memoised filter results."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lens_pipeline import index


@dataclass
class IndexView:
    """An immutable snapshot of the index as the viewer needs it (rebuilt when the file changes)."""

    version: int
    # Newest row per figure, in index order: the stages write per model, per prompt, layer by layer,
    # so that order already groups them, and keeping it makes a rebuild O(rows) with no sort.
    figures: list[dict[str, Any]]
    caches: dict[tuple[str, str], dict[str, Any]]  # (model, prompt_hash) -> newest cache row
    texts: dict[tuple[str, str], str]  # (model, prompt_hash) -> prompt text, for display and search
    bad_lines: int
    _queries: OrderedDict[Any, list[dict[str, Any]]] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    summary: dict[str, Any] | None = None  # /api/summary of this version, computed on first request

    def text_of(self, row: dict[str, Any]) -> str:
        return self.texts.get((row.get("model", ""), row.get("prompt_hash", "")), "")

    def memo(self, key: Any, compute: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """Filter results per query, so scrolling through pages costs a slice, not a scan."""
        with self._lock:
            if key in self._queries:
                self._queries.move_to_end(key)
                return self._queries[key]
        result = compute()
        with self._lock:
            self._queries[key] = result
            while len(self._queries) > 32:
                self._queries.popitem(last=False)
        return result


class LiveIndex:
    """index.jsonl followed as it grows: each `view()` stats the file and parses only new lines."""

    def __init__(self, save_path: Path):
        self.path = index.index_path(save_path)
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._rows: dict[index.Key, dict[str, Any]] = {}
        self._offset = 0
        self._identity: tuple[int, int] | None = None  # (device, inode): a replaced file starts over
        self._bad_lines = 0
        self._version = 0
        self._view: IndexView | None = None

    def view(self) -> IndexView:
        with self._lock:
            self._follow()
            if self._view is None or self._view.version != self._version:
                self._view = self._build()
            return self._view

    def _follow(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            if self._identity is not None:
                self._reset()
                self._version += 1
            return
        if self._identity != (stat.st_dev, stat.st_ino) or stat.st_size < self._offset:
            if self._identity is not None:
                version = self._version
                self._reset()
                self._version = version + 1
            self._identity = (stat.st_dev, stat.st_ino)
        if stat.st_size == self._offset:
            return
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read(stat.st_size - self._offset)
        end = chunk.rfind(b"\n") + 1  # a torn last line (writer mid-append) waits for the next read
        if end == 0:
            return
        self._offset += end
        # Decode once, split on "\n" only (a JSON string may hold a raw U+2028, which splitlines splits on).
        for line in chunk[:end].decode("utf-8", errors="replace").split("\n"):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                self._bad_lines += 1
                continue
            try:
                if not isinstance(row, dict) or row.get("kind") not in ("cache", "figure"):
                    raise TypeError("not an index row")
                self._rows[index.row_key(row)] = row
            except TypeError:  # e.g. a list where a layer number belongs: skipped, not fatal
                self._bad_lines += 1
        self._version += 1

    def _build(self) -> IndexView:
        caches: dict[tuple[str, str], dict[str, Any]] = {}
        figures: list[dict[str, Any]] = []
        for row in self._rows.values():
            if row["kind"] == "cache":
                caches[(row.get("model", ""), row.get("prompt_hash", ""))] = row
            else:
                figures.append(row)
        texts = {key: str(row.get("text") or "") for key, row in caches.items()}
        return IndexView(self._version, figures, caches, texts, self._bad_lines)
