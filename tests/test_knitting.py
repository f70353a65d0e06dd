"""Knitting patterns: the spec's worked example, checks, chart/exports agreement, end to end."""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import numpy as np
import pytest
from PIL import Image

from lens_pipeline.knitting import (
    Gauge,
    Grid,
    axis_scale,
    ayab_image,
    block_scale,
    chart_svg,
    check_grid,
    colour_runs,
    float_limit,
    grid_csv,
    grid_json,
    instruction_lines,
    limit_colours_per_row,
    palette_for,
    pattern_files,
    quantise,
    row_floats,
)
from lens_pipeline.knitting.instructions import fold_repeats, row_line
from lens_pipeline.knitting.mapping import attention_levels, resid_levels, top1_levels

SVG = "{http://www.w3.org/2000/svg}"
# The spec's worked example, drawn top row first, RS view.
EXAMPLE = ["AABBBA", "ABBAAA", "BBAAAA", "AAAABB"]


def example(mode: str = "flat") -> Grid:
    return Grid.from_chart(EXAMPLE, mode=mode)  # type: ignore[arg-type]


def grid_of(rows_stitch_order: list[list[int]], n_colours: int = 3, **kw) -> Grid:
    """Rows given row 1 first, stitch 1 first (the storage order)."""
    return Grid(np.array(rows_stitch_order), palette_for("neutral", n_colours), **kw)


def stitches_in_line(line: str) -> int:
    """Sum of the stitch counts named in a row line, expanding folded repeats."""
    body = line.split(":", 1)[1].split(". (")[0]
    total = 0
    for m in re.finditer(r"\(([^)]*)\) (\d+) times|[kp](\d+) ", body + " "):
        if m.group(1) is not None:
            total += int(m.group(2)) * sum(int(x) for x in re.findall(r"[kp](\d+) ", m.group(1) + " "))
        else:
            total += int(m.group(3))
    return total


# ------------------------------------------------------------------ worked example


def test_worked_example_flat_lines_exact() -> None:
    assert instruction_lines(example()) == [
        "CO 6 sts with MC.",
        "Row 1 (RS): k2 CC1, k4 MC. (6 sts)",
        "Row 2 (WS): p2 CC1, p4 MC. (6 sts)",
        "Row 3 (RS): k3 MC, k2 CC1, k1 MC. (6 sts)",
        "Row 4 (WS): p2 MC, p3 CC1, p1 MC. (6 sts)",
        "Break CC1. BO with MC.",
    ]


def test_worked_example_in_the_round_lines_exact() -> None:
    lines = instruction_lines(example("round"))
    assert lines[0] == "CO 6 sts with MC."
    assert [ln for ln in lines if ln.startswith("Rnd")] == [
        "Rnd 1: k2 CC1, k4 MC. (6 sts)",
        "Rnd 2: k4 MC, k2 CC1. (6 sts)",
        "Rnd 3: k3 MC, k2 CC1, k1 MC. (6 sts)",
        "Rnd 4: k1 MC, k3 CC1, k2 MC. (6 sts)",
    ]
    assert lines[-1] == "Break CC1. BO with MC."


def test_example_storage_order_is_row1_first_stitch1_rightmost() -> None:
    g = example()
    assert g.row(1).tolist() == [1, 1, 0, 0, 0, 0]  # B B at stitches 1-2 (right edge)
    assert g.chart_view()[0].tolist() == [0, 0, 1, 1, 1, 0]  # top row as drawn, left to right


def test_every_row_sums_to_width_and_repeats_fold() -> None:
    rng = np.random.default_rng(3)
    for mode in ("flat", "round"):
        g = grid_of(rng.integers(0, 2, (15, 20)).tolist(), 2, mode=mode)
        lines = [ln for ln in instruction_lines(g) if ln.startswith(("Row", "Rnd"))]
        assert len(lines) == 15
        for ln in lines:
            assert ln.split(". (")[1].startswith("20 sts)")
            assert stitches_in_line(ln) == 20, ln
    checker = grid_of([[0, 1] * 3], 2)
    assert row_line(checker, 1) == "Row 1 (RS): (k1 MC, k1 CC1) 3 times. (6 sts)"
    assert stitches_in_line(row_line(checker, 1)) == 6
    assert fold_repeats(["a", "b", "c"]) == ["a", "b", "c"]


