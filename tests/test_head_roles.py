"""Head roles (lens_pipeline/capture/head_roles.py): the scores against transformer_lens.head_detector
on SmolLM2 and a random-weight GPT-2 small, the causal check stored and recomputed by hand, encoders
without induction, labels and the figure; written once per model by the activations stage and
drawn by the figures stage, from the command line.

Real models (SmolLM2, a random GPT-2 small, tiny random Llama and BERT), the real stages."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformer_lens import head_detector

import lens_pipeline.draw.builtins  # noqa: F401  (registers the built-ins)
from conftest import REPO, python_cmd, write_jsonl
from lens_pipeline.activations import run_activations
from lens_pipeline.capture import head_roles, models
from lens_pipeline.draw.builtins import architecture3d, attention
from lens_pipeline.draw.builtins import head_roles as head_roles_figure
from lens_pipeline.figures import run_figures
from lens_pipeline.store import index
from lens_pipeline.store.cache import Cache
from lens_pipeline.store.head_roles import LABEL_THRESHOLDS, ROLES, head_label, read_head_roles, role_of, roles_beside

SMOLLM2 = "SmolLM2-135M-Instruct"


def _cache_rows(save: Path) -> list[dict[str, Any]]:
    return [r for r in index.latest(index.read_rows(save)).values() if r["kind"] == "cache" and r["status"] == "ok"]


def _roles_rows(save: Path) -> list[dict[str, Any]]:
    return [r for r in index.read_rows(save) if r["kind"] == "head_roles"]


def _patterns(model: Any, tokens: list[list[int]]) -> list[list[torch.Tensor]]:
    """Each sequence's [H, T, T] pattern per layer, from TransformerLens's own run_with_cache of one
    batch of equal-length sequences."""
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(torch.tensor(tokens, device=model.device))
    layers = [cache["pattern", layer, "attn"].float().cpu() for layer in range(model.bridge.cfg.n_layers)]
    return [[layer[row] for layer in layers] for row in range(len(tokens))]


def _tl_score(patterns: list[torch.Tensor], detection: torch.Tensor) -> np.ndarray:
    """[L, H] transformer_lens.head_detector "mul" scores of one sequence's patterns."""
    return np.array([[head_detector.compute_head_attention_similarity_score(
        layer[head], detection, exclude_bos=False, exclude_current_token=False, error_measure="mul")
        for head in range(layer.shape[0])] for layer in patterns])


def _first_token_pattern(length: int) -> torch.Tensor:
    """The detection pattern of the first-token share (TL has none): column 0 for every query but the first."""
    pattern = torch.zeros(length, length)
    pattern[1:, 0] = 1
    return pattern


def _reference(model: Any) -> dict[str, np.ndarray]:
    """Every role's [L, H] table from transformer_lens.head_detector's "mul" scores, rescaled from its
    denominator (all T queries) to ours (the queries that have the role), averaged over the same sequences."""
    texts = head_roles.text_tokens(model)
    repeated = head_roles.repeated_tokens(model)
    n = head_roles.REPEAT_LEN
    per: dict[str, list[np.ndarray]] = {role: [] for role in ROLES}
    sequences = [*texts, *repeated.tolist()]
    every = [*(_patterns(model, [text])[0] for text in texts), *_patterns(model, repeated.tolist())]
    for row, (tokens, patterns) in enumerate(zip(sequences, every)):
        ids = torch.tensor([tokens])
        length = len(tokens)
        duplicate = head_detector.get_duplicate_token_head_detection_pattern(ids)
        with_copy = int((duplicate.sum(-1) > 0).sum())
        per["previous_token"].append(_tl_score(patterns, head_detector.get_previous_token_head_detection_pattern(ids))
                                     * length / (length - 1))
        per["duplicate_token"].append(_tl_score(patterns, duplicate) * length / with_copy)
        per["first_token"].append(_tl_score(patterns, _first_token_pattern(length)) * length / (length - 1))
        if row >= len(texts):
            assert with_copy == n  # each second-half token has exactly one earlier copy, no first-half token has one
            per["induction"].append(_tl_score(patterns, head_detector.get_induction_head_detection_pattern(ids)) * length / n)
    return {role: np.mean(tables, axis=0) for role, tables in per.items()}


