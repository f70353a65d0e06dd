"""Activation patching, ablation and attribution patching (lens_pipeline/capture/causal), checked
against transformer_lens.patching and independent hook-by-hook loops, and from the CLI."""

from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pytest
import torch
from transformer_lens import patching as tl_patching

from conftest import DATA, python_cmd, write_jsonl
from lens_pipeline.capture import models
from lens_pipeline.capture.causal import causal_arrays, corruption_of
from lens_pipeline.capture.causal.metric import metric_for
from lens_pipeline.capture.causal.runs import capture, edited_metric
from lens_pipeline.capture.causal.sites import Edit
from lens_pipeline.capture.explain.targets import Targets
from lens_pipeline.capture.prompts import Prompt
from lens_pipeline.capture.tokens import tokenize
from lens_pipeline.store import index
from lens_pipeline.store.cache import ExtractSettings, load

IOI = "When Mary and John went to the store, John gave a drink to"
IOI_CORRUPT = "When Mary and John went to the store, Mary gave a drink to"
# For the random GPT-2: a pair whose clean and corrupted metrics differ by 0.6 logits (most differ by < 0.4 on random
# weights, and float32 batch-size noise of ~1e-6 logits over a smaller gap would read as more than 1e-5 normalised).
RANDOM_PAIR = ("apple river chair seven cloud", "apple river chair seven stone")


def one_token(model, text: str) -> int:
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1
    return int(ids[0])


@pytest.fixture(scope="module")
def smollm2():
    return models.load_model(models.resolve_source("smollm2"), "cpu", "float32")


@pytest.fixture(scope="module")
def gpt2_random():
    return models.load_model(models.resolve_source("gpt2", random_weights=True), "cpu", "float32")


def pair(model, clean: str, corrupt: str):
    ids = tokenize(model, clean, 1024).ids
    return ids, corruption_of(model, Prompt(clean, "test:1", {"corrupt": corrupt}), ids, 1024)


def normalised_tl(model, ids, corruption, metric, clean, corrupt, sweep):
    """transformer_lens.patching's sweep on the same pair and metric, normalised the same way."""
    _, cache = model.bridge.run_with_cache(torch.tensor([ids]))

    def tl_metric(logits: torch.Tensor) -> torch.Tensor:
        return ((metric(logits[:, -1]) - corrupt) / (clean - corrupt))[0]

    return sweep(model.bridge, torch.tensor([corruption.ids]), cache, tl_metric).double().numpy()


@pytest.mark.slow
@pytest.mark.parametrize("which", ["smollm2", "gpt2_random"])
def test_whole_layer_patch_is_clean_and_no_patch_is_corrupt(which, request):
    model = request.getfixturevalue(which)
    clean_text, corrupt_text = (IOI, IOI_CORRUPT) if which == "smollm2" else RANDOM_PAIR
    ids, corruption = pair(model, clean_text, corrupt_text)
    n_layers = model.bridge.cfg.n_layers
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)]
    clean_logits, acts = capture(model.bridge, torch.tensor([ids]), names, [])
    metric = metric_for("logit_diff", Targets(), clean_logits)
    clean = float(metric(clean_logits[None])[0])
    edits = [Edit(name) for name in names]  # every position of one layer's residual stream
    values = edited_metric(model.bridge, corruption.ids, [], edits, acts.__getitem__, metric)
    corrupt = float(edited_metric(model.bridge, corruption.ids, [], [Edit(names[0], -1, 0)], acts.__getitem__, metric)[0])
    assert ids[0] == corruption.ids[0]  # position 0 is the same token: patching it changes nothing
    np.testing.assert_allclose((values.numpy() - corrupt) / (clean - corrupt), 1.0, atol=1e-5)
    settings = ExtractSettings(patch=("resid_pre",))
    arrays, meta = causal_arrays(model, ids, Targets(), corruption, settings, lambda i: model.tokenizer.decode([i]))
    assert abs(meta["corrupt"] - corrupt) < 1e-6 * max(1.0, abs(corrupt))
    np.testing.assert_allclose(arrays["patch_resid_pre"][:, 0], 0.0, atol=1e-5)  # nothing differs there: nothing restored


