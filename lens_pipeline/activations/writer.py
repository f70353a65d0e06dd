"""Writing caches: compressed between forward passes, written atomically behind the next batch, recorded as they land."""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable

from lens_pipeline.store import index
from lens_pipeline.store.cache import write_atomic

Record = Callable[[list[dict[str, Any]]], Any]


class SavePathError(OSError):
    """The save path cannot be written (read-only, full, or not a folder); one line says which."""

    def __str__(self) -> str:
        return str(self.strerror)


def check_writable(save_path: Path) -> None:
    """Fail in one line, before any model loads, when nothing can be written under `save_path`."""
    probe = save_path / "caches" / f".write-check.{os.getpid()}"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
    except OSError as error:
        raise SavePathError(error.errno, f"cannot write to {save_path}: {error.strerror or error}") from None
    finally:
        probe.unlink(missing_ok=True)


class CacheWriter:
    """Compresses a batch's caches (their members side by side on a thread pool, between forward
    passes: one long prompt's cache uses every thread too), writes them atomically
    on a background thread while the next batch runs, and records their index rows as they land.
    On Ctrl-C or a failed write, what was written is recorded before the error goes on."""

    def __init__(self, save_path: Path, record: Record, threads: int, batch_size: int):
        self.save_path, self.record = save_path, record
        self.compress_pool = ThreadPoolExecutor(max_workers=max(1, threads))
        self.disk = ThreadPoolExecutor(max_workers=1)
        self.in_flight: list[Future[dict[str, Any]]] = []
        self.keep = 2 * batch_size  # bound memory: at most ~two batches wait for the disk
        self.written = 0

    def submit(self, jobs: Iterable[tuple[Callable[..., Any], Any]]) -> None:
        """Each job is (compress, args): compress(args, map_members) -> (path, bytes, row)."""
        for compress, args in jobs:
            path, data, row = compress(args, self.compress_pool.map)
            self.in_flight.append(self.disk.submit(_write_file, path, data, row))
        self.drain(self.keep)

    def drain(self, keep: int = 0) -> None:
        """Record the rows of written caches, oldest first, until `keep` writes are pending: one
        index append for them all, also when a wait is interrupted or a write fails."""
        done = []
        try:
            while len(self.in_flight) > keep:
                done.append(self.in_flight[0].result())
                self.in_flight.pop(0)
        finally:
            if done:
                try:
                    self.record(done)
                except OSError:  # disk full: caches the index does not record must not stay
                    index.discard_unrecorded(self.save_path, done)
                    raise
                self.written += len(done)

    def close(self) -> None:
        for future in self.in_flight:  # after a failure: let queued writes end before the pools go
            future.cancel()
        self.compress_pool.shutdown(wait=True)
        self.disk.shutdown(wait=True)
        # Writes that landed after the failure were never recorded: their files go too.
        late = [f.result() for f in self.in_flight if not f.cancelled() and f.exception() is None]
        if late:
            index.discard_unrecorded(self.save_path, late)


def _write_file(path: Path, data: bytes, row: dict[str, Any]) -> dict[str, Any]:
    write_atomic(path, data)
    return row
