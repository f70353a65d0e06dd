"""Reading prompts: JSONL (one object with a "text" field per line) or plain text (a prompt a line).

Bad lines never stop the read silently: each becomes a `PromptError` naming the file and line,
and the caller decides whether to go on with the rest or stop.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Prompt:
    text: str
    source: str  # "file:line", for messages
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PromptError:
    source: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.message}"


class PromptFileError(Exception):
    """The prompt file as a whole cannot be used (missing, unreadable, no prompts)."""


def _is_jsonl(path: Path, first_line: str) -> bool:
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return True
    if path.suffix.lower() == ".txt":
        return False
    return first_line.lstrip().startswith("{")


def read_prompts(path: str | os.PathLike[str]) -> tuple[list[Prompt], list[PromptError]]:
    """All good prompts and one error per bad line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise PromptFileError(f"{path}: no such prompt file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise PromptFileError(f"{path}: cannot read prompts ({error})") from None
    first = next((line for line in lines if line.strip()), "")
    jsonl = _is_jsonl(path, first)
    prompts: list[Prompt] = []
    errors: list[PromptError] = []
    for number, line in enumerate(lines, start=1):
        source = f"{path}:{number}"
        if not line.strip():
            if jsonl:  # a blank line in JSONL is harmless but worth a word
                errors.append(PromptError(source, "empty line"))
            continue
        if not jsonl:
            prompts.append(Prompt(line.strip(), source))
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            errors.append(PromptError(source, f"not valid JSON ({error.msg} at column {error.colno})"))
            continue
        if not isinstance(record, dict):
            errors.append(PromptError(source, 'expected a JSON object like {"text": "..."}'))
            continue
        text = record.get("text")
        if not isinstance(text, str):
            errors.append(PromptError(source, 'no "text" string field'))
            continue
        if not text.strip():
            errors.append(PromptError(source, '"text" is empty'))
            continue
        metadata = {key: value for key, value in record.items() if key != "text"}
        prompts.append(Prompt(text, source, metadata))
    if not prompts:
        detail = f"; first problem: {errors[0]}" if errors else ""
        raise PromptFileError(f"{path}: no usable prompts{detail}")
    return prompts, errors