# ------------------------------------------------------------------ floats, colours, difficulty


def test_floats_flat_and_round_wraparound() -> None:
    row = [0, 1, 1, 1, 0, 0, 1]  # stitch 1 first
    flat = {(f.colour, f.length) for f in row_floats(row, in_round=False)}
    assert flat == {(0, 3), (1, 2)}
    rnd = {(f.colour, f.length) for f in row_floats(row, in_round=True)}
    assert rnd == {(0, 3), (1, 2), (0, 1), (1, 1)}  # wrap: 0+7-5-1 and 1+7-6-1
    lone = [1, 0, 0, 0, 0, 0, 0, 0]
    assert row_floats(lone, in_round=False) == []
    wrap = row_floats(lone, in_round=True)
    assert [(f.colour, f.length) for f in wrap] == [(0, 1), (1, 7)]  # MC wraps past st 1
    assert wrap[1].stitches == (2, 3, 4, 5, 6, 7, 8)


def test_float_limit_from_user_and_gauge() -> None:
    assert float_limit(5, 22) == 5  # floor(2.5 cm x 2.2 sts/cm) = 5
    assert float_limit(5, 16) == 4  # thicker yarn: 2.5 cm is only 4 sts
    assert float_limit(3, 30) == 3
    assert float_limit(None, 40) == 5


def test_check_grid_known_answers() -> None:
    # row 1: 8-st MC float in flat; row 2: three colours; row 3: plain
    g = grid_of([[0, 1, 1, 1, 1, 1, 1, 1, 1, 0], [0, 1, 2, 0, 0, 0, 0, 0, 0, 0], [0] * 10])
    c = check_grid(g, max_float=5)
    assert c["colours_per_row"] == [2, 3, 1]
    assert c["longest_float_per_row"] == [8, 2, 0]
    assert c["longest_float"] == 8
    assert c["rows_over_float_limit"] == [1]
    assert c["rows_over_two_colours"] == [2]
    assert c["colour_runs_per_row"] == [3, 4, 1]
    assert any("more than 2 colours" in e for e in c["errors"])
    assert c["difficulty"] == "Experienced"
    # in the round row 1's CC1 also wraps: CC1 at stitches 2..9, wrap gap 1+10-8-1 = 2
    cr = check_grid(grid_of([[0, 1, 1, 1, 1, 1, 1, 1, 1, 0]], mode="round"))
    assert cr["longest_float"] == 8 and cr["rows_over_float_limit"] == [1]
    assert colour_runs([0, 0, 1, 0]) == 3


def test_long_float_gets_inline_trap_note_and_chart_flag() -> None:
    g = grid_of([[1, 0, 0, 0, 0, 0, 0, 0, 0, 1], [0] * 10])
    line = row_line(g, 1, limit=5)
    assert line.startswith("Row 1 (RS): k1 CC1, k8 MC, k1 CC1. (10 sts) Trap CC1 behind st ")
    trap = int(re.search(r"behind st (\d+)", line).group(1))
    assert 2 <= trap <= 9
    root = ET.fromstring(chart_svg(g))
    flags = [e for e in root.iter(f"{SVG}line") if e.get("class") == "long-float"]
    assert [(e.get("data-row"), e.get("data-colour"), e.get("data-length")) for e in flags] == [("1", "CC1", "8")]


