"""The model card and what is drawn from it: parameter counts against the models' own tensors, the
embedding PCA against numpy's SVD, plotted points against embeddings projected by hand, residual
trajectories against a fresh forward pass; the card written once per model and recorded in the index.

Real models (SmolLM2, MiniLM, a random-weight GPT-2 small), the real activations and figures stages."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lens_pipeline.activations import run_activations
from lens_pipeline.capture import model_card, models
from lens_pipeline.draw.builtins.architecture import architecture, draw_architecture
from lens_pipeline.draw.builtins.embedding import embedding_tokens, residual_trajectories
from lens_pipeline.store import index
from lens_pipeline.store.cache import Cache, ExtractSettings
from lens_pipeline.viewer.live_index import LiveIndex

pytestmark = pytest.mark.slow
PROMPT = "The king and the queen walked through the castle garden, talking about Paris and Rome."
# name as the stage takes it, random weights?, the model's folder name under the save path
# (SmolLM2 last: the stage keeps the last model it loaded, and most tests below use SmolLM2.)
MODELS = {"gpt2": ("gpt2", True), "minilm": ("minilm", False), "smollm2": ("smollm2", False)}


def _run(root: Path, which: str, **options: Any) -> tuple[Path, Cache]:
    name, random_weights = MODELS[which]
    prompts = root / "prompts.txt"
    prompts.write_text(PROMPT + "\n", encoding="utf-8")
    save = root / "data"
    summary = run_activations(name, prompts, save, random_weights=random_weights, progress=False, log=lambda _: None,
                              **options)
    assert summary.failed == 0
    row = next(r for r in index.read_rows(save) if r["kind"] == "cache")
    return save, Cache(save / row["path"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Cache]]:
    """Each model through the activations stage once (SmolLM2 with --embedding-views)."""
    out = {}
    for which in MODELS:
        options = {"embedding_views": True} if which == "smollm2" else {}
        out[which] = _run(tmp_path_factory.mktemp(which), which, **options)
    return out


def _figure_texts(figure: Any) -> str:
    return "\n".join(text.get_text() for axes in figure.axes for text in axes.texts)


# --- parameter counts ----------------------------------------------------------------------------------


def _reference_parts(which: str) -> tuple[dict[str, int], int, int]:
    """Counts per part by this test's own reading of each model's tensor names, the total
    sum(p.numel()) and the layer count: the loaded model for SmolLM2 and MiniLM; for GPT-2 a plain
    transformers GPT2LMHeadModel of GPT-2 small's config with SmolLM2's vocabulary, the documented
    random shape (the bridge adds split q/k/v copies of c_attn to its own copy)."""
    parts: dict[str, int] = {}

    def add(part: str, count: int) -> None:
        parts[part] = parts.get(part, 0) + count

    if which == "gpt2":
        import transformers

        with torch.device("meta"):  # shapes only: no memory, no initialisation
            hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=49152))
        named = list(hf.named_parameters())
    else:
        hf = models.load_model(models.resolve_source(which), "cpu", "float32").bridge.original_model
        named = [(name.replace("._original_component", ""), p) for name, p in hf.named_parameters()]
    d = hf.config.hidden_size if which != "gpt2" else hf.config.n_embd
    for name, p in named:
        count = p.numel()
        if which == "gpt2" and "c_attn" in name:  # [d, 3d] columns (and [3d] bias): q | k | v
            for i, part in enumerate(("attn_q", "attn_k", "attn_v")):
                add(part, p[..., i * d:(i + 1) * d].numel())
            continue
        rules = {  # (regular expression over the name, part), first match wins
            "smollm2": [(r"q_proj", "attn_q"), (r"k_proj", "attn_k"), (r"v_proj", "attn_v"), (r"o_proj", "attn_o"),
                        (r"gate_proj", "mlp_gate"), (r"up_proj", "mlp_in"), (r"down_proj", "mlp_out"),
                        (r"layernorm", "block_norms"), (r"embed_tokens", "embed"), (r"^model\.norm", "final_norm"),
                        (r"lm_head", "unembed")],
            "minilm": [(r"\.query\.", "attn_q"), (r"\.key\.", "attn_k"), (r"\.value\.", "attn_v"),
                       (r"attention\.output\.dense", "attn_o"), (r"intermediate\.dense", "mlp_in"),
                       (r"layer\.\d+\.output\.dense", "mlp_out"), (r"encoder\.layer\.\d+\..*LayerNorm", "block_norms"),
                       (r"word_embeddings", "embed"), (r"position_embeddings", "pos_embed"),
                       (r"token_type_embeddings", "token_type_embed"), (r"embeddings\.LayerNorm", "embed_norm"),
                       (r"^cls\.predictions", "head_extra")],
            "gpt2": [(r"attn\.c_proj", "attn_o"), (r"mlp\.c_fc", "mlp_in"), (r"mlp\.c_proj", "mlp_out"),
                     (r"ln_f", "final_norm"), (r"\.ln_\d", "block_norms"), (r"wte", "embed"), (r"wpe", "pos_embed"),
                     (r"lm_head", "unembed")],
        }[which]
        part = next(part for pattern, part in rules if re.search(pattern, name))
        add(part, count)
    n_layers = hf.config.n_layer if which == "gpt2" else hf.config.num_hidden_layers
    return parts, sum(p.numel() for p in hf.parameters()), n_layers


@pytest.mark.parametrize("which", list(MODELS))
def test_diagram_counts_equal_the_models_tensors_per_part_and_in_total(runs: dict, which: str) -> None:
    save, cache = runs[which]
    parts, total, n_layers = _reference_parts(which)
    drawn = architecture([cache])
    data = drawn["json"]
    assert data["total"] == total
    assert {part: count for part, count in data["parts"].items() if count} == parts
    assert data["n_blocks"] == n_layers and data["blocks_identical"]
    for part, count in data["per_block"].items():  # the block drawn once stands for all n_layers
        assert count * n_layers == parts.get(part, 0), part
    texts = _figure_texts(drawn["png"])
    assert f"{total:,} parameters" in texts
    for label, part in (("W_Q", "attn_q"), ("W_K", "attn_k"), ("W_V", "attn_v"), ("W_O", "attn_o")):
        assert f"{label} {data['per_block'][part]:,}" in texts
    assert f"× {n_layers} blocks" in texts
    for part, count in parts.items():  # the table: every part, summed over the blocks
        assert f"{count:,}" in texts, part


def test_gpt2_parameters_counted_once_in_the_card_and_every_cache(runs: dict) -> None:
    """The bridge keeps split q/k/v copies of GPT-2's fused c_attn beside it, so summing the bridge's
    copy counts q/k/v twice; the card, its index row and every cache's meta count the model's own
    parameters once: sum(p.numel()) of the plain torch module of GPT-2 small (SmolLM2's vocabulary)."""
    import transformers

    with torch.device("meta"):
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=49152))
    total = sum(p.numel() for p in hf.parameters())
    model = models.load_model(models.resolve_source("gpt2", random_weights=True), "cpu", "float32")
    bridge_copy = sum(p.numel() for p in model.bridge.original_model.parameters())
    qkv_copies = 12 * (768 * 3 * 768 + 3 * 768)  # each layer's c_attn weight and bias again, as q, k and v
    assert bridge_copy == total + qkv_copies
    assert model_card.n_params(model) == total
    save, cache = runs["gpt2"]
    assert cache.meta["n_params"] == total
    [card] = [r for r in index.read_rows(save) if r["kind"] == "model_card"]
    assert card["n_params"] == json.loads((save / card["path"]).read_text())["parameters"]["total"] == total


