"""Benchmark the activations stage: speed against a bare forward pass, cache size, figures,
memory, the rerun of a fully cached prompt set, and the error of each pattern encoding.

    python -m scripts.bench.stage                                  # SmolLM2, first 100 of data/prompts.jsonl
    python -m scripts.bench.stage --model tiny-llama --random-weights --limit 8 --json /tmp/bench.json
    python -m scripts.bench.stage --profile 25                     # also: where the stage's time goes

Speed compares like with like: the same prompts, tokenized, sorted by length and batched exactly
as the stage does; "bare" is the bridge's forward on those batches with no hooks and no output,
"stage" is the stage's whole per-model loop (tokenize, forward with caching, extract, encode,
compress, write, index). Runs alternate bare/stage; the ratio is reported twice: from the fastest
run of each (other load inflates neither side alone) and as the median of each back-to-back pair's
ratio (a machine whose speed drifts, as shared ones do, moves both runs of a pair alike).

Targets: stage throughput >= 85% of bare (issue 6); cache <= 1/8 of the bytes of a float32 n x n
.npz of the same patterns; a rerun of everything cached < 3 s (a fresh process, imports included).

    python -m scripts.bench.stage --ray-workers 2 --limit 48   # also: the stage on a local 2-worker Ray
                                                               # cluster vs one process on the same cores

Length sweep (instead of the above; scripts/bench/sweep.py): prompts of exactly N tokens, made by
joining consecutive passages of the prompt file and cutting at N (`--max-tokens N`); per length,
alternating bare/stage pairs in this process, the stage's share of the bare forward (median of the
pairs' wall ratios, and of their CPU ratios), cache bytes per prompt and per token^2, and the peak
RSS of a fresh process running only the bare forward and of one running only the stage's CLI:

    python -m scripts.bench.stage --sweep 150,500,1000,2000 --sweep-tokens 4000 --repeats 3
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import io
import pstats
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lens_pipeline import activations
from lens_pipeline.capture import extract, models
from lens_pipeline.capture.models import forget_loaded
from lens_pipeline.capture.prompts import read_prompts
from lens_pipeline.store import index
from lens_pipeline.store.cache import (
    DEFAULT_PATTERN_ENCODING,
    PATTERN_ENCODINGS,
    PATTERN_MAX_ERROR,
    ExtractSettings,
    decode_pattern,
    encode_pattern,
    member_compressor,
    prompt_hash,
    write_npy_zst,
)

from . import sweep
from .common import alternate, command_parser, median_ratio, report, scratch, write_jsonl
from .passes import TARGETS, bare_forward, cache_rows, chunks, resolve, stage_batches, stage_run


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(__doc__, __spec__.name)
    parser.add_argument("--model", default="smollm2",
                        help="model name as the activations stage takes it (default: %(default)s)")
    parser.add_argument("--random-weights", action="store_true",
                        help="architecture-only model (see the stage's --random-weights)")
    parser.add_argument("--prompts", default="data/prompts.jsonl", help="prompt file (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=100, help="first N prompts (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="(default: %(default)s)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--pattern-encoding", default=DEFAULT_PATTERN_ENCODING, choices=list(PATTERN_ENCODINGS))
    parser.add_argument("--repeats", type=int, default=3,
                        help="bare/stage pairs; reported: the fastest of each, and the median of the pairs' ratios "
                        "(default: %(default)s)")
    parser.add_argument("--error-prompts", type=int, default=24,
                        help="prompts whose float32 patterns measure each encoding's error (default: %(default)s)")
    parser.add_argument("--figure-prompts", type=int, default=3,
                        help="caches each figure kind is drawn for (default: %(default)s; 0 = skip)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="cProfile one stage run and print its top N functions")
    parser.add_argument("--ray-workers", type=int, default=0, metavar="N",
                        help="also run the stage on a local Ray cluster of N CPU workers and compare it with one "
                        "process (outputs and seconds, model loading included); needs ray (default: skip)")
    parser.add_argument("--sweep", default="", metavar="N,N,...",
                        help="length sweep instead of the above: prompts of exactly these token counts "
                        "(e.g. 150,500,1000,2000)")
    parser.add_argument("--sweep-tokens", type=int, default=4000,
                        help="tokens per length in the sweep: prompts = max(1, this // N) (default: %(default)s)")
    parser.add_argument("--no-rss", action="store_true", help="sweep: skip the peak-RSS subprocesses")
    parser.add_argument("--bare-only", metavar="PROMPTS_JSONL", help=argparse.SUPPRESS)  # child: bare forward only
    parser.add_argument("--json", default="bench.json", help="where to write the results (default: %(default)s)")
    return parser


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def npz_float32_bytes(n_layers: int, n_heads: int, n_tokens: int) -> int:
    """Size of np.savez(patterns=float32 [L, H, T, T]): data, the .npy header, zip headers."""
    buffer = io.BytesIO()
    np.savez(buffer, patterns=np.zeros((n_layers, n_heads, 1, 1), np.float32))  # headers only
    return len(buffer.getvalue()) - 4 * n_layers * n_heads + 4 * n_layers * n_heads * n_tokens**2


@torch.no_grad()
def encoding_errors(model: Any, batches: list[list[extract.Tokenized]]) -> dict[str, dict[str, float]]:
    """Per encoding, on the real float32 patterns of these prompts: max and mean |stored - true|
    per weight (lower triangle for causal models), max |row sum - 1|, and the bytes per prompt of
    the stored patterns, compressed as a cache stores them."""
    n_layers = model.bridge.cfg.n_layers
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layers)]
    compressor = member_compressor()
    stats = {e: {"max_abs": 0.0, "sum_abs": 0.0, "count": 0, "max_row_sum": 0.0, "bytes": 0} for e in PATTERN_ENCODINGS}
    seen = 0
    for batch in batches:
        input_ids, attention_mask = extract.pad_batch(model, batch)
        _, cached = model.bridge.run_with_cache(input_ids, attention_mask=attention_mask, names_filter=names)
        for row, item in enumerate(batch):
            length = len(item.ids)
            mask = np.tril(np.ones((length, length), bool)) if model.causal else np.ones((length, length), bool)
            for name in names:
                true = cached[name][row, :, :length, :length].float().cpu().numpy()
                for encoding, s in stats.items():
                    stored = encode_pattern(true, encoding, model.causal)
                    decoded = decode_pattern(stored, encoding, model.causal, length)
                    error = np.abs(decoded - true)[:, mask]
                    s["max_abs"] = max(s["max_abs"], float(error.max()))
                    s["sum_abs"] += float(error.sum(dtype=np.float64))
                    s["count"] += error.size
                    s["max_row_sum"] = max(s["max_row_sum"], float(np.abs(decoded.sum(-1) - 1).max()))
                    buffer = io.BytesIO()
                    write_npy_zst(stored, compressor, buffer)
                    s["bytes"] += buffer.tell()
        seen += len(batch)
    return {
        e: {"max_abs": s["max_abs"], "mean_abs": s["sum_abs"] / max(1, s["count"]), "bound": PATTERN_MAX_ERROR[e],
            "max_row_sum_error": s["max_row_sum"], "pattern_bytes_per_prompt": s["bytes"] / max(1, seen)}
        for e, s in stats.items()
    }


def figure_rates(save_path: Path, hashes: list[str]) -> dict[str, dict[str, Any]]:
    """Figures/s for each registered figure kind, drawn by the figures stage on `hashes`."""
    if importlib.util.find_spec("lens_pipeline.figures") is None:
        return {}
    from lens_pipeline.draw.registry import REGISTRY
    from lens_pipeline.figures import load_builtins, run_figures

    load_builtins()
    rates = {}
    for name, spec in sorted(REGISTRY.items()):
        summary = run_figures(save_path, figures=[name], prompts=hashes, workers=1, progress=False)
        rates[name] = {"scope": spec.scope, "written": summary.written, "failed": summary.failed,
                       "seconds": summary.seconds, "per_s": summary.written / summary.seconds if summary.written else None}
    return rates


def rerun_seconds(args: argparse.Namespace, prompts_file: Path, save_path: Path) -> tuple[float, str]:
    """Wall time of the stage's CLI in a fresh process when every prompt is already cached."""
    command = [sys.executable, "-m", "lens_pipeline.activations", "--model", args.model, "--prompts", str(prompts_file),
               "--save-path", str(save_path), "--batch-size", str(args.batch_size), "--pattern-encoding",
               args.pattern_encoding, "--quiet"] + (["--random-weights"] if args.random_weights else [])
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0 or " 0 cache(s) written" not in done.stderr:
        raise SystemExit(f"bench: the rerun did not find everything cached:\n{done.stderr}")
    return seconds, done.stderr.strip().splitlines()[-1]