def test_difficulty_levels() -> None:
    stripes = grid_of([[0] * 10, [1] * 10, [2] * 10])
    assert check_grid(stripes)["difficulty"] == "Easy"
    dots = grid_of([[0, 0, 1] * 4, [1, 0, 0] * 4])  # 2 colours, floats of 2
    assert check_grid(dots)["difficulty"] == "Intermediate"
    blocks = grid_of([[0] * 4 + [1] * 4 + [0] * 4])  # MC float 4, within L = 5: simple stranded work
    assert check_grid(blocks)["difficulty"] == "Intermediate"
    checks = grid_of([[0, 1] * 6, [1, 0] * 6])  # 11 colour changes in 12 sts > 2W/3 = 8: numerous changes
    busy = check_grid(checks)
    assert busy["difficulty"] == "Experienced" and "11 colour changes in a row of 12 sts" in busy["difficulty_reason"]
    # CC1 at both ends of 12-st rows: floats of 10 need 2 catches at L = 3 (limit W/4 = 3) but 4 at L = 1
    ends = grid_of([[1] + [0] * 10 + [1]] * 2)
    assert check_grid(ends, max_float=3)["difficulty"] == "Intermediate"
    many = check_grid(ends, max_float=1)
    assert many["difficulty"] == "Experienced" and "catches in a row of 12 sts (more than 3)" in many["difficulty_reason"]
    # the third colour by duplicate stitch: in 1 of 4 rows it is an accent, in every row it is intricate work
    knitted = np.array([[0, 0, 1, 1, 0, 0]] * 4)
    accent = np.full((4, 6), -1)
    accent[0, 0] = 2
    assert check_grid(grid_of(knitted.tolist(), duplicate=accent))["difficulty"] == "Intermediate"
    accent[1:, 0] = 2
    most = check_grid(grid_of(knitted.tolist(), duplicate=accent))
    assert most["difficulty"] == "Experienced" and "duplicate stitch in 4 of 4 rows (more than 2)" in most["difficulty_reason"]
    blocks_intarsia = grid_of([[0] * 4 + [1] * 4 + [0] * 4], technique="intarsia")
    assert check_grid(blocks_intarsia)["difficulty"] == "Intermediate"  # 3 runs
    busy_intarsia = grid_of([[0, 0, 1, 1] * 3], technique="intarsia")  # 6 runs
    assert check_grid(busy_intarsia)["difficulty"] == "Experienced"
    three = grid_of([[0, 1, 2] * 4])
    assert check_grid(three)["difficulty"] == "Experienced"


def test_stranded_adjustment_keeps_two_colours_and_logs() -> None:
    cells = np.array([[0, 0, 0, 1, 1, 2], [0, 1, 0, 1, 0, 1]])
    pal = palette_for("neutral", 3)
    out, log = limit_colours_per_row(cells, pal, 2)
    assert [len(set(r)) for r in out.tolist()] == [2, 2]
    assert out[0].tolist() == [0, 0, 0, 1, 1, 1]  # CC2 -> nearest kept level CC1
    assert log == [{"row": 1, "from": "CC2", "to": "CC1", "stitches": 1}]
    assert out[1].tolist() == cells[1].tolist()


# ------------------------------------------------------------------ scaling and thresholds


def test_block_scaling_is_whole_number() -> None:
    sc = axis_scale(5, 20)
    assert (sc.repeat, sc.pool, sc.offset, sc.used) == (4, 1, 0, 20)
    data = np.arange(25, dtype=float).reshape(5, 5)
    scaled, xs, ys = block_scale(data, 20, 20)
    assert scaled.shape == (20, 20) and xs.repeat == ys.repeat == 4
    assert np.array_equal(scaled, np.kron(data, np.ones((4, 4))))  # nearest neighbour, no blur
    odd = axis_scale(7, 20)  # 2 sts per token, 6 sts of MC padding split 3 + 3
    assert (odd.repeat, odd.used, odd.offset) == (2, 14, 3)
    long = axis_scale(45, 20)  # more tokens than stitches: 3 tokens averaged per stitch
    assert (long.pool, long.blocks, long.repeat) == (3, 15, 1)
    s2, _, _ = block_scale(np.ones((7, 7)), 20, 20)
    assert np.isnan(s2[:, :3]).all() and not np.isnan(s2[3:17, 3:17]).any()
    assert quantise(s2, [0.5])[0, 0] == 0  # padding is MC


