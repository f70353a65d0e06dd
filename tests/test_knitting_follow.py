"""Issue 17: a knitter can follow pattern.md stitch by stitch, and AYAB knits the chart right side out.

`follow(md)` below is an independent reader written for these tests (it uses nothing from
lens_pipeline.knitting): it parses the cast-on, every row line (expanding `(...) n times`), the
joins, catches, carries and breaks, rebuilds the grid (row 1 first, stitch 1 first) and walks every
yarn as the knitter works: a yarn must be joined before it knits; in flat work it must wait at the
edge where the row starts (a yarn with `carry X along` goes to the end of the row; any other hangs
after its last stitch and the next row must reach it before it is needed); floats are measured
between a yarn's stitches, catches and the edges; and the ends are counted.

`ayab_knit(png)` replays AYAB desktop's load path (ayab-desktop src/main/python/main/ayab/:
image.py converts to RGBA, engine/engine.py flips top to bottom, engine/pattern.py mirrors only when
"Knit Side Image" is ticked, quantises to 2 colours and reverses the palette for single bed,
engine/control.py selects the needles of colour 0), and turns the needle bed into the right side.
"""

from __future__ import annotations

import io
import itertools
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import numpy as np
import pytest
from PIL import Image

from lens_pipeline.knitting import Grid, ayab_image, check_grid, palette_for, pattern_files
from lens_pipeline.knitting.checks import row_floats
from lens_pipeline.knitting.instructions import trap_stitches
from test_knitting import EXAMPLE, grid_of, make_cache

SVG = "{http://www.w3.org/2000/svg}"

# ------------------------------------------------------------------ the independent reader

ROW = re.compile(r"^(?:Row (\d+) \((RS|WS)\)|Rnd (\d+)): (.*?)\. \((\d+) sts\)(.*)$")
ALONG = re.compile(r"^Carry (\w+) along the back of this (?:row|rnd), catching it where marked; ")


def split_items(body: str) -> list[str]:
    """Top-level comma split, then `(a, b) n times` expanded."""
    parts, depth, cur = [], 0, ""
    for ch in body:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    out: list[str] = []
    for p in parts:
        m = re.fullmatch(r"\((.*)\) (\d+) times", p)
        out += split_items(m.group(1)) * int(m.group(2)) if m else [p]
    return out


@dataclass
class Reading:
    rows: list[list[str]] = field(default_factory=list)  # row 1 first, stitch 1 first
    errors: list[str] = field(default_factory=list)
    floats: list[tuple[int, str, int]] = field(default_factory=list)  # (row, colour, stretch) for every stretch
    catches: list[tuple[int, int, str]] = field(default_factory=list)  # (row, stitch, colour caught)
    ends: int = 0
    stated_ends: int | None = None
    joins: int = 0


