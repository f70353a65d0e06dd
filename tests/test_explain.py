"""Explaining a prediction (lens_pipeline/capture/explain.py) on real models: input attribution against
Captum, integrated gradients' completeness, direct logit attribution that adds up, the lens
trajectory against the model's own output, targets, identity and figures.

Known answer (SmolLM2, repeated text): the prediction of " rain" at the end of a second copy of
"When shall we three meet again In thunder, lightning, or in rain?" is carried, in integrated
gradients, by the earlier copy of " rain" (the largest source by more than 2x). Direct logit
attribution does not credit the known induction heads L18H6 and L17H3: the logit is written
directly by late heads (layers 22+) and MLPs; the induction heads act through them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import DATA, write_jsonl
from lens_pipeline.activations import build_parser, run_activations, settings_from_args
from lens_pipeline.capture import explain, extract, models, prompts
from lens_pipeline.capture.models import ModelLoadError
from lens_pipeline.figures import run_figures
from lens_pipeline.store import index
from lens_pipeline.store.cache import Cache, ExtractSettings

EVERYTHING = dict(attribution=("grad_x_input", "grad_norm", "ig"), logit_attribution=True, lens_trajectory=True,
                  logit_lens=True)
REPEAT = ("When shall we three meet again In thunder, lightning, or in rain? "
          "When shall we three meet again In thunder, lightning, or in")


def caches_of(save_path: Path) -> dict[str, Cache]:
    rows = index.latest(r for r in index.read_rows(save_path) if r["kind"] == "cache").values()
    return {r["prompt_metadata"].get("id", r["text"]): Cache(save_path / r["path"]) for r in rows if r["status"] == "ok"}


def one(model: models.LoadedModel, text: str, settings: ExtractSettings, targets: explain.Targets | None = None) -> dict:
    """One prompt through run_batch alone (no padding): its arrays."""
    item = extract.tokenize(model, text, 1024)
    item.targets = targets or explain.Targets()
    return extract.run_batch(model, [item], settings, extract.TokenStrings(model.tokenizer))[0].arrays


def embedded_forward(model: models.LoadedModel, ids: torch.Tensor, position: int, token: int):  # type: ignore[no-untyped-def]
    """f(token embeddings) = the target's logit: what Captum differentiates."""
    def forward(embeddings: torch.Tensor) -> torch.Tensor:
        logits = model.bridge.run_with_hooks(ids.expand(embeddings.shape[0], -1),
                                             fwd_hooks=[("hook_embed", lambda value, hook: embeddings)])
        return logits[:, position, token]
    return forward


@pytest.fixture(scope="module")
def smollm2() -> models.LoadedModel:
    return models.load_model(models.resolve_source("smollm2"), "auto", "auto")  # the stage's key: shared


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory, smollm2: models.LoadedModel) -> Path:
    """data/small.jsonl through the stage with every explanation, IG at 64 steps, one batch."""
    save = tmp_path_factory.mktemp("explain_small")
    summary = run_activations("smollm2", DATA / "small.jsonl", save, progress=False, batch_size=6, ig_steps=64, **EVERYTHING)
    assert summary.written == 6 and summary.failed == 0
    return save


# --- input attribution against Captum ---------------------------------------------------------


