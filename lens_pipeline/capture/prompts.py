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


# Optional JSONL fields naming what to explain (lens_pipeline/capture/explain.py): a "target" token string,
# a "contrast" pair [A, B] (logit of A minus logit of B), or "target_positions": "all" (every actual
# next token) instead of the default "last" (the top-1 prediction after the last token).
TARGET_FIELDS = ("target", "contrast", "target_positions")
TARGET_POSITIONS = ("last", "all")
# A prompt's corrupted twin for patching (lens_pipeline/capture/causal, docs/causal.md): a text of the same
# token length, or Gaussian noise on a span of its token embeddings.
CORRUPT_FIELD = "corrupt"


def target_request(metadata: dict[str, Any]) -> dict[str, Any]:
    """The target fields (and corruption) a prompt sets: part of what a cache that explains it was made for."""
    return {key: metadata[key] for key in (*TARGET_FIELDS, CORRUPT_FIELD) if key in metadata}


def corrupt_problem(corrupt: Any) -> str | None:
    """Why a JSONL record's "corrupt" field cannot be used, or None (token lengths are checked with the model)."""
    if corrupt is None or (isinstance(corrupt, str) and corrupt.strip()):
        return None
    example = '"corrupt": "<a text of the same token length>" or {"noise": [1, 4], "scale": 3.0, "seed": 0}'
    if not isinstance(corrupt, dict):
        return f'"corrupt" must be a non-empty text or a noise spec: {example}'
    unknown = sorted(set(corrupt) - {"noise", "scale", "seed"})
    span = corrupt.get("noise")
    if unknown:
        return f'"corrupt" has unknown field(s) {unknown}: {example}'
    if not (isinstance(span, list) and len(span) == 2 and all(isinstance(i, int) and not isinstance(i, bool) for i in span)
            and 0 <= span[0] < span[1]):
        return f'"corrupt" noise span must be [start, end] token positions with 0 <= start < end: {example}'
    scale, seed = corrupt.get("scale", 3.0), corrupt.get("seed", 0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0:
        return f'"corrupt" scale must be a positive number (the noise std in embedding stds), not {scale!r}'
    if isinstance(seed, bool) or not isinstance(seed, int):
        return f'"corrupt" seed must be an integer, not {seed!r}'
    return None


def target_problem(record: dict[str, Any]) -> str | None:
    """Why a JSONL record's target fields cannot be used, or None."""
    target, contrast = record.get("target"), record.get("contrast")
    positions = record.get("target_positions", "last")
    if target is not None and (not isinstance(target, str) or not target):
        return '"target" must be a non-empty token string, e.g. " Paris"'
    if contrast is not None and not (isinstance(contrast, list) and len(contrast) == 2
                                     and all(isinstance(t, str) and t for t in contrast)):
        return '"contrast" must be a pair of token strings, e.g. [" Paris", " London"]'
    if target is not None and contrast is not None:
        return 'give "target" or "contrast", not both'
    if positions not in TARGET_POSITIONS:
        return f'"target_positions" must be one of {list(TARGET_POSITIONS)}, not {positions!r}'
    if positions == "all" and (target is not None or contrast is not None):
        return '"target_positions": "all" explains every actual next token; it takes no "target" or "contrast"'
    if positions == "all" and record.get(CORRUPT_FIELD) is not None:
        return '"corrupt" patches one prediction (after the last token); it cannot go with "target_positions": "all"'
    return corrupt_problem(record.get(CORRUPT_FIELD))


def _is_jsonl(path: Path, first_line: str) -> bool:
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return True
    if path.suffix.lower() == ".txt":
        return False
    return first_line.lstrip().startswith("{")


def _record_problem(record: dict[str, Any]) -> str | None:
    """Why a JSONL object is not a usable prompt, or None."""
    text = record.get("text")
    if not isinstance(text, str):
        return 'no "text" string field'
    if not text.strip():
        return '"text" is empty'
    return target_problem(record)


def _decoded_lines(path: Path, data: bytes) -> tuple[list[str | None], list[PromptError]]:
    """The file's lines (split at newlines only: a JSON string may hold U+2028), each decoded on its
    own, so one line that is not UTF-8 is a bad line (None here) and not a bad file."""
    lines: list[str | None] = []
    errors: list[PromptError] = []
    raw_lines = data.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    for number, raw in enumerate(raw_lines, start=1):
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a byte-order mark some editors write
            raw = raw[3:]
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as error:
            lines.append(None)
            errors.append(PromptError(f"{path}:{number}", f"not valid UTF-8 (byte 0x{raw[error.start]:02x} at "
                                                          f"column {error.start + 1}); save the file as UTF-8"))
    return lines, errors


def read_prompts(path: str | os.PathLike[str]) -> tuple[list[Prompt], list[PromptError]]:
    """All good prompts and one error per bad line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PromptFileError(f"{path}: no such prompt file") from None
    except OSError as error:
        raise PromptFileError(f"{path}: cannot read prompts ({error.strerror or error})") from None
    lines, errors = _decoded_lines(path, data)
    first = next((line for line in lines if line and line.strip()), "")
    jsonl = _is_jsonl(path, first)
    prompts: list[Prompt] = []
    for number, line in enumerate(lines, start=1):
        source = f"{path}:{number}"
        if line is None:  # not UTF-8: reported by _decoded_lines
            continue
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
        problem = _record_problem(record)
        if problem:
            errors.append(PromptError(source, problem))
            continue
        metadata = {key: value for key, value in record.items() if key != "text"}
        prompts.append(Prompt(record["text"], source, metadata))
    errors.sort(key=lambda error: int(error.source.rsplit(":", 1)[1]))  # in file order
    prompts, errors = check_groups(prompts, errors)
    if not prompts:
        detail = f"; first problem: {errors[0]}" if errors else ""
        raise PromptFileError(f"{path}: no usable prompts{detail}")
    return prompts, errors


def check_groups(prompts: list[Prompt], errors: list[PromptError]) -> tuple[list[Prompt], list[PromptError]]:
    """Phrasing comparisons (lens_pipeline/corpus/compare.py): a `pair` must name the `id` of another
    line; a `group` is one name, and its lines may not name different `model`s. Lines that break
    this become bad lines (file:line: reason)."""
    ids = {str(p.metadata["id"]) for p in prompts if "id" in p.metadata}
    models: dict[str, tuple[str, str]] = {}  # group -> (model, the line that named it first)
    good: list[Prompt] = []
    for prompt in prompts:
        meta, problem = prompt.metadata, None
        group, pair = meta.get("group"), meta.get("pair")
        if group is not None and (not isinstance(group, str) or not group):
            problem = '"group" must be a non-empty string naming the prompts to compare'
        elif pair is not None and not (isinstance(pair, str) and pair in ids and pair != str(meta.get("id"))):
            problem = f'"pair" names {pair!r}, which is not the "id" of another prompt in this file'
        elif group is not None and "model" in meta:
            first = models.setdefault(group, (str(meta["model"]), prompt.source))
            if first[0] != str(meta["model"]):
                problem = f'group {group!r} spans models: {first[0]!r} at {first[1]}, {meta["model"]!r} here'
        if problem:
            errors.append(PromptError(prompt.source, problem))
        else:
            good.append(prompt)
    return good, errors