def test_attention_thresholds_are_uniform_multiples_and_recorded() -> None:
    t = 5
    uniform = np.tril(np.ones((t, t))) / np.arange(1, t + 1)[:, None]
    assert attention_levels(uniform, 20, 20, 3)[1]["quantiles"] == [0.75, 0.92]  # the default: quantiles
    levels, rec = attention_levels(uniform, 20, 20, 3, thresholds="uniform")
    assert rec["causal"] is True
    assert rec["thresholds"] == [1.0, 2.0]
    assert "uniform" in rec["threshold_rule"]
    assert (levels == 0).all()  # exactly uniform attention is not "above uniform": all MC
    peaked = uniform.copy()
    peaked[4] = [0.7, 0.1, 0.1, 0.05, 0.05]  # 0.7 x 5 = 3.5 x uniform; 0.1 x 5 = 0.5
    levels, _ = attention_levels(peaked, 20, 20, 3, thresholds="uniform")
    assert levels[16:, :4].min() == 2 and levels[16:, 4:].max() == 0
    _, user = attention_levels(peaked, 20, 20, 3, thresholds=[1.5, 3.0])
    assert user["thresholds"] == [1.5, 3.0] and user["threshold_rule"] == "user thresholds"


def test_resid_and_top1_thresholds_recorded() -> None:
    norms = np.arange(50, dtype=float).reshape(5, 10)
    levels, rec = resid_levels(norms, 20, 20, 3)
    assert rec["quantiles"] == [0.5, 0.9]
    assert rec["thresholds"] == pytest.approx(list(np.quantile(norms, [0.5, 0.9])))
    assert 0.05 < (levels == 2).mean() < 0.2  # fixed quantiles, not thirds
    lv, rec = top1_levels(np.array([1.0, 0.25, 0.05, 0.6]), 20, 20, 3)
    assert rec["thresholds"] == [0.5]

    def picture_col(tok: int) -> np.ndarray:
        return lv[:, tok * 5]  # 4 tokens -> 5 sts each

    assert picture_col(0).tolist() == [1] * 10 + [2] * 10
    assert picture_col(1).tolist() == [1] * 5 + [0] * 15
    assert picture_col(2).tolist() == [1] + [0] * 19  # at least one row per token
    assert max(len(set(r) - {0}) for r in lv.tolist()) <= 1  # MC + one bar colour per row


# ------------------------------------------------------------------ chart and exports


def _svg_cells(svg: str) -> list[ET.Element]:
    return [e for e in ET.fromstring(svg).iter(f"{SVG}rect") if e.get("class") == "cell"]


@pytest.mark.parametrize("mode", ["flat", "round"])
def test_chart_svg_cells_match_grid_json(mode: str) -> None:
    rng = np.random.default_rng(1)
    g = grid_of(rng.integers(0, 3, (12, 14)).tolist(), mode=mode, gauge=Gauge(22, 30))
    gj = json.loads(json.dumps(grid_json(g)))
    svg = chart_svg(g)
    cells = _svg_cells(svg)
    assert len(cells) == 12 * 14
    hexes = {p["code"]: p["hex"] for p in gj["palette"]}
    for e in cells:
        r, s, code = int(e.get("data-row")), int(e.get("data-stitch")), e.get("data-colour")
        assert gj["cells"][r - 1][s - 1] == code
        assert e.get("fill") == hexes[code]
        assert float(e.get("height")) / float(e.get("width")) == pytest.approx(22 / 30, abs=1e-3)
    pos = {(int(e.get("data-row")), int(e.get("data-stitch"))): (float(e.get("x")), float(e.get("y")))
           for e in cells}
    assert pos[(1, 1)][0] == max(x for x, _ in pos.values())  # stitch 1 at the right
    assert pos[(1, 1)][1] == max(y for _, y in pos.values())  # row 1 at the bottom
    chart_right = pos[(1, 1)][0]
    chart_left = pos[(1, 14)][0]
    numbers = [e for e in ET.fromstring(svg).iter(f"{SVG}text") if e.get("class") == "row-number"]
    assert len(numbers) == 12
    for e in numbers:
        n, x = int(e.text), float(e.get("x"))
        on_right = x > chart_right
        assert on_right == (mode == "round" or n % 2 == 1), (n, x)
        assert on_right or x < chart_left


