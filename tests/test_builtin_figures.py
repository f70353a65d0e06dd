"""The built-in figures, checked for content on caches made by the real activations stage
(SmolLM2 for most, MiniLM for a bidirectional heatmap)."""

from __future__ import annotations

import html
import io
import json
import warnings
from html.parser import HTMLParser
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from matplotlib.colors import Normalize
from PIL import Image

import lens_pipeline.draw.builtins  # noqa: F401  (registers the built-ins)
from lens_pipeline.activations import run_activations
from lens_pipeline.draw import canvas, colormap
from lens_pipeline.draw.builtins import attention, attention_stats, predictions, projection, summary, tokens
from lens_pipeline.draw.builtins.plotting import token_label
from lens_pipeline.draw.registry import REGISTRY, SkipFigure
from lens_pipeline.store import index
from lens_pipeline.store.cache import Cache, CacheContents, serialize, write_atomic

VIRIDIS = matplotlib.colormaps["viridis"]

SMOL_PROMPTS = [
    {"id": "xss", "text": 'Render <script>alert(1)</script> for $5 & "quotes"; $x$ stays text.'},
    {"id": "paris", "text": "The capital of France is Paris. The capital of France is"},
    {"id": "hi", "text": "Hi"},
    {"id": "long", "text": "Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to praise him. "
                           "The evil that men do lives after them; the good is oft interred with their bones."},
]


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _caches_by_id(save_path: Path) -> dict[str, Cache]:
    rows = index.latest(r for r in index.read_rows(save_path) if r["kind"] == "cache").values()
    return {r["prompt_metadata"]["id"]: Cache(save_path / r["path"]) for r in rows if r["status"] == "ok"}


@pytest.fixture(scope="session")
def smol_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("figs_smol")
    prompts = _write_jsonl(folder / "prompts.jsonl", SMOL_PROMPTS)
    run_activations("smollm2", prompts, folder / "data", logit_lens=True, progress=False, log=lambda _: None)
    return folder / "data"


@pytest.fixture(scope="session")
def smol(smol_dir: Path) -> dict[str, Cache]:
    caches = _caches_by_id(smol_dir)
    assert set(caches) == {p["id"] for p in SMOL_PROMPTS}
    assert caches["long"].n_tokens > 40 and caches["hi"].n_tokens == 2
    return caches


@pytest.fixture(scope="session")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> Cache:
    folder = tmp_path_factory.mktemp("figs_minilm")
    prompts = _write_jsonl(folder / "prompts.jsonl", [{"id": "cat", "text": "The cat sat on the mat because it was tired."}])
    run_activations("minilm", prompts, folder / "data", progress=False, log=lambda _: None)
    return _caches_by_id(folder / "data")["cat"]


@pytest.fixture(scope="session")
def hostile(smol: dict[str, Cache], tmp_path_factory: pytest.TempPathFactory) -> Cache:
    """A real cache file whose token strings are attacks: the model's arrays, hostile text."""
    source = smol["paris"]
    arrays = {name: source.array(name) for name in source.names()}
    token_strs = arrays["token_strs"].astype(object)
    token_strs[2] = "<script>alert('tok')</script>"
    token_strs[3] = '" onmouseover="alert(2)'
    topk_strs = arrays["topk_strs"].astype(object)
    topk_strs[0, 0] = "<img src=x onerror=alert(3)>"
    arrays["token_strs"], arrays["topk_strs"] = token_strs.astype(str), topk_strs.astype(str)
    meta = {k: v for k, v in source.meta.items() if k not in ("arrays", "schema_version")}
    meta["text"] = "<script>alert('prompt')</script> & friends"
    path = tmp_path_factory.mktemp("hostile") / "hostile.zip"
    write_atomic(path, serialize(CacheContents(meta, arrays)))
    return Cache(path)


