"""The length sweep of scripts.bench.stage (`--sweep N,N,...`): per length, prompts of exactly N
tokens, alternating bare/stage pairs in this process, cache bytes, and the peak RSS of a fresh
process running only the bare forward (`--bare-only`) and of one running only the stage's CLI."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from lens_pipeline.capture import extract
from lens_pipeline.capture.prompts import Prompt, read_prompts
from lens_pipeline.store.cache import ExtractSettings, prompt_hash

from .common import alternate, median_ratio, report, run_child, scratch, write_jsonl
from .passes import TARGETS, bare_forward, cache_rows, load, stage_batches, stage_run

STAGE = f"{__package__}.stage"  # the command whose hidden --bare-only runs bare_only


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


def bare_only(args: argparse.Namespace) -> int:
    """Child process of the sweep: load the model and run the bare forward once over the batches
    the stage would make of these prompts, so its peak RSS can be compared with the stage's."""
    prompts, _ = read_prompts(args.bare_only)
    _, model = load(args)
    settings = ExtractSettings(max_tokens=max(1, args.limit))
    bare_forward(model, stage_batches(model, [p.text for p in prompts], settings, args.batch_size)[1])
    return 0


def peak_rss(args: argparse.Namespace, prompts: list[Prompt], n_tokens: int, batch_size: int, work: Path) -> dict[str, Any]:
    """Peak RSS of a fresh bare-forward process and of a fresh stage CLI on these prompts."""
    prompts_file = write_jsonl(work / f"sweep_{n_tokens}.jsonl", ({"text": p.text} for p in prompts))
    common = ["--model", args.model, "--batch-size", str(batch_size), "--device", args.device, "--dtype", args.dtype]
    common += ["--random-weights"] if args.random_weights else []
    bare = run_child([sys.executable, "-m", STAGE, "--bare-only", str(prompts_file), "--limit", str(n_tokens), *common])
    stage = run_child(
        [sys.executable, "-m", "lens_pipeline.activations", "--prompts", str(prompts_file), "--save-path",
         str(work / f"rss_{n_tokens}"), "--max-tokens", str(n_tokens), "--pattern-encoding", args.pattern_encoding,
         "--quiet", *common])
    return {"bare_peak_rss_bytes": bare["peak_rss_bytes"], "stage_peak_rss_bytes": stage["peak_rss_bytes"],
            "stage_process_s": stage["wall_s"]}


def sweep_length(args: argparse.Namespace, model: Any, source: Any, passages: list[Prompt], n_tokens: int,
                 work: Path, start: int) -> dict[str, Any]:
    """One row of the sweep: alternating bare/stage pairs on prompts of exactly `n_tokens` tokens."""
    count = max(1, args.sweep_tokens // n_tokens)
    batch_size = min(args.batch_size, count)
    settings = ExtractSettings(pattern_encoding=args.pattern_encoding, max_tokens=n_tokens)
    prompts = [Prompt(text, f"sweep:{i}") for i, text in enumerate(sweep_texts(model, passages, n_tokens, count, start))]
    todo = [(p, prompt_hash(source.model_id, p.text)) for p in prompts]
    _, batches = stage_batches(model, [p.text for p, _ in todo], settings, batch_size)
    bare_forward(model, batches[:1])  # warm-up at this length
    save_path = work / f"sweep_{n_tokens}"
    bare, stage = alternate(
        lambda: bare_forward(model, batches), lambda: stage_run(model, todo, save_path, settings, batch_size), args.repeats,
        lambda b, s: print(f"bench: {n_tokens} tokens: bare {b[0]:.2f} s (CPU {b[1]:.2f}), stage {s[0]:.2f} s "
                           f"(CPU {s[1]:.2f})", file=sys.stderr))
    rows = cache_rows(save_path)
    per_prompt = sum(r["bytes"] for r in rows) / len(rows)
    result = {
        "n_tokens": n_tokens, "prompts": count, "batch_size": batch_size,
        "bare_runs_s": [w for w, _ in bare], "stage_runs_s": [w for w, _ in stage],
        "bare_cpu_runs_s": [c for _, c in bare], "stage_cpu_runs_s": [c for _, c in stage],
        "paired_ratio_median": median_ratio([w for w, _ in bare], [w for w, _ in stage]),
        "paired_cpu_ratio_median": median_ratio([c for _, c in bare], [c for _, c in stage]),
        "bytes_per_prompt": per_prompt, "bytes_per_token2": per_prompt / n_tokens**2,
    }
    if not args.no_rss:
        result.update(peak_rss(args, prompts, n_tokens, batch_size, work))
    return result


def run_sweep(args: argparse.Namespace) -> int:
    """The length sweep: one table row per length, all in one JSON file."""
    lengths = [int(n) for n in args.sweep.split(",") if n.strip()]
    passages, _ = read_prompts(args.prompts)
    source, model = load(args)
    with scratch("lens_sweep_") as work:
        rows = [sweep_length(args, model, source, passages, n, work, start=7 * i) for i, n in enumerate(lengths)]
    results = {"model": source.name, "device": model.device, "dtype": model.dtype, "threads": torch.get_num_threads(),
               "pattern_encoding": args.pattern_encoding, "repeats": args.repeats, "sweep": rows, "targets": TARGETS}
    return report(results, print_sweep, args.json)


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