def test_grid_json_and_csv_order_palette_gauge() -> None:
    g = example()
    gj = grid_json(g)
    assert gj["cells"][0] == ["CC1", "CC1", "MC", "MC", "MC", "MC"]  # row 1, stitch 1 first
    assert gj["gauge"] == {"stitches_per_10cm": 22.0, "rows_per_10cm": 30.0}
    assert [p["code"] for p in gj["palette"]] == ["MC", "CC1"]
    assert gj["stitch_counts"] == {"MC": 15, "CC1": 9}
    lines = grid_csv(g).splitlines()
    assert any("gauge: 22 sts and 30 rows" in ln for ln in lines if ln.startswith("#"))
    assert any("MC=#" in ln for ln in lines if ln.startswith("#"))
    body = [ln for ln in lines if not ln.startswith("#")]
    assert body[0] == "row,side,st1,st2,st3,st4,st5,st6"
    assert body[1] == "1,RS,CC1,CC1,MC,MC,MC,MC"
    assert body[4] == "4,WS,MC,CC1,CC1,CC1,MC,MC"


def test_ayab_png_size_palette_and_row_order() -> None:
    g = example()
    img, info = ayab_image(g)
    assert img.mode == "P" and img.size == (6, 4)
    pal = img.getpalette()[:6]
    assert pal == [*g.palette[0].rgb(), *g.palette[1].rgb()]
    px = np.array(img)
    assert set(np.unique(px).tolist()) == {0, 1}
    # AYAB knits the PNG purl side facing: the PNG is the WS view, mirrored (issue 17, defect 1)
    assert px[-1].tolist() == [1, 1, 0, 0, 0, 0]  # bottom pixel row = row 1, stitch 1 at the left
    assert px[0].tolist() == [0, 1, 1, 1, 0, 0]  # top pixel row = last row, mirrored
    assert np.array_equal(px, g.chart_view()[:, ::-1])
    saved = Image.open(io.BytesIO(_png(img)))
    assert saved.mode == "P" and np.array_equal(np.array(saved), px)
    assert "row 1" in info["image_row_0"] and info["reduction"] is None
    assert info["image_column_0"].startswith("stitch 1") and info["knit_side_image"] is False


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_ayab_three_colours_error_or_documented_reduction_and_width_limits() -> None:
    g = grid_of([[0, 1, 2, 0], [2, 2, 0, 1]])
    with pytest.raises(ValueError, match="at most 2 colours"):
        ayab_image(g)
    img, info = ayab_image(g, reduce="merge_contrast")
    assert len(img.getpalette()) // 3 == 2
    assert np.array(img).tolist() == [[1, 1, 0, 1], [0, 1, 1, 0]]  # any CC -> contrast; WS view
    assert "merged CC1, CC2" in info["reduction"]
    ribber, _ = ayab_image(g, bed="ribber")
    assert len(ribber.getpalette()) // 3 == 3
    wide = grid_of([[0, 1] * 60], 2)  # 120 sts
    assert ayab_image(wide)[0].size == (120, 1)
    with pytest.raises(ValueError, match="112 needles"):
        ayab_image(wide, machine="KH-270")
    with pytest.raises(ValueError, match="200 needles"):
        ayab_image(grid_of([[0, 1] * 101], 2))


def test_colour_schemes_per_family() -> None:
    for fam in ("bert", "gpt2", "llama", "something-else"):
        pal = palette_for(fam, 3)
        assert [c.code for c in pal] == ["MC", "CC1", "CC2"]
        assert len({c.symbol for c in pal}) == 3 and len({c.hex for c in pal}) == 3
        assert all(re.fullmatch(r"#[0-9A-F]{6}", c.hex) for c in pal)
    blue = palette_for("bert", 3)[2].rgb()
    green = palette_for("gpt2", 3)[2].rgb()
    assert blue[2] > blue[0] and green[1] > green[0]
    assert palette_for("other", 3) == palette_for("neutral", 3)
    assert len({c.symbol for c in palette_for("llama", 6)}) == 6
    with pytest.raises(ValueError):
        palette_for("llama", 7)


