"""The index as the viewer sees it: index.jsonl followed as it grows (only new lines parsed),
kept as an immutable snapshot per version with memoised filter results.

The rules are the stages' own: the newest row per output, in the order those rows were appended
(`index.latest`); the current cache of a (model, prompt) is its newest ok cache row, whatever its
settings (`index.current_caches`); a figure drawn from another cache than the current one, or
whose cache is gone, is stale (`lens_pipeline.figures.plan.stale_rows`), shown so before a figures run records it.
An index that holds part of a save path (a static export's selection) is judged as the whole is
(`part_of`): a figure drawn from caches of which only some are in the part is not stale for that."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lens_pipeline.figures import stale_rows
from lens_pipeline.store import index


@dataclass
class IndexView:
    """An immutable snapshot of the index as the viewer needs it (rebuilt when the file changes)."""

    version: int
    # Newest row per figure, in index order: the stages write per model, per prompt, layer by layer,
    # so that order already groups them, and keeping it makes a rebuild O(rows) with no sort.
    figures: list[dict[str, Any]]
    caches: dict[tuple[str, str], dict[str, Any]]  # (model, prompt_hash) -> current cache, else its newest row
    current: dict[tuple[str, str], dict[str, Any]]  # (model, prompt_hash) -> current cache row (status ok)
    cache_rows: dict[tuple[str, str], list[dict[str, Any]]]  # every settings' newest row, oldest first
    texts: dict[tuple[str, str], str]  # (model, prompt_hash) -> prompt text, for display and search
    bad_lines: int
    stale: dict[int, str]  # id() of each ok figure row the figures stage would mark stale now -> why
    notes: dict[int, str] = field(default_factory=dict)  # id() of a figure row -> a line about it (see part_of)
    _queries: OrderedDict[Any, list[dict[str, Any]]] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    summary: dict[str, Any] | None = None  # /api/summary of this version, computed on first request

    def text_of(self, row: dict[str, Any]) -> str:
        return self.texts.get((row.get("model", ""), row.get("prompt_hash", "")), "")

    def figure_status(self, row: dict[str, Any]) -> tuple[str, str]:
        """(status, reason) of a figure row as shown: ok | stale | error | skipped, and why."""
        status = row.get("status", "ok")
        if status == "ok":
            reason = self.stale.get(id(row))  # the rows live as long as this view: ids stay theirs
            return ("stale", reason) if reason is not None else ("ok", "")
        return status, str(row.get("reason") or (row.get("error", "") if status == "skipped" else ""))

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

    def __init__(self, save_path: Path, part_of: IndexView | None = None):
        """`part_of`: the whole save path's view, when this index holds a part of it (see the module doc)."""
        self.path = index.index_path(save_path)
        self.part_of = part_of
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

        def count_bad(message: str) -> None:  # garbage lines are counted and skipped, never fatal
            self._bad_lines += 1

        # The index's own line rule: JSON objects of a known kind (index.ROW_KINDS) with a hashable key.
        for row in index.parse_lines(chunk[:end], count_bad, 0):
            key = index.row_key(row)
            self._rows.pop(key, None)  # a re-recorded output moves to the end, as in index.latest
            self._rows[key] = row
        self._version += 1

    def _build(self) -> IndexView:
        cache_rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
        figures: dict[index.Key, dict[str, Any]] = {}
        for key, row in self._rows.items():
            if row["kind"] == "cache":
                cache_rows.setdefault((row.get("model", ""), row.get("prompt_hash", "")), []).append(row)
            elif row["kind"] == "figure":  # model cards are not shown as rows
                figures[key] = row
        current = index.current_caches(row for rows in cache_rows.values() for row in rows)
        caches = {key: current.get(key, rows[-1]) for key, rows in cache_rows.items()}
        texts = {key: str(row.get("text") or "") for key, row in caches.items()}
        # The figures stage's own rule, so a row shows stale exactly when the next run would mark it so.
        stale = {id(figures[index.row_key(row)]): row["reason"] for row in stale_rows(figures, current, set())}
        notes: dict[int, str] = {}
        if self.part_of is not None:
            stale, notes = _as_in_whole(self.part_of, figures, stale, current)
        return IndexView(self._version, list(figures.values()), caches, current, cache_rows, texts, self._bad_lines, stale,
                         notes)


def _as_in_whole(whole: IndexView, figures: dict[index.Key, dict[str, Any]], stale: dict[int, str],
                 current: dict[tuple[str, str], dict[str, Any]]) -> tuple[dict[int, str], dict[int, str]]:
    """(stale, notes) of a part's figures as the whole judges them: stale where the whole has them
    stale, for its reason; one stale only in the part (drawn from caches the part lacks) is current,
    with a note saying how much of what it was drawn from is outside."""
    in_whole = {index.row_key(row): whole.figure_status(row) for row in whole.figures}
    judged, notes = {}, {}
    for key, row in figures.items():
        status, reason = in_whole.get(key, ("ok", ""))
        if status == "stale":
            judged[id(row)] = reason
        elif id(row) in stale:
            model = row.get("model", "")
            if row.get("prompt_hash"):
                notes[id(row)] = "the cache it was drawn from is not in this export"
            else:
                drawn = sum(1 for m, _ in whole.current if m == model)
                here = sum(1 for m, _ in current if m == model)
                notes[id(row)] = (f"drawn from all {drawn} prompts of {model}; {drawn - here} of them are "
                                  "not in this export")
    return judged, notes
