"""Benchmark the activations stage: speed against a bare forward pass, cache size, figures,
memory, the rerun of a fully cached prompt set, and the error of each pattern encoding.

    python scripts/bench.py                                        # SmolLM2, first 100 of data/prompts.jsonl
    python scripts/bench.py --model tiny-llama --random-weights --limit 8 --json /tmp/bench.json
    python scripts/bench.py --profile 25                           # also: where the stage's time goes

Speed compares like with like: the same prompts, tokenized, sorted by length and batched exactly
as the stage does; "bare" is the bridge's forward on those batches with no hooks and no output,
"stage" is the stage's whole per-model loop (tokenize, forward with caching, extract, encode,
compress, write, index). Runs alternate bare/stage; the ratio is reported twice: from the fastest
run of each (other load inflates neither side alone) and as the median of each back-to-back pair's
ratio (a machine whose speed drifts, as shared ones do, moves both runs of a pair alike).

Targets: stage throughput >= 85% of bare (issue 6); cache <= 1/8 of the bytes of a float32 n x n
.npz of the same patterns; a rerun of everything cached < 3 s (a fresh process, imports included).

    python scripts/bench.py --ray-workers 2 --limit 48   # also: the stage on a local 2-worker Ray
                                                         # cluster vs one process on the same cores

Length sweep (instead of the above): prompts of exactly N tokens, made by joining consecutive
passages of the prompt file and cutting at N (`--max-tokens N`); per length, alternating bare/stage
pairs in this process, the stage's share of the bare forward (median of the pairs' wall ratios,
and of their CPU ratios), cache bytes per prompt and per token^2, and the peak RSS of a fresh
process running only the bare forward and of one running only the stage's CLI:

    python scripts/bench.py --sweep 150,500,1000,2000 --sweep-tokens 4000 --repeats 3
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import io
import json
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lens_pipeline import activations
from lens_pipeline.capture import extract, models
from lens_pipeline.capture.models import forget_loaded, resolve
from lens_pipeline.capture.prompts import Prompt, read_prompts
from lens_pipeline.capture.random_models import resolve as resolve_random
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

TARGETS = {"throughput_ratio": 0.85, "bytes_ratio": 1 / 8, "rerun_s": 3.0}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python scripts/bench.py", description=__doc__.split("\n\n")[0])
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
                        help="length sweep instead of the above: prompts of exactly these token counts (e.g. 150,500,1000,2000)")
    parser.add_argument("--sweep-tokens", type=int, default=4000,
                        help="tokens per length in the sweep: prompts = max(1, this // N) (default: %(default)s)")
    parser.add_argument("--no-rss", action="store_true", help="sweep: skip the peak-RSS subprocesses")
    parser.add_argument("--bare-only", metavar="PROMPTS_JSONL", help=argparse.SUPPRESS)  # child: bare forward only
    parser.add_argument("--json", default="bench.json", help="where to write the results (default: %(default)s)")
    return parser


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def bare_forward(model: Any, batches: list[list[extract.Tokenized]]) -> tuple[float, float]:
    """(wall, CPU) seconds for the bridge's plain forward over the batches: no hooks, nothing kept."""
    _sync(model.device)
    wall, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        input_ids, attention_mask = extract.pad_batch(model, batch)
        model.bridge(input_ids, attention_mask=attention_mask)
    _sync(model.device)
    return time.perf_counter() - wall, time.process_time() - cpu


def stage_run(model: Any, todo: list, save_path: Path, settings: ExtractSettings, batch_size: int) -> tuple[float, float]:
    """(wall, CPU) seconds for the stage's per-model loop, writing caches and index rows to `save_path`."""
    shutil.rmtree(save_path, ignore_errors=True)
    _sync(model.device)
    wall, cpu = time.perf_counter(), time.process_time()
    written, failed = activations.run_prompts(model, todo, save_path, settings, batch_size=batch_size, log=lambda m: None)
    _sync(model.device)
    if failed or written != len(todo):
        raise SystemExit(f"bench: the stage failed on {failed} prompt(s); see {index.index_path(save_path)}")
    return time.perf_counter() - wall, time.process_time() - cpu


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


