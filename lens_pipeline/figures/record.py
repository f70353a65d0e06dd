"""What a run did: the summary it returns, and the recorder, the index's only writer in a run."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lens_pipeline.store import index


@dataclass
class FiguresSummary:
    """What a figures run did; `rows` are the rows it wrote, `current` the up-to-date rows it kept."""

    written: int = 0
    skipped: int = 0  # already up to date
    failed: int = 0
    stale: int = 0
    not_applicable: dict[str, int] = field(default_factory=dict)  # reason -> figures it kept from being drawn
    rows: list[dict[str, Any]] = field(default_factory=list, repr=False)
    current: list[dict[str, Any]] = field(default_factory=list, repr=False)
    seconds: float = 0.0

    def not_applicable_lines(self, most: int = 3) -> list[str]:
        """Why planned figures were not drawn (their function raised SkipFigure), the commonest first."""
        ranked = sorted(self.not_applicable.items(), key=lambda item: (-item[1], item[0]))
        lines = [f"{count} not applicable: {reason}" for reason, count in ranked[:most]]
        if len(ranked) > most:
            lines.append(f"... and {sum(count for _, count in ranked[most:])} more for {len(ranked) - most} other "
                         f"reason(s) (rows with status skipped in the index)")
        return lines

    def __repr__(self) -> str:
        errors = [row for row in self.rows if row["status"] == "error"]
        text = (f"FiguresSummary({self.written} written, {self.skipped} already up to date, {self.failed} failed, "
                f"{self.stale} marked stale, {sum(self.not_applicable.values())} not applicable; {self.seconds:.1f} s)")
        text += "".join(f"\n  {line}" for line in self.not_applicable_lines())
        for row in errors[:3]:
            text += f"\n  error: {row['function']} on {row.get('prompt_hash', '')[:8]}: {row['error']}"
        return text + (f"\n  ... and {len(errors) - 3} more errors (see .rows)" if len(errors) > 3 else "")


class Recorder:
    """The index's only writer in a figures run: appends rows, counts them, reports errors in one
    line each (figure, prompt hash and first words, layer/head where they apply)."""

    def __init__(self, save_path: Path, texts: dict[tuple[str, str], str], total: int, progress: bool):
        self.save_path, self.texts = save_path, texts
        self.summary = FiguresSummary()
        self.bar = tqdm(total=total, desc="figures", unit="fig", disable=not progress or total == 0)

    def describe(self, row: dict[str, Any]) -> str:
        where = f"{row['function']} on "
        if row.get("prompt_hash"):
            words = " ".join(self.texts.get((row["model"], row["prompt_hash"]), "").split()[:6])
            where += f"{row['model']} {row['prompt_hash'][:8]} \"{words}…\""
        else:
            where += f"{row['model']} (all prompts)"
        where += f" L{row['layer']}" if row.get("layer") is not None else ""
        where += f" H{row['head']}" if row.get("head") is not None else ""
        return where

    def __call__(self, rows: list[dict[str, Any]]) -> None:
        try:
            index.append_rows(self.save_path, rows)
        except index.IndexWriteError:  # disk full: no file may outlive the row that failed to land
            index.discard_unrecorded(self.save_path, rows)
            raise
        self.summary.rows.extend(rows)
        for row in rows:
            if row["status"] == "error":
                self.summary.failed += 1
                tqdm.write(f"error: {self.describe(row)}: {row['error']}", file=sys.stderr)
            elif row["status"] == "ok":
                self.summary.written += 1
            elif row["status"] == "skipped":
                reason = f"{row['function']}: {row.get('reason', '')}"
                self.summary.not_applicable[reason] = self.summary.not_applicable.get(reason, 0) + 1
        self.bar.update(len(rows))

    def close(self) -> None:
        self.bar.close()