def test_gradient_x_input_and_norm_equal_captum(smollm2: models.LoadedModel) -> None:
    from captum.attr import InputXGradient, Saliency

    text = "The capital of France is Paris. The capital of France is"
    arrays = one(smollm2, text, ExtractSettings(attribution=("grad_x_input", "grad_norm")))
    ids = torch.from_numpy(arrays["tokens"].astype(np.int64))[None]
    position, token = int(arrays["target_positions"][0]), int(arrays["target_ids"][0, 0])
    assert arrays["target_strs"][0, 0] == " Paris"  # the default target: the top-1 prediction
    embeddings = smollm2.bridge.embed(ids).detach()
    forward = embedded_forward(smollm2, ids, position, token)
    with explain.frozen_parameters(smollm2.bridge):
        captum_gxi = InputXGradient(forward).attribute(embeddings.clone().requires_grad_(True))
        gradient = Saliency(forward).attribute(embeddings.clone().requires_grad_(True), abs=False)
    np.testing.assert_allclose(arrays["attr_grad_x_input"][0], captum_gxi.sum(-1)[0].detach().numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(arrays["attr_grad_norm"][0], gradient.norm(dim=-1)[0].numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule, steps", [("gausslegendre", 16), ("riemann_trapezoid", 12)])
def test_integrated_gradients_equal_captum(smollm2: models.LoadedModel, rule: str, steps: int) -> None:
    from captum.attr import IntegratedGradients

    settings = ExtractSettings(attribution=("ig",), ig_steps=steps, ig_rule=rule)
    arrays = one(smollm2, "To be, or not to be: that is the question:", settings)
    ids = torch.from_numpy(arrays["tokens"].astype(np.int64))[None]
    embeddings = smollm2.bridge.embed(ids).detach()
    baseline = explain.ig_baseline(smollm2, "space", ids, embeddings)
    forward = embedded_forward(smollm2, ids, int(arrays["target_positions"][0]), int(arrays["target_ids"][0, 0]))
    with explain.frozen_parameters(smollm2.bridge):
        reference, delta = IntegratedGradients(forward).attribute(
            embeddings, baselines=baseline, n_steps=steps, method=rule, internal_batch_size=steps,
            return_convergence_delta=True)
    np.testing.assert_allclose(arrays["attr_ig"][0], reference.sum(-1)[0].numpy(), rtol=0, atol=1e-4)
    assert arrays["attr_ig"][0, 0] == 0.0  # BOS keeps its own embedding on the path
    completeness = abs(float(delta[0])) / abs(float(arrays["target_values"][0] - arrays["ig_baseline_values"][0]))
    assert arrays["ig_completeness"][0] == pytest.approx(completeness, rel=1e-2, abs=1e-4)


def test_ig_completeness_is_recorded_in_the_cache_and_the_index(small_run: Path) -> None:
    rows = [r for r in index.latest(index.read_rows(small_run)).values() if r["kind"] == "cache"]
    for row in rows:
        cache = Cache(small_run / row["path"])
        error = cache.array("ig_completeness")
        change = cache.array("target_values") - cache.array("ig_baseline_values")
        recomputed = abs(cache.array("attr_ig").sum(-1) - change) / abs(change)
        np.testing.assert_allclose(error, recomputed, rtol=1e-3, atol=1e-6)
        assert row["explain"]["ig"]["completeness_error_max"] == pytest.approx(float(error.max()))
        assert cache.meta["explain"] == row["explain"] and row["explain"]["ig"]["steps"] == 64
        # At 64 Gauss-Legendre steps SmolLM2's path integrand still oscillates: measured 1-8% here.
        assert error.max() <= 0.10, (cache.text, error)


def test_ig_completeness_is_within_2_percent_at_128_steps(small_run: Path, smollm2: models.LoadedModel) -> None:
    """The prompts above 2% at 64 steps (half of them), again at 128 steps."""
    over = [c.text for c in caches_of(small_run).values() if c.array("ig_completeness")[0] > 0.02]
    assert over, "all within 2% at 64 steps: test the default instead"
    items = [extract.tokenize(smollm2, text, 1024) for text in over]
    settings = ExtractSettings(attribution=("ig",), ig_steps=128)
    results = extract.run_batch(smollm2, items, settings, extract.TokenStrings(smollm2.tokenizer))
    errors = [float(r.arrays["ig_completeness"][0]) for r in results]
    assert max(errors) <= 0.02, errors  # measured: all below 0.5%


# --- direct logit attribution ------------------------------------------------------------------


def _parts(arrays: dict | Cache) -> np.ndarray:
    get = arrays.array if isinstance(arrays, Cache) else arrays.__getitem__
    return (get("logit_attr_embed") + get("logit_attr_heads").sum((1, 2)) + get("logit_attr_mlp").sum(1)
            + get("logit_attr_bias"))


def test_logit_attribution_sums_to_the_logit_on_smollm2(small_run: Path) -> None:
    for cache in caches_of(small_run).values():
        np.testing.assert_allclose(_parts(cache), cache.array("target_values"), rtol=0, atol=1e-3)
        assert cache.array("logit_attr_heads").shape == (1, 30, 9) and cache.array("logit_attr_mlp").shape == (1, 30)


def test_logit_attribution_sums_to_the_logit_on_a_random_gpt2_small() -> None:
    model = models.load_model(models.resolve_source("gpt2", random_weights=True), "cpu", "float32")  # built afresh
    with torch.no_grad():  # GPT-2 starts with zero biases: random ones check their part is counted
        for name, parameter in model.bridge.original_model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0.0, 0.2)
    settings = ExtractSettings(logit_attribution=True)
    for text, targets in [("Friends, Romans, countrymen, lend me your ears;", explain.Targets(positions="all")),
                          ("To be, or not to be", explain.Targets(token=11, contrast=13))]:
        arrays = one(model, text, settings, targets)
        assert arrays["logit_attr_heads"].shape[1:] == (12, 12)
        np.testing.assert_allclose(_parts(arrays), arrays["target_values"], rtol=0, atol=1e-3)
        assert np.abs(arrays["logit_attr_bias"]).max() > 0  # GPT-2 has biases: their part is not dropped


# --- the lens trajectory -----------------------------------------------------------------------


def test_final_lens_row_is_the_models_own_output(small_run: Path, smollm2: models.LoadedModel) -> None:
    for cache in caches_of(small_run).values():
        ids = torch.from_numpy(cache.token_ids.astype(np.int64))[None]
        with torch.no_grad():
            logprobs = torch.log_softmax(smollm2.bridge(ids)[0].float(), -1)
        top = logprobs.topk(5, dim=-1)
        assert (cache.array("lens_top_ids")[-1] == cache.topk_ids[:, :5]).mean() > 0.99  # ties may swap
        np.testing.assert_allclose(cache.array("lens_top_probs")[-1].astype(np.float32), top.values.exp().numpy(), atol=2e-3)
        actual = logprobs[torch.arange(len(ids[0]) - 1), ids[0, 1:]].numpy()
        np.testing.assert_allclose(cache.array("token_logprobs")[:-1], actual, atol=1e-4)
        assert np.isnan(cache.array("token_logprobs")[-1]) and cache.array("lens_actual_ranks")[-1, -1] == -1
        np.testing.assert_allclose(np.log(cache.array("lens_actual_probs")[-1, :-1]), actual, atol=1e-4)
        assert np.abs(cache.array("lens_kl")[-1]).max() < 1e-3  # the last row is the final distribution
        assert (cache.array("lens_kl")[:-1] >= 0).all() and (cache.array("lens_entropy") >= 0).all()
        ranks = cache.array("lens_actual_ranks")[-1, :-1]
        np.testing.assert_array_equal(ranks == 0, cache.topk_ids[:-1, 0] == cache.token_ids[1:])
        assert (cache.array("logit_lens_ids") == cache.array("lens_top_ids")[:, :, 0]).all()
        assert list(cache.array("lens_rows")[:2]) == ["L0 post", "L1 post"]


# --- batched equals unbatched ------------------------------------------------------------------


def test_batched_equals_unbatched(small_run: Path, smollm2: models.LoadedModel) -> None:
    """The stage's batch of six (padded, shared backward, IG in row chunks) against prompts alone."""
    caches = caches_of(small_run)
    settings = ExtractSettings(ig_steps=64, **EVERYTHING)
    for key in ("small-plain", "small-hamlet"):
        cache = caches[key]
        alone = one(smollm2, cache.text, settings)
        for name in ("target_ids", "lens_top_ids"):
            np.testing.assert_array_equal(cache.array(name), alone[name])
        for name in ("attr_grad_x_input", "attr_grad_norm", "attr_ig", "logit_attr_heads", "logit_attr_mlp",
                     "target_values", "lens_entropy", "lens_kl", "token_logprobs"):
            expected = alone[name]
            scale = float(np.nanmax(np.abs(expected))) or 1.0
            np.testing.assert_allclose(cache.array(name), expected, rtol=0, atol=2e-4 * scale, err_msg=f"{key}: {name}")


# --- a known answer ----------------------------------------------------------------------------


def test_repeated_text_the_earlier_copy_carries_the_prediction(smollm2: models.LoadedModel) -> None:
    settings = ExtractSettings(attribution=("ig",), ig_steps=32, logit_attribution=True)
    arrays = one(smollm2, REPEAT, settings)
    tokens = list(arrays["token_strs"])
    assert arrays["target_strs"][0, 0] == " rain"  # the model completes the copy
    earlier = tokens.index(" rain")
    ig = arrays["attr_ig"][0]
    others = np.delete(ig, [0, earlier])
    assert ig[earlier] > 2 * np.abs(others).max(), (ig[earlier], np.abs(others).max())  # measured 6.2 vs 2.5
    heads = arrays["logit_attr_heads"][0]
    top = np.abs(heads).max()
    # Direct logit attribution credits late heads, not the induction heads (they act indirectly).
    assert np.unravel_index(np.abs(heads).argmax(), heads.shape)[0] >= 22
    assert abs(heads[18, 6]) < 0.1 * top and abs(heads[17, 3]) < 0.1 * top  # measured 5% and 2%


# --- targets, errors, identity, figures (fast random models) -----------------------------------


def test_contrast_and_all_targets(smollm2: models.LoadedModel) -> None:
    text = "The capital of France is Paris. The capital of Italy is"
    contrast = explain.Targets(token=smollm2.tokenizer(" Rome", add_special_tokens=False)["input_ids"][0],
                               contrast=smollm2.tokenizer(" Paris", add_special_tokens=False)["input_ids"][0])
    arrays = one(smollm2, text, ExtractSettings(logit_attribution=True), contrast)
    ids = torch.from_numpy(arrays["tokens"].astype(np.int64))[None]
    with torch.no_grad():
        logits = smollm2.bridge(ids)[0, -1]
    assert list(arrays["target_strs"][0]) == [" Rome", " Paris"]
    assert arrays["target_values"][0] == pytest.approx(float(logits[contrast.token] - logits[contrast.contrast]), abs=1e-4)
    np.testing.assert_allclose(_parts(arrays), arrays["target_values"], atol=1e-3)
    tiny = models.load_model(models.resolve_source("tiny-llama", random_weights=True), "cpu", "float32")
    every = one(tiny, text, ExtractSettings(attribution=("grad_x_input",)), explain.Targets(positions="all"))
    n = len(every["tokens"])
    assert every["attr_grad_x_input"].shape == (n - 1, n)
    np.testing.assert_array_equal(every["target_ids"][:, 0], every["tokens"][1:])
    np.testing.assert_array_equal(every["target_positions"], np.arange(n - 1))
    assert not np.triu(every["attr_grad_x_input"], k=1).any()  # a source after the target cannot matter


def test_target_fields_are_checked_per_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"text": "a", "target": " Paris"}, {"text": "b", "target": 3}, {"text": "c", "contrast": [" a"]},
        {"text": "d", "target": " a", "contrast": [" a", " b"]}, {"text": "e", "target_positions": "some"},
        {"text": "f", "target_positions": "all", "target": " a"}, {"text": "g", "contrast": [" a", " b"]}])
    good, bad = prompts.read_prompts(path)
    assert [p.text for p in good] == ["a", "g"]
    assert [str(e).split(": ", 1)[0] for e in bad] == [f"{path}:{n}" for n in (2, 3, 4, 5, 6)]
    assert "one of ['last', 'all']" in str(bad[3])