def ray_comparison(args: argparse.Namespace, prompts_file: Path, work: Path, n_prompts: int) -> dict[str, Any]:
    """The whole stage (model loading included) in this process, then on a fresh local Ray
    cluster of `--ray-workers` CPU workers on the same cores; are the outputs the same?"""
    import ray

    def run(save_path: Path, address: str | None) -> float:
        started = time.perf_counter()
        summary = activations.run_activations(
            args.model, prompts_file, save_path, batch_size=args.batch_size, device=args.device, dtype=args.dtype,
            pattern_encoding=args.pattern_encoding, random_weights=args.random_weights, ray=address,
            progress=False, log=lambda message: None,
        )
        if summary.failed or summary.written != n_prompts:
            raise SystemExit(f"bench: the {'Ray' if address else 'single-process'} run failed; see {save_path}")
        return time.perf_counter() - started

    def rows(save_path: Path) -> list[dict[str, Any]]:
        return sorted(({k: v for k, v in r.items() if k != "created"} for r in index.read_rows(save_path)),
                      key=lambda r: r["prompt_hash"])

    forget_loaded()  # load again, as a new run would
    single_s = run(work / "ray_single", None)
    ray.init(num_cpus=args.ray_workers, include_dashboard=False, log_to_driver=False)
    try:
        ray_s = run(work / "ray_run", "auto")
    finally:
        ray.shutdown()
    return {"workers": args.ray_workers, "prompts": n_prompts, "single_s": single_s, "ray_s": ray_s,
            "identical": rows(work / "ray_single") == rows(work / "ray_run")}