# --- SmolLM2, through the activations stage ----------------------------------------------------------------


@pytest.fixture(scope="module")
def smol(smollm2_run: Path) -> tuple[Path, dict[str, Any], Any]:
    """(save path, its head roles, the model the stage used)."""
    roles = read_head_roles(smollm2_run, SMOLLM2)
    assert roles is not None, "the activations stage writes the model's head roles"
    model = models.load_model(models.resolve_source("smollm2", False), "auto", "auto")  # the stage's, reused
    return smollm2_run, roles, model


@pytest.mark.slow
def test_smollm2_scores_are_transformer_lens_head_detector_scores(smol: tuple[Path, dict[str, Any], Any]) -> None:
    save, roles, model = smol
    reference = _reference(model)
    for role in ROLES:
        np.testing.assert_allclose(np.array(roles["scores"][role]), reference[role], atol=2e-5, err_msg=role)
    # detect_head itself runs on the TransformerBridge: the natural text's previous-token score is its score x T/(T-1).
    (text,) = head_roles.TEXTS
    length = len(head_roles.text_tokens(model)[0])
    tl = head_detector.detect_head(model.bridge, text, "previous_token_head").cpu().numpy()
    ours, _ = head_roles.sequence_scores(model, np.array(head_roles.text_tokens(model)))
    np.testing.assert_allclose(ours["previous_token"][0], tl * length / (length - 1), atol=1e-5)


@pytest.mark.slow
def test_smollm2_top_heads_and_the_stored_causal_check(smol: tuple[Path, dict[str, Any], Any]) -> None:
    save, roles, model = smol
    induction = np.array(roles["scores"]["induction"])
    assert induction.shape == (30, 9) and roles["causal"] is True
    check = roles["causal_check"]
    top = check["top_head"]
    assert (top["layer"], top["head"]) == np.unravel_index(induction.argmax(), induction.shape)
    assert roles["top"]["induction"][0] == {"layer": top["layer"], "head": top["head"], "score": induction.max()}
    assert (top["layer"], top["head"]) == (18, 6) and top["induction"] > 0.8  # SmolLM2's strongest induction head
    assert roles["top"]["previous_token"][0]["score"] > 0.8
    randoms = [(r["layer"], r["head"]) for r in check["random_heads"]]
    assert len(set(randoms)) == head_roles.N_RANDOM_HEADS and (top["layer"], top["head"]) not in randoms
    assert randoms == head_roles.random_heads(30, 9, (top["layer"], top["head"]))  # seeded: the same heads every time
    assert check["rise_top"] == pytest.approx(check["loss_ablated_top"] - check["loss_clean"])
    assert check["rise_random_max"] == pytest.approx(max(r["loss"] for r in check["random_heads"]) - check["loss_clean"])
    # Confirmed on SmolLM2, by a wide margin: zeroing L18H6 costs nats, the worst random head a fraction of that.
    assert check["confirmed"] is True and check["rise_top"] > 1.0 and check["rise_top"] > 2 * check["rise_random_max"]
    # The batched ablation is what one ablation alone gives: recomputed with full logits and a plain hook.
    tokens = torch.tensor(head_roles.repeated_tokens(model)[: head_roles.N_CAUSAL], device=model.device)
    n = head_roles.REPEAT_LEN

    def zero(value: torch.Tensor, hook: Any) -> torch.Tensor:
        value = value.clone()
        value[:, :, top["head"]] = 0
        return value

    with torch.no_grad():
        for hooks, stored in (([], check["loss_clean"]), ([(f"blocks.{top['layer']}.attn.hook_z", zero)],
                                                         check["loss_ablated_top"])):
            logits = model.bridge.run_with_hooks(tokens, fwd_hooks=hooks).float()
            loss = torch.nn.functional.cross_entropy(logits[:, n + 1 : 2 * n].flatten(0, 1), tokens[:, n + 2 :].flatten())
            assert float(loss) == pytest.approx(stored, abs=2e-4)


