"""One figure call: which function, for which layer and head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Task:
    """One figure call: a function, and the layer/head it is for (None where not applicable)."""

    function: str
    layer: int | None = None
    head: int | None = None


Jobs = list[tuple[Task, dict[str, Any]]]
