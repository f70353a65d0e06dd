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
from matplotlib.colors import Normalize, to_hex
from PIL import Image

import lens_pipeline.draw.builtins  # noqa: F401  (registers the built-ins)
from lens_pipeline.activations import run_activations
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
    assert REGISTRY["attention_heatmap"].params == {"cmap": "viridis", "side": 200}


# --- attention pictures -------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["smollm2", "minilm"])
def test_fast_heatmap_pixels_are_the_colormap_of_the_cached_weights(which: str, smol: dict[str, Cache], minilm: Cache) -> None:
    cache = smol["xss"] if which == "smollm2" else minilm
    n = cache.n_tokens
    # Out of layer order on purpose: the per-layer colour memo must never serve a stale layer.
    for layer, head in [(1, 0), (0, 2), (cache.n_layers - 1, cache.n_heads - 1), (1, 1)]:
        image = attention.attention_heatmap(cache, layer, head)
        scale = round(200 / n)
        assert image.size == (n * scale, n * scale)
        pixels = _png_rgb(image)
        pattern = cache.pattern(layer, head)
        # Every cell, at the centre of its block, is the colormap of the cached value ...
        np.testing.assert_array_equal(pixels[scale // 2 :: scale, scale // 2 :: scale], _cmap_rgb(pattern))
        # ... and each block is one flat colour (whole-number nearest-neighbour enlargement).
        np.testing.assert_array_equal(pixels, np.repeat(np.repeat(_cmap_rgb(pattern), scale, 0), scale, 1))
    if not cache.causal:  # a bidirectional model's first token attends to the last one
        assert cache.pattern(0, 0)[0, -1] > 0.01
        assert tuple(_png_rgb(attention.attention_heatmap(cache, 0, 0))[0, -1]) != tuple(_cmap_rgb(0.0))


def test_layer_grid_places_every_head_in_its_labelled_tile(smol: dict[str, Cache]) -> None:
    cache = smol["paris"]
    layout, scale = attention.layer_grid_layout(cache.n_tokens, cache.n_heads, side=128)
    pixels = np.asarray(attention.attention_layer_grid(cache, 5))
    assert pixels.shape[:2] == (layout.size[1], layout.size[0])
    for head in range(cache.n_heads):
        x, y = layout.origin(*divmod(head, layout.cols))
        tile = pixels[y : y + layout.side, x : x + layout.side]
        np.testing.assert_array_equal(tile[scale // 2 :: scale, scale // 2 :: scale], _cmap_rgb(cache.pattern(5, head)))
    assert (pixels[: layout.top - 2] != 255).any()  # the head labels were drawn above the first row


def test_overview_has_a_tile_per_layer_and_head_max_pooled_for_long_prompts(smol: dict[str, Cache]) -> None:
    cache = smol["long"]
    cell = 16  # small, so this prompt is shrunk and the pooling is exercised
    layout, enlarge, shrink = attention.overview_layout(cache.n_tokens, cache.n_layers, cache.n_heads, cell)
    assert shrink > 1 and enlarge == 1
    pixels = np.asarray(attention.attention_overview(cache, cell=cell))
    assert pixels.shape[:2] == (layout.size[1], layout.size[0])
    n, blocks = cache.n_tokens, layout.side
    for layer in (0, cache.n_layers - 1):
        for head in range(cache.n_heads):
            padded = np.zeros((blocks * shrink, blocks * shrink), np.float32)
            padded[:n, :n] = cache.pattern(layer, head)
            pooled = padded.reshape(blocks, shrink, blocks, shrink).max(axis=(1, 3))
            x, y = layout.origin(layer, head)
            np.testing.assert_array_equal(pixels[y : y + blocks, x : x + blocks], _cmap_rgb(pooled))


def test_labeled_heatmap_shows_the_pattern_with_escaped_token_labels(smol: dict[str, Cache]) -> None:
    cache = smol["xss"]
    figure = attention.attention_labeled(cache, 3, 4)
    axes = figure.axes[0]
    shown = axes.images[0].get_array()
    np.testing.assert_array_equal(shown.filled(0), cache.pattern(3, 4))
    assert shown.mask[0, 1] and not shown.mask[1, 0]  # future keys of a causal model are greyed out
    labels = [t.get_text() for t in axes.get_xticklabels()]
    assert labels == [token_label(t) for t in cache.tokens]
    assert any(r"\$" in label for label in labels)  # '$' would otherwise switch on mathtext
    assert "L3 H4" in axes.get_title()
    _draw(figure)
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
    panels = {a.get_title(): a.images[0].get_array() for a in result["png"].axes if a.images}
    np.testing.assert_allclose(panels["entropy (nats)"], data["entropy"], atol=1e-6)
    np.testing.assert_allclose(panels["first-token share"], data["first_token_share"], atol=1e-6)


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
    cache = smol["paris"]
    figure = tokens.token_values(cache, layers=[2], neurons_per_layer=2)["png"]
    images = [a.images[0].get_array()[0] for a in figure.axes if a.images]
    np.testing.assert_allclose(images[0], cache.topk_probs[:, 0])
    np.testing.assert_allclose(images[1], cache.resid_norms[-1])
    np.testing.assert_allclose(images[2], cache.neuron_acts[2, 0])
    bottom_row = [a for a in figure.axes if a.images][-1]
    assert [t.get_text() for t in bottom_row.get_xticklabels()] == [token_label(t) for t in cache.tokens]
    _draw(figure)


def test_neuron_heatmap_shows_the_stored_neurons_of_each_chosen_layer(smol: dict[str, Cache]) -> None:
    cache = smol["paris"]
    figure = tokens.neuron_heatmap(cache)
    heatmaps = [a for a in figure.axes if a.images]
    assert len(heatmaps) == 4  # first, last and two between
    for axes, layer in zip(heatmaps, [0, 10, 19, 29]):
        np.testing.assert_array_equal(axes.images[0].get_array(), cache.neuron_acts[layer])
        assert [t.get_text() for t in axes.get_yticklabels()] == [str(i) for i in cache.neuron_ids[layer]]
        low, high = axes.images[0].get_clim()
        assert low == -high == -np.abs(cache.neuron_acts[layer]).max()  # centred on 0
    with pytest.raises(ValueError, match="out of range"):
        tokens.neuron_heatmap(cache, layers=[30])


# --- predictions ---------------------------------------------------------------------------------


def test_topk_bars_show_the_cached_predictions_and_mark_the_real_next_token(smol: dict[str, Cache]) -> None:
    cache = smol["paris"]  # 13 tokens: 12 evenly spaced positions, first and last included
    figure = predictions.topk_bars(cache)
    axes_list = figure.axes
    positions = [int(a.get_title().split()[0][1:]) for a in axes_list]
    assert len(axes_list) == 12 and positions[0] == 0 and positions[-1] == cache.n_tokens - 1
    first_is = cache.tokens.index(" is")
    axes = axes_list[positions.index(first_is)]
    widths = [bar.get_width() for bar in axes.patches]
    np.testing.assert_allclose(widths, cache.topk_probs[first_is])
    labels = [t.get_text() for t in axes.get_yticklabels()]
    assert labels == [token_label(s) for s in cache.topk_strs[first_is]]
    orange = [label for label, bar in zip(labels, axes.patches) if to_hex(bar.get_facecolor()) == predictions.ACTUAL_COLOR]
    assert orange == [" Paris"]  # the model's guess after "The capital of France is" really came next


def test_topk_heatmap_cells_are_probabilities_labelled_with_tokens(smol: dict[str, Cache]) -> None:
    cache = smol["paris"]
    figure = predictions.topk_heatmap(cache)
    axes = figure.axes[0]
    np.testing.assert_allclose(axes.images[0].get_array(), cache.topk_probs.T)
    texts = {(round(t.get_position()[0]), round(t.get_position()[1])): t.get_text() for t in axes.texts}
    assert texts[(cache.n_tokens - 1, 0)] == token_label(cache.topk_strs[-1, 0], 8) == " Paris"


def test_logit_lens_grid_is_layer_by_position_with_top_tokens(smol: dict[str, Cache], minilm: Cache) -> None:
    cache = smol["paris"]
    figure = predictions.logit_lens(cache)
    axes = figure.axes[0]
    probs = cache.array("logit_lens_probs").astype(np.float32)
    np.testing.assert_allclose(axes.images[0].get_array(), probs)
    texts = {(round(t.get_position()[0]), round(t.get_position()[1])): t.get_text() for t in axes.texts}
    assert len(texts) == probs.size
    assert texts[(cache.n_tokens - 1, cache.n_layers - 1)] == " Paris"  # the last layer's lens is the output
    long = predictions.logit_lens(smol["long"], max_positions=10)
    assert long.axes[0].images[0].get_array().shape == (cache.n_layers, 10)
    assert "last 10 of" in long.axes[0].get_xlabel()
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
    assert [t.get_text() for t in result["png"].axes[0].texts] == [token_label(t, 12) for t in cache.tokens[1:]]
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