def _png_rgb(image: Image.Image) -> np.ndarray:
    """Through a PNG file and back, as the stage writes it: what a viewer would show."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def _cmap_rgb(values: np.ndarray | float) -> np.ndarray:
    return np.asarray(VIRIDIS(np.asarray(values), bytes=True))[..., :3]


def _cell_colours(pixels: np.ndarray, grid: canvas.Grid, inset: int = 1) -> np.ndarray:
    """[rows, cols, 3] colour of each cell of a drawn grid, read near its top-left corner (clear of cell text)."""
    ys = grid.y + inset + grid.cell_h * np.arange(grid.rows)
    xs = grid.x + inset + grid.cell_w * np.arange(grid.cols)
    return pixels[ys[:, None], xs[None, :]]


def _assert_colours(drawn: np.ndarray, expected: np.ndarray) -> None:
    """Colours equal, up to a neighbouring colour-map entry where float32 and float64 bin a value differently."""
    difference = np.abs(drawn.astype(int) - expected.astype(int)).max(-1)
    assert (difference <= 4).all() and (difference == 0).mean() > 0.97


def _draw(figure: matplotlib.figure.Figure) -> None:
    """Render like the stage does, failing on any missing-glyph or mathtext warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        figure.savefig(io.BytesIO(), format="png", dpi=50)


# --- registration ----------------------------------------------------------------------------


def test_every_builtin_is_registered_with_scope_formats_and_a_description() -> None:
    expected = {
        "attention_heatmap": ("head", ("png",)), "attention_labeled": ("head", ("png",)),
        "attention_layer_grid": ("layer", ("png",)), "attention_overview": ("prompt", ("png",)),
        "attention_stats": ("prompt", ("json", "png")), "attention_stats_across_prompts": ("model", ("json", "png")),
        "token_values": ("prompt", ("html", "png")), "neuron_heatmap": ("prompt", ("png",)),
        "topk_bars": ("prompt", ("png",)), "topk_heatmap": ("prompt", ("png",)), "logit_lens": ("prompt", ("png",)),
        "token_pca": ("prompt", ("png", "json")), "model_summary": ("model", ("md",)),
    }
    for name, (scope, formats) in expected.items():
        spec = REGISTRY[name]
        assert (spec.scope, spec.formats) == (scope, formats), name
        assert spec.description and not spec.description.endswith(":"), name
    assert REGISTRY["logit_lens"].needs == ("logit_lens_ids", "lm_head")  # an untrained head has no lens
    assert REGISTRY["attention_heatmap"].params == {"cmap": "viridis", "side": 200, "scale": "sqrt", "skip_first": True}
    for name in ("attention_heatmap", "attention_labeled", "attention_layer_grid", "attention_overview"):
        assert {"scale", "skip_first"} <= set(REGISTRY[name].params), name  # every attention figure has both options