def test_smollm2_diagram_shows_gqa_gating_rope_and_pre_norm(runs: dict) -> None:
    card = model_card.card_for(runs["smollm2"][1])
    arch = card.architecture
    assert (arch["n_heads"], arch["n_kv_heads"], arch["d_head"], arch["d_mlp"], arch["n_layers"]) == (9, 3, 64, 1536, 30)
    assert arch["grouped_query"] and arch["gated_mlp"] and arch["tied_embeddings"]
    texts = _figure_texts(draw_architecture(card))
    assert "3 key/value heads: grouped-query attention (GQA), 3 query heads per K/V head" in texts
    assert "MLP, gated: 576 → 1,536 → 576" in texts and "W_gate 884,736" in texts
    assert "rotary (RoPE), θ = 100000" in texts and "RMSNorm (576) (pre-norm)" in texts
    assert "W_U tied to the token embedding" in texts
    minilm = _figure_texts(draw_architecture(model_card.card_for(runs["minilm"][1])))
    assert "GQA" not in minilm and "post-norm" in minilm and "bidirectional" in minilm
    assert "gated" not in _figure_texts(draw_architecture(model_card.card_for(runs["gpt2"][1])))


# --- embedding PCA and the points drawn from it --------------------------------------------------------


def test_each_plotted_token_is_its_embedding_projected_and_its_neighbours_are_the_nearest(runs: dict) -> None:
    save, cache = runs["smollm2"]
    card = model_card.card_for(cache)
    model = models.load_model(models.resolve_source("smollm2"), "cpu", "float32")
    matrix = model.bridge.original_model.get_input_embeddings().weight.detach().double().numpy()
    drawn = embedding_tokens(cache)
    expected = (matrix[cache.token_ids] - card.arrays["embed_mean"]) @ card.arrays["embed_components"].T
    points = np.array([[p["x"], p["y"], p["z"]] for p in drawn["json"]["points"]])
    np.testing.assert_allclose(points, expected, rtol=1e-5, atol=1e-5)
    assert [p["token_id"] for p in drawn["json"]["points"]] == cache.token_ids.tolist()
    plotted = drawn["png"].axes[0].collections[-1].get_offsets()  # the prompt's tokens, drawn last
    np.testing.assert_allclose(np.asarray(plotted), expected[:, :2], rtol=1e-5, atol=1e-5)
    normed = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    assert drawn["json"]["neighbors"]
    for entry in drawn["json"]["neighbors"]:  # the 3 most similar (near-ties may swap: float32 at capture)
        cosine = normed @ normed[entry["token_id"]]
        cosine[entry["token_id"]] = -np.inf
        found = [n["token_id"] for n in entry["neighbors"]]
        np.testing.assert_allclose(cosine[found], np.sort(cosine)[::-1][:3], atol=1e-5)
        np.testing.assert_allclose([n["cosine"] for n in entry["neighbors"]], cosine[found], atol=2e-3)  # float16