def test_pattern_text_has_header_and_one_technique() -> None:
    g = example()
    files = pattern_files(g, title="Example")
    md, txt = files["pattern.md"], files["pattern.txt"]
    for text in (md, txt):
        assert "Skill level: Intermediate (Craft Yarn Council)" in text
        assert "Finished size: 2.7 cm wide x 1.3 cm tall" in text
        assert "Gauge: 22 sts and 30 rows = 10 cm" in text
        assert "Needles:" in text and "Yarn (estimate" in text
        assert "BO: bind off" in text and "rnd: round" in text
        assert "Row 4 (WS): p2 MC, p3 CC1, p1 MC. (6 sts)" in text
        assert "carried loosely" in text and "bobbin" not in text
    assert "#" not in txt.split("Hex")[0] and "|" not in txt
    intarsia = pattern_files(Grid.from_chart(EXAMPLE, technique="intarsia"))["pattern.txt"]
    assert "bobbin" in intarsia and "carried loosely" not in intarsia


# ------------------------------------------------------------------ end to end


@dataclass
class StandInCache:
    """The cache API the figure reads, built from real numpy arrays."""

    patterns: np.ndarray  # [L, H, T, T]
    topk_probs: np.ndarray
    resid_norms: np.ndarray
    tokens: list[str]
    model: str = "SmolLM2-135M-Instruct"
    family: str = "llama"
    prompt_hash: str = "0123456789abcdef"
    text: str = "The quick brown fox jumps over the lazy dog"
    n_layers: int = field(init=False)
    n_heads: int = field(init=False)
    n_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_layers, self.n_heads, self.n_tokens = self.patterns.shape[:3]

    def pattern(self, layer: int, head: int) -> np.ndarray:
        return self.patterns[layer, head]

    def layer_patterns(self, layer: int) -> np.ndarray:
        return self.patterns[layer]

    def missing(self, needs: tuple[str, ...]) -> list[str]:
        return []  # every array is here and the stand-in model has an LM head


def make_cache(t: int = 10, family: str = "llama", seed: int = 0) -> StandInCache:
    rng = np.random.default_rng(seed)
    scores = rng.normal(0.0, 2.0, (4, 3, t, t))
    scores[..., np.triu_indices(t, 1)[0], np.triu_indices(t, 1)[1]] = -np.inf  # causal mask
    e = np.exp(scores - scores.max(-1, keepdims=True))
    patterns = (e / e.sum(-1, keepdims=True)).astype(np.float32)
    topk = np.sort(rng.dirichlet(np.ones(12), t)[:, :10], axis=1)[:, ::-1].astype(np.float32)
    norms = (rng.gamma(2.0, 10.0, (5, t)) + np.arange(5)[:, None] * 5).astype(np.float32)
    return StandInCache(patterns, topk, norms, [f"tok{i}" for i in range(t)], family=family)


EXPORTS = {"chart.svg", "chart.pdf", "pattern.md", "pattern.txt", "grid.json", "grid.csv",
           "ayab.png", "pattern.k", "meta.json"}


