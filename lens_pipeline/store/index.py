"""The metadata index: `index.jsonl` under the save path, one row per output.

Rows are only ever appended (under an exclusive file lock, so concurrent runs and worker
processes can write at once); a later row for the same output supersedes an earlier one.
Resume and the viewer read `latest()`: the newest row per output key. A row equal to the newest
one for its output (times aside) is not appended again, so two runs doing the same work at once
leave one row per output. A failed append (disk full) truncates the file back to where it was.

Caches are keyed by their settings too (`settings_id`): caches of one prompt made with other
settings live side by side, and `current_caches()` names the newest for each (model, prompt).

Row fields: kind ("cache" | "figure" | "model_card" | "head_roles": one per model each, see capture/model_card.py
and capture/head_roles.py),
model, prompt_hash, layer, head, function, path (relative to the save path), files (every file of
a multi-file figure), format, bytes, sha256, status ("ok" | "error" | "skipped" | "stale"; caches also
"corrupt": the file no longer holds its recorded bytes, and "removed" by --prune), error
and traceback (errors), reason (skipped, stale, corrupt), warnings, params, created (UTC ISO time),
tool_version.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from lens_pipeline.version import __version__

INDEX_NAME = "index.jsonl"
TORN_NAME = INDEX_NAME + ".torn"  # lines taken out of the index by repair(): kept, not lost
Key = tuple[str, str, str, str, Any, Any, str]
VOLATILE_FIELDS = ("created", "seconds", "tool_version")  # differ between two runs of the same work
ROW_KINDS = ("cache", "figure", "model_card", "head_roles")  # readers pick the kinds they use by name


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
        row.get("settings_id", ""),
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


class IndexWriteError(OSError):
    """The index could not be appended to (disk full, read-only); nothing of the append was kept."""

    def __str__(self) -> str:
        return str(self.strerror)


def same_output(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two rows that record the same result, ignoring when and how fast it was made."""
    strip = lambda row: {k: v for k, v in row.items() if k not in VOLATILE_FIELDS}  # noqa: E731
    return strip(a) == strip(b)


class _Tail:
    """What this process has read of one index file: its newest rows and where reading stopped."""

    def __init__(self) -> None:
        self.reset(None)

    def reset(self, identity: tuple[int, int] | None) -> None:
        self.identity = identity
        self.offset = 0
        self.newest: dict[Key, dict[str, Any]] = {}

    def follow(self, handle: Any) -> None:
        """Parse what was appended since the last call (under the lock, so no line is torn)."""
        stat = os.fstat(handle.fileno())
        if self.identity != (stat.st_dev, stat.st_ino) or stat.st_size < self.offset:
            self.reset((stat.st_dev, stat.st_ino))
        handle.seek(self.offset)
        chunk = handle.read(stat.st_size - self.offset)
        self.offset = stat.st_size
        for row in parse_lines(chunk, None, 0):
            self.newest[row_key(row)] = row


_TAILS: dict[Path, _Tail] = {}


