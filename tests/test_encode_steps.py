"""The CPU pattern encoder that goes a slice of positions at a time stores exactly the values of the
reference encoder (`cache.encode_pattern`), whatever the slice size, shape or encoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lens_pipeline.capture import extract
from lens_pipeline.store.cache import FIXED_POINT_LEVELS, decode_pattern, encode_pattern


def softmax_patterns(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Causal softmax rows (zeros above the diagonal) with the awkward values planted: the ends,
    exact half steps of every level count, tiny and just-outside-[0, 1] weights."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 4, size=shape).astype(np.float32)
    n = shape[-1]
    logits[..., ~np.tril(np.ones((n, n), bool))] = -np.inf
    patterns = np.exp(logits - logits.max(-1, keepdims=True))
    patterns /= patterns.sum(-1, keepdims=True)
    awkward = np.array([0, 1, 0.5 / 255, 1.5 / 255, 0.5 / 4095, 2.5 / 4095, 2.5 / 65535, 3e-5, 2.0**-25, -1e-7, 1 + 1e-7],
                       dtype=np.float32)
    patterns.reshape(-1)[: awkward.size] = awkward
    return patterns.astype(np.float32)


@pytest.mark.parametrize("encoding", list(FIXED_POINT_LEVELS))
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("step_values", [1, 7, 96, 10**9])
def test_stepped_encoding_is_bit_identical_to_the_reference(encoding: str, causal: bool, step_values: int) -> None:
    patterns = softmax_patterns((2, 3, 23, 23))  # [batch, heads, T, T]: steps split rows and heads unevenly
    expected = np.stack([encode_pattern(p, encoding, causal) for p in patterns])
    got = extract.encode_patterns(torch.from_numpy(patterns), encoding, causal, step_values=step_values).numpy()
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert got.tobytes() == expected.tobytes()
    decoded = decode_pattern(got[1], encoding, causal, 23)  # and it decodes like any stored pattern
    assert np.abs(decoded - patterns[1]).max() <= 0.5 / FIXED_POINT_LEVELS[encoding] + 2.0**-23


def test_the_one_pass_path_and_the_stepped_path_agree_on_real_sized_layers() -> None:
    # float16 input takes the one-pass path; the same values in float32 take the stepped one.
    patterns = torch.from_numpy(softmax_patterns((1, 9, 300, 300), seed=1)).to(torch.float16)
    one_pass = extract.encode_patterns(patterns, "q12", True)
    stepped = extract.encode_patterns(patterns.float(), "q12", True, step_values=4096)
    assert torch.equal(one_pass, stepped)


def test_triangle_index_is_reused_and_bounded() -> None:
    first = extract.triangle_index(50, torch.device("cpu"))
    assert extract.triangle_index(50, torch.device("cpu")) is first
    rows, cols = np.tril_indices(50)
    assert np.array_equal(first.numpy(), rows * 50 + cols)
    for n in (51, 52, 53):
        extract.triangle_index(n, torch.device("cpu"))
    assert len(extract._TRIANGLE_INDEX) <= 2