def follow(md: str) -> Reading:  # noqa: C901 - one walk through the pattern, kept in one place
    lines = [ln[2:] if ln.startswith("- ") else ln for ln in md.splitlines()]
    rd = Reading()
    co = next(ln for ln in lines if ln.startswith("CO "))
    width, mc = re.match(r"CO (\d+) sts with (\w+)\.", co).groups()
    width = int(width)
    rd.ends = 1  # cast-on tail
    rows = [ROW.match(ln) for ln in lines]
    rows = [m for m in rows if m]
    flat = rows[0].group(1) is not None
    # yarn state: edge "R"/"L" (flat) or "S" (round start) where it waits; absent = not joined/broken
    where: dict[str, str] = {mc: "R" if flat else "S"}
    run: dict[str, int] = {}  # yarn -> stitches passed since its last stitch/catch/edge, this row
    if any("break it after the cast-on" in ln for ln in lines):
        del where[mc]
        rd.ends += 1
    continuing: set[str] = set()  # round: yarns floating on across the end of the rnd
    parsed = []
    for m in rows:
        n = int(m.group(1) or m.group(3))
        body, tail = m.group(4), m.group(6)
        along = []
        while a := ALONG.match(body):
            along.append(a.group(1))
            body = body[a.end():]
        parsed.append((n, m.group(2), body, int(m.group(5)), along, tail))
    used_in = [{it.split()[1] for it in split_items(b) if re.match(r"[kp]\d+ ", it)} for _, _, b, _, _, _ in parsed]
    for idx, (n, side, body, count, along, tail) in enumerate(parsed):
        if count != width:
            rd.errors.append(f"row {n}: says {count} sts, cast on {width}")
        start = ("R" if side == "RS" else "L") if flat else "S"
        end = ("L" if side == "RS" else "R") if flat else "S"
        order = list(range(1, width + 1)) if side != "WS" else list(range(width, 0, -1))
        cells: dict[int, str] = {}
        i = 0
        active: set[str] = set()  # yarns travelling along this row
        items = split_items(body)
        joined_here = {it.split()[1] for it in items if it.startswith("join ")}
        pending: dict[int, str] = {}  # working index -> yarn hanging there from the row below
        for y in sorted(used_in[idx] - joined_here):  # waiting yarns travel from the start of the row
            if y not in where:
                rd.errors.append(f"row {n}: {y} knits but was never joined (or was broken)")
            elif where[y].startswith("st"):
                pending[order.index(int(where[y][2:]))] = y
                continue
            elif where[y] != start:
                rd.errors.append(f"row {n}: {y} is needed at the {start} edge but hangs at {where[y]}")
            active.add(y)
            if y not in continuing:
                run[y] = 0
        carried: set[str] = set(along)  # yarns going on to the end of this row
        last_st: dict[str, int] = {}
        for y in along:
            if where.get(y) != start:
                rd.errors.append(f"row {n}: {y} carried along but it is not at the start edge")
            active.add(y)
            run[y] = 0
        for item in items:
            if m := re.fullmatch(r"join (\w+)", item):
                y = m.group(1)
                if y in where:
                    rd.errors.append(f"row {n}: join {y} but {y} is already in work")
                where[y] = "mid"
                active.add(y)
                run[y] = 0
                rd.joins += 1
                rd.ends += 1
                continue
            if m := re.fullmatch(r"carry (\w+) along", item):
                carried.add(m.group(1))
                if m.group(1) not in active:
                    rd.errors.append(f"row {n}: carry {m.group(1)} along, not in work here")
                continue
            if m := re.fullmatch(r"break (\w+)", item):
                y = m.group(1)
                if y not in where:
                    rd.errors.append(f"row {n}: break {y}, not in work")
                where.pop(y, None)
                active.discard(y)
                run.pop(y, None)
                rd.ends += 1
                continue
            m = re.fullmatch(r"([kp])(\d+) (\w+)(?: catching (.+))?", item)
            if not m:
                rd.errors.append(f"row {n}: cannot read {item!r}")
                continue
            verb, k, y, caught = m.group(1), int(m.group(2)), m.group(3), m.group(4)
            if verb != ("p" if side == "WS" else "k"):
                rd.errors.append(f"row {n}: {verb} on a {side or 'rnd'} row")
            for _ in range(k):
                if i in pending:  # the yarn left hanging here by the row below starts to travel
                    active.add(pending[i])
                    run[pending.pop(i)] = 0
                if y not in active:
                    rd.errors.append(f"row {n}: {y} knits before it is reached (or it is not in work)")
                    active.add(y)
                    run.setdefault(y, 0)
                st = order[i]
                cells[st] = y
                last_st[y] = st
                i += 1
                if y in run and run[y]:
                    rd.floats.append((n, y, run[y]))
                run[y] = 0
                for other in active - {y}:
                    run[other] = run.get(other, 0) + 1
                if caught:
                    for c in caught.split(" and "):
                        if c not in active:
                            rd.errors.append(f"row {n}: catches {c}, which is not travelling along this row")
                            continue
                        run[c] -= 1  # the catch stitch counts in no stretch
                        rd.floats.append((n, c, run[c]))
                        run[c] = 0
                        rd.catches.append((n, st, c))
        if i != width:
            rd.errors.append(f"row {n}: {i} sts worked, {width} expected")
        rd.rows.append([cells.get(s, "?") for s in range(1, width + 1)])
        nxt = used_in[idx + 1] if idx + 1 < len(parsed) else None
        continuing = set()
        for y in pending.values():
            rd.errors.append(f"row {n}: {y} hangs in the row below but this row never reaches it")
        for y in list(active):
            # "carry y along": to the end edge (flat, the yarn turns there) or the end of the rnd;
            # round: a yarn used in the next rnd floats on; any other yarn hangs after its last st
            if not flat and nxt is not None and y in nxt and y not in carried:
                continuing.add(y)
                where[y] = end
            elif y in carried or y not in last_st or last_st[y] == order[-1]:
                if run.get(y):
                    rd.floats.append((n, y, run[y]))
                run[y] = 0
                where[y] = end
            else:
                where[y] = f"st{last_st[y]}"
                run[y] = 0
    final = next(ln for ln in lines if re.match(r"(Break .*\. )?BO with", ln))
    m = re.match(r"(?:Break (.*?)\. )?BO with (\w+)\.", final)
    for y in re.split(r", | and ", m.group(1)) if m.group(1) else []:
        if y not in where:
            rd.errors.append(f"final break of {y}, not in work")
        rd.ends += 1
    bo = m.group(2)
    last_end = ("L" if parsed[-1][1] == "RS" else "R") if flat else "S"
    last_order = range(width, 0, -1) if parsed[-1][1] == "WS" else range(1, width + 1)
    if where.get(bo) not in (last_end, f"st{list(last_order)[-1]}"):
        rd.errors.append(f"BO with {bo}, which is not at the edge where the bind-off starts")
    rd.ends += 1  # bind-off tail
    w = next((ln for ln in lines if ln.startswith("Weave in the ")), None)
    rd.stated_ends = int(re.match(r"Weave in the (\d+) ends", w).group(1)) if w else None
    return rd


