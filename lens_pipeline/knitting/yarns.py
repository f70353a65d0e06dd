"""Yarn path: where every strand is as the knitter works, and the joins, carries, catches and breaks.

Stranded work follows one convention, stated in the pattern: a yarn that is needed again soon is
carried to the end of the row (flat) or round, so it waits at the edge where the next row starts.
Flat work turns at the edges: after a RS row the yarns hang at the left edge, after a WS row at
the right, so a yarn left at an edge can be carried up the side to a row that starts there (an
odd number of rows later). A yarn needed an even number of rows later is carried along the back
of the row before. In the round every round starts at the same place, so waiting yarns are
carried up at the start of the round, and a yarn used in consecutive rounds floats on across the
end of the round. A yarn not needed for more than `carry_rows` rows is broken and joined again.

A `Strand` is one float: the (row, stitch) cells a carried yarn passes behind, in working order.
Flat strands end at the row's edges (the yarn turns there); in the round a strand may run across
the end of the round. Catches (traps) are placed so that no stretch between catches, or between a
catch and a knitted stitch, is longer than the float limit L; the stitch at a catch counts in
neither stretch.

Intarsia gets one bobbin per colour area instead (areas: same-colour stitches joined along a row
or to an overlapping run in the next row); every area is joined where it starts and broken
after its last stitch.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from .grid import Grid

Cell = tuple[int, int]  # (row, stitch), both 1-based, stitch 1 = rightmost on the RS
Piece = tuple[int, int, list[Cell], str]  # colour, row, cells, kind: start | end | wrap | inner | whole


def working_order(grid: Grid, n: int) -> list[int]:
    """Chart stitch numbers of row n in the order the knitter works them: WS rows from stitch W."""
    w = grid.width
    return list(range(w, 0, -1)) if grid.mode == "flat" and n % 2 == 0 else list(range(1, w + 1))


@dataclass(frozen=True)
class Strand:
    """A float: `colour` carried behind `passed` cells (working order), caught at `catches`."""

    colour: int
    passed: tuple[Cell, ...]
    catches: tuple[Cell, ...] = ()
    kind: str = "inner"  # inner | wrap (across the end of a round) | start | end | whole (edge carries)

    @property
    def length(self) -> int:
        return len(self.passed)

    def stretches(self) -> list[int]:
        """Lengths of the unsupported stretches left between catches."""
        out, run = [], 0
        caught = set(self.catches)
        for cell in self.passed:
            if cell in caught:
                out.append(run)
                run = 0
            else:
                run += 1
        return out + [run]


def place_catches(passed: tuple[Cell, ...], limit: int) -> tuple[Cell, ...]:
    """The fewest catches that leave no stretch longer than `limit`, spread evenly."""
    f = len(passed)
    if f <= limit:
        return ()
    n = math.ceil((f - limit) / (limit + 1))
    q, extra = divmod(f - n, n + 1)  # n + 1 stretches of q or q + 1 stitches
    out, i = [], 0
    for k in range(n):
        i += q + (1 if k < extra else 0)
        out.append(passed[i])
        i += 1
    return tuple(out)


@dataclass
class RowNotes:
    """What the knitter does in one row besides knitting the colours."""

    join: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))  # working index -> colours joined before it
    catch: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))  # working index -> colours caught at it
    brk: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))  # working index -> colours broken after it
    carry: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))  # working index -> carried to the end after it
    along: list[int] = field(default_factory=list)  # colours carried along this whole row, unused
    after: list[str] = field(default_factory=list)  # sentences after the row line


@dataclass
class YarnPlan:
    """The whole yarn path of a pattern."""

    notes: dict[int, RowNotes]
    strands: list[Strand]
    joins: int
    breaks: int
    carries: list[dict[str, int | str]]  # {"colour", "from_row", "to_row", "how"}
    bind_off_colour: int
    bobbins: dict[int, int]  # intarsia: colour -> number of areas (bobbins)
    final_breaks: list[int] = field(default_factory=list)  # broken at the end of the last row, before the bind-off

    @property
    def ends(self) -> int:
        """Ends to weave in: the cast-on and bind-off tails, one per join and one per break."""
        return 2 + self.joins + self.breaks

    def catches_in_row(self, n: int) -> int:
        return sum(len(v) for v in self.notes[n].catch.values())

    def longest_stretch(self, n: int | None = None, chart_only: bool = False) -> int:
        """Longest unsupported float after the catches, among the strands passing row n (or all);
        chart_only: only floats between a colour's own stitches or across the end of a round."""
        strands = [s for s in self.strands if (n is None or any(r == n for r, _ in s.passed))
                   and (not chart_only or s.kind in ("inner", "wrap"))]
        return max((x for s in strands for x in s.stretches()), default=0)


def _uses(grid: Grid) -> dict[int, list[int]]:
    """Colour -> rows (1-based) it is knitted in."""
    out: dict[int, list[int]] = defaultdict(list)
    for r in range(1, grid.height + 1):
        for c in np.unique(grid.row(r)).tolist():
            out[int(c)].append(r)
    return out