def test_a_target_of_several_tokens_fails_its_line_and_encoders_are_refused(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "Hello there", "target": " Parisianistically"},
                                              {"text": "Hello again", "target": " Paris"}])
    notes: list[str] = []
    summary = run_activations("tiny-llama", path, tmp_path / "out", random_weights=True, progress=False,
                              logit_attribution=True, log=notes.append)
    assert (summary.written, summary.failed) == (1, 1)
    assert any(f"{path}:1: target ' Parisianistically' is 3 tokens" in note for note in notes), notes
    error = [r for r in index.read_rows(tmp_path / "out") if r["status"] == "error"][0]
    assert f"{path}:1" in error["error"]
    with pytest.raises(ModelLoadError, match="not supported for encoder models"):
        run_activations("tiny-bert", path, tmp_path / "bert", random_weights=True, progress=False, attribution=("grad_x_input",))
    with pytest.raises(ModelLoadError, match="--attribution 'saliency': unknown method"):
        run_activations("tiny-llama", path, tmp_path / "x", random_weights=True, progress=False, attribution="saliency")


def test_identity_resume_force_and_changed_targets(tmp_path: Path) -> None:
    records = [{"text": "To be, or not to be", "target": " that"}, {"text": "Friends, Romans", "target_positions": "all"}]
    path = write_jsonl(tmp_path / "p.jsonl", records)
    run = dict(random_weights=True, progress=False, log=lambda _: None, attribution="grad_x_input,ig", ig_steps=4)
    first = run_activations("tiny-llama", path, tmp_path / "out", **run)
    again = run_activations("tiny-llama", path, tmp_path / "out", **run)
    assert (first.written, again.written, again.skipped, again.models_loaded) == (2, 0, 2, [])
    forced = run_activations("tiny-llama", path, tmp_path / "out", force=True, **run)
    assert forced.written == 2
    write_jsonl(path, [dict(records[0], target=" this"), records[1]])  # a new target: that prompt is redone
    changed = run_activations("tiny-llama", path, tmp_path / "out", **run)
    assert (changed.written, changed.skipped) == (1, 1)
    other = run_activations("tiny-llama", path, tmp_path / "out", **dict(run, ig_steps=8))  # part of the identity
    assert other.written == 2
    # With nothing to explain the settings (and so every earlier cache's name) are what they were.
    assert "attribution" not in ExtractSettings().as_dict()
    assert ExtractSettings(attribution=["ig"]).settings_id == ExtractSettings(attribution="ig").settings_id
    assert ExtractSettings(attribution="ig").covers(json.loads(json.dumps(ExtractSettings(attribution="ig").as_dict())))