@pytest.mark.parametrize("shape", ["tiny-gpt2", "tiny-llama"])  # GPT-2 blocks; llama's rotary, gated MLP and grouped KV
def test_every_sweep_equals_transformer_lens_patching(shape):
    model = models.load_model(models.resolve_source(shape, random_weights=True), "cpu", "float32")
    ids, corruption = pair(model, *RANDOM_PAIR)
    settings = ExtractSettings(patch=("resid_pre", "attn_out", "mlp_out", "heads", "heads_pos"))
    arrays, meta = causal_arrays(model, ids, Targets(), corruption, settings, lambda i: model.tokenizer.decode([i]))
    clean_logits, _ = capture(model.bridge, torch.tensor([ids]), [], [])
    metric = metric_for("logit_diff", Targets(), clean_logits)
    sweeps = {"resid_pre": tl_patching.get_act_patch_resid_pre, "attn_out": tl_patching.get_act_patch_attn_out,
              "mlp_out": tl_patching.get_act_patch_mlp_out, "heads": tl_patching.get_act_patch_attn_head_out_all_pos,
              "heads_pos": tl_patching.get_act_patch_attn_head_out_by_pos}
    for site, sweep in sweeps.items():
        reference = normalised_tl(model, ids, corruption, metric, meta["clean"], meta["corrupt"], sweep)
        if site == "heads_pos":  # TransformerLens orders it [layer, position, head]
            reference = reference.transpose(0, 2, 1)
        np.testing.assert_allclose(arrays[f"patch_{site}"], reference, atol=1e-5, err_msg=site)


@pytest.mark.slow
def test_smollm2_resid_patching_equals_transformer_lens(smollm2):
    ids, corruption = pair(smollm2, IOI, IOI_CORRUPT)
    targets = Targets(token=one_token(smollm2, " Mary"), contrast=one_token(smollm2, " John"))
    arrays, meta = causal_arrays(smollm2, ids, targets, corruption, ExtractSettings(patch=("resid_pre",)),
                                 lambda i: smollm2.tokenizer.decode([i]))
    clean_logits, _ = capture(smollm2.bridge, torch.tensor([ids]), [], [])
    metric = metric_for("logit_diff", targets, clean_logits)
    reference = normalised_tl(smollm2, ids, corruption, metric, meta["clean"], meta["corrupt"],
                              tl_patching.get_act_patch_resid_pre)
    np.testing.assert_allclose(arrays["patch_resid_pre"], reference, atol=1e-5)
    assert meta["metric_label"] == "logit(' Mary') − logit(' John')"
    # The name that is not repeated moves to the last position: the known IOI picture.
    assert arrays["patch_resid_pre"][0, 10] > 0.99 and arrays["patch_resid_pre"][-1, -1] > 0.9


@pytest.mark.slow
def test_batched_sweeps_equal_one_row_at_a_time_and_ablation_equals_a_hook_loop(gpt2_random):
    model = gpt2_random
    ids, corruption = pair(model, *RANDOM_PAIR)
    settings = ExtractSettings(patch=("resid_pre", "heads"), ablate=("heads", "mlp"))
    decode = lambda i: model.tokenizer.decode([i])  # noqa: E731
    batched, _ = causal_arrays(model, ids, Targets(), corruption, settings, decode)
    single, _ = causal_arrays(model, ids, Targets(), corruption, settings, decode, row_tokens=1)  # one row per forward
    for name in batched:
        np.testing.assert_allclose(batched[name], single[name], atol=1e-5, err_msg=name)
    # Zero ablation of head (l, h), independently: one forward per head with a hook that zeroes its slice.
    clean_logits, _ = capture(model.bridge, torch.tensor([ids]), [], [])
    metric = metric_for("logit_diff", Targets(), clean_logits)
    clean = float(metric(clean_logits[None])[0])
    for layer, head in [(0, 0), (5, 7), (11, 11)]:
        def zero(value, hook, head=head):
            value = value.clone()
            value[:, :, head] = 0.0
            return value

        logits = model.bridge.run_with_hooks(torch.tensor([ids]), fwd_hooks=[(f"blocks.{layer}.attn.hook_z", zero)])
        expected = float(metric(logits[:, -1])[0]) - clean
        assert abs(batched["ablate_heads"][layer, head] - expected) < 1e-4


