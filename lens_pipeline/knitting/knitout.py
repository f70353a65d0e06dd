"""knitout (`;!knitout-2`) for industrial V-bed machines: the chart as single-bed stranded jacquard.

Needle f1 is at the left of the front bed seen from the front, which is the fabric's RS, so
stitch s (1 = rightmost on the RS) is needle W - s + 1. Carrier k + 1 holds palette colour k (MC on
carrier 1). The cast-on tucks every other needle with MC leftwards, then the rest rightwards;
row 1 is knitted leftwards (from stitch 1, as a RS row by hand), row 2 rightwards, and so on. In
each row every carrier in work makes one pass in the row's direction, knitting its own needles and
missing the others (the floats lie behind, on the WS); a carrier with nothing to knit in a row
only moves across, so every carrier is on the side where the next row starts. Carriers come in
with `inhook` in a leftward pass (a yarn-inserting hook must start leftwards: a yarn first used in a
rightward row comes in at the end of the row before, moving to the left edge) and go out with
`outhook` at the end; the last row is then dropped off the needles (bind off or latch by hand).
A chart for knitting in the round is knitted as a flat piece (every row is the RS on the front bed).
"""

from __future__ import annotations

from .grid import Grid


def knitout_program(grid: Grid, gauge: int = 15) -> str:
    """The knitout program for a stranded grid (see the module docstring)."""
    w = grid.width
    # no ;;Width: header (optional in knitout; knitout-interpreter 0.1.8 cannot parse it)
    lines = [";!knitout-2", ";;Machine: SWG091N2", f";;Gauge: {gauge}",
             ";;Carriers: " + " ".join(str(i) for i in range(1, 11)), ";;Position: Left",
             f"; {grid.width} sts x {grid.height} rows; stitch s = needle {w} - s + 1; "
             + ", ".join(f"carrier {i + 1} = {c.code} {c.name}" for i, c in enumerate(grid.palette))]
    lines += ["inhook 1"]
    lines += [f"tuck - f{n} 1" for n in range(w, 0, -1) if (w - n) % 2 == 0]
    lines += [f"tuck + f{n} 1" for n in range(1, w + 1) if (w - n) % 2 == 1]
    if w == 1:
        lines.append("miss + f1 1")  # back to the right, where row 1 starts
    lines.append("releasehook 1")
    in_work = {0}
    first_row = {int(c): r for r in range(grid.height, 0, -1) for c in grid.row(r)}
    for r in range(1, grid.height + 1):
        row = grid.row(r)
        leftwards = r % 2 == 1
        sign = "-" if leftwards else "+"
        needles = range(w, 0, -1) if leftwards else range(1, w + 1)
        for c in sorted(in_work | {int(x) for x in row}):
            mine = [n for n in needles if int(row[w - n]) == c]
            new = c not in in_work  # a yarn-inserting hook must start leftwards: only in leftward rows
            lines += [f"inhook {c + 1}"] if new else []
            # nothing to knit: move across so it waits where the next row starts
            lines += [f"knit {sign} f{n} {c + 1}" for n in mine] or [f"miss {sign} f{needles[-1]} {c + 1}"]
            lines += [f"releasehook {c + 1}"] if new else []
            in_work.add(c)
        if leftwards:  # yarns first needed in the next (rightward) row come in now, to the left edge
            for c in sorted(c for c, fr in first_row.items() if fr == r + 1 and c not in in_work):
                lines += [f"inhook {c + 1}", f"miss - f1 {c + 1}", f"releasehook {c + 1}"]
                in_work.add(c)
    lines += [f"outhook {c + 1}" for c in sorted(in_work)]
    lines += [f"drop f{n}" for n in range(1, w + 1)]
    return "\n".join(lines) + "\n"