@pytest.mark.slow
def test_smollm2_heads_are_labelled_in_the_figures(smol: tuple[Path, dict[str, Any], Any]) -> None:
    save, roles, _ = smol
    cache = Cache(save / _cache_rows(save)[0]["path"])
    assert roles_beside(cache.path) == roles
    assert head_label(roles, 18, 6) == f"L18H6 · induction {roles['scores']['induction'][18][6]:.2f}"
    title = attention.attention_labeled(cache, 18, 6, max_tokens=1000).axes[0].get_title()
    assert f"L18 H6 · induction {roles['scores']['induction'][18][6]:.2f}" in title
    plain = next((la, h) for la in range(30) for h in range(9) if role_of(roles, la, h) is None)
    assert attention.head_name(cache, *plain) == f"L{plain[0]} H{plain[1]}"
    # The one-head picture writes the role on a third caption line, blank for a head without one.
    line = attention.canvas.line_height()
    for (layer, head), has in (((18, 6), True), (plain, False)):
        image = np.asarray(attention.attention_heatmap(cache, layer, head))
        third = image[-line - 1 :]
        assert (third != 0).any() == has, (layer, head)
    trace, _ = architecture3d.head_points(cache, "entropy")
    assert trace.hovertext[18 * 9 + 6].startswith("L18 H6 · induction ")


@pytest.mark.slow
def test_the_figures_stage_draws_head_roles_from_the_file_alone(smol: tuple[Path, dict[str, Any], Any],
                                                                tmp_path: Path) -> None:
    import shutil

    save = tmp_path / "copy"
    shutil.copytree(smol[0], save)
    summary = run_figures(save, figures=["head_roles"], progress=False)
    (row,) = summary.rows
    assert row["status"] == "ok" and [f["format"] for f in row["files"]] == ["png", "json"]
    data = json.loads((save / row["files"][1]["path"]).read_text())
    assert data["scores"] == smol[1]["scores"] and data["causal_check"] == smol[1]["causal_check"]
    assert data["labels"][18][6] == head_label(smol[1], 18, 6)
    picture, grids = head_roles_figure.roles_canvas(smol[1], "t")
    assert set(grids) == set(ROLES) and all((g.rows, g.cols) == (30, 9) for g in grids.values())
    assert min(picture.sizes) >= attention.canvas.FONT_PX
    assert Image.open(save / row["files"][0]["path"]).size[0] <= attention.canvas.MAX_WIDTH
    (save / "caches" / "SmolLM2-135M-Instruct" / "head_roles.json").unlink()
    failed = run_figures(save, figures=["head_roles"], progress=False, force=True)
    assert failed.rows[0]["status"] == "error" and "no head roles" in failed.rows[0]["error"]


# --- other models ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_random_gpt2_small_scores_match_the_reference_and_nothing_is_confirmed_by_chance() -> None:
    model = models.load_model(models.resolve_source("gpt2", True), "cpu", "float32")
    roles = head_roles.build(model)
    assert (roles["n_layers"], roles["n_heads"]) == (12, 12) and roles["random_weights"] is True
    reference = _reference(model)
    for role in ROLES:
        np.testing.assert_allclose(np.array(roles["scores"][role]), reference[role], atol=2e-5, err_msg=role)
    # Random weights attend almost uniformly: no head reaches a label's threshold, and no head is an induction head.
    assert all(role_of(roles, layer, head) is None for layer in range(12) for head in range(12))
    check = roles["causal_check"]
    assert check is not None and isinstance(check["confirmed"], bool)
    assert abs(check["rise_top"]) < 0.05 and check["loss_clean"] > 10  # ~log(vocabulary): nothing is predicted


def test_an_encoder_gets_no_induction_and_no_causal_check() -> None:
    model = models.load_model(models.resolve_source("tiny-bert", True), "cpu", "float32")
    roles = head_roles.build(model)
    assert roles["causal"] is False and roles["scores"]["induction"] is None and roles["causal_check"] is None
    assert "induction" not in roles["top"]
    for role in ("previous_token", "duplicate_token", "first_token"):
        table = np.array(roles["scores"][role])
        assert table.shape == (2, 4) and ((0 <= table) & (table <= 1 + 1e-9)).all()
    picture, grids = head_roles_figure.roles_canvas(roles, "t")
    assert set(grids) == {"previous_token", "duplicate_token", "first_token"}
    assert "bidirectional encoder" in head_roles_figure.causal_sentence(roles)