@pytest.mark.slow
def test_attribution_patching_is_the_linear_estimate(gpt2_random):
    """Each site's estimate is the gradient on the corrupted run times the activation difference,
    computed here from the bridge's own cache; per-position head estimates sum to the all-position one."""
    model = gpt2_random
    ids, corruption = pair(model, *RANDOM_PAIR)
    settings = ExtractSettings(patch=("resid_pre", "heads", "heads_pos"), attribution_patching=True)
    arrays, meta = causal_arrays(model, ids, Targets(), corruption, settings, lambda i: model.tokenizer.decode([i]))
    np.testing.assert_allclose(arrays["attrpatch_heads"], arrays["attrpatch_heads_pos"].sum(-1), atol=1e-5)
    _, clean_cache = model.bridge.run_with_cache(torch.tensor([ids]))
    layer = 3
    kept = {}

    def keep(value, hook):
        value.retain_grad()
        kept["resid"] = value
        return value

    def leaf(value, hook):
        return value.detach().requires_grad_(True)

    clean_logits, _ = capture(model.bridge, torch.tensor([ids]), [], [])
    metric = metric_for("logit_diff", Targets(), clean_logits)
    logits = model.bridge.run_with_hooks(torch.tensor([corruption.ids]),
                                         fwd_hooks=[("hook_embed", leaf), (f"blocks.{layer}.hook_resid_pre", keep)])
    metric(logits[:, -1])[0].backward()
    delta = clean_cache[f"blocks.{layer}.hook_resid_pre"][0] - kept["resid"][0].detach()
    expected = (delta * kept["resid"].grad[0]).sum(-1).double().numpy() / (meta["clean"] - meta["corrupt"])
    np.testing.assert_allclose(arrays["attrpatch_resid_pre"][layer], expected, atol=1e-4)
    assert set(meta["attribution_patching_correlation"]) == {"resid_pre", "heads", "heads_pos"}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(python_cmd("-m", "lens_pipeline.activations", "--quiet", *args), capture_output=True, text=True,
                          timeout=1800)


def current(save_path):
    return index.current_caches(index.latest(index.read_rows(save_path)).values())


@pytest.mark.slow
def test_cli_pairs_cached_rerun_and_added_sites_reuse_stored(tmp_path):
    records = [json.loads(line) for line in (DATA / "causal.jsonl").read_text().splitlines()]
    prompts = write_jsonl(tmp_path / "pairs.jsonl", [records[0], records[3]])  # an IOI pair and a noise corruption
    save = tmp_path / "out"
    first = run_cli("--prompts", str(prompts), "--save-path", str(save), "--patch", "resid_pre", "--ablate", "mlp",
                    "--attribution-patching")
    assert first.returncode == 0, first.stderr
    rows = current(save)
    assert len(rows) == 2 and all(row["causal_correlation"]["resid_pre"] is not None for row in rows.values())
    before = {row["prompt_hash"]: load(save / row["path"]) for row in rows.values()}
    again = run_cli("--prompts", str(prompts), "--save-path", str(save), "--patch", "resid_pre", "--ablate", "mlp",
                    "--attribution-patching")
    assert again.returncode == 0 and "all 2 prompts already cached" in again.stderr
    added = run_cli("--prompts", str(prompts), "--save-path", str(save), "--patch", "resid_pre,heads", "--ablate", "mlp",
                    "--attribution-patching")
    assert added.returncode == 0, added.stderr
    for row in current(save).values():
        cache = load(save / row["path"])
        assert cache.meta["cause"]["reused"] == ["ablate_mlp", "attrpatch_resid_pre", "patch_resid_pre"]
        assert cache.has("patch_heads") and cache.has("attrpatch_heads")
        np.testing.assert_array_equal(cache.array("patch_resid_pre"), before[row["prompt_hash"]].array("patch_resid_pre"))
        noise = cache.meta["cause"]["corruption"]
        if "noise" in noise:
            assert noise["noise"] == [1, 5] and noise["std"] > 0