def sweep_texts(model: Any, passages: list[Prompt], n_tokens: int, count: int, start: int = 0) -> list[str]:
    """`count` texts of at least `n_tokens` tokens: consecutive passages joined by blank lines (the
    stage cuts them at exactly `n_tokens` with --max-tokens). Passages are reused only when the file
    runs out."""
    texts, current, i = [], [], start
    while len(texts) < count:
        current.append(passages[i % len(passages)].text)
        i += 1
        if len(extract.tokenize(model, "\n\n".join(current), 10**9).ids) >= n_tokens:
            texts.append("\n\n".join(current))
            current = []
        if i - start > 50 * len(passages):
            raise SystemExit(f"bench: the prompt file is too short to make {n_tokens}-token prompts")
    return texts


# A child's ru_maxrss starts from this process's RSS at the fork (Linux keeps the high-water mark
# across exec), and this process holds a model: the child reports its own VmHWM as it exits.
_REPORT_PEAK_RSS = """import atexit, runpy, sys
def report():
    status = open("/proc/self/status").read()
    sys.stderr.write("\\nbench-peak-rss-kib " + status.split("VmHWM:")[1].split()[0] + "\\n")
atexit.register(report)
if sys.argv[1] == "-m":
    sys.argv = sys.argv[2:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
"""


def child_peak_rss(command: list[str]) -> tuple[int, float]:
    """(peak RSS bytes, wall s) of a fresh process running `command` ([python, script or -m module, ...]);
    it must succeed."""
    started = time.perf_counter()
    result = subprocess.run([command[0], "-c", _REPORT_PEAK_RSS, *command[1:]], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, errors="replace")
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"bench: {' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return int(result.stderr.rsplit("bench-peak-rss-kib ", 1)[1].split()[0]) * 1024, seconds


def bare_only(args: argparse.Namespace) -> int:
    """Child process of the sweep: load the model and run the bare forward once over the batches
    the stage would make of these prompts, so its peak RSS can be compared with the stage's."""
    prompts, _ = read_prompts(args.bare_only)
    source = resolve_random(args.model) if args.random_weights else resolve(args.model)
    model = models.load_model(source, args.device, args.dtype)
    limit = extract.context_limit(model, ExtractSettings(max_tokens=max(1, args.limit)))
    tokens = sorted((extract.tokenize(model, p.text, limit) for p in prompts), key=lambda t: len(t.ids))
    bare_forward(model, [tokens[i : i + args.batch_size] for i in range(0, len(tokens), args.batch_size)])
    return 0