def test_cli_flags_build_the_settings() -> None:
    args = build_parser().parse_args(["--attribution", "all", "--ig-steps", "32", "--logit-attribution", "--lens-resid-mid"])
    extract_settings = settings_from_args(args).extract
    assert extract_settings.attribution == ("grad_x_input", "grad_norm", "ig") and extract_settings.ig_steps == 32
    assert extract_settings.logit_attribution and extract_settings.lens_resid_mid
    assert extract_settings.lens_trajectory and extract_settings.logit_lens  # mid implies the trajectory and the lens


def test_figures_state_target_and_method_and_skip_what_does_not_apply(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "To be, or not to be: that is the question:", "target": " the"},
                                              {"text": "Friends, Romans, countrymen", "target_positions": "all"}])
    run_activations("tiny-llama", path, tmp_path / "out", random_weights=True, progress=False, log=lambda _: None,
                    ig_steps=4, lens_resid_mid=True, **EVERYTHING)
    names = ["saliency_tokens", "attribution_matrix", "logit_attribution_heads", "lens_trajectory", "token_loss"]
    run_figures(tmp_path / "out", figures=names, progress=False, raise_errors=True)
    rows = [r for r in index.latest(index.read_rows(tmp_path / "out")).values() if r["kind"] == "figure"]
    status = [(r["function"], r["status"]) for r in rows]
    assert [s for _, s in status].count("ok") == 9, status  # the matrix needs several targets
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert [r["function"] for r in skipped] == ["attribution_matrix"] and "several" in skipped[0]["reason"]
    from lens_pipeline.draw.builtins import explain as figures

    cache = next(c for c in caches_of(tmp_path / "out").values() if len(c.array("target_ids")) == 1)
    assert figures._target(cache, -1).text.startswith("“ the” after “:” (position")
    assert "16 steps" not in figures._ig_note(cache, 0) and "4 steps, space baseline" in figures._ig_note(cache, 0)
    assert list(cache.array("lens_rows")[:3]) == ["L0 mid", "L0 post", "L1 mid"]
