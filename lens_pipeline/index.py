"""The metadata index: `index.jsonl` under the save path, one row per output.

Rows are only ever appended (under an exclusive file lock, so concurrent runs and worker
processes can write at once); a later row for the same output supersedes an earlier one.
Resume and the viewer read `latest()`: the newest row per output key.

Row fields: kind ("cache" | "figure"), model, prompt_hash, layer, head, function, path (relative
to the save path), files (every file of a multi-file figure), format, bytes, sha256, status
("ok" | "error"), error, warnings, params, created (UTC ISO time), tool_version.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import jsonlines

from lens_pipeline import __version__

INDEX_NAME = "index.jsonl"
Key = tuple[str, str, str, str, Any, Any]


def index_path(save_path: str | os.PathLike[str]) -> Path:
    return Path(save_path) / INDEX_NAME


def row_key(row: dict[str, Any]) -> Key:
    """What makes two rows describe the same output."""
    return (
        row["kind"],
        row.get("model", ""),
        row.get("prompt_hash", ""),
        row.get("function", ""),
        row.get("layer"),
        row.get("head"),
    )


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def make_row(kind: str, **fields: Any) -> dict[str, Any]:
    """A row with the bookkeeping fields filled in; `fields` carry the rest."""
    row: dict[str, Any] = {"kind": kind, "status": "ok"}
    row.update(fields)
    row.setdefault("created", now_iso())
    row.setdefault("tool_version", __version__)
    return row


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def append_rows(save_path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> None:
    """Append rows atomically with respect to other writers (flock + one write + fsync)."""
    payload = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if not payload:
        return
    path = index_path(save_path)
    with _locked(path), open(path, "a+b") as handle:
        # A writer killed mid-line leaves a torn row: start ours on a fresh line.
        if handle.seek(0, os.SEEK_END) > 0:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                payload = "\n" + payload
        handle.write(payload.encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())


def read_rows(save_path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every row in file order. A torn last line (a writer killed mid-write) is skipped."""
    path = index_path(save_path)
    if not path.exists():
        return []
    rows = []
    with jsonlines.open(path) as reader:
        for row in reader.iter(skip_invalid=True):
            if isinstance(row, dict) and "kind" in row:
                rows.append(row)
    return rows


def latest(rows: Iterable[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    """The newest row per output."""
    newest: dict[Key, dict[str, Any]] = {}
    for row in rows:
        newest[row_key(row)] = row
    return newest


def is_complete(row: dict[str, Any] | None, save_path: str | os.PathLike[str]) -> bool:
    """Recorded ok, and every file it names is still there with the recorded size."""
    if row is None or row.get("status") != "ok":
        return False
    files = row.get("files") or [{"path": row["path"], "bytes": row.get("bytes")}]
    for entry in files:
        target = Path(save_path) / entry["path"]
        if not target.is_file() or (entry.get("bytes") is not None and target.stat().st_size != entry["bytes"]):
            return False
    return True
