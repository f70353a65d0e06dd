"""Whether a recorded file still holds the bytes its index row vouches for.

The check is the file's sha256 against the row's. Hashing every cache on every run would cost
a figures run that has nothing to do a read of every cache, so a file whose sha256 matched is
remembered in `.verified.json` under the save path by its stat stamp (size, mtime, ctime, inode),
and hashed again only when the stamp changes. Any write to the file changes its ctime, which no
user-level call can set back, so an edit in place (same size, mtime restored) is still seen; what
this does not see is bit rot beneath the file system, which changes no stamp.

The memo is a cache of checks, not a record: deleting it costs one hash per file, and a save path
that cannot be written to is checked all the same (the memo is then not kept).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lens_pipeline.store.index import sha256_file

MEMO_NAME = ".verified.json"


def _stamp(path: Path) -> list[int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


class ContentCheck:
    """`holds(row)`: the file a cache row names is there with the row's sha256. Call `save()` after."""

    def __init__(self, save_path: str | os.PathLike[str]):
        self.save_path = Path(save_path)
        self.memo_path = self.save_path / MEMO_NAME
        try:
            memo = json.loads(self.memo_path.read_text(encoding="utf-8"))
            self.memo: dict[str, list[Any]] = memo if isinstance(memo, dict) else {}
        except (OSError, ValueError):
            self.memo = {}
        self.changed = False

    def holds(self, row: dict[str, Any]) -> bool:
        """The row's file is there with its recorded sha256 (a row without one: with its size)."""
        relpath, expected = row["path"], row.get("sha256")
        path = self.save_path / relpath
        stamp = _stamp(path)
        if stamp is None or (row.get("bytes") is not None and stamp[0] != row["bytes"]):
            return False
        if not expected:
            return True
        if self.memo.get(relpath) == [*stamp, expected]:
            return True
        try:
            matches = sha256_file(path) == expected
        except OSError:
            matches = False
        if matches:
            self.memo[relpath] = [*stamp, expected]
        else:
            self.memo.pop(relpath, None)
        self.changed = True
        return matches

    def save(self) -> None:
        """Keep what was checked for the next run (best effort: a read-only save path keeps nothing)."""
        if not self.changed:
            return
        temp = self.memo_path.with_name(f"{MEMO_NAME}.{os.getpid()}.tmp")
        try:
            temp.write_text(json.dumps(self.memo, sort_keys=True), encoding="utf-8")
            os.replace(temp, self.memo_path)
        except OSError:
            temp.unlink(missing_ok=True)
        self.changed = False
