import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zstandard

from lens_pipeline.store.cache import (
    BYTE_PLANE_ENCODINGS,
    PATTERN_ENCODINGS,
    PATTERN_MAX_ERROR,
    Cache,
    CacheContents,
    CacheError,
    decode_pattern,
    encode_pattern,
    serialize,
    write_atomic,
    write_npy_zst,
)


def random_patterns(heads: int, tokens: int, causal: bool, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(heads, tokens, tokens)) * 3
    if causal:
        scores = np.where(np.tril(np.ones((tokens, tokens), bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return (weights / weights.sum(-1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("encoding", list(PATTERN_ENCODINGS))
@pytest.mark.parametrize("causal", [True, False])
def test_encodings_round_trip_within_their_stated_bound(encoding: str, causal: bool) -> None:
    patterns = random_patterns(3, 17, causal)
    stored = encode_pattern(patterns, encoding, causal)
    planes = (2,) if encoding in BYTE_PLANE_ENCODINGS else ()  # [H, 2, ...] uint8: low, high bytes
    assert stored.shape == (3, *planes, *((17 * 18 // 2,) if causal else (17, 17)))  # causal: lower triangle only
    decoded = decode_pattern(stored, encoding, causal, 17)
    assert decoded.dtype == np.float32 and decoded.shape == patterns.shape
    assert np.abs(decoded - patterns).max() <= PATTERN_MAX_ERROR[encoding] + 1e-7
    if causal:
        assert np.all(np.triu(decoded, 1) == 0)


def make_cache(tmp_path: Path) -> Path:
    patterns = random_patterns(2, 5, True)
    meta = {"model": "m", "family": "llama", "prompt_hash": "abc", "text": "<b>hi</b>", "n_layers": 2,
            "n_heads": 2, "n_tokens": 5, "causal": True, "pattern_encoding": "float16"}
    arrays = {
        "tokens": np.arange(5, dtype=np.int32),
        "token_strs": np.array(["a", "b", "c", "d", "é"]),
        "patterns/L00": encode_pattern(patterns, "float16", True),
        "patterns/L01": encode_pattern(patterns[::-1], "float16", True),
    }
    path = tmp_path / "c.zip"
    write_atomic(path, serialize(CacheContents(meta, arrays)))
    return path


def test_cache_reads_one_layer_without_decompressing_the_rest(tmp_path: Path) -> None:
    path = make_cache(tmp_path)
    with Cache(path) as cache:
        assert cache.tokens == ["a", "b", "c", "d", "é"]
        head = cache.pattern(1, 0)
        assert head.shape == (5, 5)
        np.testing.assert_allclose(head.sum(-1), 1, atol=5e-3)
        assert set(cache._arrays) == {"token_strs", "patterns/L01"}  # only what was asked for
    # every member is a plain .npy once zstd-decompressed: no pickles anywhere
    with zipfile.ZipFile(path) as archive:
        assert archive.getinfo("patterns/L00.npy.zst").compress_type == zipfile.ZIP_STORED
    assert not list(tmp_path.glob(".*.tmp"))


def test_corrupt_and_missing_caches_raise_cache_error(tmp_path: Path) -> None:
    path = make_cache(tmp_path)
    data = bytearray(path.read_bytes())
    (tmp_path / "truncated.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(CacheError):
        Cache(tmp_path / "truncated.zip")
    with pytest.raises(CacheError):
        Cache(tmp_path / "missing.zip")


def test_byte_planes_hold_low_then_high_bytes_and_schema_1_uint16_still_decodes() -> None:
    patterns = random_patterns(2, 9, True)
    planes = encode_pattern(patterns, "q12", True)
    assert planes.dtype == np.uint8 and planes.shape == (2, 2, 45)
    values = planes[:, 0].astype(np.uint16) + 256 * planes[:, 1].astype(np.uint16)
    assert values.max() <= 4095
    assert np.abs(values / 4095 - patterns[(slice(None), *np.tril_indices(9))]).max() <= PATTERN_MAX_ERROR["q12"]
    # A schema-1 cache stored the same values as plain uint16: the loader reads both.
    np.testing.assert_array_equal(decode_pattern(values, "q12", True, 9), decode_pattern(planes, "q12", True, 9))


@pytest.mark.parametrize("layout", ["contiguous", "fortran", "strided rows", "strided runs", "0-d", "empty", "strings"])
def test_arrays_are_stored_as_np_save_would_whatever_their_memory_layout(layout: str) -> None:
    base = np.arange(2 * 3 * 2 * 5, dtype=np.uint16).reshape(2, 3, 2, 5)
    array = {
        "contiguous": base, "fortran": np.asfortranarray(base[0, :, 0]), "strided rows": base[:, 0, 0, :3],
        "strided runs": base[1, :, :, :4], "0-d": np.float32(3.5), "empty": np.zeros((3, 0)),
        "strings": np.array([["a", "bc"], ["d", "é"]])[:, ::-1],
    }[layout]
    compressed = io.BytesIO()
    write_npy_zst(np.asarray(array), zstandard.ZstdCompressor(), compressed)
    stored = zstandard.ZstdDecompressor().decompress(compressed.getvalue())
    expected = io.BytesIO()
    np.save(expected, np.asarray(array) if np.ndim(array) == 0 else np.ascontiguousarray(array))
    assert stored == expected.getvalue()


def test_an_array_the_table_does_not_describe_is_refused() -> None:
    with pytest.raises(ValueError, match="CACHE_ARRAYS"):
        serialize(CacheContents({"model": "m"}, {"attribution_scores": np.zeros(3, dtype=np.float32)}))