def sweep_length(args: argparse.Namespace, model: Any, source: Any, passages: list[Prompt], n_tokens: int,
                 work: Path, start: int) -> dict[str, Any]:
    """One row of the sweep: alternating bare/stage pairs on prompts of exactly `n_tokens` tokens."""
    count = max(1, args.sweep_tokens // n_tokens)
    batch_size = min(args.batch_size, count)
    settings = ExtractSettings(pattern_encoding=args.pattern_encoding, max_tokens=n_tokens)
    prompts = [Prompt(text, f"sweep:{i}") for i, text in enumerate(sweep_texts(model, passages, n_tokens, count, start))]
    todo = [(p, prompt_hash(source.model_id, p.text)) for p in prompts]
    limit = extract.context_limit(model, settings)
    tokens = sorted((extract.tokenize(model, p.text, limit) for p, _ in todo), key=lambda t: len(t.ids))
    batches = [tokens[i : i + batch_size] for i in range(0, len(tokens), batch_size)]
    bare_forward(model, batches[:1])  # warm-up at this length
    save_path = work / f"sweep_{n_tokens}"
    bare, stage = [], []
    for _ in range(args.repeats):
        bare.append(bare_forward(model, batches))
        stage.append(stage_run(model, todo, save_path, settings, batch_size))
        print(f"bench: {n_tokens} tokens: bare {bare[-1][0]:.2f} s (CPU {bare[-1][1]:.2f}), stage {stage[-1][0]:.2f} s "
              f"(CPU {stage[-1][1]:.2f})", file=sys.stderr)
    rows = [r for r in index.read_rows(save_path) if r["kind"] == "cache" and r["status"] == "ok"]
    per_prompt = sum(r["bytes"] for r in rows) / len(rows)
    result = {
        "n_tokens": n_tokens, "prompts": count, "batch_size": batch_size,
        "bare_runs_s": [w for w, _ in bare], "stage_runs_s": [w for w, _ in stage],
        "bare_cpu_runs_s": [c for _, c in bare], "stage_cpu_runs_s": [c for _, c in stage],
        "paired_ratio_median": float(np.median([b / s for (b, _), (s, _) in zip(bare, stage)])),
        "paired_cpu_ratio_median": float(np.median([b / s for (_, b), (_, s) in zip(bare, stage)])),
        "bytes_per_prompt": per_prompt, "bytes_per_token2": per_prompt / n_tokens**2,
    }
    if not args.no_rss:
        prompts_file = work / f"sweep_{n_tokens}.jsonl"
        prompts_file.write_text("".join(json.dumps({"text": p.text}) + "\n" for p in prompts), encoding="utf-8")
        common = ["--model", args.model, "--batch-size", str(batch_size), "--device", args.device, "--dtype", args.dtype]
        common += ["--random-weights"] if args.random_weights else []
        result["bare_peak_rss_bytes"], _ = child_peak_rss(
            [sys.executable, __file__, "--bare-only", str(prompts_file), "--limit", str(n_tokens), *common])
        result["stage_peak_rss_bytes"], result["stage_process_s"] = child_peak_rss(
            [sys.executable, "-m", "lens_pipeline.activations", "--prompts", str(prompts_file), "--save-path",
             str(work / f"rss_{n_tokens}"), "--max-tokens", str(n_tokens), "--pattern-encoding", args.pattern_encoding,
             "--quiet", *common])
    return result


def run_sweep(args: argparse.Namespace) -> int:
    """The length sweep: one table row per length, all in one JSON file."""
    lengths = [int(n) for n in args.sweep.split(",") if n.strip()]
    passages, _ = read_prompts(args.prompts)
    source = resolve_random(args.model) if args.random_weights else resolve(args.model)
    model = models.load_model(source, args.device, args.dtype)
    work = Path(tempfile.mkdtemp(prefix="lens_sweep_"))
    try:
        rows = [sweep_length(args, model, source, passages, n, work, start=7 * i) for i, n in enumerate(lengths)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = {"model": source.name, "device": model.device, "dtype": model.dtype, "threads": torch.get_num_threads(),
               "pattern_encoding": args.pattern_encoding, "repeats": args.repeats, "sweep": rows, "targets": TARGETS}
    print_sweep(results)
    Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(f"\nwritten: {args.json}")
    return 0


def print_sweep(results: dict[str, Any]) -> None:
    gib = 2**30
    lines = [f"length sweep: {results['model']} on {results['device']} ({results['dtype']}, {results['threads']} threads), "
             f"encoding {results['pattern_encoding']}, {results['repeats']} bare/stage pair(s) per length",
             f"{'tokens':>7}{'prompts':>8}{'batch':>6}{'bare s':>8}{'stage s':>8}{'stage/bare':>11}{'CPU':>7}"
             f"{'kB/prompt':>11}{'B/token²':>9}{'RSS bare':>10}{'RSS stage':>10}"]
    for r in results["sweep"]:
        rss = (f"{r['bare_peak_rss_bytes'] / gib:9.2f}G{r['stage_peak_rss_bytes'] / gib:9.2f}G"
               if "stage_peak_rss_bytes" in r else f"{'-':>10}{'-':>10}")
        lines.append(f"{r['n_tokens']:7d}{r['prompts']:8d}{r['batch_size']:6d}{min(r['bare_runs_s']):8.2f}"
                     f"{min(r['stage_runs_s']):8.2f}{100 * r['paired_ratio_median']:10.1f}%"
                     f"{100 * r['paired_cpu_ratio_median']:6.1f}%{r['bytes_per_prompt'] / 1e3:11.1f}"
                     f"{r['bytes_per_token2']:9.2f}{rss}")
    lines.append(f"stage/bare: median over pairs of bare wall / stage wall (CPU: of CPU seconds); "
                 f"target >= {100 * TARGETS['throughput_ratio']:.0f}% at every length")
    print("\n".join(lines))


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
        return bare_only(args)
    if args.sweep:
        return run_sweep(args)
    prompts, _ = read_prompts(args.prompts)
    prompts = prompts[: args.limit]
    source = resolve_random(args.model) if args.random_weights else resolve(args.model)
    settings = ExtractSettings(pattern_encoding=args.pattern_encoding)
    work = Path(tempfile.mkdtemp(prefix="lens_bench_"))
    try:
        prompts_file = work / "prompts.jsonl"
        prompts_file.write_text("".join(json.dumps({"text": p.text, **p.metadata}) + "\n" for p in prompts), encoding="utf-8")

        started = time.perf_counter()
        model = models.load_model(source, args.device, args.dtype)
        load_s = time.perf_counter() - started
        todo = list({prompt_hash(source.model_id, p.text): (p, prompt_hash(source.model_id, p.text)) for p in prompts}.values())
        # The batches the stage makes: tokenized the same way, stably sorted by length.
        limit = extract.context_limit(model, settings)
        tokens = sorted((extract.tokenize(model, p.text, limit) for p, _ in todo), key=lambda t: len(t.ids))
        batches = [tokens[i : i + args.batch_size] for i in range(0, len(tokens), args.batch_size)]
        n_tokens = sum(len(t.ids) for t in tokens)
        bare_forward(model, batches[:1] + batches[-1:])  # warm-up: lazy inits, the largest allocations
        if model.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()

        bare, stage = [], []
        save_path = work / "stage"
        for _ in range(args.repeats):
            bare.append(bare_forward(model, batches))
            stage.append(stage_run(model, todo, save_path, settings, args.batch_size))
            print(f"bench: bare {bare[-1][0]:.2f} s (CPU {bare[-1][1]:.2f} s), stage {stage[-1][0]:.2f} s "
                  f"(CPU {stage[-1][1]:.2f} s)", file=sys.stderr)
        if args.profile:
            profiler = cProfile.Profile()
            profiler.runcall(stage_run, model, todo, save_path, settings, args.batch_size)
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(args.profile)
        (bare_s, bare_cpu), (stage_s, stage_cpu) = min(bare), min(stage)  # fastest wall time of each

        rows = [r for r in index.read_rows(save_path) if r["kind"] == "cache" and r["status"] == "ok"]
        cfg = model.bridge.cfg
        cache_bytes = sum(r["bytes"] for r in rows)
        npz_bytes = sum(npz_float32_bytes(cfg.n_layers, cfg.n_heads, r["n_tokens"]) for r in rows)
        # Prompts spread over the length range (the batches are sorted: the first are the shortest).
        sample = tokens[:: max(1, len(tokens) // max(1, args.error_prompts))][: args.error_prompts]
        errors = encoding_errors(model, [sample[i : i + args.batch_size] for i in range(0, len(sample), args.batch_size)])
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
                "paired_ratio_median": float(np.median([b / s for (b, _), (s, _) in zip(bare, stage)])),
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
        print_table(results)
        Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")
        print(f"\nwritten: {args.json}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