@pytest.mark.slow
def test_cli_bad_input_one_line_each_nothing_else_lost(tmp_path):
    prompts = write_jsonl(tmp_path / "bad.jsonl", [
        {"text": IOI, "corrupt": IOI_CORRUPT, "contrast": [" Mary", " John"]},
        {"text": "When Tom and Ann went out, Ann gave a book to", "corrupt": "Tom gave a book to"},
        {"text": "The Eiffel Tower is in Paris", "corrupt": {"noise": [2, 40]}},
        {"text": "Short", "corrupt": {"noise": [3, 1]}},
    ])
    save = tmp_path / "out"
    result = run_cli("--prompts", str(prompts), "--save-path", str(save), "--patch", "heads")
    assert result.returncode == 1  # two prompts failed; the good one is cached
    assert re.search(rf"{re.escape(str(prompts))}:2: corrupt prompt is \d+ tokens, clean is \d+\n", result.stderr)
    assert re.search(rf"{re.escape(str(prompts))}:3: corrupt noise span \[2, 40\] is outside the prompt's \d+ tokens",
                     result.stderr)
    assert f"{prompts}:4: \"corrupt\" noise span must be [start, end]" in result.stderr
    assert len(current(save)) == 1
    unknown = run_cli("--prompts", str(prompts), "--save-path", str(tmp_path / "x"), "--patch", "resid_post")
    assert unknown.returncode == 2 and unknown.stderr.strip().splitlines()[-1] == (
        "error: --patch 'resid_post': unknown site; choose from resid_pre, attn_out, mlp_out, heads, heads_pos")
    encoder = run_cli("--model", "minilm", "--prompts", str(prompts), "--save-path", str(tmp_path / "y"), "--patch", "heads")
    assert encoder.returncode == 2
    assert encoder.stderr.strip().splitlines()[-1].startswith("error: all-MiniLM-L6-v2: --patch measures next-token predictions")


@pytest.mark.slow
def test_mean_ablation_uses_prompt_set_means(tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"text": "The cat sat on the mat"}, {"text": "Hi there, friend"}])
    save = tmp_path / "out"
    result = run_cli("--model", "gpt2", "--random-weights", "--prompts", str(prompts), "--save-path", str(save),
                     "--ablate", "heads,mlp", "--ablation", "mean")
    assert result.returncode == 0, result.stderr
    model = models.load_model(models.resolve_source("gpt2", random_weights=True), "cpu", "float32")
    # The means, recomputed here over both prompts' real tokens.
    sums, count = {}, 0
    for text in ("The cat sat on the mat", "Hi there, friend"):
        ids = tokenize(model, text, 1024).ids
        _, cache = model.bridge.run_with_cache(torch.tensor([ids]))
        for name in ("blocks.4.attn.hook_z", "blocks.4.hook_mlp_out"):
            sums[name] = sums.get(name, 0) + cache[name][0].double().sum(0)
        count += len(ids)
    stored = np.load(next(save.glob("caches/*/ablation_means.npz")))
    for name, total in sums.items():
        np.testing.assert_allclose(stored[name], (total / count).numpy(), atol=1e-5)
    row = next(iter(current(save).values()))
    assert row["params"]["ablation"] == "mean" and len(row["params"]["ablation_means_id"]) == 8