def _positions(grid: Grid, n: int, c: int, order: list[int]) -> list[int]:
    row = grid.row(n)
    return [i for i, st in enumerate(order) if int(row[st - 1]) == c]


CARRY_CM = 2.5  # a yarn may wait this high at the edge; beyond, it is broken and joined again


def carry_rows(grid: Grid) -> int:
    """Rows a yarn may be carried up the side at this gauge (CARRY_CM of rows)."""
    return max(1, math.floor(CARRY_CM * grid.gauge.rows_per_10cm / 10.0 + 1e-9))


def plan_yarns(grid: Grid, limit: int, max_carry: int | None = None) -> YarnPlan:
    """The yarn path of `grid` (see the module docstring); `max_carry` defaults to carry_rows."""
    if grid.technique == "intarsia":
        return _plan_intarsia(grid)
    return _StrandedPlanner(grid, carry_rows(grid) if max_carry is None else max_carry).plan(limit)


class _StrandedPlanner:
    """Walks each colour from use to use and records its pieces of float and the notes."""

    def __init__(self, grid: Grid, max_carry: int) -> None:
        self.grid, self.max_carry = grid, max_carry
        self.h = grid.height
        self.flat = grid.mode == "flat"
        self.unit = "row" if self.flat else "rnd"
        self.orders = {n: working_order(grid, n) for n in range(1, self.h + 1)}
        self.notes = {n: RowNotes() for n in range(1, self.h + 1)}
        self.pieces: list[Piece] = []
        self.joins = self.breaks = 0
        self.carries: list[dict[str, int | str]] = []
        self.final_breaks: list[int] = []  # used in the last row: carried to its end, broken before the bind-off
        self.bo = int(grid.row(self.h)[self.orders[self.h][-1] - 1])  # the yarn of the last stitch binds off

    def pos(self, n: int, c: int) -> list[int]:
        return _positions(self.grid, n, c, self.orders[n])

    def plan(self, limit: int) -> YarnPlan:
        for c, rows in sorted(_uses(self.grid).items()):
            if c != 0:
                self.join(c, rows[0])
            seq = ([0] if c == 0 else []) + rows  # row 0: the cast-on leaves MC where row 1 starts
            for m, nxt in zip(seq, seq[1:] + [None]):
                self.link(c, m, nxt)
            for n in rows:  # floats between the colour's own stitches
                p = self.pos(n, c)
                self.pieces += [(c, n, [(n, st) for st in self.orders[n][a + 1:b]], "inner")
                                for a, b in zip(p, p[1:]) if b - a > 1]
        strands = [Strand(s.colour, s.passed, place_catches(s.passed, limit), s.kind)
                   for s in _merge_wraps(self.pieces) if s.passed]
        for s in strands:
            for n, st in s.catches:
                self.notes[n].catch[self.orders[n].index(st)].append(s.colour)
        return YarnPlan(self.notes, strands, self.joins, self.breaks, self.carries, self.bo, {},
                        sorted(self.final_breaks))

    def join(self, c: int, n: int) -> None:
        self.joins += 1
        self.notes[n].join[self.pos(n, c)[0]].append(c)

    def brk(self, c: int, m: int) -> None:
        self.breaks += 1
        self.notes[m].brk[self.pos(m, c)[-1]].append(c)

    def end_piece(self, c: int, m: int, note: bool) -> None:
        """c is carried from its last stitch in row m to the end of the row (`carry c along`)."""
        last = self.pos(m, c)[-1]
        self.pieces.append((c, m, [(m, st) for st in self.orders[m][last + 1:]], "end"))
        if note and last + 1 < len(self.orders[m]):
            self.notes[m].carry[last].append(c)

    def carry_up_note(self, c: int, m: int, to: int, then: str) -> None:
        """The sentence after row m: c waits at the edge (up the side / at the start of the rnd)."""
        unit, gap = self.unit, to - m - 1
        cm = (to - m) * 10.0 / self.grid.gauge.rows_per_10cm
        where = "up the side" if self.flat else "up at the start of the rnd"
        target = self.notes[m].after if m > 0 else self.notes[1].after
        source = "" if m > 0 else " from the cast-on"
        target.append(f"Carry {self.grid.code(c)} {where}{source} to {unit} {to} ({gap} {unit}s, {cm:.1f} cm){then}.")

    def hang(self, c: int, m: int, nxt: int) -> bool:
        """Flat, next row: leave c hanging after its last stitch if the next row first needs it at
        or after the stitch above; it then floats from there. False: it must go to the edge."""
        st_last = self.orders[m][self.pos(m, c)[-1]]
        at = self.orders[nxt].index(st_last)
        first = self.pos(nxt, c)[0]
        if first < at:
            return False
        self.pieces.append((c, nxt, [(nxt, st) for st in self.orders[nxt][at:first]], "inner"))
        return True

    def link(self, c: int, m: int, nxt: int | None) -> None:
        """From colour c's use in row m to its next use (None: none): carry it or break it."""
        code, unit = self.grid.code(c), self.unit
        if nxt is None:  # after its last row: broken after its last stitch (in the last row: at the end)
            if m != self.h:
                self.brk(c, m)
            elif c != self.bo:
                self.breaks += 1
                self.final_breaks.append(c)
            return
        gap = nxt - m - 1
        if gap > self.max_carry:
            if m == 0:
                self.breaks += 1
                self.notes[1].after.insert(0, f"(MC is next used in {unit} {nxt}: break it after the cast-on.)")
            else:
                self.brk(c, m)
                self.notes[m].after.append(f"Break {code}: it is next used in {unit} {nxt}.")
            self.join(c, nxt)
            return
        if self.flat and gap == 0 and m > 0 and self.hang(c, m, nxt):
            return
        if m > 0:
            self.end_piece(c, m, note=self.flat or gap > 0)
        if self.flat and (nxt - m) % 2 == 0:  # it waits at the wrong edge: carry it along row nxt - 1
            k = nxt - 1
            self.notes[k].along.append(c)
            self.pieces.append((c, k, [(k, st) for st in self.orders[k]], "whole"))
            self.carries.append({"colour": code, "from_row": m, "to_row": nxt, "how": "along"})
            if k > m + 1:
                self.carry_up_note(c, m, k, f", then along the back of {unit} {k} so it waits where {unit} {nxt} starts")
        elif gap > 0:
            self.carries.append({"colour": code, "from_row": m, "to_row": nxt, "how": "up"})
            self.carry_up_note(c, m, nxt, "")
        first = self.pos(nxt, c)[0]
        kind = "start" if (self.flat or gap > 0) else "wrap"
        self.pieces.append((c, nxt, [(nxt, st) for st in self.orders[nxt][:first]], kind))