def append_rows(save_path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Append rows atomically with respect to other writers (flock + one write + fsync), leaving
    out each row equal to the newest already recorded for its output. Returns the rows appended.
    Raises IndexWriteError, with the file as it was, when the write fails."""
    rows = list(rows)
    if not rows:
        return []
    path = index_path(save_path)
    try:
        with _locked(path), open(path, "a+b") as handle:
            tail = _TAILS.setdefault(path.resolve(), _Tail())
            tail.follow(handle)
            fresh = [row for row in rows if not (
                (old := tail.newest.get(row_key(row))) is not None and same_output(old, row))]
            payload = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in fresh)
            if not payload:
                return []
            size = handle.seek(0, os.SEEK_END)
            # A writer killed mid-line leaves a torn row: start ours on a fresh line.
            if size > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    payload = "\n" + payload
            try:
                handle.write(payload.encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
            except OSError:
                handle.truncate(size)  # no half row: the index stays as it was
                raise
            tail.offset = handle.tell()
            for row in fresh:
                tail.newest[row_key(row)] = row
            return fresh
    except OSError as error:
        raise IndexWriteError(error.errno, f"cannot append to {path}: {error.strerror or error}") from error


def model_output_current(row: dict[str, Any] | None, save_path: str | os.PathLike[str], version_field: str, version: int,
                         model_id: str, accept_error: bool = True) -> bool:
    """Whether a model-level output's row (the model card, head roles) is this version's for this model, its
    files intact (with `accept_error`, one that failed for this version counts too: it is not retried on every run)."""
    if row is None or row.get(version_field) != version or row.get("model_id") != model_id:
        return False
    if row.get("status") == "error":
        return accept_error
    return is_complete(row, save_path)


def parse_row(line: bytes) -> dict[str, Any]:
    """One line as a row; ValueError or TypeError when it is not one."""
    row = json.loads(line)
    if not isinstance(row, dict) or row.get("kind") not in ROW_KINDS:
        raise ValueError("not an index row")
    hash(row_key(row))  # key fields must be hashable (a list where a layer belongs is not)
    return row


def parse_lines(chunk: bytes, warn: Any, first_line: int) -> Iterator[dict[str, Any]]:
    """Rows of a run of complete lines; a line that is not a row is reported to `warn`."""
    for number, line in enumerate(chunk.split(b"\n"), start=first_line):
        if not line.strip():
            continue
        try:
            row = parse_row(line)
        except (ValueError, TypeError) as error:
            if warn:
                warn(f"{line_label(number)}: skipped a line that is not an index row ({error})")
            continue
        yield row


def _stderr_warning(path: Path) -> Any:
    return lambda message: print(f"warning: {path.parent}/{message}", file=sys.stderr)


def repair(save_path: str | os.PathLike[str], warn: Any = None) -> int:
    """Take out of the index every line that is not a row (a writer killed mid-append tears its last
    line), so strict JSONL readers can read it: under the writers' lock, the lines go to
    `index.jsonl.torn` and the index is rewritten without them (temp file + rename). Each is reported
    to `warn` (default: stderr) by its line number. Returns how many were taken out; a save path that
    cannot be written is left as it is, with one warning (readers skip such lines anyway)."""
    path = index_path(save_path)
    if not path.exists():
        return 0
    warn = warn or _stderr_warning(path)
    torn: list[tuple[int, bytes, str]] = []
    try:
        with _locked(path):
            kept = []
            for number, line in enumerate(path.read_bytes().split(b"\n"), start=1):
                if not line.strip():
                    continue
                try:
                    parse_row(line)
                    kept.append(line + b"\n")
                except (ValueError, TypeError) as error:
                    torn.append((number, line, str(error)))
            if not torn:
                return 0
            with open(path.with_name(TORN_NAME), "ab") as quarantine:
                quarantine.write(b"".join(line + b"\n" for _, line, _ in torn))
                quarantine.flush()
                os.fsync(quarantine.fileno())
            temp = path.with_name(f".{INDEX_NAME}.{os.getpid()}.tmp")
            try:
                with open(temp, "wb") as handle:
                    handle.write(b"".join(kept))
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(temp, path)
            finally:
                temp.unlink(missing_ok=True)
            _TAILS.pop(path.resolve(), None)
    except OSError as error:
        warn(f"{INDEX_NAME}: cannot take out lines that are not rows ({error.strerror or error}); readers skip them")
        return 0
    for number, _, reason in torn:
        warn(f"{line_label(number)}: took out a line that is not an index row ({reason}; a torn write?); "
             f"kept in {TORN_NAME}")
    return len(torn)


def line_label(number: int) -> str:
    return f"{INDEX_NAME}:{number}"


def read_rows(save_path: str | os.PathLike[str], warn: Any = None) -> list[dict[str, Any]]:
    """Every row in file order. Torn or garbage lines are skipped, each reported to `warn` (default:
    a warning on stderr naming the line); a torn last line (a writer mid-append) silently."""
    path = index_path(save_path)
    if not path.exists():
        return []
    warn = warn or _stderr_warning(path)
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # past the last newline: a row still being written
    return list(parse_lines(data[:end], warn, 1))


def latest(rows: Iterable[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    """The newest row per output, in the order those newest rows were appended."""
    newest: dict[Key, dict[str, Any]] = {}
    for row in rows:
        key = row_key(row)
        newest.pop(key, None)
        newest[key] = row
    return newest


def current_caches(newest: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(model, prompt_hash) -> the cache row figures are drawn from: of the caches recorded ok for
    that prompt (one per settings), the one recorded last (`newest` in `latest()`'s order)."""
    current: dict[tuple[str, str], dict[str, Any]] = {}
    for row in newest:
        if row["kind"] == "cache" and row.get("status") == "ok":
            current[(row.get("model", ""), row.get("prompt_hash", ""))] = row
    return current


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def discard_unrecorded(save_path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> None:
    """After a failed write or append (disk full): remove the files of these ok rows that the index
    does not vouch for, so no file outlives its row. A file the newest recorded row of its output
    names with the same sha256 (the same bytes, rewritten) stays."""
    newest = latest(read_rows(save_path, warn=lambda message: None))
    for row in rows:
        if row.get("status") != "ok":
            continue
        recorded = newest.get(row_key(row))
        vouched = set()
        if recorded is not None and recorded.get("status") == "ok":
            vouched = {(entry["path"], entry.get("sha256")) for entry in recorded.get("files") or [recorded]}
        for entry in row["files"] if "files" in row else [row]:
            if (entry["path"], entry.get("sha256")) not in vouched:
                try:
                    (Path(save_path) / entry["path"]).unlink(missing_ok=True)
                except OSError:  # best effort (a read-only folder): the error being raised matters more
                    pass


def is_complete(row: dict[str, Any] | None, save_path: str | os.PathLike[str], verify: bool = False) -> bool:
    """Recorded ok, and every file it names is still there with the recorded size (and, with
    `verify`, the recorded sha256: a flipped byte keeps the size)."""
    if row is None or row.get("status") != "ok":
        return False
    files = row.get("files") or [{"path": row["path"], "bytes": row.get("bytes"), "sha256": row.get("sha256")}]
    for entry in files:
        target = Path(save_path) / entry["path"]
        if not target.is_file() or (entry.get("bytes") is not None and target.stat().st_size != entry["bytes"]):
            return False
        if verify and entry.get("sha256") and sha256_file(target) != entry["sha256"]:
            return False
    return True