def test_scores_of_known_patterns() -> None:
    """Patterns built by hand: each role's ideal head scores 1 on its own role."""
    n, length = 3, 7
    tokens = torch.tensor([[0, 5, 6, 7, 5, 6, 7]])
    ideal = {"previous_token": lambda i: i - 1, "induction": lambda i: i - n + 1 if i > n else 0,
             "duplicate_token": lambda i: i - n if i > n else 0, "first_token": lambda i: 0}
    pattern = torch.zeros(1, len(ideal), length, length)
    for head, where in enumerate(ideal.values()):
        for query in range(length):
            pattern[0, head, query, max(0, where(query))] = 1.0
    scores = head_roles.pattern_scores(pattern, tokens, causal=True, repeat_len=n)
    for head, role in enumerate(ideal):
        assert scores[role][0, head].item() == pytest.approx(1.0), role
    assert scores["duplicate_token"][0, 0].item() == 0 and scores["induction"][0, 3].item() == 0  # not each other's
    no_copies = head_roles.pattern_scores(pattern, torch.arange(length)[None], causal=True)
    assert torch.isnan(no_copies["duplicate_token"]).all() and "induction" not in no_copies


def test_labels_name_the_strongest_role_over_its_threshold() -> None:
    def table(value: float) -> list[list[float]]:
        return [[value, 0.0]]

    roles = {"scores": {"previous_token": table(0.55), "duplicate_token": table(0.1), "induction": table(0.83),
                        "first_token": table(0.89)}}
    assert head_label(roles, 0, 0) == "L0H0 · induction 0.83"
    assert head_label(roles, 0, 1) == "L0H1" and role_of(roles, 0, 1) is None
    roles["scores"]["first_token"] = table(0.95)  # over the first token's own, higher threshold
    assert role_of(roles, 0, 0) == ("first_token", 0.95)
    roles["scores"]["induction"] = None  # an encoder: not measured
    roles["scores"]["first_token"] = table(LABEL_THRESHOLDS["first_token"] - 0.01)
    assert head_label(roles, 0, 0) == "L0H0 · previous token 0.55"
    assert head_label(None, 3, 4) == "L3H4" and read_head_roles(REPO / "no-such-save-path", SMOLLM2) is None


# --- written once by the stage, drawn by the figures stage, from the command line ---------------------------


def test_the_activations_cli_writes_head_roles_once_and_the_figures_cli_draws_them(tmp_path: Path) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"text": "To be, or not to be"}, {"text": "Friends, Romans"}])
    save = tmp_path / "save"
    command = ["-m", "lens_pipeline.activations", "--model", "tiny-llama", "--random-weights", "--prompts", str(prompts),
               "--save-path", str(save), "--quiet"]
    for _ in range(2):  # the second run finds everything current: no second row, no model loaded
        done = subprocess.run(python_cmd(*command), cwd=REPO, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    (row,) = _roles_rows(save)
    assert row["status"] == "ok" and row["path"] == "caches/tiny-llama-random/head_roles.json"
    assert row["head_roles_version"] == head_roles.HEAD_ROLES_VERSION and index.is_complete(row, save, verify=True)
    assert "loading model" not in done.stderr and "not an index row" not in done.stderr
    written = json.loads((save / row["path"]).read_text())
    assert written == read_head_roles(save, "tiny-llama-random")
    assert written["model"] == "tiny-llama-random" and written["causal_check"]["top_head"]["layer"] in (0, 1)
    drawn = subprocess.run(python_cmd("-m", "lens_pipeline.figures", "--save-path", str(save), "--figures", "head_roles",
                                      "--quiet"), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert drawn.returncode == 0 and "Traceback" not in drawn.stderr, drawn.stderr[-3000:]
    (figure,) = [r for r in index.latest(index.read_rows(save)).values()
                 if r["kind"] == "figure" and r["function"] == "head_roles"]
    assert figure["status"] == "ok" and (save / figure["files"][0]["path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A save path whose roles went missing gets them back from the next run, which loads the model for them alone.
    (save / row["path"]).unlink()
    again = run_activations("tiny-llama", prompts, save, random_weights=True, progress=False, log=lambda _: None)
    assert again.written == 0 and again.models_loaded == ["tiny-llama-random"]
    assert json.loads((save / row["path"]).read_text()) == written  # the same model, the same roles
