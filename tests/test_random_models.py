"""Architecture-only models: real architectures, seeded random weights, nothing downloaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, write_jsonl
from lens_pipeline.activations import run_activations
from lens_pipeline.capture import random_models
from lens_pipeline.capture.models import ModelLoadError
from lens_pipeline.store import index
from lens_pipeline.store.cache import Cache

PROMPTS = [{"text": "To be, or not to be: that is the question:"}, {"text": "Hi"},
           {"text": "Friends, Romans, countrymen, lend me your ears."}]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("random_prompts") / "p.jsonl", PROMPTS)


@pytest.mark.parametrize(
    "shape, family, causal, layers, heads",
    [("tiny-llama", "llama", True, 2, 4), ("tiny-gpt2", "gpt2", True, 2, 4), ("tiny-bert", "bert", False, 2, 4)],
)
def test_tiny_shapes_build_with_the_classic_hooks(shape: str, family: str, causal: bool, layers: int, heads: int) -> None:
    source = random_models.resolve(shape)
    assert source.kind == "random" and source.name == f"{shape}-random" and source.model_id.startswith(f"random:{shape}:")
    model = random_models.load(source, device="cpu")
    assert (model.family, model.causal) == (family, causal)
    assert (model.bridge.cfg.n_layers, model.bridge.cfg.n_heads) == (layers, heads)
    assert model.bridge.cfg.d_vocab == len(model.tokenizer)  # the vocabulary is the tokenizer's
    for layer in range(layers):
        for hook in ("attn.hook_pattern", "hook_resid_post", "mlp.hook_post"):
            assert f"blocks.{layer}.{hook}" in model.bridge.hook_dict
    ids = torch.tensor([model.tokenizer("Hello there, world")["input_ids"]])
    _, cached = model.bridge.run_with_cache(ids, names_filter="blocks.1.attn.hook_pattern")
    pattern = cached["blocks.1.attn.hook_pattern"][0]
    torch.testing.assert_close(pattern.sum(-1), torch.ones(heads, ids.shape[1]))
    assert bool(torch.all(pattern.triu(1) == 0)) == causal


@pytest.mark.parametrize(
    "shape, expected",
    [
        ("gpt2", {"n_layer": 12, "n_head": 12, "n_embd": 768, "n_positions": 1024}),  # GPT2Config() defaults
        ("gpt2-medium", {"n_layer": 24, "n_head": 16, "n_embd": 1024}),
        ("llama-1b", {"num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
                      "hidden_size": 2048, "intermediate_size": 8192}),
    ],
)
def test_named_shapes_have_their_published_dimensions(shape: str, expected: dict) -> None:
    from transformers import AutoModelForCausalLM

    tokenizer = random_models.offline_tokenizer()
    config = random_models.build_config(random_models.resolve(shape), tokenizer)
    assert {key: getattr(config, key) for key in expected} == expected
    assert config.vocab_size == len(tokenizer) == 49152
    if shape == "llama-1b":
        with torch.device("meta"):  # count parameters without allocating 4 GB
            n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
        assert 0.95e9 < n_params < 1.25e9


def test_same_seed_same_weights_and_same_cache_contents(tmp_path: Path, prompts: Path) -> None:
    a = random_models.load(random_models.resolve("tiny-gpt2"), device="cpu").bridge.original_model.state_dict()
    b = random_models.load(random_models.resolve("tiny-gpt2"), device="cpu").bridge.original_model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for run in ("one", "two"):
        summary = run_activations("tiny-gpt2", prompts, tmp_path / run, random_weights=True, progress=False, batch_size=2)
        assert summary.written == len(PROMPTS)
    cards = [[r["sha256"] for r in index.read_rows(tmp_path / run) if r["kind"] == "model_card"] for run in ("one", "two")]
    assert len(cards[0]) == 1 and cards[0] == cards[1]  # the model card too, byte for byte
    for row in (r for r in index.read_rows(tmp_path / "one") if r["kind"] == "cache"):
        with Cache(tmp_path / "one" / row["path"]) as a, Cache(tmp_path / "two" / row["path"]) as b:
            assert a.meta == b.meta and a.names() == b.names()
            for name in a.names():
                np.testing.assert_array_equal(a.array(name), b.array(name))


def test_random_runs_are_marked_everywhere(tmp_path: Path, prompts: Path) -> None:
    summary = run_activations("tiny-llama", prompts, tmp_path, random_weights=True, progress=False)
    assert summary.models_loaded == ["tiny-llama-random"]
    rows = index.read_rows(tmp_path)
    assert [r["kind"] for r in rows].count("model_card") == 1 and all(r["random_weights"] is True for r in rows)
    rows = [r for r in rows if r["kind"] == "cache"]
    assert len(rows) == len(PROMPTS)
    for row in rows:
        assert row["random_weights"] is True and row["model"] == "tiny-llama-random" and "random" in row["model_id"]
        assert row["path"].startswith("caches/tiny-llama-random/")
        with Cache(tmp_path / row["path"]) as cache:
            assert cache.meta["random_weights"] is True and cache.model == "tiny-llama-random"
            assert cache.layer_patterns(1).shape == (4, cache.n_tokens, cache.n_tokens)
    # A rerun resumes from the index: nothing built, nothing written.
    again = run_activations("tiny-llama", prompts, tmp_path, random_weights=True, progress=False)
    assert (again.written, again.skipped, again.models_loaded) == (0, len(PROMPTS), [])


def test_a_config_json_file_is_a_shape(tmp_path: Path, prompts: Path) -> None:
    config = tmp_path / "one-layer.json"
    config.write_text(json.dumps({"model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 32, "n_positions": 64}))
    source = random_models.resolve(str(config))
    assert source.name == "one-layer-random"
    model = random_models.load(source, device="cpu")
    assert (model.bridge.cfg.n_layers, model.bridge.cfg.n_heads, model.bridge.cfg.d_model) == (1, 2, 32)
    changed = tmp_path / "changed" / "one-layer.json"
    changed.parent.mkdir()
    changed.write_text(json.dumps({"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 64}))
    assert random_models.resolve(str(changed)).model_id != source.model_id  # the id follows the config


@pytest.mark.parametrize(
    "name, message",
    [
        ("smollm2", "not a known shape"),
        (str(REPO / "no-such-config.json"), "cannot read a config JSON"),
    ],
)
def test_unknown_shapes_fail_with_one_clear_line(name: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message) as error:
        random_models.resolve(name)
    assert "\n" not in str(error.value)


def test_cli_builds_offline_with_a_fresh_tokenizer_cache(tmp_path: Path, prompts: Path) -> None:
    """No hub, no HF cache, no tokenizer folder yet: the GGUF tokenizer is saved once, and
    every Hugging Face request would fail at once (a closed local port)."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9")
    command = [sys.executable, "-m", "lens_pipeline.activations", "--model", "tiny-gpt2", "--random-weights",
               "--prompts", str(prompts), "--save-path", str(tmp_path / "out"), "--quiet"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{len(PROMPTS)} cache(s) written" in done.stderr
    assert list((tmp_path / "xdg" / "lens_pipeline" / "tokenizers").iterdir())
    bad = subprocess.run(command[:4] + ["nonsense-shape"] + command[5:], cwd=REPO, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: --random-weights nonsense-shape: not a known shape")