def print_table(results: dict[str, Any]) -> None:
    s, c = results["speed"], results["cache"]
    lines = [
        f"model {results['model']} on {results['device']} ({results['dtype']}), {results['prompts']} prompts, "
        f"{results['tokens']} tokens, batch {results['batch_size']}, encoding {results['pattern_encoding']}",
        f"{'':28}{'seconds':>9}{'CPU s':>8}{'prompts/s':>11}{'tokens/s':>10}",
        f"{'bare forward':28}{s['bare_s']:9.2f}{s['bare_cpu_s']:8.2f}"
        f"{s['bare_prompts_per_s']:11.2f}{s['bare_tokens_per_s']:10.0f}",
        f"{'activations stage':28}{s['stage_s']:9.2f}{s['stage_cpu_s']:8.2f}"
        f"{s['stage_prompts_per_s']:11.2f}{s['stage_tokens_per_s']:10.0f}",
        f"stage throughput: {100 * s['throughput_ratio']:.1f}% of bare, fastest runs; "
        f"{100 * s['paired_ratio_median']:.1f}%, "
        f"median of the pairs (target >= {100 * TARGETS['throughput_ratio']:.0f}%); "
        f"CPU {100 * (s['stage_cpu_s'] / s['bare_cpu_s'] - 1):+.1f}%; "
        f"runs: bare {', '.join(f'{x:.1f}' for x in s['bare_runs_s'])}"
        f" s, stage {', '.join(f'{x:.1f}' for x in s['stage_runs_s'])} s",
        f"cache: {c['bytes_per_prompt'] / 1e3:.1f} kB/prompt vs float32 n x n npz {c['npz_bytes_per_prompt'] / 1e6:.2f} MB/prompt"
        f" = 1/{1 / c['ratio']:.0f} (target <= 1/8)",
        f"rerun, all cached, fresh process: {results['rerun_s']:.2f} s (target < 3 s)",
        f"peak RSS {results['peak_rss_bytes'] / 2**30:.2f} GiB"
        + (f", peak GPU memory {results['peak_gpu_bytes'] / 2**30:.2f} GiB" if results.get("peak_gpu_bytes") else ""),
        f"model load {results['load_s']:.1f} s",
        "",
        f"pattern encodings on {results['error_prompts']} prompts' float32 patterns:",
        f"{'encoding':10}{'max |err|':>11}{'mean |err|':>12}{'bound':>10}{'max |rowsum-1|':>16}{'kB/prompt':>11}",
    ]
    for name, e in results["encodings"].items():
        lines.append(f"{name:10}{e['max_abs']:11.2e}{e['mean_abs']:12.2e}{e['bound']:10.2e}"
                     f"{e['max_row_sum_error']:16.2e}{e['pattern_bytes_per_prompt'] / 1e3:11.1f}")
    if results["figures"]:
        lines += ["", f"figures stage, {results['figure_prompts']} prompt(s), one process:",
                  f"{'figure':28}{'scope':>8}{'written':>9}{'figures/s':>11}"]
        for name, f in results["figures"].items():
            rate = f"{f['per_s']:11.1f}" if f["per_s"] else f"{'skipped':>11}"
            lines.append(f"{name:28}{f['scope']:>8}{f['written']:9d}{rate}")
    if results.get("ray"):
        r = results["ray"]
        lines += ["", f"Ray, {r['workers']} local CPU workers vs one process, {r['prompts']} prompts, model loading included:",
                  f"  one process {r['single_s']:.1f} s, Ray {r['ray_s']:.1f} s "
                  f"({100 * (r['ray_s'] / r['single_s'] - 1):+.1f}%); "
                  f"outputs identical (index rows, cache sha256): {r['identical']}"]
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.bare_only:
        return sweep.bare_only(args)
    if args.sweep:
        return sweep.run_sweep(args)
    prompts, _ = read_prompts(args.prompts)
    prompts = prompts[: args.limit]
    source = resolve(args)
    settings = ExtractSettings(pattern_encoding=args.pattern_encoding)
    with scratch("lens_bench_") as work:
        prompts_file = write_jsonl(work / "prompts.jsonl", ({"text": p.text, **p.metadata} for p in prompts))

        started = time.perf_counter()
        model = models.load_model(source, args.device, args.dtype)
        load_s = time.perf_counter() - started
        todo = list({prompt_hash(source.model_id, p.text): (p, prompt_hash(source.model_id, p.text)) for p in prompts}.values())
        tokens, batches = stage_batches(model, [p.text for p, _ in todo], settings, args.batch_size)
        n_tokens = sum(len(t.ids) for t in tokens)
        bare_forward(model, batches[:1] + batches[-1:])  # warm-up: lazy inits, the largest allocations
        if model.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()

        save_path = work / "stage"
        bare, stage = alternate(
            lambda: bare_forward(model, batches), lambda: stage_run(model, todo, save_path, settings, args.batch_size),
            args.repeats, lambda b, s: print(f"bench: bare {b[0]:.2f} s (CPU {b[1]:.2f} s), stage {s[0]:.2f} s "
                                             f"(CPU {s[1]:.2f} s)", file=sys.stderr))
        if args.profile:
            profiler = cProfile.Profile()
            profiler.runcall(stage_run, model, todo, save_path, settings, args.batch_size)
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(args.profile)
        (bare_s, bare_cpu), (stage_s, stage_cpu) = min(bare), min(stage)  # fastest wall time of each

        rows = cache_rows(save_path)
        cfg = model.bridge.cfg
        cache_bytes = sum(r["bytes"] for r in rows)
        npz_bytes = sum(npz_float32_bytes(cfg.n_layers, cfg.n_heads, r["n_tokens"]) for r in rows)
        # Prompts spread over the length range (the batches are sorted: the first are the shortest).
        sample = tokens[:: max(1, len(tokens) // max(1, args.error_prompts))][: args.error_prompts]
        errors = encoding_errors(model, chunks(sample, args.batch_size))
        figures = figure_rates(save_path, [r["prompt_hash"] for r in rows[: args.figure_prompts]]) if args.figure_prompts else {}
        rerun_s, rerun_line = rerun_seconds(args, prompts_file, save_path)
        ray_results = ray_comparison(args, prompts_file, work, len(todo)) if args.ray_workers else None

        results = {
            "model": source.name, "model_id": source.model_id, "device": model.device, "dtype": model.dtype,
            "prompts": len(todo), "tokens": n_tokens, "batch_size": args.batch_size,
            "pattern_encoding": args.pattern_encoding, "load_s": load_s,
            "speed": {
                "bare_s": bare_s, "stage_s": stage_s, "bare_cpu_s": bare_cpu, "stage_cpu_s": stage_cpu,
                "bare_runs_s": [w for w, _ in bare], "stage_runs_s": [w for w, _ in stage],
                "bare_prompts_per_s": len(todo) / bare_s, "stage_prompts_per_s": len(todo) / stage_s,
                "bare_tokens_per_s": n_tokens / bare_s, "stage_tokens_per_s": n_tokens / stage_s,
                "throughput_ratio": bare_s / stage_s,
                # Each pair ran back to back, so a machine that speeds up or slows down moves both alike.
                "paired_ratio_median": median_ratio([w for w, _ in bare], [w for w, _ in stage]),
            },
            "cache": {"bytes_per_prompt": cache_bytes / len(rows), "npz_bytes_per_prompt": npz_bytes / len(rows),
                      "ratio": cache_bytes / npz_bytes},
            "rerun_s": rerun_s, "rerun_output": rerun_line,
            "peak_rss_bytes": _peak_rss_bytes(),
            "peak_gpu_bytes": torch.cuda.max_memory_allocated() if model.device.startswith("cuda") else None,
            "error_prompts": len(sample), "encodings": errors,
            "figure_prompts": min(args.figure_prompts, len(rows)), "figures": figures,
            "ray": ray_results, "targets": TARGETS,
        }
        return report(results, print_table, args.json)


if __name__ == "__main__":
    sys.exit(main())
