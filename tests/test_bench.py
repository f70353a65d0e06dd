"""The benchmarks (scripts/bench/, `python -m scripts.bench.<name>`): the stage benchmark end to end
on a tiny random-weight model (a smoke test; no speed asserted), and every benchmark's --help."""

from __future__ import annotations

import importlib
import io
import json
import subprocess
import sys
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
        python_cmd("-m", "scripts.bench.stage", "--model", "tiny-llama", "--random-weights", "--prompts", str(prompts),
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
    bench = importlib.import_module("bench.stage")  # scripts/ is on sys.path (conftest)
    for shape in [(2, 3, 5), (30, 9, 217), (1, 1, 1)]:
        buffer = io.BytesIO()
        np.savez(buffer, patterns=np.zeros((shape[0], shape[1], shape[2], shape[2]), np.float32))
        assert bench.npz_float32_bytes(*shape) == len(buffer.getvalue())


def test_length_sweep_prints_a_row_per_length_with_memory_from_fresh_processes(tmp_path: Path) -> None:
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"text": t} for t in TEXTS])
    out = tmp_path / "sweep.json"
    done = subprocess.run(
        python_cmd("-m", "scripts.bench.stage", "--model", "tiny-llama", "--random-weights", "--prompts", str(prompts),
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



BENCHMARKS = ["stage", "figures", "explain", "ig_tolerance", "patching", "server", "corpus", "interactive", "vs_pattern_lens"]


def test_every_benchmark_module_is_listed() -> None:
    """BENCHMARKS below covers every command of scripts/bench/ (the rest are its shared modules)."""
    shared = {"__init__", "common", "passes", "sweep"}
    assert {p.stem for p in (REPO / "scripts" / "bench").glob("*.py")} - shared == set(BENCHMARKS)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_help_imports_and_parses(name: str) -> None:
    done = subprocess.run(python_cmd("-m", f"scripts.bench.{name}", "--help"), cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python -m scripts.bench.{name} ")


def test_bench_server_shim_keeps_the_tests_synthetic_index() -> None:
    """tests/test_server.py imports synthetic_index from scripts/bench_server.py: the benchmark's own."""
    import bench.server
    import bench_server

    assert bench_server.synthetic_index is bench.server.synthetic_index


def test_run_child_measures_the_child_alone(tmp_path: Path) -> None:
    """Peak RSS is the child's own VmHWM (not the fork's inherited high-water mark), CPU its own
    seconds; a script runs with its folder first on sys.path, as `python script.py` has it."""
    from bench.common import run_child

    script = tmp_path / "child.py"
    script.write_text(f"import sys\nassert sys.path[0] == {str(tmp_path)!r}\nblock = b'x' * (300 * 2**20)\n"
                      "sum(range(3 * 10**6))\n")
    measured = run_child([sys.executable, str(script)])
    assert 300 * 2**20 <= measured["peak_rss_bytes"] < 420 * 2**20
    assert 0 < measured["cpu_s"] and 0 < measured["wall_s"]
    assert run_child([sys.executable, "-m", "json.tool", "--help"])["peak_rss_bytes"] > 0  # the -m form
    (tmp_path / "fails.py").write_text("raise SystemExit(3)\n")
    with pytest.raises(SystemExit, match="fails.py failed"):
        run_child([sys.executable, str(tmp_path / "fails.py")])


def test_ig_tolerance_bench_reports_both_runs(tmp_path: Path) -> None:
    out = tmp_path / "ig.json"
    done = subprocess.run(python_cmd("-m", "scripts.bench.ig_tolerance", "--model", "tiny-llama", "--random-weights",
                                     "--limit", "2", "--fixed", "4", "--json", str(out)),
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "cost of the tolerance:" in done.stdout
    fixed, adaptive = json.loads(out.read_text())["runs"]
    assert fixed["steps_used"] == {"4": fixed["targets"]} and fixed["prompts"] == adaptive["prompts"] == 2
    assert adaptive["error_max"] <= 0.01 or adaptive["over_tolerance"]


def test_patching_bench_reports_every_site_and_the_estimate(tmp_path: Path) -> None:
    out = tmp_path / "patching.json"
    done = subprocess.run(python_cmd("-m", "scripts.bench.patching", "--model", "tiny-llama", "--random-weights",
                                     "--repeats", "1", "--json", str(out)),
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    assert [site["site"] for site in results["sites"]] == ["resid_pre", "attn_out", "mlp_out", "heads"]
    assert all(site["throughput_ratio"] > 0 and site["rows"] > 0 for site in results["sites"])
    assert results["attribution_patching"]["speedup"] > 0 and "faster" in done.stdout
