"""Request parameters and file paths: one-line 4xx errors, and no path outside the save path."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Iterable
from urllib.parse import parse_qs, quote


class ApiError(Exception):
    """An answer other than 200, with a message the page can show as is."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def resolve_inside(root: Path, relpath: str) -> Path:
    """`root / relpath` after resolving symlinks; ApiError(403) if that is not inside `root`.

    `relpath` is already percent-decoded. Refused outright: absolute paths, `..` and `.`
    segments, backslashes, NUL, and hidden names (temp files, locks)."""
    if not relpath or "\x00" in relpath or "\\" in relpath or relpath.startswith("/"):
        raise ApiError(403, f"refused path {relpath!r}: only relative paths inside the save path are served")
    parts = PurePosixPath(relpath).parts
    if any(part in ("..", ".") or part.startswith(".") for part in parts):
        raise ApiError(403, f"refused path {relpath!r}: '..', '.' and hidden names are not served")
    target = (root / relpath).resolve()
    if not target.is_relative_to(root):
        raise ApiError(403, f"refused path {relpath!r}: it resolves outside the save path")
    return target


def file_url(relpath: str) -> str:
    return "/files/" + quote(relpath)


class Params:
    """Query-string parameters with one-line errors: unknown names, bad integers, out of range."""

    def __init__(self, query: str, allowed: Iterable[str]):
        raw = parse_qs(query, keep_blank_values=True)
        allowed = set(allowed)
        unknown = sorted(set(raw) - allowed)
        if unknown:
            raise ApiError(400, f"unknown parameter {unknown[0]!r}; this endpoint takes {', '.join(sorted(allowed))}")
        for name, values in raw.items():
            if len(values) > 1:
                raise ApiError(400, f"parameter {name!r} given {len(values)} times; give it once")
        self._raw = {name: values[0] for name, values in raw.items()}

    def text(self, name: str, default: str = "") -> str:
        return self._raw.get(name, default)

    def required(self, name: str) -> str:
        value = self._raw.get(name, "")
        if value == "":
            raise ApiError(400, f"parameter {name!r} is required")
        return value

    def integer(self, name: str, default: int | None = None, low: int = 0, high: int | None = None) -> int | None:
        value = self._raw.get(name, "")
        if value == "":
            return default
        try:
            number = int(value)
        except ValueError:
            raise ApiError(400, f"parameter {name!r} must be an integer, not {value!r}") from None
        if number < low or (high is not None and number > high):
            bounds = f"{low}..{high}" if high is not None else f">= {low}"
            raise ApiError(400, f"parameter {name!r} = {number} is out of range ({bounds})")
        return number

    def choice(self, name: str, choices: Iterable[str], default: str) -> str:
        choices = list(choices)
        value = self._raw.get(name, "") or default
        if value not in choices:
            raise ApiError(400, f"parameter {name!r} must be one of {', '.join(choices)}, not {value!r}")
        return value