def _merge_wraps(pieces: list[Piece]) -> list[Strand]:
    """In the round, a colour used in consecutive rounds floats on across the end of the round:
    the end piece of round m and the "wrap" start piece of round m + 1 are one strand."""
    ends = {(c, row): cells for c, row, cells, kind in pieces if kind == "end"}
    merged = {(c, row - 1) for c, row, _, kind in pieces if kind == "wrap"}
    out = []
    for c, row, cells, kind in pieces:
        if kind == "wrap":
            cells = ends.get((c, row - 1), []) + cells
        elif kind == "end" and (c, row) in merged:
            continue
        out.append(Strand(c, tuple(cells), kind=kind))
    return out


def _runs(grid: Grid, n: int) -> list[tuple[int, int, int]]:
    """(colour, first index, last index) of each run of row n, in working order."""
    row = grid.row(n)
    out: list[tuple[int, int, int]] = []
    for i, st in enumerate(working_order(grid, n)):
        c = int(row[st - 1])
        out[-1:] = [(c, out[-1][1], i)] if out and out[-1][0] == c else out[-1:] + [(c, i, i)]
    return out


def _plan_intarsia(grid: Grid) -> YarnPlan:
    """One bobbin per colour area, followed row by row: a run of a colour takes over the bobbin of
    an overlapping run of that colour in the row below (each bobbin once); any other run gets a new
    bobbin, joined at its first stitch; a bobbin no run takes over is broken after its last stitch."""
    notes = {n: RowNotes() for n in range(1, grid.height + 1)}
    counts: dict[int, int] = defaultdict(int)
    counts[0] = 1  # the cast-on yarn
    prev: list[tuple[int, set[int], int, int]] = [(0, {1}, 0, 0)]  # (colour, stitches, bobbin, last index)
    joins = breaks = 0
    if int(grid.row(1)[0]) != 0:  # row 1 starts in a contrast: MC is broken after the cast-on
        prev, breaks = [], 1
        notes[1].after.insert(0, "(Break MC after the cast-on: row 1 starts with another colour.)")
    for n in range(1, grid.height + 1):
        order = working_order(grid, n)
        cur: list[tuple[int, set[int], int, int]] = []
        for c, i0, i1 in _runs(grid, n):
            sts = set(order[i0:i1 + 1])
            taken = {b for _, _, b, _ in cur}
            b = next((pb for pc, psts, pb, _ in prev if pc == c and pb not in taken and psts & sts), None)
            if b is None:
                b = joins + 1
                joins += 1
                counts[c] += 1
                notes[n].join[i0].append(c)
            cur.append((c, sts, b, i1))
        kept = {b for _, _, b, _ in cur}
        for pc, _, pb, last in prev:
            if pb not in kept and n > 1:
                notes[n - 1].brk[last].append(pc)
                breaks += 1
        prev = cur
    bo = prev[-1]  # the bobbin of the last stitch binds off
    final = sorted(c for c, _, b, _ in prev if b != bo[2])
    return YarnPlan(notes, [], joins, breaks + len(final), [], bo[0], dict(sorted(counts.items())), final)
