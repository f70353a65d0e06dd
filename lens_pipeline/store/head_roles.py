"""Reading a model's head roles (`caches/<model>/head_roles.json`, written once per model by
lens_pipeline/capture/head_roles.py) and labelling heads with them: `L18H6 · induction 0.83`.

The JSON's `scores` hold one [layers][heads] table per role in ROLES, each an attention share in
[0, 1] (`null` where a role is not measured: induction on an encoder). A head's label names its
strongest role when that score is at least the role's threshold (LABEL_THRESHOLDS), else the head
alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HEAD_ROLES_JSON = "head_roles.json"
# The roles in drawing order, with the words a label and a figure use for each.
ROLES: dict[str, str] = {
    "previous_token": "previous token",
    "duplicate_token": "duplicate token",
    "induction": "induction",
    "first_token": "first token",
}
# A role names a head only from this share of its attention on. The first token gets a higher bar:
# most heads of a trained model park much of their attention there (a sink), so at 0.4 it would
# name nearly every late head and say nothing.
LABEL_THRESHOLDS: dict[str, float] = {"previous_token": 0.4, "duplicate_token": 0.4, "induction": 0.4,
                                      "first_token": 0.9}

_READ: dict[str, tuple[tuple[int, int], dict[str, Any]]] = {}  # path -> ((mtime_ns, size), content)


def read_at(json_path: str | Path) -> dict[str, Any] | None:
    """The head roles in one file, or None when there is none (or it is not readable JSON); memoised
    per file version, so a figure drawn per head reads the file once."""
    path = Path(json_path)
    try:
        stat = path.stat()
    except OSError:
        return None
    version = (stat.st_mtime_ns, stat.st_size)
    memo = _READ.get(str(path))
    if memo is None or memo[0] != version:
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(content, dict) or not isinstance(content.get("scores"), dict):
            return None
        memo = (version, content)
        _READ[str(path)] = memo
    return memo[1]


def roles_beside(cache_path: str | Path) -> dict[str, Any] | None:
    """The head roles in a cache file's model folder (caches/<model>/), or None."""
    return read_at(Path(cache_path).parent / HEAD_ROLES_JSON)


def read_head_roles(save_path: str | Path, model_name: str) -> dict[str, Any] | None:
    """The head roles of `model_name` (its display name, as cache rows carry it) under a save path,
    or None when that model has none."""
    for path in sorted((Path(save_path) / "caches").glob(f"*/{HEAD_ROLES_JSON}")):
        roles = read_at(path)
        if roles is not None and roles.get("model") == model_name:
            return roles
    return None


def score(roles: dict[str, Any] | None, role: str, layer: int, head: int) -> float | None:
    """One head's score for one role, or None when it is not measured."""
    table = ((roles or {}).get("scores") or {}).get(role)
    try:
        value = table[layer][head]  # type: ignore[index]
    except (TypeError, IndexError, KeyError):
        return None
    return None if value is None else float(value)


def role_of(roles: dict[str, Any] | None, layer: int, head: int) -> tuple[str, float] | None:
    """(role, score) of a head's strongest role among those at or over their threshold, or None."""
    best: tuple[str, float] | None = None
    for role in ROLES:
        value = score(roles, role, layer, head)
        if value is not None and value >= LABEL_THRESHOLDS[role] and (best is None or value > best[1]):
            best = (role, value)
    return best


def role_text(roles: dict[str, Any] | None, layer: int, head: int) -> str:
    """`induction 0.83` when the head has a role (role_of), else ""."""
    found = role_of(roles, layer, head)
    return "" if found is None else f"{ROLES[found[0]]} {found[1]:.2f}"


def head_label(roles: dict[str, Any] | None, layer: int, head: int) -> str:
    """`L18H6 · induction 0.83` when the head has a role (role_of), else `L18H6`."""
    text = role_text(roles, layer, head)
    return f"L{layer}H{head} · {text}" if text else f"L{layer}H{head}"