# --- attention pictures -------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["smollm2", "minilm"])
def test_fast_heatmap_pixels_are_the_colormap_of_the_cached_weights(which: str, smol: dict[str, Cache], minilm: Cache) -> None:
    cache = smol["xss"] if which == "smollm2" else minilm
    n = cache.n_tokens
    # Out of layer order on purpose: the per-layer colour memo must never serve a stale layer.
    for layer, head in [(1, 0), (0, 2), (cache.n_layers - 1, cache.n_heads - 1), (1, 1)]:
        image = attention.attention_heatmap(cache, layer, head, scale="linear", skip_first=False)
        scale = round(200 / n)
        caption = attention.CAPTION_LINES * canvas.line_height() + 2
        assert image.size == (max(n * scale, 150), n * scale + caption) and image.mode == "P"
        pixels = _png_rgb(image)[: n * scale, : n * scale]
        pattern = cache.pattern(layer, head)
        # Every cell, at the centre of its block, is the colormap of the cached value ...
        np.testing.assert_array_equal(pixels[scale // 2 :: scale, scale // 2 :: scale], _cmap_rgb(pattern))
        # ... and each block is one flat colour (whole-number nearest-neighbour enlargement).
        np.testing.assert_array_equal(pixels, np.repeat(np.repeat(_cmap_rgb(pattern), scale, 0), scale, 1))
    if not cache.causal:  # a bidirectional model's first token attends to the last one
        assert cache.pattern(0, 0)[0, -1] > 0.01
        shown = attention.attention_heatmap(cache, 0, 0, scale="linear", skip_first=False)
        assert tuple(_png_rgb(shown)[0, n * scale - 1]) != tuple(_cmap_rgb(0.0))


def test_layer_grid_places_every_head_in_its_labelled_tile(smol: dict[str, Cache]) -> None:
    cache = smol["paris"]
    layout, scale = attention.layer_grid_layout(cache.n_tokens, cache.n_heads, side=128)
    pixels = _png_rgb(attention.attention_layer_grid(cache, 5, scale="linear", skip_first=False)).astype(int)
    assert pixels.shape[0] > layout.size[1] and pixels.shape[1] >= layout.size[0]  # the colour key goes underneath
    for head in range(cache.n_heads):
        x, y = layout.origin(*divmod(head, layout.cols))
        tile = pixels[y : y + layout.side, x : x + layout.side]
        expected = _cmap_rgb(cache.pattern(5, head)).astype(int)  # a palette PNG: within a level of the colour map
        assert np.abs(tile[scale // 2 :: scale, scale // 2 :: scale] - expected).max() <= 6
    assert (pixels[: layout.top - 2] != 255).any()  # the head labels were drawn above the first row


def test_overview_has_a_tile_per_layer_and_head_max_pooled_for_long_prompts(smol: dict[str, Cache]) -> None:
    cache = smol["long"]
    cell = 16  # small, so this prompt is shrunk and the pooling is exercised
    layout, enlarge, shrink = attention.overview_layout(cache.n_tokens, cache.n_layers, cache.n_heads, cell)
    assert shrink > 1 and enlarge == 1
    pixels = _png_rgb(attention.attention_overview(cache, cell=cell, scale="linear", skip_first=False))
    assert pixels.shape[0] > layout.size[1] and pixels.shape[1] >= layout.size[0]
    n, blocks = cache.n_tokens, layout.side
    for layer in (0, cache.n_layers - 1):
        for head in range(cache.n_heads):
            padded = np.zeros((blocks * shrink, blocks * shrink), np.float32)
            padded[:n, :n] = cache.pattern(layer, head)
            pooled = padded.reshape(blocks, shrink, blocks, shrink).max(axis=(1, 3))
            x, y = layout.origin(layer, head)
            # written as a palette PNG: the colour map at ~230 levels, so within a level of the exact colour
            assert np.abs(pixels[y : y + blocks, x : x + blocks].astype(int) - _cmap_rgb(pooled).astype(int)).max() <= 6


def test_colour_scales_are_exact_on_known_weights() -> None:
    weights = np.array([0.0, 0.0005, 0.001, 0.01, 0.25, 1.0], dtype=np.float32)
    np.testing.assert_array_equal(colormap.scaled(weights, "linear"), weights)
    np.testing.assert_allclose(colormap.scaled(weights, "sqrt"), [0.0, np.sqrt(0.0005), np.sqrt(0.001), 0.1, 0.5, 1.0], rtol=1e-6)
    # log10 from 0.001 (and below) to 1: 0.01 sits a third of the way up
    np.testing.assert_allclose(colormap.scaled(weights, "log"), [0.0, 0.0, 0.0, 1 / 3, (np.log10(0.25) + 3) / 3, 1.0], rtol=1e-6)
    assert colormap.to_index(colormap.scaled(np.float32([0.25]), "sqrt"))[0] == 128  # floor(0.5 * 256)
    assert colormap.to_index(colormap.scaled(np.float32([0.01]), "log"))[0] == 85  # floor(256 / 3)
    with pytest.raises(ValueError, match="colour scale"):
        colormap.scaled(weights, "cubic")
    # The edges the viewer bins by (display.facts) give the same colour index as the figures.
    for scale in colormap.SCALES:
        edges = np.array(colormap.scale_index_edges(scale))
        probe = np.float32([0.0004, 0.003, 0.02, 0.137, 0.5, 0.9])
        from_edges = np.searchsorted(edges, probe, side="right") - 1
        np.testing.assert_array_equal(from_edges, colormap.to_index(colormap.scaled(probe, scale)))


def test_first_token_option_removes_its_row_and_column_and_is_written_on_the_figure(smol: dict[str, Cache]) -> None:
    cache = smol["paris"]
    n, layer, head = cache.n_tokens, 20, 4
    full = attention.layer_color_indices(cache, layer, "linear", skip_first=False)[head]
    without = attention.layer_color_indices(cache, layer, "linear", skip_first=True)[head]
    assert full.shape == (n, n) and without.shape == (n - 1, n - 1)
    np.testing.assert_array_equal(without, full[1:, 1:])
    assert attention.statement(n, "sqrt", True) == "colour = attention weight, sqrt scale; first token left out"
    assert attention.statement(2, "sqrt", True).endswith("all tokens")  # "Hi": one token would be left
    image = attention.attention_heatmap(cache, layer, head)  # defaults: sqrt, first token left out
    scale = round(200 / (n - 1))
    pixels = _png_rgb(image)
    expected = _cmap_rgb(np.sqrt(cache.pattern(layer, head)[1:, 1:]))
    _assert_colours(pixels[scale // 2 : (n - 1) * scale : scale, scale // 2 : (n - 1) * scale : scale], expected)
    caption = pixels[(n - 1) * scale :]
    assert (caption != _cmap_rgb(0.0)).any(-1).sum() > 100  # the caption's text, in the colour map's top colour


def _brightest_column_share(ink: np.ndarray) -> float:
    """[heads, queries, keys] colour indices -> the share of all ink (sum of indices) in the brightest key column."""
    per_column = ink.astype(np.float64).sum(axis=(0, 1))
    return float(per_column.max() / per_column.sum())


BRIGHTEST_COLUMN_LIMIT = 0.2  # structure: no key column holds a fifth of a late layer's ink


def test_default_overview_of_late_layers_is_not_one_bright_column(smol: dict[str, Cache]) -> None:
    """The criterion: in every layer >= 17 of SmolLM2, as the default overview and layer grid draw it, the
    brightest key column holds under 20% of the image's ink (ink = colour index, 0 = darkest). On the old
    default (linear, first token shown) the attention sink's column takes most of it."""
    cache = smol["long"]
    defaults = REGISTRY["attention_overview"].params
    assert REGISTRY["attention_layer_grid"].params["scale"] == defaults["scale"] == "sqrt" and defaults["skip_first"]
    old, new = [], []
    scale, skip_first = defaults["scale"], defaults["skip_first"]
    for layer in range(17, cache.n_layers):
        old.append(_brightest_column_share(attention.layer_color_indices(cache, layer, "linear", skip_first=False)))
        new.append(_brightest_column_share(attention.layer_color_indices(cache, layer, scale, skip_first)))
    assert max(new) < BRIGHTEST_COLUMN_LIMIT, new
    assert np.median(old) > 0.4  # the old default really was dominated by the first token's column
    # The same holds for the pixels of the drawn grid image of the last layer (tiles only, not labels).
    layer = cache.n_layers - 1
    indices = attention.layer_color_indices(cache, layer, defaults["scale"], True)
    layout, px = attention.layer_grid_layout(indices.shape[-1], cache.n_heads, 128)
    image = _png_rgb(attention.attention_layer_grid(cache, layer)).astype(np.float64)
    columns = np.zeros(indices.shape[-1])
    for head in range(cache.n_heads):
        x, y = layout.origin(*divmod(head, layout.cols))
        tile = image[y : y + layout.side, x : x + layout.side]
        brightness = np.abs(tile - tile[0, -1]).sum(-1)  # distance from the empty colour (a future key's cell)
        columns += brightness.sum(0).reshape(-1, px).sum(1)
    assert columns.max() / columns.sum() < BRIGHTEST_COLUMN_LIMIT


def test_text_is_at_least_nine_pixels_and_every_figure_fits_the_viewer(smol: dict[str, Cache]) -> None:
    mask = np.asarray(canvas.text_mask("H", canvas.FONT_PX))
    rows = np.flatnonzero(mask.max(1) > 127)
    assert rows.max() - rows.min() + 1 >= 9  # a capital letter at the smallest size used is 9 px tall
    cache = smol["long"]
    pictures = [predictions.topk_heatmap_canvas(cache), predictions.logit_lens_canvas(cache),
                predictions.topk_bars_canvas(cache)[0], tokens.token_values_canvas(cache, tokens.token_rows(cache))[0],
                tokens.neuron_heatmap_canvas(cache)[0],
                attention_stats.statistics_canvas(attention_stats.prompt_statistics(cache), "t")[0]]
    for picture in pictures:
        assert min(picture.sizes) >= canvas.FONT_PX
        assert picture.image.width <= canvas.MAX_WIDTH
    labeled = attention.attention_labeled(smol["paris"], 0, 0).axes[0]  # matplotlib, written at 100 dpi
    assert min(t.get_fontsize() for t in labeled.get_xticklabels()) * 100 / 72 >= 12


def test_labeled_heatmap_shows_the_pattern_with_escaped_token_labels(smol: dict[str, Cache]) -> None:
    cache = smol["xss"]
    figure = attention.attention_labeled(cache, 3, 4, scale="linear", skip_first=False)
    axes = figure.axes[0]
    shown = axes.images[0].get_array()
    np.testing.assert_array_equal(shown.filled(0), cache.pattern(3, 4))
    assert shown.mask[0, 1] and not shown.mask[1, 0]  # future keys of a causal model are greyed out
    labels = [t.get_text() for t in axes.get_xticklabels()]
    assert labels == [token_label(t) for t in cache.tokens]
    assert any(r"\$" in label for label in labels)  # '$' would otherwise switch on mathtext
    assert "L3 H4" in axes.get_title() and "linear scale; all tokens" in axes.get_title()
    _draw(figure)
    default = attention.attention_labeled(cache, 3, 4)  # sqrt scale, first token left out: both written on it
    np.testing.assert_allclose(default.axes[0].images[0].get_array().filled(0), np.sqrt(cache.pattern(3, 4)[1:, 1:]), rtol=1e-6)
    assert "sqrt scale; first token left out" in default.axes[0].get_title()
    with pytest.raises(SkipFigure, match="max_tokens=40"):
        attention.attention_labeled(smol["long"], 0, 0)


def test_token_label_makes_whitespace_visible_and_escapes_dollars() -> None:
    assert token_label("\n") == "↵"
    assert token_label("  ") == "␣␣"
    assert token_label(" cost $5") == r" cost \$5"
    assert token_label("a" * 30, max_chars=8) == "aaaaaaa…"
    assert token_label("中文") == "□□"  # DejaVu Sans has no CJK: no missing-glyph warnings, a visible box


# --- attention statistics ---------------------------------------------------------------------


def test_head_statistics_match_hand_computation() -> None:
    causal = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    stats = attention_stats.head_statistics(causal, causal=True)  # query 0 is left out
    entropy_row1 = np.log(2)
    entropy_row2 = -(0.2 * np.log(0.2) + 0.3 * np.log(0.3) + 0.5 * np.log(0.5))
    assert stats["entropy"] == pytest.approx((entropy_row1 + entropy_row2) / 2)
    assert stats["max_weight"] == pytest.approx((0.5 + 0.5) / 2)
    assert stats["mean_distance"] == pytest.approx(((0.5 * 1) + (0.2 * 2 + 0.3 * 1)) / 2)
    assert stats["first_token_share"] == pytest.approx((0.5 + 0.2) / 2)

    bidirectional = np.array([[0.25, 0.75], [1.0, 0.0]])
    stats = attention_stats.head_statistics(bidirectional, causal=False)  # every query counts
    assert stats["entropy"] == pytest.approx(-(0.25 * np.log(0.25) + 0.75 * np.log(0.75)) / 2)
    assert stats["max_weight"] == pytest.approx((0.75 + 1.0) / 2)
    assert stats["mean_distance"] == pytest.approx((0.75 * 1 + 1.0 * 1) / 2)
    assert stats["first_token_share"] == pytest.approx((0.25 + 1.0) / 2)


def test_attention_stats_json_and_heatmaps_agree_with_a_direct_computation(smol: dict[str, Cache]) -> None:
    cache = smol["paris"]
    result = attention_stats.attention_stats(cache)
    data = json.loads(json.dumps(result["json"]))
    assert np.array(data["entropy"]).shape == (cache.n_layers, cache.n_heads)
    layer, head = 18, 6
    pattern = cache.pattern(layer, head).astype(np.float64)
    rows = range(1, cache.n_tokens)
    entropy = np.mean([-sum(p * np.log(p) for p in pattern[q, : q + 1] if p > 0) for q in rows])
    distance = np.mean([sum(pattern[q, k] * (q - k) for k in range(q + 1)) for q in rows])
    assert data["entropy"][layer][head] == pytest.approx(entropy, abs=1e-5)
    assert data["mean_distance"][layer][head] == pytest.approx(distance, abs=1e-5)
    assert data["first_token_share"][layer][head] == pytest.approx(pattern[1:, 0].mean(), abs=1e-5)
    stats = {name: np.array(data[name]) for name in attention_stats.STATISTICS}
    picture, grids = attention_stats.statistics_canvas(stats, "t")
    pixels = np.asarray(picture.image)
    for name, vmax in (("entropy", stats["entropy"].max()), ("first_token_share", 1.0)):
        grid = grids[name]
        drawn = _cell_colours(pixels, grid)[::-1]  # layer 0 is the bottom row
        _assert_colours(drawn, _cmap_rgb(Normalize(0.0, vmax)(stats[name])))
    assert isinstance(result["png"], Image.Image)


def test_stats_across_prompts_average_the_per_prompt_numbers(smol: dict[str, Cache], minilm: Cache) -> None:
    caches = [smol["paris"], smol["xss"], smol["long"]]
    data = attention_stats.attention_stats_across_prompts(caches)["json"]
    per_prompt = [attention_stats.attention_stats(c)["json"] for c in caches]
    assert data["n_prompts"] == 3 and [p["prompt_hash"] for p in data["prompts"]] == [c.prompt_hash for c in caches]
    assert np.array(data["per_prompt"]["entropy"]).shape == (3, caches[0].n_layers, caches[0].n_heads)
    expected = np.mean([p["first_token_share"] for p in per_prompt], axis=0)
    np.testing.assert_allclose(data["mean"]["first_token_share"], expected, atol=2e-6)
    with pytest.raises(ValueError, match="one model at a time"):
        attention_stats.attention_stats_across_prompts([smol["paris"], minilm])


# --- tokens coloured by values -------------------------------------------------------------------


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.attributes: list[tuple[str, str | None]] = []
        self.spans: list[dict[str, str | None]] = []
        self.texts: list[str] = []
        self._in_span = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attributes += attrs
        self._in_span = tag == "span" and ("class", "t") in attrs
        if self._in_span:
            self.spans.append(dict(attrs))

    def handle_data(self, data: str) -> None:
        if self._in_span:
            self.spans[-1]["text"] = data

    def handle_endtag(self, tag: str) -> None:
        self._in_span = False


def test_token_values_html_escapes_hostile_tokens_and_colours_by_value(hostile: Cache) -> None:
    page = tokens.token_values(hostile)["html"]
    parser = _Collect()
    parser.feed(page)
    # Only the page's own markup: no script, no handlers, nothing loaded from anywhere.
    assert parser.tags <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "section", "div", "span"}
    assert not [name for name, _ in parser.attributes if name.startswith("on") or name in ("src", "href")]
    for needle in ("<script", "<img", "http:", "https:", "url(", "@import"):
        assert needle not in page.lower()
    assert html.escape("<script>alert('tok')</script>") in page
    assert html.escape("<script>alert('prompt')</script> & friends") in page

    rows = tokens.token_rows(hostile)
    n = hostile.n_tokens
    assert len(parser.spans) == n * len(rows)
    norm_spans = parser.spans[n : 2 * n]  # row 2: residual norm after the last layer
    values = hostile.resid_norms[-1]
    scale = Normalize(values.min(), values.max())
    for i, span in enumerate(norm_spans):
        assert span["style"].startswith("background:#%02x%02x%02x" % tuple(_cmap_rgb(scale(values[i]))))
        assert f"= {values[i]:.4g}" in span["title"]
    assert parser.spans[2]["text"] == "<script>alert('tok')</script>"  # shown as text, after unescaping
    assert "<img src=x onerror=alert(3)>" in parser.spans[0]["title"]  # hover: the top-1 prediction, inert


def test_token_values_png_rows_are_the_cached_values(smol: dict[str, Cache]) -> None:
    cache = smol["long"]  # longer than a line of TOKENS_PER_LINE tokens: wrapped onto panels
    rows = tokens.token_rows(cache, layers=[2], neurons_per_layer=2)
    picture, panels = tokens.token_values_canvas(cache, rows)
    assert len(panels) == -(-cache.n_tokens // tokens.TOKENS_PER_LINE) > 1
    pixels = np.asarray(picture.image)
    expected_rows = [cache.topk_probs[:, 0], cache.resid_norms[-1], cache.neuron_acts[2, 0], cache.neuron_acts[2, 1]]
    for r, (row, values) in enumerate(zip(rows, expected_rows)):
        np.testing.assert_allclose(row.values, values, rtol=1e-6)
        drawn = np.concatenate([_cell_colours(pixels, grids[r])[0] for grids in panels])
        cmap = matplotlib.colormaps[row.cmap]
        _assert_colours(drawn, np.asarray(cmap(Normalize(row.vmin, row.vmax)(values), bytes=True))[:, :3])
    assert min(picture.sizes) >= canvas.FONT_PX


def test_neuron_heatmap_shows_the_stored_neurons_of_each_chosen_layer(smol: dict[str, Cache]) -> None:
    cache = smol["paris"]
    picture, grids = tokens.neuron_heatmap_canvas(cache)
    assert list(grids) == [0, 10, 19, 29]  # first, last and two between
    pixels = np.asarray(picture.image)
    rdbu = matplotlib.colormaps["RdBu_r"]
    for layer, grid in grids.items():
        acts = cache.neuron_acts[layer].astype(np.float32)
        limit = np.abs(acts).max()  # centred on 0
        _assert_colours(_cell_colours(pixels, grid), np.asarray(rdbu(Normalize(-limit, limit)(acts), bytes=True))[..., :3])
    with pytest.raises(ValueError, match="out of range"):
        tokens.neuron_heatmap(cache, layers=[30])


# --- predictions ---------------------------------------------------------------------------------


def _rgb(hex_color: str) -> tuple[int, ...]:
    return tuple(bytes.fromhex(hex_color[1:]))


def test_topk_bars_show_the_cached_predictions_and_mark_the_real_next_token(smol: dict[str, Cache]) -> None:
    cache = smol["paris"]  # 13 tokens: 12 evenly spaced positions, first and last included
    picture, bars = predictions.topk_bars_canvas(cache)
    assert len(bars) == 12 and min(bars) == 0 and max(bars) == cache.n_tokens - 1
    pixels = np.asarray(picture.image)
    first_is = cache.tokens.index(" is")
    left, bar_w, tops = bars[first_is]
    colours = {}
    for rank, top in enumerate(tops):
        middle = pixels[top + predictions.BAR_ROW // 2, left : left + bar_w]
        length = int(round(float(cache.topk_probs[first_is, rank]) * bar_w))
        if length >= 2:  # the bar is as long as its probability: a run of one colour from the axis
            run = 1 + (int(np.argmin((middle[1:] == middle[1]).all(-1))) or bar_w)  # column 0 is the axis line
            assert abs(run - length) <= 1
            colours[rank] = tuple(middle[1])
    assert set(colours.values()) <= {_rgb(predictions.BAR_COLOR), _rgb(predictions.ACTUAL_COLOR)}
    orange = [str(cache.topk_strs[first_is, r]) for r, c in colours.items() if c == _rgb(predictions.ACTUAL_COLOR)]
    assert orange == [" Paris"]  # the model's guess after "The capital of France is" really came next
    # The legend says what orange and blue mean, with a swatch of each colour above the panels.
    legend = pixels[: tops[0] - 20]
    for hex_color, text in predictions.LEGEND:
        assert (legend == _rgb(hex_color)).all(-1).sum() >= 50, text
    assert "actually came next" in predictions.LEGEND[1][1]


def test_topk_heatmap_cells_are_probabilities_in_panels_that_say_their_positions(smol: dict[str, Cache]) -> None:
    cache = smol["long"]
    picture = predictions.topk_heatmap_canvas(cache, max_positions=30, per_panel=12)
    assert [g.cols for g in picture.grids] == [10, 10, 10]
    pixels = np.asarray(picture.image)
    positions = list(range(cache.n_tokens - 30, cache.n_tokens))
    drawn = np.concatenate([_cell_colours(pixels, grid) for grid in picture.grids], axis=1)
    _assert_colours(drawn, _cmap_rgb(cache.topk_probs[positions].T))
    assert picture.image.width <= canvas.MAX_WIDTH and min(picture.sizes) >= canvas.FONT_PX
    # Written as a palette PNG: each cell within a few levels of its exact colour.
    written = _png_rgb(picture.finish()).astype(int)
    for grid in picture.grids:
        assert np.abs(_cell_colours(written, grid) - _cell_colours(pixels, grid)).max() <= 6
    # Each cell carries its token's text: ink of the other colour inside the cell.
    grid = picture.grids[-1]
    x, y = grid.cell(0, grid.cols - 1)
    cell = pixels[y : y + grid.cell_h, x : x + grid.cell_w].astype(int)
    assert (np.abs(cell - cell[1, 1]).max(-1) > 60).sum() > 10


def test_logit_lens_grid_is_layer_by_position_with_layer_zero_at_the_bottom(smol: dict[str, Cache], minilm: Cache) -> None:
    cache = smol["paris"]
    picture = predictions.logit_lens_canvas(cache)  # 13 positions: balanced panels of 7 and 6
    probs = cache.array("logit_lens_probs").astype(np.float32)
    assert [g.cols for g in picture.grids] == [7, 6] and {g.rows for g in picture.grids} == {cache.n_layers}
    drawn = np.concatenate([_cell_colours(np.asarray(picture.image), grid) for grid in picture.grids], axis=1)
    _assert_colours(drawn[::-1], _cmap_rgb(probs))
    assert picture.image.width <= canvas.MAX_WIDTH  # shown unscaled in the viewer's figure box
    long = predictions.logit_lens_canvas(smol["long"], max_positions=10)
    assert [g.cols for g in long.grids] == [10]
    assert not minilm.has("logit_lens_ids")  # the stage skips the figure here, by its `needs`


# --- projection and summary ---------------------------------------------------------------------


def test_token_pca_matches_an_svd_of_the_standardised_neuron_features(smol: dict[str, Cache]) -> None:
    cache = smol["long"]
    result = projection.token_pca(cache)
    data = json.loads(json.dumps(result["json"]))
    assert "MLP neurons" in data["features"] and data["skipped_positions"] == [0]
    assert [p["token"] for p in data["points"]] == cache.tokens[1:]
    # Independent route: the SVD of the standardised [tokens, neurons] matrix.
    x = cache.neuron_acts.transpose(2, 0, 1).reshape(cache.n_tokens, -1)[1:].astype(np.float64)
    x = x[:, x.std(0) > 0]
    x = (x - x.mean(0)) / x.std(0)
    u, singular, _ = np.linalg.svd(x, full_matrices=False)
    expected = u[:, :2] * singular[:2]
    got = np.array([[p["x"], p["y"]] for p in data["points"]])
    for axis in range(2):  # an axis's sign is a convention
        sign = np.sign(got[:, axis] @ expected[:, axis])
        np.testing.assert_allclose(got[:, axis], sign * expected[:, axis], atol=1e-4)
    np.testing.assert_allclose(data["explained_variance_ratio"], singular[:2] ** 2 / (singular**2).sum(), atol=1e-5)
    points, _ = projection.to_pixels(got, (0, 0, projection.PLOT_W, projection.PLOT_H))
    assert (points >= 0).all() and (points[:, 0] < projection.PLOT_W).all() and (points[:, 1] < projection.PLOT_H).all()
    assert isinstance(result["png"], Image.Image)
    with pytest.raises(SkipFigure, match="too few"):
        projection.token_pca(smol["hi"])


def test_model_summary_states_the_architecture(smol: dict[str, Cache], minilm: Cache) -> None:
    text = summary.model_summary([smol["paris"], smol["hi"], smol["long"]])
    for row in ("| layers | 30 |", "| heads per layer | 9 (270 in all) |", "| d_model | 576 |", "| d_head | 64 |",
                "| prompts cached | 3 |", "| logit lens | yes |", "(causal decoder)"):
        assert row in text
    assert text.startswith("# SmolLM2-135M-Instruct")
    encoder = summary.model_summary([minilm])
    assert "| layers | 6 |" in encoder and "| heads per layer | 12 (72 in all) |" in encoder
    assert "bidirectional encoder" in encoder and "not meaningful" in encoder


# --- through the real stage ---------------------------------------------------------------------


def test_every_builtin_runs_through_the_figures_stage(smol_dir: Path, smol: dict[str, Cache]) -> None:
    from lens_pipeline.figures import run_figures

    mine = {module.__name__ for module in (attention, attention_stats, predictions, projection, summary, tokens)}
    names = sorted(name for name, spec in REGISTRY.items() if spec.func.__module__ in mine)
    result = run_figures(smol_dir, figures=names, prompts=[smol["xss"].prompt_hash], layers="0", heads="0", progress=False)
    by_name = {row["function"]: row for row in result.rows}
    assert set(by_name) == set(names)
    assert {name: row["status"] for name, row in by_name.items() if row["status"] != "ok"} == {}
    for row in result.rows:
        for entry in row["files"]:
            assert (smol_dir / entry["path"]).stat().st_size == entry["bytes"] > 0
    page = next(e for e in by_name["token_values"]["files"] if e["format"] == "html")
    assert "&lt;script&gt;" in (smol_dir / page["path"]).read_text(encoding="utf-8")