def reading_matches(out: dict, limit: int | None = None) -> Reading:
    """Follow out["pattern.md"] and check it against grid.json, the chart and its own ends line."""
    rd = follow(out["pattern.md"])
    assert rd.errors == [], rd.errors[:5]
    # the written rows rebuild the grid exactly (the knitted layer, under any duplicate stitch)
    assert rd.rows == out["grid.json"].get("knitted_cells", out["grid.json"]["cells"])
    svg = {(int(e.get("data-row")), int(e.get("data-stitch"))): e.get("data-colour")
           for e in ET.fromstring(out["chart.svg"]).iter(f"{SVG}rect") if e.get("class") == "cell"}
    finished = out["grid.json"]["cells"]  # the chart shows the finished picture
    assert all(svg[(r + 1, s + 1)] == c for r, row in enumerate(finished) for s, c in enumerate(row))
    dup = {(d["row"], d["stitch"]): (d["colour"], d["knitted"]) for d in out["grid.json"].get("duplicate_stitch", [])}
    assert all(finished[r][s] == (dup[(r + 1, s + 1)][0] if (r + 1, s + 1) in dup else c)
               for r, row in enumerate(rd.rows) for s, c in enumerate(row))  # knitted + duplicate = picture
    assert all(rd.rows[r - 1][s - 1] == k for (r, s), (_, k) in dup.items())
    marked_dup = {(int(e.get("data-row")), int(e.get("data-stitch")))
                  for e in ET.fromstring(out["chart.svg"]).iter(f"{SVG}rect") if e.get("class") == "duplicate"}
    assert marked_dup == set(dup)
    for (r, s), (colour, _) in dup.items():  # the pattern's duplicate stitch section names every one
        line = next(ln for ln in out["pattern.md"].splitlines() if ln.startswith(f"- In row {r}: {colour} over"))
        assert str(s) in re.findall(r"\d+", line.split(" over ")[1].split("(")[0])
    assert rd.ends == rd.stated_ends  # the ends the pattern announces are the ones the knitter leaves
    limit = out["meta.json"]["checks"]["float_limit"] if limit is None else limit
    assert max((x for *_, x in rd.floats), default=0) <= limit
    marked = {(int(e.get("data-row")), int(e.get("data-stitch")), e.get("data-colour"))
              for e in ET.fromstring(out["chart.svg"]).iter(f"{SVG}polygon") if e.get("class") == "catch"}
    assert marked == set(rd.catches)  # every catch the rows ask for is marked on the chart, and no other
    return rd


# ------------------------------------------------------------------ AYAB's load path, replayed


def ayab_knit(png: bytes, knit_side_image: bool = False) -> tuple[np.ndarray, tuple[int, ...]]:
    """What a single-bed machine knits from this PNG with AYAB: [row knitted first, stitch from the
    left of the RS] True where a selected needle knits feeder B's yarn; and the RGB AYAB selects."""
    img = Image.open(io.BytesIO(png)).convert("RGBA")  # image.py
    img = img.transpose(Image.FLIP_TOP_BOTTOM)  # engine.py: knit the bottom first
    if knit_side_image:  # pattern.py: only with the box ticked (off by default)
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    q = img.quantize(2).remap_palette([1, 0])  # pattern.py, single bed: dest_map reversed
    selected = np.array(q) == 0  # control.py: pattern_expanded[2 * row + 0]
    # needle 0 is on the knitter's left; the knitter faces the purl side, so the RS runs the other way
    return selected[:, ::-1], tuple(q.getpalette()[:3])


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def machine_rs(grid: Grid, info: dict, png: bytes, knit_side_image: bool = False) -> list[list[str]]:
    knitted, rgb = ayab_knit(png, knit_side_image)
    hexes = {c.code: c.rgb() for c in grid.palette}
    assert hexes[info["feeders"]["B"]] == rgb  # the pattern names the colour AYAB really selects
    return [[info["feeders"]["B"] if k else info["feeders"]["A"] for k in row] for row in knitted]


def chart_rs(grid: Grid, merged: str | None = None) -> list[list[str]]:
    """The chart's RS, row 1 first, left to right; contrasts merged into one code if asked."""
    return [[grid.code(int(i)) if merged is None or int(i) == 0 else merged for i in row]
            for row in grid.chart_view()[::-1]]


@pytest.mark.parametrize("seed", range(6))
def test_ayab_default_settings_knit_the_chart_right_side(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(2, 12)), int(rng.integers(3, 40))
    g = grid_of(rng.integers(0, 2, (h, w)).tolist(), 2) if seed else Grid.from_chart(EXAMPLE)
    img, info = ayab_image(g)
    png = png_bytes(img)
    assert machine_rs(g, info, png) == chart_rs(g)  # AYAB's defaults: the chart's RS exactly
    if chart_rs(g) != [r[::-1] for r in chart_rs(g)]:  # with the box ticked it would come out mirrored
        assert machine_rs(g, info, png, knit_side_image=True) != chart_rs(g)


