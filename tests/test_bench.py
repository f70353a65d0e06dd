"""scripts/bench.py end to end on a tiny random-weight model (a smoke test; no speed asserted)."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, python_cmd, write_jsonl
from lens_pipeline.store.cache import PATTERN_ENCODINGS, PATTERN_MAX_ERROR

TEXTS = ["To be, or not to be: that is the question:", "Hi there", "Friends, Romans, countrymen, lend me your ears.",
         "Double, double toil and trouble; fire burn and cauldron bubble.", "Now is the winter of our discontent."]


def test_bench_prints_a_table_and_writes_every_measurement(tmp_path: Path) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"text": t} for t in TEXTS])
    out = tmp_path / "bench.json"
    done = subprocess.run(
        python_cmd("scripts/bench.py", "--model", "tiny-llama", "--random-weights", "--prompts", str(prompts),
                   "--limit", "4", "--batch-size", "2", "--repeats", "1", "--error-prompts", "3",
                   "--figure-prompts", "1", "--json", str(out)),
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    for heading in ("bare forward", "activations stage", "stage throughput", "cache:", "rerun", "peak RSS", "q12"):
        assert heading in done.stdout
    results = json.loads(out.read_text())
    assert results["model"] == "tiny-llama-random" and results["prompts"] == 4
    speed = results["speed"]
    assert speed["bare_s"] > 0 and speed["stage_s"] > 0 and speed["stage_tokens_per_s"] > 0
    cache = results["cache"]
    assert cache["bytes_per_prompt"] > 0
    assert cache["ratio"] == pytest.approx(cache["bytes_per_prompt"] / cache["npz_bytes_per_prompt"])
    assert results["rerun_s"] > 0 and " 0 cache(s) written" in results["rerun_output"]
    assert results["peak_rss_bytes"] > 0
    assert set(results["encodings"]) == set(PATTERN_ENCODINGS)
    for name, e in results["encodings"].items():
        # Measured on real patterns, every encoding stays within its documented bound.
        assert e["max_abs"] <= PATTERN_MAX_ERROR[name] * (1 + 1e-3) + 1e-7
        assert 0 <= e["mean_abs"] <= e["max_abs"] and e["pattern_bytes_per_prompt"] > 0
    if (REPO / "lens_pipeline" / "figures.py").exists():
        assert results["figures"]["attention_heatmap"]["written"] == 2 * 4  # layers x heads, one prompt


def test_npz_size_arithmetic_matches_np_savez() -> None:
    spec = importlib.util.spec_from_file_location("bench", REPO / "scripts" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for shape in [(2, 3, 5), (30, 9, 217), (1, 1, 1)]:
        buffer = io.BytesIO()
        np.savez(buffer, patterns=np.zeros((shape[0], shape[1], shape[2], shape[2]), np.float32))
        assert bench.npz_float32_bytes(*shape) == len(buffer.getvalue())


def test_length_sweep_prints_a_row_per_length_with_memory_from_fresh_processes(tmp_path: Path) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"text": t} for t in TEXTS])
    out = tmp_path / "sweep.json"
    done = subprocess.run(
        python_cmd("scripts/bench.py", "--model", "tiny-llama", "--random-weights", "--prompts", str(prompts),
                   "--sweep", "24", "--sweep-tokens", "48", "--batch-size", "2", "--repeats", "1", "--json", str(out)),
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "length sweep" in done.stdout and "B/token²" in done.stdout
    results = json.loads(out.read_text())
    (row,) = results["sweep"]
    # Joined passages cut at exactly 24 tokens: two prompts, one batch.
    assert row["n_tokens"] == 24 and row["prompts"] == 2 and row["batch_size"] == 2
    assert row["bytes_per_token2"] == pytest.approx(row["bytes_per_prompt"] / 24**2)
    assert 0 < row["paired_ratio_median"] and 0 < row["paired_cpu_ratio_median"]
    assert row["bare_peak_rss_bytes"] > 100 * 2**20 and row["stage_peak_rss_bytes"] > 100 * 2**20