def test_registered_figure_end_to_end() -> None:
    from lens_pipeline.draw.builtins.knitting import knitting_pattern
    from lens_pipeline.draw.registry import REGISTRY

    spec = REGISTRY["knitting_pattern"]
    assert spec.scope == "prompt" and spec.params["width"] == 20 and spec.params["colours"] == 3
    assert spec.params["source"] == "attention_layer_mean"
    assert spec.params["blocks"] == "auto" and spec.params["thresholds"] is None
    cache = make_cache(t=10)
    default = spec.func(cache)  # attention: quantile thresholds, square blocks and an MC border
    dm = default["meta.json"]["mapping"]
    assert dm["quantiles"] == [0.75, 0.92] and dm["square_blocks"]["stitches_per_block"] == 1
    assert (default["meta.json"]["stitches"], default["meta.json"]["rows"]) == (10 + 2 * 2, 10 + 2 * 3)
    out = spec.func(cache, blocks="fill", thresholds="uniform")  # the earlier defaults, still options
    assert set(out) == EXPORTS
    assert isinstance(out["chart.svg"], str) and out["chart.pdf"].startswith(b"%PDF")
    meta = json.loads(json.dumps(out["meta.json"]))  # JSON-ready
    assert meta["mapping"]["source"] == "attention_layer_mean" and meta["mapping"]["layer"] == 2
    assert meta["mapping"]["thresholds"] == [1.0, 2.0]
    assert meta["mapping"]["x_scale"]["stitches_per_block"] == 2  # 10 tokens -> 20 sts
    assert meta["colour_scheme"] == "llama"
    assert meta["checks"]["max_colours_per_row"] <= 2  # stranded adjustment applied
    assert meta["summary"]["difficulty"] in ("Easy", "Intermediate", "Experienced")
    gj = out["grid.json"]
    assert len(gj["cells"]) == 20 and all(len(r) == 20 for r in gj["cells"])
    svg_codes = {(int(e.get("data-row")), int(e.get("data-stitch"))): e.get("data-colour")
                 for e in _svg_cells(out["chart.svg"])}
    assert all(svg_codes[(r + 1, s + 1)] == c for r, row in enumerate(gj["cells"])
               for s, c in enumerate(row))
    assert out["ayab.png"].mode == "P" and out["ayab.png"].size == (20, 20)
    rows = [ln for ln in out["pattern.txt"].splitlines() if ln.startswith("Row ")]
    assert len(rows) == 20 and all(stitches_in_line(ln) == 20 for ln in rows)
    # the first token sits at the left of the RS, i.e. the LAST stitch: query 0 sees only key 0
    assert gj["cells"][0][:18] == ["MC"] * 18

    for source in ("attention_head", "top1_prob", "resid_norms"):
        o = knitting_pattern(cache, source=source, layer=1, head=2, mode="round",
                             technique="intarsia", colours=4, width=30, height=24)
        assert set(o) == EXPORTS - {"ayab.png", "pattern.k"}, source  # no jacquard machine files for intarsia
        assert "intarsia" in o["meta.json"]["ayab"]["error"]
        assert o["meta.json"]["mapping"]["source"] == source
        h, w = len(o["grid.json"]["cells"]), len(o["grid.json"]["cells"][0])
        if source == "attention_head":  # square blocks by default: width x height is the maximum
            sq = o["meta.json"]["mapping"]["square_blocks"]
            assert h <= 24 and w <= 30 and w == 10 * sq["stitches_per_block"] + 2 * sq["border_stitches"]
        else:
            assert (h, w) == (24, 30) and "square_blocks" not in o["meta.json"]["mapping"]
        assert any(ln.startswith(f"Rnd {h}:") for ln in o["pattern.txt"].splitlines())
    head = knitting_pattern(cache, source="attention_head", layer=1, head=2)
    assert head["meta.json"]["mapping"]["head"] == 2
    exact = knitting_pattern(cache, source="attention_head", layer=1, head=2, stranded_fix="flag",
                             blocks="fill", thresholds="uniform")
    index = {"MC": 0, "CC1": 1, "CC2": 2}
    got = np.array([[index[c] for c in r] for r in exact["grid.json"]["cells"]])
    expected = attention_levels(cache.pattern(1, 2), 20, 20, 3, thresholds="uniform")[0][:, ::-1]  # that exact head
    assert np.array_equal(got, expected)
    flagged = knitting_pattern(cache, stranded_fix="flag")
    assert flagged["meta.json"]["adjustments"] == []
    with pytest.raises(ValueError, match="unknown source"):
        knitting_pattern(cache, source="nope")
    no_ayab = knitting_pattern(cache, ayab_reduce="error", stranded_fix="flag")
    if len({c for r in no_ayab["grid.json"]["cells"] for c in r}) > 2:
        assert "ayab.png" not in no_ayab and "at most 2 colours" in no_ayab["meta.json"]["ayab"]["error"]