def test_ayab_merged_contrasts_feeders_and_machine_section() -> None:
    cache = make_cache(t=10)
    from lens_pipeline.draw.builtins.knitting import knitting_pattern

    for kw in ({}, {"colours": 4, "stranded_fix": "flag"}, {"width": 120, "height": 30}, {"mode": "round"}):
        out = knitting_pattern(cache, **kw)
        meta = out["meta.json"]
        codes = [p["code"] for p in meta["palette"]]
        knitted = out["grid.json"].get("knitted_cells", out["grid.json"]["cells"])  # duplicate stitch is by hand
        grid = Grid(np.array([[codes.index(x) for x in row] for row in knitted]), palette_for("llama", len(codes)))
        info = meta["ayab"]
        merged = info["palette"][1] if info["reduction"] else None
        assert machine_rs(grid, info, png_bytes(out["ayab.png"])) == chart_rs(grid, merged)
        md = out["pattern.md"]
        section = md.split("## Machine knitting (AYAB)")[1].split("## ")[0]
        assert '"Knit Side Image" unticked' in section and "Start row: 1" in section
        assert f"Feeder A (needles AYAB leaves unselected): {info['feeders']['A']}" in section
        assert f"Feeder B (needles AYAB selects): {info['feeders']['B']}" in section
        # the floats the machine section states are the gaps of the merged 2-colour image
        two = (np.array(out["ayab.png"]) != np.array(out["ayab.png"])[0, 0]).astype(int)
        gaps = [f.length for r in two for f in row_floats(r.tolist())]
        assert f"the longest float in the 2-colour image is {max(gaps, default=0)} sts" in section
        if merged:
            assert "merged" in section


# ------------------------------------------------------------------ following the pattern


OPTION_SETS = list(itertools.product(
    ["attention_layer_mean", "attention_head", "top1_prob", "resid_norms"], ["flat", "round"],
    [(20, 20), (33, 15)], [2, 3, 5], [5, 3], ["default", "other"]))


def picture_options(source: str, picture: str) -> dict:
    """The defaults, or the other picture: attention's earlier fill blocks and multiples of uniform,
    square blocks for the other sources."""
    if picture == "default":
        return {}
    return {"blocks": "fill", "thresholds": "uniform"} if source.startswith("attention") else {"blocks": "square"}


