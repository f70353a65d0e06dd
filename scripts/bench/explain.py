"""What explaining a prediction costs: each method's time per prompt, in forward passes.

    python -m scripts.bench.explain                       # SmolLM2, CPU, prompts of ~150 and ~900 tokens
    python -m scripts.bench.explain --lengths 150 --repeats 5 --json /tmp/bench_explain.json
    python -m scripts.bench.explain --model tiny-llama --random-weights --lengths 64 --repeats 1

One prompt per batch, cut from data/prompts.jsonl to exactly each length. "forward" is the bare
bridge forward (no hooks); "stage" is extract.run_batch with the explanations off (patterns, top-k,
norms, neurons). Each method's cost is run_batch with that setting on minus run_batch with it off,
divided by the bare forward: extra forward-pass equivalents per prompt. Runs of each setting
alternate with runs of the plain stage, and the median of each pair's difference is reported.

Targets (issue 14): gradient x input and logit attribution each <= 1 extra forward, the lens
trajectory <= 0.5 (`lens - logit lens` reports what the trajectory adds to the existing top-1 lens).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

import torch

from lens_pipeline.capture import extract, models
from lens_pipeline.capture.prompts import read_prompts
from lens_pipeline.store.cache import ExtractSettings

from .common import alternate, command_parser, markdown_header, markdown_row, timed, write_json

TARGETS = {"grad × input": 1.0, "logit attribution": 1.0, "lens trajectory": 0.5}
METHODS: dict[str, dict[str, Any]] = {
    "grad × input": {"attribution": ("grad_x_input",)},
    "grad × input + norm": {"attribution": ("grad_x_input", "grad_norm")},
    "IG 32 steps": {"attribution": ("ig",), "ig_steps": 32},
    "IG 64 steps": {"attribution": ("ig",), "ig_steps": 64},
    "logit attribution": {"logit_attribution": True},
    "logit lens top-1 (existing)": {"logit_lens": True},
    "lens trajectory": {"lens_trajectory": True, "logit_lens": True},
}


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(__doc__, __spec__.name)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--prompts", default="data/prompts.jsonl")
    parser.add_argument("--lengths", default="150,900", help="prompt lengths in tokens, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per method (median reported)")
    parser.add_argument("--methods", default="", help="only these methods (names as in the table, comma-separated)")
    parser.add_argument("--slow-repeats", type=int, default=1,
                        help="runs of the IG methods at lengths above 300 tokens (each is many forward passes)")
    parser.add_argument("--json", default=None, help="also write the results here")
    return parser


def prompt_of_length(model: Any, texts: list[str], length: int) -> extract.Tokenized:
    """Passages joined until there are `length` tokens, cut there (BOS included)."""
    ids: list[int] = []
    for text in texts:
        ids = extract.tokenize(model, " ".join([model.tokenizer.decode(ids[1:]), text]).strip(), 10**6).ids
        if len(ids) >= length:
            break
    return extract.Tokenized(ids[:length])


def measure(model: Any, item: extract.Tokenized, repeats: int, slow_repeats: int, only: list[str]) -> dict[str, Any]:
    """Seconds of the bare forward and the plain stage, and each method's extra forward equivalents."""
    strings = extract.TokenStrings(model.tokenizer)
    ids = torch.tensor([item.ids], device=model.device)
    plain = ExtractSettings()

    def stage(settings: ExtractSettings) -> float:
        return timed(lambda: extract.run_batch(model, [item], settings, strings))[0]

    def bare() -> float:
        with torch.no_grad():
            return timed(lambda: model.bridge(ids))[0]

    stage(plain)  # warm-up: first-call allocations
    forwards = [bare() for _ in range(max(3, repeats))]
    stages = [stage(plain) for _ in range(max(3, repeats))]
    forward = statistics.median(forwards)
    result: dict[str, Any] = {"tokens": len(item.ids), "forward_s": forward, "stage_s": statistics.median(stages),
                              "methods": {}}
    for name, options in METHODS.items():
        if only and name not in only:
            continue
        settings = ExtractSettings(**options)
        runs = slow_repeats if "IG" in name and len(item.ids) > 300 else repeats
        with_method, without = alternate(lambda: stage(settings), lambda: stage(plain), runs)
        extra = statistics.median(a - b for a, b in zip(with_method, without))
        result["methods"][name] = {"extra_s": extra, "extra_forwards": extra / forward, "runs": runs}
        print(f"  {len(item.ids)} tokens · {name}: +{extra:.2f} s = {extra / forward:.2f} forward passes", flush=True)
    return result


def print_table(results: list[dict[str, Any]]) -> None:
    print("\n" + markdown_header(["method", *(f"{r['tokens']} tokens" for r in results), "target"]))
    print(markdown_row(["bare forward (s)", *(f"{r['forward_s']:.2f}" for r in results), ""]))
    print(markdown_row(["stage, explanations off (forwards)", *(f"{r['stage_s'] / r['forward_s']:.2f}" for r in results), ""]))
    for name in results[0]["methods"]:
        cells = [f"+{r['methods'][name]['extra_forwards']:.2f}" if name in r["methods"] else "–" for r in results]
        print(markdown_row([name, *cells, f"≤ {TARGETS[name]:g}" if name in TARGETS else ""]))
    lens, top1 = "lens trajectory", "logit lens top-1 (existing)"
    if all(lens in r["methods"] and top1 in r["methods"] for r in results):
        cells = [f"+{r['methods'][lens]['extra_forwards'] - r['methods'][top1]['extra_forwards']:.2f}" for r in results]
        print(markdown_row(["lens trajectory - logit lens", *cells, ""]))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    source = models.resolve_source(args.model, args.random_weights)
    model = models.load_model(source, "cpu", "float32")
    texts = [p.text for p in read_prompts(args.prompts)[0]]
    only = [m.strip() for m in args.methods.split(",") if m.strip()]
    print(f"{source.name} on cpu, {torch.get_num_threads()} threads; extra forward-pass equivalents per prompt", flush=True)
    results = []
    for length in (int(n) for n in args.lengths.split(",")):
        item = prompt_of_length(model, texts, length)
        results.append(measure(model, item, args.repeats, args.slow_repeats, only))
    print_table(results)
    if args.json:
        write_json(args.json, {"model": source.name, "threads": torch.get_num_threads(), "results": results}, announce=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
