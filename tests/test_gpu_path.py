"""The device path of extraction: encoding on the device, host transfer, out-of-memory splitting.

Runs on the CPU with a real (tiny, random-weight) model; the CUDA-only checks run where a GPU is.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from conftest import SHORT_TEXTS
from lens_pipeline.activations import run_prompts
from lens_pipeline.capture import extract
from lens_pipeline.capture.models import LoadedModel
from lens_pipeline.capture.prompts import Prompt
from lens_pipeline.capture.random_models import load, resolve
from lens_pipeline.store import index
from lens_pipeline.store.cache import (
    PATTERN_ENCODINGS,
    Cache,
    ExtractSettings,
    encode_pattern,
    prompt_hash,
)

TEXTS = SHORT_TEXTS[:5]
HOOK = "blocks.0.attn.hook_pattern"


@pytest.fixture(scope="module")
def llama() -> LoadedModel:
    return load(resolve("tiny-llama"), device="cpu")


@pytest.fixture(scope="module")
def bert() -> LoadedModel:
    return load(resolve("tiny-bert"), device="cpu")


def tokenized(model: LoadedModel) -> list[extract.Tokenized]:
    return [extract.tokenize(model, text, 256) for text in TEXTS]


@contextmanager
def forward_hook(model: LoadedModel, hook: object) -> Iterator[None]:
    """A real hook on a real hook point, removed afterwards."""
    point = model.bridge.hook_dict[HOOK]
    point.add_hook(hook, is_permanent=True)
    try:
        yield
    finally:
        point.remove_hooks("fwd", including_permanent=True)


def oom_above(limit: int, seen: list[int], error: type[Exception] = torch.OutOfMemoryError, message: str = "CUDA out of memory"):
    """A hook that fails like the allocator does when the batch holds more than `limit` prompts."""

    def hook(pattern: torch.Tensor, hook: object) -> None:
        seen.append(pattern.shape[0])
        if pattern.shape[0] > limit:
            raise error(f"{message}. Tried to allocate 2.00 GiB")

    return hook


# --- encoding on the device ---------------------------------------------------------------
@pytest.mark.parametrize("encoding", list(PATTERN_ENCODINGS))
@pytest.mark.parametrize("causal", [True, False])
def test_device_encoding_is_bit_identical_to_the_reference(encoding: str, causal: bool) -> None:
    # Softmax rows plus the awkward values: the ends, exact half steps, float16 subnormals,
    # just outside [0, 1].
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, size=(3, 40, 40)).astype(np.float32)
    patterns = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    awkward = np.array([0, 1, 0.5 / 255, 1.5 / 255, 0.5 / 4095, 2.5 / 65535, 6e-8, 3e-5, 2.0**-25, -1e-7, 1 + 1e-7],
                       dtype=np.float32)
    patterns.reshape(-1)[: awkward.size] = awkward
    expected = encode_pattern(patterns, encoding, causal)
    got = extract.encode_patterns(torch.from_numpy(patterns), encoding, causal).numpy()
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert got.tobytes() == expected.tobytes()


@pytest.mark.parametrize("shape", [(2, 3, 1, 1), (1, 1, 5, 5), (0, 3, 4, 4), (2, 3, 0, 0)])
def test_device_encoding_keeps_batch_and_head_axes_of_any_size(shape: tuple[int, ...]) -> None:
    patterns = torch.rand(shape)
    got = extract.encode_patterns(patterns, "q12", causal=True)
    n = shape[-1]
    assert got.shape == (*shape[:-2], 2, n * (n + 1) // 2)
    if patterns.numel():
        expected = np.stack([encode_pattern(p.numpy(), "q12", True) for p in patterns])
        assert got.numpy().tobytes() == expected.tobytes()


def test_device_encoding_rejects_unknown_encodings() -> None:
    with pytest.raises(ValueError, match="unknown pattern encoding 'uint7'"):
        extract.encode_patterns(torch.zeros(1, 2, 2), "uint7", True)


@pytest.mark.parametrize("encoding", list(PATTERN_ENCODINGS))
@pytest.mark.parametrize("which", ["llama", "bert"])
def test_batched_extraction_stores_exactly_the_reference_encoding(
    request: pytest.FixtureRequest, which: str, encoding: str
) -> None:
    """Encoding the padded batch on the device, then cutting, equals cutting each prompt's
    pattern out of the same forward and encoding it with cache.encode_pattern."""
    model = request.getfixturevalue(which)
    batch = tokenized(model)
    results = extract.run_batch(model, batch, ExtractSettings(pattern_encoding=encoding), extract.TokenStrings(model.tokenizer))
    input_ids, attention_mask = extract.pad_batch(model, batch)
    with torch.no_grad():
        _, cached = model.bridge.run_with_cache(input_ids, attention_mask=attention_mask, names_filter=[HOOK])
    for row, (item, result) in enumerate(zip(batch, results)):
        n = len(item.ids)
        reference = encode_pattern(cached[HOOK][row, :, :n, :n].float().numpy(), encoding, model.causal)
        stored = result.arrays["patterns/L00"]
        assert stored.dtype == reference.dtype and stored.shape == reference.shape
        assert stored.tobytes() == reference.tobytes()


def test_to_host_on_cpu_returns_the_same_values() -> None:
    tensors = {"a": torch.arange(6).reshape(2, 3), "b": [torch.ones(2, dtype=torch.float16), torch.zeros(3)]}
    host = extract.to_host(tensors)
    np.testing.assert_array_equal(host["a"], np.arange(6).reshape(2, 3))
    assert host["b"][0].dtype == np.float16 and host["b"][1].shape == (3,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_copies_go_through_pinned_memory_and_match() -> None:
    values = torch.rand(4, 100, device="cuda")
    host = extract.to_host({"x": values, "xs": [values[0], values[1:]]})
    np.testing.assert_array_equal(host["x"], values.cpu().numpy())
    np.testing.assert_array_equal(host["xs"][1], values[1:].cpu().numpy())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_extraction_matches_cpu_extraction() -> None:
    cpu, cuda = load(resolve("tiny-llama"), device="cpu"), load(resolve("tiny-llama"), device="cuda", dtype="float32")
    settings = ExtractSettings(pattern_encoding="q16", logit_lens=True)
    a = extract.run_batch(cpu, tokenized(cpu), settings, extract.TokenStrings(cpu.tokenizer))
    b = extract.run_batch(cuda, tokenized(cuda), settings, extract.TokenStrings(cuda.tokenizer))
    for x, y in zip(a, b):
        assert x.arrays.keys() == y.arrays.keys()
        assert np.abs(x.arrays["patterns/L01"].astype(int) - y.arrays["patterns/L01"].astype(int)).max() <= 1
        np.testing.assert_array_equal(x.arrays["tokens"], y.arrays["tokens"])


# --- out of memory: split and retry ----------------------------------------------------------
@pytest.mark.parametrize(
    "error, message", [(torch.OutOfMemoryError, "CUDA out of memory"), (RuntimeError, "MPS backend out of memory")]
)
def test_out_of_memory_batch_is_split_in_halves_until_it_fits(llama: LoadedModel, error: type, message: str) -> None:
    batch, settings, strings = tokenized(llama), ExtractSettings(), extract.TokenStrings(llama.tokenizer)
    seen: list[int] = []
    notes: list[str] = []
    with forward_hook(llama, oom_above(2, seen, error, message)):
        results = extract.run_batch_with_oom_split(llama, batch, settings, strings, log=notes.append)
    # 5 -> 2 + 3; the 3 holds more than half the 5 that failed, so it is split into 1 + 2 before
    # it runs: every forward that ran, in order.
    assert seen == [5, 2, 1, 2]
    assert len(notes) == 1 and "batch of 5" in notes[0] and "retrying as 2 + 3" in notes[0]
    # Nothing lost or reordered: equal to running those halves directly.
    expected = extract.run_batch(llama, batch[:2], settings, strings) + extract.run_batch(llama, batch[2:3], settings, strings)
    expected += extract.run_batch(llama, batch[3:], settings, strings)
    assert len(results) == len(batch)
    for got, want, item in zip(results, expected, batch):
        assert got.arrays["tokens"].tolist() == item.ids
        assert got.arrays.keys() == want.arrays.keys()
        for name in want.arrays:
            np.testing.assert_array_equal(got.arrays[name], want.arrays[name])


def test_other_errors_and_a_single_prompt_that_does_not_fit_are_raised(llama: LoadedModel) -> None:
    batch, settings, strings = tokenized(llama), ExtractSettings(), extract.TokenStrings(llama.tokenizer)
    seen: list[int] = []
    with forward_hook(llama, oom_above(0, seen, ValueError, "a bug")), pytest.raises(ValueError, match="a bug"):
        extract.run_batch_with_oom_split(llama, batch, settings, strings)
    assert seen == [5]  # not retried: splitting cannot fix a bug
    seen.clear()
    with forward_hook(llama, oom_above(0, seen)), pytest.raises(torch.OutOfMemoryError):
        extract.run_batch_with_oom_split(llama, batch[:2], settings, strings)
    assert seen == [2, 1]


def test_stage_survives_out_of_memory_without_losing_prompts(llama: LoadedModel, tmp_path: Path) -> None:
    todo = [(Prompt(text, f"test:{i}"), prompt_hash(llama.source.model_id, text)) for i, text in enumerate(TEXTS)]
    settings = ExtractSettings()
    with forward_hook(llama, oom_above(1, [])):  # only single prompts fit
        written, failed = run_prompts(llama, todo, tmp_path / "split", settings, batch_size=4, log=lambda m: None)
    assert (written, failed) == (len(TEXTS), 0)
    rows = index.read_rows(tmp_path / "split")
    assert sorted(r["prompt_hash"] for r in rows) == sorted(h for _, h in todo)
    assert all(r["status"] == "ok" and index.is_complete(r, tmp_path / "split") for r in rows)
    with Cache(tmp_path / "split" / rows[0]["path"]) as cache:
        assert cache.layer_patterns(1).shape == (4, cache.n_tokens, cache.n_tokens)
    # Nothing fits at all: every prompt gets an error row (retried next run), and no crash.
    with forward_hook(llama, oom_above(0, [])):
        written, failed = run_prompts(llama, todo, tmp_path / "none", settings, batch_size=4, log=lambda m: None)
    assert (written, failed) == (0, len(TEXTS))
    rows = index.read_rows(tmp_path / "none")
    assert len(rows) == len(TEXTS) and all(r["status"] == "error" and "out of memory" in r["error"] for r in rows)


def test_after_an_out_of_memory_later_batches_are_split_before_they_run(llama: LoadedModel, tmp_path: Path) -> None:
    todo = [(Prompt(text, f"test:{i}"), prompt_hash(llama.source.model_id, text)) for i, text in enumerate(TEXTS)]
    seen: list[int] = []
    notes: list[str] = []
    with forward_hook(llama, oom_above(1, seen)):  # only single prompts fit
        written, failed = run_prompts(llama, todo, tmp_path, ExtractSettings(), batch_size=2, log=notes.append)
    assert (written, failed) == (len(TEXTS), 0)
    # Batches come shortest first, so the first pair that failed is the smallest pair: every
    # later pair is split before it runs. One failed forward in all, not one per batch.
    assert seen == [2] + [1] * len(TEXTS)
    assert len(notes) == 1 and "later batches are split to fit" in notes[0]


def test_stored_neurons_are_the_highest_variance_ones_over_each_prompts_real_positions(llama: LoadedModel) -> None:
    batch, settings = tokenized(llama), ExtractSettings(n_neurons=8)
    results = extract.run_batch(llama, batch, settings, extract.TokenStrings(llama.tokenizer))
    input_ids, mask = extract.pad_batch(llama, batch)
    names = [f"blocks.{layer}.mlp.hook_post" for layer in range(llama.bridge.cfg.n_layers)]
    with torch.no_grad():
        _, cached = llama.bridge.run_with_cache(input_ids, attention_mask=mask, names_filter=names)
    assert len({len(item.ids) for item in batch}) > 1  # padding is there to be ignored
    for row, item in enumerate(batch):
        n = len(item.ids)
        for layer, name in enumerate(names):
            post = cached[name][row, :n].double().numpy()  # [T, d_mlp], real positions only
            variance = post.var(axis=0)
            chosen = results[row].arrays["neuron_ids"][layer]
            others = np.setdiff1d(np.arange(post.shape[1]), chosen)
            assert len(set(chosen.tolist())) == 8
            assert variance[chosen].min() >= variance[others].max() * (1 - 1e-4)
            np.testing.assert_allclose(results[row].arrays["neuron_acts"][layer], post[:, chosen].T, rtol=1e-3, atol=1e-3)