def test_pattern_rows_rebuild_grid_and_chart_over_many_option_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    import lens_pipeline.knitting.bundle as bundle
    from lens_pipeline.draw.builtins.knitting import knitting_pattern

    # the PDF is not read here (test_knitting checks it) and is most of the drawing time
    monkeypatch.setattr(bundle, "chart_pdf", lambda grid, **kw: b"%PDF-")
    caches = [make_cache(t=10), make_cache(t=13, seed=4)]
    levels = set()
    for i, (source, mode, (w, h), colours, max_float, picture) in enumerate(OPTION_SETS):
        out = knitting_pattern(caches[(i // 2) % 2], source=source, mode=mode, width=w, height=h, colours=colours,
                               max_float=max_float, **picture_options(source, picture))
        rd = reading_matches(out)
        yp = out["meta.json"]["checks"]["yarn_path"]
        assert rd.joins == yp["joins"] and rd.ends == yp["ends_to_weave_in"]
        levels.add(out["meta.json"]["summary"]["difficulty"])
    assert len(OPTION_SETS) == 192 and {"Intermediate", "Experienced"} <= levels  # the levels now say something


def test_worked_example_followed_flat_and_round() -> None:
    flat = pattern_files(Grid.from_chart(EXAMPLE))
    rd = reading_matches(flat)
    lines = [ln[2:] for ln in flat["pattern.md"].splitlines() if ln.startswith(("- Row", "- CO 6", "- BO with", "- Break"))]
    assert lines == [
        "CO 6 sts with MC.",
        "Row 1 (RS): join CC1, k2 CC1, carry CC1 along, k4 MC. (6 sts)",
        "Row 2 (WS): p2 CC1, carry CC1 along, p4 MC. (6 sts)",
        "Row 3 (RS): k3 MC, k2 CC1, k1 MC. (6 sts)",
        "Row 4 (WS): p2 MC, p3 CC1, p1 MC. (6 sts)",
        "Break CC1. BO with MC.",
    ]
    assert rd.ends == 4  # cast-on tail, CC1 joined, CC1 broken, bind-off tail
    rnd = pattern_files(Grid.from_chart(EXAMPLE, mode="round"))
    reading_matches(rnd)
    assert "- Rnd 2: k1 MC catching CC1, k3 MC, k2 CC1. (6 sts)" in rnd["pattern.md"]


def test_yarn_management_joins_carries_breaks_and_ends() -> None:
    rows = ([[0] * 8, [0, 0, 0, 0, 0, 0, 1, 1], [0] * 8, [0] * 8, [0, 0, 0, 0, 0, 0, 1, 1], [1, 1, 0, 0, 0, 0, 0, 0],
             [0, 2, 0, 0, 0, 0, 0, 0]] + [[0] * 8] * 7 + [[0, 2, 0, 0, 0, 0, 0, 0]] + [[0] * 8] * 8
            + [[0, 2, 0, 0, 0, 0, 0, 0], [0] * 8])
    out = pattern_files(grid_of(rows, 3))
    rd = reading_matches(out)
    md = out["pattern.md"]
    # CC1: joined where first used, carried up the side 2 rows (its length said), broken after its last st
    assert "- Row 2 (WS): join CC1, p2 CC1, carry CC1 along," in md
    assert "Carry CC1 up the side to row 5 (2 rows, 1.0 cm)." in md
    assert "p2 CC1, break CC1. (8 sts)" in md
    # CC2 in row 7, back in row 15 (7 rows later, at the other edge): up the side, then along row 14
    assert "Carry CC2 up the side to row 14 (6 rows, 2.3 cm), then along the back of row 14" in md
    assert "- Row 14 (WS): Carry CC2 along the back of this row, catching it where marked;" in md
    # and back in row 24, 8 rows on (more than 2.5 cm of rows at 30 rows / 10 cm): broken and joined again
    assert "Break CC2: it is next used in row 24." in md
    assert "- Row 24 (WS): p6 MC, join CC2, p1 CC2, p1 MC." in md or "join CC2" in md.split("- Row 24")[1].split("\n")[0]
    assert rd.joins == 3 and rd.ends == 2 + 3 + 3
    assert "Weave in the 8 ends" in md


def test_round_floats_across_the_end_of_the_round() -> None:
    g = Grid.from_chart(EXAMPLE, mode="round")
    out = pattern_files(g)
    rd = reading_matches(out)
    # CC1: sts 3-6 after its last st in rnd 1, then sts 1-4 of rnd 2 before its first: one float of 8
    longest = max(out["meta.json"]["checks"]["yarn_path"]["longest_float_as_knitted"], 0)
    assert longest == 8 and (2, 1, "CC1") in rd.catches
    # a colour not used in the next rnd does not float across the round end
    g2 = grid_of([[1, 0, 0, 0, 0, 0], [0] * 6, [1, 0, 0, 0, 0, 0], [0] * 6], 2, mode="round")
    out2 = pattern_files(g2)
    reading_matches(out2)
    strands = out2["meta.json"]["checks"]["yarn_path"]
    assert strands["longest_float_as_knitted"] == 5  # carried to the end of rnd 1 only, then up
    assert "Carry CC1 up at the start of the rnd to rnd 3 (1 rnds, 0.7 cm)." in out2["pattern.md"]


def test_catches_leave_no_stretch_over_the_limit_and_are_inline() -> None:
    # a 17-st float with L = 5: evenly spread catches leave 5, 5 and 5 (the old rule left 6)
    g = grid_of([[1] + [0] * 17 + [1], [0] * 19, [1] + [0] * 17 + [1]], 2)
    f = next(f for f in row_floats(g.row(1).tolist(), False, 1) if f.length == 17)
    traps = trap_stitches(f, 5)
    stretches = np.diff([1] + traps + [19]) - 1
    assert max(stretches) <= 5
    out = pattern_files(g)
    rd = reading_matches(out, limit=5)
    md = out["pattern.md"]
    # inline, in working order, on the WS too (no stitch numbers to translate)
    row2 = next(ln for ln in md.splitlines() if ln.startswith("- Row 2 (WS)"))
    assert "catching CC1" in row2 and "Trap" not in md
    assert len(rd.catches) == len(out["meta.json"]["checks"]["yarn_path"]["catches_per_row"]) or rd.catches


def test_skill_level_is_rated_after_the_catches() -> None:
    # CC1 dots 10 sts apart: floats of 9 before catching; catching every 3 sts leaves 3: Intermediate
    dots = [[1 if s % 10 == r % 10 else 0 for s in range(30)] for r in range(10)]
    g = grid_of(dots, 2)
    c3 = check_grid(g, max_float=3)
    assert c3["longest_float"] == 9 and c3["difficulty"] == "Intermediate"
    assert c3["yarn_path"]["longest_chart_float_after_catches"] <= 3
    c5 = check_grid(g, max_float=5)  # one catch a float leaves at most 5: still simple colour work
    assert c5["difficulty"] == "Intermediate" and "after the catches (limit 5)" in c5["difficulty_reason"]
    c1 = check_grid(g, max_float=1)  # 4 catches a float: more catches in a row than W/4
    assert c1["difficulty"] == "Experienced" and "catches in a row of 30 sts (more than 7)" in c1["difficulty_reason"]
    text = pattern_files(g, max_float=3)["pattern.md"]
    level_line = text.split("Skill level")[1].split("\n")[0]
    assert "Skill level: Intermediate" in text and "catches" in level_line
    assert "Rule: Easy: every row one colour. Intermediate (simple colour work)" in level_line


def test_intarsia_one_bobbin_per_area_and_no_machine_file() -> None:
    rows = [[0, 1, 0, 1, 0, 1, 0, 2], [0, 1, 0, 1, 0, 1, 0, 2], [0] * 8]
    g = grid_of(rows, 3, technique="intarsia")
    out = pattern_files(g)
    yp = out["meta.json"]["checks"]["yarn_path"]
    assert yp["bobbins"] == {"MC": 4, "CC1": 3, "CC2": 1}  # MC: the areas between the CC1 columns
    md = out["pattern.md"]
    assert "Wind 4 MC, 3 CC1, 1 CC2 bobbins" in md
    row1 = next(ln for ln in md.splitlines() if ln.startswith("- Row 1 (RS)"))
    items = split_items(row1.split(": ", 1)[1].split(". (")[0])  # folded repeats expanded
    assert items.count("join CC1") == 3 and items.count("join MC") == 3 and items.count("join CC2") == 1
    assert yp["ends_to_weave_in"] == 2 + yp["joins"] + yp["breaks"] and yp["joins"] == 7
    assert "ayab.png" not in out and "intarsia" in out["meta.json"]["ayab"]["error"]
    assert "No AYAB file: intarsia" in md
    assert follow(md).rows == out["grid.json"]["cells"]


# ------------------------------------------------------------------ knitout, run by a real interpreter


def run_knitout_text(tmp_path, text: str):
    from knitout_interpreter.run_knitout import run_knitout

    path = tmp_path / "pattern.k"
    path.write_text(text)
    return run_knitout(str(path))


@pytest.mark.parametrize("kw", [{}, {"mode": "round", "colours": 4, "width": 24, "height": 12}])
def test_knitout_runs_in_knitout_interpreter(tmp_path, kw: dict) -> None:
    from lens_pipeline.draw.builtins.knitting import knitting_pattern

    out = knitting_pattern(make_cache(t=10), **kw)
    text = out["pattern.k"]
    assert text.startswith(";!knitout-2\n")
    _, machine, graph = run_knitout_text(tmp_path, text)
    counts = out["meta.json"]["stitch_counts"]
    w = out["meta.json"]["stitches"]
    assert graph.loop_count == w + sum(counts.values())  # the cast-on, then one loop per chart stitch
    per_carrier = {y.carrier.carrier_id: y.loop_count for y in graph.yarns if y.loop_count}
    codes = [p["code"] for p in out["meta.json"]["palette"]]
    assert per_carrier == {i + 1: counts[c] + (w if i == 0 else 0) for i, c in enumerate(codes) if counts[c]}
    # the interpreter is a real check: a carrier used before it is brought in is rejected
    first_cc = next(i + 1 for i, c in enumerate(codes) if i and counts[c])
    with pytest.raises(Exception, match="inactive"):
        run_knitout_text(tmp_path, text.replace(f"inhook {first_cc}\n", "", 1))


# ------------------------------------------------------------------ the third colour: duplicate stitch


def test_duplicate_stitch_keeps_the_picture_and_adjust_marks_its_changes() -> None:
    from lens_pipeline.draw.builtins.knitting import knitting_pattern
    from lens_pipeline.knitting.grid import SquareBlocks
    from lens_pipeline.knitting.mapping import attention_levels

    cache = make_cache(t=10)
    square = SquareBlocks(30 / 22)  # the attention sources' default blocks, at the default gauge
    data = attention_levels(cache.pattern(1, 2), 20, 20, 3, square=square)[0][:, ::-1]
    codes = ["MC", "CC1", "CC2"]
    out = knitting_pattern(cache, source="attention_head", layer=1, head=2)  # default: duplicate stitch
    got = np.array([[codes.index(c) for c in r] for r in out["grid.json"]["cells"]])
    assert np.array_equal(got, data)  # the finished picture is the data, cell for cell
    knitted = out["grid.json"]["knitted_cells"]
    assert max(len(set(r)) for r in knitted) <= 2 and out["meta.json"]["checks"]["max_colours_per_row"] <= 2
    assert out["meta.json"]["summary"]["duplicate_stitches"] == len(out["grid.json"]["duplicate_stitch"]) > 0
    assert "## Duplicate stitch" in out["pattern.md"]
    reading_matches(out)
    adjusted = knitting_pattern(cache, source="attention_head", layer=1, head=2, stranded_fix="adjust")
    adj = np.array([[codes.index(c) for c in r] for r in adjusted["grid.json"]["cells"]])
    changed = {(int(r) + 1, int(s) + 1) for r, s in zip(*np.nonzero(adj != data))}
    marked = {(int(e.get("data-row")), int(e.get("data-stitch")))
              for e in ET.fromstring(adjusted["chart.svg"]).iter(f"{SVG}rect") if e.get("class") == "recoloured"}
    assert changed and marked == changed  # every recoloured cell is marked on the chart


def test_palette_contrast_is_checked_in_lightness() -> None:
    from lens_pipeline.knitting.checks import lightness

    assert lightness("#FFFFFF") == pytest.approx(100, abs=0.01) and lightness("#000000") == pytest.approx(0, abs=0.01)
    assert lightness("#777777") == pytest.approx(50.0, abs=0.3)  # sRGB mid grey, a textbook value
    for fam in ("bert", "gpt2", "llama", "neutral"):
        for n in range(2, 6):  # up to 5 colours every pair reads apart in greyscale
            g = Grid(np.arange(n)[None, :], palette_for(fam, n))
            assert check_grid(g)["palette_contrast"]["too_close"] == [], (fam, n)
        six = check_grid(Grid(np.arange(6)[None, :], palette_for(fam, 6)))
        assert [p["colours"] for p in six["palette_contrast"]["too_close"]] == [["MC", "CC1"]]
        assert any("MC and CC1 differ by only" in w for w in six["warnings"])
    md = pattern_files(grid_of([[0, 1, 1, 0]], 2))["pattern.md"]
    assert "Hold the contrast colour CC1 as the dominant yarn" in md


def test_random_grids_and_every_stranded_fix_are_followed(monkeypatch: pytest.MonkeyPatch) -> None:
    import lens_pipeline.knitting.bundle as bundle
    from lens_pipeline.draw.builtins.knitting import knitting_pattern

    monkeypatch.setattr(bundle, "chart_pdf", lambda grid, **kw: b"%PDF-")  # not read here
    cache = make_cache(t=10)
    for fix, mode, colours in itertools.product(["flag", "adjust", "duplicate"], ["flat", "round"], [3, 6]):
        reading_matches(knitting_pattern(cache, stranded_fix=fix, mode=mode, colours=colours, source="resid_norms"))
    rng = np.random.default_rng(5)
    for i in range(60):  # 1-row, 1-stitch, 3-4 colours a row, limits down to 1 st
        k, h, w = int(rng.integers(2, 5)), int(rng.integers(1, 12)), int(rng.integers(1, 25))
        cells = rng.integers(0, k, (h, w))
        cells[rng.random((h, w)) < rng.random()] = 0
        g = Grid(cells, palette_for("neutral", k), mode="round" if i % 2 else "flat")
        reading_matches(pattern_files(g, max_float=int(rng.integers(1, 6))))


def test_square_blocks_and_border() -> None:
    from lens_pipeline.draw.builtins.knitting import knitting_pattern

    out = knitting_pattern(make_cache(t=13), blocks="square", width=120, height=60)
    meta = out["meta.json"]
    sq = meta["mapping"]["square_blocks"]
    k, j = sq["stitches_per_block"], sq["rows_per_block"]
    assert (k, j) == (3, 4)  # 13 tokens: 1.36 cm wide x 1.33 cm tall at 22 x 30 (not 9 sts x 1 row)
    assert abs(k / 2.2 - j / 3.0) < 0.5 / 3.0  # within half a row of square
    b, br = sq["border_stitches"], sq["border_rows"]
    assert (meta["stitches"], meta["rows"]) == (13 * k + 2 * b, 13 * j + 2 * br)  # picture + border, no waste
    cells = np.array(out["grid.json"]["cells"])
    assert (cells[:br] == "MC").all() and (cells[-br:] == "MC").all()
    assert (cells[:, :b] == "MC").all() and (cells[:, -b:] == "MC").all()
    assert f"an MC border of {b} sts at each side (the selvedge)" in out["pattern.md"]
    reading_matches(out)
    # the default for attention; 18 tokens in 20 x 20: a 2-st border would leave 16 sts and pool tokens in
    # pairs, so the border narrows to 1 st and every token keeps its own stitch and row
    narrow = knitting_pattern(make_cache(t=18))
    sq = narrow["meta.json"]["mapping"]["square_blocks"]
    assert (sq["stitches_per_block"], sq["rows_per_block"], sq["border_stitches"], sq["border_rows"]) == (1, 1, 1, 1)
    assert narrow["meta.json"]["mapping"]["x_scale"]["items_per_block"] == 1
    assert (narrow["meta.json"]["stitches"], narrow["meta.json"]["rows"]) == (20, 20)
    assert "an MC border of 1 st at each side (the selvedge) and 1 row at top and bottom" in narrow["pattern.md"]
    cells = np.array(narrow["grid.json"]["cells"])
    assert (cells[[0, -1]] == "MC").all() and (cells[:, [0, -1]] == "MC").all()
    reading_matches(narrow)
    for t, w, h in ((20, 10, 10), (10, 3, 3), (10, 2, 2)):  # never wider or taller than asked; no border only at 2 x 2
        m = knitting_pattern(make_cache(t=t), width=w, height=h)["meta.json"]
        assert m["stitches"] <= w and m["rows"] <= h
        assert (m["mapping"]["square_blocks"]["border_stitches"] == 0) == (w == 2)


@pytest.mark.slow
def test_real_smollm2_patterns_are_followed_and_knit_right_side_out(smollm2_run, monkeypatch: pytest.MonkeyPatch) -> None:
    import lens_pipeline
    import lens_pipeline.knitting.bundle as bundle
    from lens_pipeline.draw.builtins.knitting import knitting_pattern

    monkeypatch.setattr(bundle, "chart_pdf", lambda grid, **kw: b"%PDF-")  # not read here
    for cache in lens_pipeline.open(smollm2_run).caches():
        for kw in ({}, {"mode": "round"}, {"technique": "intarsia"}, {"source": "resid_norms", "colours": 5}):
            out = knitting_pattern(cache, **kw)
            if kw.get("technique") == "intarsia":
                assert follow(out["pattern.md"]).rows == out["grid.json"]["cells"]
                continue
            reading_matches(out)
            codes = [p["code"] for p in out["meta.json"]["palette"]]
            grid = Grid(np.array([[codes.index(x) for x in r] for r in out["grid.json"]["knitted_cells"]])
                        if "knitted_cells" in out["grid.json"] else
                        np.array([[codes.index(x) for x in r] for r in out["grid.json"]["cells"]]),
                        palette_for(cache.family, len(codes)))
            info = out["meta.json"]["ayab"]
            merged = info["palette"][1] if info["reduction"] else None
            assert machine_rs(grid, info, png_bytes(out["ayab.png"])) == chart_rs(grid, merged)


def test_wide_chart_pdf_is_tiled_over_a4_pages_with_overlap() -> None:
    from pypdf import PdfReader

    from lens_pipeline.knitting import chart_pdf
    from lens_pipeline.knitting.chart import TILE_OVERLAP, chart_layout, tiles

    g = grid_of(np.random.default_rng(0).integers(0, 3, (30, 120)).tolist())
    layout = chart_layout(g)
    pages = PdfReader(io.BytesIO(chart_pdf(g))).pages
    ts = tiles(layout)
    assert len(ts) >= 2 and len(pages) == 1 + len(ts)  # the whole chart, then the tiles
    mm = [(round(float(p.mediabox.width) / 72 * 25.4), round(float(p.mediabox.height) / 72 * 25.4)) for p in pages]
    assert mm[0] == (round(layout.width), round(layout.height)) and set(mm[1:]) == {(210, 297)}
    covered = sorted((t.x, t.x + t.w) for t in ts)
    assert covered[0][0] == 0 and covered[-1][1] == pytest.approx(layout.width)
    assert all(b[0] <= a[1] - TILE_OVERLAP + 1e-9 for a, b in zip(covered, covered[1:]))  # neighbours overlap
    assert "tile row 1, column 1" in pages[1].extract_text()
    assert tiles(chart_layout(grid_of([[0, 1] * 5] * 6))) == []  # a small chart stays one page


def test_attention_quantile_thresholds_are_recorded_and_stated() -> None:
    from lens_pipeline.draw.builtins.knitting import knitting_pattern
    from lens_pipeline.knitting.mapping import attention_levels

    cache = make_cache(t=20)
    attn = cache.layer_patterns(2).mean(axis=0)
    levels, rec = attention_levels(attn, 20, 20, 3, thresholds="quantiles")
    ratio = attn * np.arange(1, 21)[:, None]
    visible = ratio[np.tril_indices(20)]
    assert rec["quantiles"] == [0.75, 0.92]
    assert rec["thresholds"] == pytest.approx(np.quantile(visible, [0.75, 0.92]), abs=1e-4)
    share = (levels[np.tril_indices(20)] > 0).mean()  # levels: row 0 = query 0, column 0 = key 0
    assert 0.2 <= share <= 0.3  # a quarter of the visible picture is contrast, whatever the prompt
    for kw in ({"thresholds": "quantiles"}, {}):  # the attention sources' default
        md = knitting_pattern(cache, **kw)["pattern.md"]
        assert "fixed quantiles [0.75, 0.92] of this prompt's visible attention" in md
    uniform = knitting_pattern(cache, thresholds="uniform")["meta.json"]["mapping"]
    assert uniform["thresholds"] == [1.0, 2.0] and uniform["quantiles"] is None
    with pytest.raises(ValueError, match="'quantiles' or 'uniform'"):
        knitting_pattern(cache, thresholds="thirds")
    with pytest.raises(ValueError, match="quantiles"):
        knitting_pattern(cache, source="top1_prob", thresholds="quantiles")