def test_trajectories_are_the_residual_stream_projected_on_the_shared_basis(runs: dict) -> None:
    save, cache = runs["smollm2"]
    card = model_card.card_for(cache)
    model = models.load_model(models.resolve_source("smollm2"), "cpu", "float32")
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.hook_resid_post" for layer in range(cache.n_layers)]
    with torch.no_grad():
        _, activations = model.bridge.run_with_cache(torch.tensor([cache.token_ids.tolist()]), names_filter=names)
    residuals = np.stack([activations[name][0].double().numpy() for name in names])  # [L+1, T, d]
    unit = residuals / np.sqrt((residuals**2).mean(-1, keepdims=True))
    expected = (unit - card.arrays["resid_mean"]) @ card.arrays["resid_components"].T
    np.testing.assert_allclose(cache.array("resid_proj"), expected, atol=2e-3)
    drawn = residual_trajectories(cache)
    for trajectory in drawn["json"]["trajectories"]:
        np.testing.assert_allclose(trajectory["points"], cache.array("resid_proj")[:, trajectory["position"]], atol=1e-5)
    assert drawn["json"]["trajectories"][0]["position"] == 1  # the first token is left out by default


# --- written once, recorded, read by nobody who does not want it ------------------------------------------


def test_card_is_written_once_per_model_recorded_and_rewritten_when_missing(tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("To be, or not to be\nFriends, Romans, countrymen\n", encoding="utf-8")
    save = tmp_path / "data"
    first = run_activations("tiny-llama", prompts, save, random_weights=True, progress=False, log=lambda _: None)
    cards = [r for r in index.read_rows(save) if r["kind"] == "model_card"]
    assert first.written == 2 and len(cards) == 1 and cards[0]["status"] == "ok"
    assert {f["path"] for f in cards[0]["files"]} == {"caches/tiny-llama-random/model_card.json",
                                                       "caches/tiny-llama-random/model_card.npz"}
    info = json.loads((save / cards[0]["path"]).read_text())
    assert info["parameters"]["total"] == sum(info["parameters"]["parts"].values()) == cards[0]["n_params"]
    again = run_activations("tiny-llama", prompts, save, random_weights=True, progress=False, log=lambda _: None)
    assert again.models_loaded == [] and len([r for r in index.read_rows(save) if r["kind"] == "model_card"]) == 1
    (save / cards[0]["path"]).unlink()  # a save path without its card: the next run loads the model for it
    third = run_activations("tiny-llama", prompts, save, random_weights=True, progress=False, log=lambda _: None)
    assert third.models_loaded == ["tiny-llama-random"] and third.written == 0
    assert (save / cards[0]["path"]).read_bytes() == json.dumps(info, ensure_ascii=False, indent=1).encode()
    view = LiveIndex(save).view()  # the viewer's reader sees caches and figures only
    assert view.bad_lines == 0 and all(row["kind"] == "figure" for row in view.figures)


def test_embedding_views_setting_keeps_old_settings_ids_and_covers_plain_requests() -> None:
    plain, views = ExtractSettings(), ExtractSettings(embedding_views=True)
    assert "embedding_views" not in plain.as_dict() and plain.settings_id != views.settings_id
    assert views.covers(plain.as_dict()) is False and plain.covers(views.as_dict()) is True


def test_figures_stage_draws_the_architecture_from_the_card_alone(runs: dict, tmp_path: Path) -> None:
    from lens_pipeline.figures import run_figures

    save = tmp_path / "copy"
    shutil.copytree(runs["minilm"][0], save)
    summary = run_figures(save, figures=["architecture"], progress=False)
    (row,) = summary.rows
    assert row["status"] == "ok" and [f["format"] for f in row["files"]] == ["png", "svg", "json"]
    assert json.loads((save / row["files"][2]["path"]).read_text())["total"] == 22_744_506
    (save / "caches" / "all-MiniLM-L6-v2" / model_card.CARD_JSON).unlink()
    failed = run_figures(save, figures=["architecture"], progress=False, force=True)
    assert failed.rows[0]["status"] == "error" and "no model card" in failed.rows[0]["error"]


def test_embedding_basis_is_numpys_svd_of_the_same_matrix(runs: dict) -> None:
    card = model_card.card_for(runs["minilm"][1])
    model = models.load_model(models.resolve_source("minilm"), "cpu", "float32")
    matrix = model.bridge.original_model.get_input_embeddings().weight.detach().double().numpy()
    centred = matrix - matrix.mean(0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(card.arrays["embed_mean"], matrix.mean(0), atol=1e-12)
    for axis in range(3):
        ours, numpys = card.arrays["embed_components"][axis], vt[axis]
        np.testing.assert_allclose(ours * np.sign(ours @ numpys), numpys, atol=1e-8)
    np.testing.assert_allclose(card.arrays["embed_explained"], singular[:3] ** 2 / (singular**2).sum(), rtol=1e-9)
    ids = np.array([0, 7, 2023, len(matrix) - 1])
    np.testing.assert_allclose(card.arrays["vocab_coords"][ids], centred[ids] @ vt[:3].T * np.sign(
        np.einsum("kd,kd->k", card.arrays["embed_components"], vt[:3])), rtol=1e-5, atol=1e-6)


def test_3d_projections_open_offline_from_file_and_hold_the_cached_values(runs: dict, tmp_path: Path) -> None:
    """The interactive pages from file:// with the network off: drawn, no console error, and the
    points the browser holds are the card's coordinates and the cache's trajectories."""
    from selenium.webdriver.support.ui import WebDriverWait

    from lens_pipeline.figures import run_figures
    from viewer_data import _require_browser

    _require_browser()
    from screenshots import chromium  # scripts/ is on sys.path (conftest)

    save = tmp_path / "copy"
    shutil.copytree(runs["smollm2"][0], save)
    summary = run_figures(save, figures=["embedding_tokens_3d", "residual_trajectories_3d"], progress=False)
    rows = {row["function"]: row for row in summary.rows}
    assert {name: row["status"] for name, row in rows.items()} == {"embedding_tokens_3d": "ok", "residual_trajectories_3d": "ok"}
    cache = Cache(save / runs["smollm2"][1].path.relative_to(runs["smollm2"][0]))
    card = model_card.card_for(cache)
    read = ("const f = document.querySelector('.lens-figure');"
            "return f._fullData.map(t => [t.name, Array.from(t.x || []), Array.from(t.y || []), Array.from(t.z || [])]);")
    with tempfile.TemporaryDirectory() as profile:
        driver = chromium(1000, 800, profile, log_network=True, flags=("--enable-unsafe-swiftshader",))
        try:
            driver.execute_cdp_cmd("Network.enable", {})
            driver.execute_cdp_cmd("Network.emulateNetworkConditions", {"offline": True, "latency": 0,
                                                                        "downloadThroughput": -1, "uploadThroughput": -1})
            traces = {}
            for name, row in rows.items():
                driver.get((save / row["path"]).as_uri())
                WebDriverWait(driver, 60).until(lambda d: d.execute_script(
                    "const f = document.querySelector('.lens-figure'); return f && f.dataset.ready === '1';"))
                errors = [e["message"] for e in driver.get_log("browser")
                          if e["level"] == "SEVERE" and "favicon" not in e["message"]]
                assert errors == [], (name, errors)
                traces[name] = {trace[0]: np.array(trace[1:], dtype=float) for trace in driver.execute_script(read)}
        finally:
            driver.quit()
    tokens = traces["embedding_tokens_3d"]["this prompt's tokens"]  # [3, n]
    np.testing.assert_allclose(tokens.T, card.embedding_coords(cache.token_ids), rtol=1e-6, atol=1e-6)
    (path,) = [xyz for name, xyz in traces["residual_trajectories_3d"].items() if name.startswith("1: ")]  # position 1
    np.testing.assert_allclose(path.T, cache.array("resid_proj")[:, 1], rtol=1e-6, atol=1e-6)
