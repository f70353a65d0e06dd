"""`python -m lens_pipeline.activations`: the command line of the activations stage."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from lens_pipeline.activations.settings import DEFAULT_PROMPTS, DEFAULT_SAVE_PATH, ActivationsSettings
from lens_pipeline.activations.stage import run_activations
from lens_pipeline.activations.writer import SavePathError
from lens_pipeline.capture.models import DEFAULT_MODEL, ModelLoadError
from lens_pipeline.capture.prompts import PromptFileError
from lens_pipeline.corpus.basis import NeuronSpecError
from lens_pipeline.distributed import DistributedError
from lens_pipeline.store import index
from lens_pipeline.store.cache import (
    DEFAULT_PATTERN_ENCODING,
    PATTERN_ENCODINGS,
    ExtractSettings,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lens_pipeline.activations",
        description="Run prompts through TransformerLens models and write one compressed cache per "
        "(model, prompt) plus a row in SAVE_PATH/index.jsonl. Reruns skip what is already cached.",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="model(s), comma-separated: 'smollm2' (default, embedded SmolLM2-135M-Instruct), "
                        "'minilm' (embedded all-MiniLM-L6-v2), a local Hugging Face model folder, or a hub id "
                        "such as gpt2 (needs the hub or a filled HF cache)")
    parser.add_argument("--prompts", default=DEFAULT_PROMPTS,
                        help='JSONL with a "text" field per line (other fields are kept as metadata), or a '
                        "text file with one prompt per line (default: %(default)s)")
    parser.add_argument("--save-path", default=DEFAULT_SAVE_PATH, help="output folder (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                        help="model weights and activations; auto = float16 on cuda, float32 on cpu")
    parser.add_argument("--pattern-encoding", default=DEFAULT_PATTERN_ENCODING, choices=list(PATTERN_ENCODINGS),
                        help="how attention weights are stored, with the worst absolute error per weight: q12 "
                        "(default, 12-bit fixed point, 1.2e-4), q16 (7.7e-6), q8 (2.0e-3), float16 (2.4e-4), float32 (exact)")
    parser.add_argument("--top-k", type=int, default=10, help="next-token predictions kept per position (default: %(default)s)")
    parser.add_argument("--neurons", default="32",
                        help="MLP neurons kept per layer (default: %(default)s; 0 = none): a count, chosen as "
                        "--neuron-basis says, or exactly these neurons for every prompt: 'L:i,j;L:k,...'")
    parser.add_argument("--neurons-file", default=None, metavar="FILE",
                        help="exactly these neurons for every prompt: 'L:i,j,...' per line or ';'-separated")
    parser.add_argument("--neuron-basis", default="prompt", choices=["prompt", "variance", "max"],
                        help="prompt (default): per prompt, the N with the largest variance over it; variance or max: "
                        "one basis for every prompt of the model, the top N per layer over the whole prompt set, "
                        "from a first pass, recorded in caches/<model>/neuron_basis.json and kept by later runs")
    parser.add_argument("--hooks", default="", help="extra TransformerLens hook names to store, comma-separated "
                        "(e.g. blocks.3.hook_resid_mid); stored as float16 with padding removed")
    parser.add_argument("--logit-lens", action="store_true",
                        help="also store each layer's top-1 token through the unembedding (costs about one extra "
                        "forward pass per layer on large vocabularies)")
    parser.add_argument("--attribution", default="", metavar="METHODS",
                        help="input attribution to each prompt's target, comma-separated: grad_x_input, grad_norm, "
                        "ig (integrated gradients), or all; stored per target and source token (docs/explanations.md)")
    parser.add_argument("--ig-steps", type=int, default=None, metavar="N",
                        help=f"integrated-gradients steps: where --ig-tolerance starts (default {IG_START_STEPS}); "
                        "given alone, N fixed steps (no doubling)")
    parser.add_argument("--ig-tolerance", type=float, default=None, metavar="E",
                        help=f"double the integrated-gradients steps per prompt and target until the completeness "
                        f"error is at most E (default {IG_DEFAULT_TOLERANCE} = 1 %%; 0 = fixed steps); steps used are "
                        "stored per target, targets still over E at the cap are named in the index row and summary")
    parser.add_argument("--ig-max-steps", type=int, default=ExtractSettings.ig_max_steps, metavar="N",
                        help="the cap of --ig-tolerance's doubling (default: %(default)s)")
    parser.add_argument("--ig-baseline", default="space",
                        help="where the integrated-gradients path starts: space (default: the ' ' token's embedding "
                        "at every position), zero, or pad; a leading BOS keeps its own embedding")
    parser.add_argument("--ig-rule", default="gausslegendre",
                        help="integration rule, as Captum names it: gausslegendre (default), riemann_trapezoid, "
                        "riemann_left, riemann_right, riemann_middle")
    parser.add_argument("--logit-attribution", action="store_true",
                        help="split each target's logit over the embeddings, every head and every MLP (direct logit "
                        "attribution, final norm's scale frozen)")
    parser.add_argument("--lens-trajectory", action="store_true",
                        help="extends --logit-lens (implies it): per layer and position the top-5 tokens, the actual "
                        "next token's probability and rank, entropy, KL to the final distribution; and per-token loss")
    parser.add_argument("--lens-resid-mid", action="store_true",
                        help="the lens trajectory after each attention block too (implies --lens-trajectory)")
    parser.add_argument("--embedding-views", action="store_true",
                        help="also store each layer's residual stream projected on the model card's shared basis and "
                        "each token's nearest neighbours in the input embeddings (for the embedding figures)")
    causal = parser.add_argument_group("testing causes (prompts with a \"corrupt\" field; docs/causal.md)")
    causal.add_argument("--patch", default="", metavar="SITES",
                        help="patch the clean run's activations into the corrupted run one site at a time, "
                        "comma-separated: resid_pre, attn_out, mlp_out (each layer x position), heads (each head, "
                        "all positions), heads_pos (each head x position), or all; stored normalised: 1 = clean, 0 = corrupted")
    causal.add_argument("--patch-metric", default="logit_diff", choices=["logit_diff", "prob", "logprob", "kl"],
                        help="what patching and ablation measure after the last token: logit_diff (default: "
                        "logit(A) - logit(B) for a \"contrast\" pair, else the target's logit), the target's prob or "
                        "logprob, or kl (KL from the clean next-token distribution)")
    causal.add_argument("--ablate", default="", metavar="PARTS",
                        help="ablate each head and/or MLP layer (comma-separated: heads, mlp) and store the metric's "
                        "change from the clean run; needs no corrupt prompt")
    causal.add_argument("--ablation", default="zero", choices=["zero", "mean"],
                        help="what an ablated part outputs: zero (default) or its mean over the prompt set (one "
                        "streaming pass, kept in caches/<model>/ablation_means.npz)")
    causal.add_argument("--attribution-patching", action="store_true",
                        help="also store the gradient estimate of every --patch sweep (one forward and one backward "
                        "on the corrupted run) and its correlation with the exact result per site")
    parser.add_argument("--max-tokens", type=int, default=1024,
                        help="truncate prompts to this many tokens (and the model context); recorded as a warning")
    parser.add_argument("--random-weights", action="store_true",
                        help="build --model's architecture with seeded random weights, downloading nothing: a shape "
                        "(gpt2, gpt2-medium, llama-1b, tiny-gpt2, tiny-llama, tiny-bert), a transformers model type "
                        "(its config defaults) or a config JSON; the model is named NAME-random")
    parser.add_argument("--ray", metavar="auto|ADDRESS", default=None,
                        help="split the prompts into shards run by Ray workers (one per GPU, else per CPU), each "
                        "loading the model once; auto = the running cluster, else a new local one (pip install ray)")
    parser.add_argument("--force", action="store_true", help="recompute caches even if the index has them")
    parser.add_argument("--prune", action="store_true",
                        help="remove this model's caches made with other settings (each run with new settings "
                        "otherwise writes its caches beside the old ones); prints what it removed")
    parser.add_argument("--strict", action="store_true", help="stop on the first bad prompt line instead of skipping it")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def stop_gracefully_on_signals() -> None:
    """Ctrl-C and `kill` (SIGTERM) both stop the run the same clean way (KeyboardInterrupt), also
    when SIGINT was inherited as ignored, as it is for jobs a shell starts in the background."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def settings_from_args(args: argparse.Namespace) -> ActivationsSettings:
    """The parsed command line as the stage's one settings object."""
    attribution = "grad_x_input,grad_norm,ig" if args.attribution.strip() == "all" else args.attribution
    return ActivationsSettings(
        extract=ExtractSettings(
            pattern_encoding=args.pattern_encoding, top_k=args.top_k, **neuron_options(args),
            hooks=tuple(h.strip() for h in args.hooks.split(",") if h.strip()),
            logit_lens=args.logit_lens or args.lens_trajectory or args.lens_resid_mid,
            max_tokens=args.max_tokens, dtype=args.dtype,
            attribution=attribution, **ig_options(args.ig_steps, args.ig_tolerance, "ig" in attribution),
            ig_max_steps=args.ig_max_steps,
            ig_baseline=args.ig_baseline, ig_rule=args.ig_rule,
            logit_attribution=args.logit_attribution, lens_trajectory=args.lens_trajectory or args.lens_resid_mid,
            lens_resid_mid=args.lens_resid_mid, embedding_views=args.embedding_views,
            patch=patch_sites(args.patch),
            patch_metric=args.patch_metric, ablate=args.ablate, ablation=args.ablation,
            attribution_patching=args.attribution_patching,
        ),
        batch_size=args.batch_size, device=args.device, random_weights=args.random_weights, ray=args.ray,
        force=args.force, prune=args.prune, strict=args.strict, progress=not args.quiet,
    )


def patch_sites(flag: str) -> str | tuple[str, ...]:
    """--patch as given, or every site for "all" (imported only then: the causal package loads torch)."""
    if flag.strip() != "all":
        return flag
    from lens_pipeline.capture.causal.sites import PATCH_SITES

    return PATCH_SITES


IG_START_STEPS = ExtractSettings.ig_steps


IG_DEFAULT_TOLERANCE = 0.01


def ig_options(steps: int | None, tolerance: float | None, integrated: bool = True) -> dict[str, Any]:
    """--ig-steps and --ig-tolerance as ExtractSettings fields: steps given alone stay fixed (as
    before the tolerance existed); otherwise, when integrated gradients are asked for, the steps
    double up to the tolerance (default 1 %). Without them the tolerance stays 0: no setting of a
    cache changes for a flag that does nothing."""
    if tolerance is None:
        tolerance = 0.0 if steps is not None or not integrated else IG_DEFAULT_TOLERANCE
    return {"ig_steps": IG_START_STEPS if steps is None else steps, "ig_tolerance": tolerance}


def neuron_options(args: argparse.Namespace) -> dict[str, Any]:
    """--neurons N, --neurons 'L:i,j;...', --neurons-file and --neuron-basis as ExtractSettings fields."""
    from lens_pipeline.corpus.basis import NeuronSpecError, given_rows

    if args.neurons_file:
        try:
            return given_rows(Path(args.neurons_file).read_text(), where=args.neurons_file)
        except OSError as error:
            raise NeuronSpecError(f"--neurons-file: cannot read {args.neurons_file} ({error.strerror or error})") from None
    if ":" in args.neurons:
        return given_rows(args.neurons)
    try:
        return {"n_neurons": int(args.neurons), "neuron_basis": args.neuron_basis if int(args.neurons) > 0 else "prompt"}
    except ValueError:
        raise NeuronSpecError(f"--neurons: {args.neurons!r} is neither a count nor 'L:i,j;...'") from None


def flags_for(wanted: ExtractSettings) -> list[str] | None:
    """The activations options that make caches with `wanted` settings (None when some cannot be
    said as options): each setting that differs from what no option gives, checked by parsing back."""
    parser = build_parser()

    def made(flags: list[str]) -> ExtractSettings | None:
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                return settings_from_args(parser.parse_args(flags)).extract
        except (SystemExit, ValueError):
            return None

    base, flags = made([]), []
    for field in dataclasses.fields(ExtractSettings):
        value = getattr(wanted, field.name)
        if base is None or getattr(base, field.name) == value:
            continue
        option = "--neurons" if field.name == "n_neurons" else "--" + field.name.replace("_", "-")
        if option not in parser._option_string_actions:
            return None
        if isinstance(value, bool):
            flags += [option] if value else []
        else:
            flags += [option, ",".join(map(str, value)) if isinstance(value, tuple) else str(value)]
    return flags if made(flags) == wanted else None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stop_gracefully_on_signals()
    if args.batch_size < 1:
        print("error: --batch-size must be at least 1", file=sys.stderr)
        return 2
    try:
        summary = run_activations(args.model, args.prompts, args.save_path, settings_from_args(args))
    except (ModelLoadError, PromptFileError, DistributedError, SavePathError, index.IndexWriteError,
            NeuronSpecError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1 if isinstance(error, OSError) else 2
    except KeyboardInterrupt:
        return 130
    print(
        f"done: {summary.written} cache(s) written, {summary.skipped} already cached, {summary.failed} failed, "
        f"{summary.bad_lines} bad prompt line(s) skipped"
        + (f", {len(summary.pruned)} pruned" if summary.pruned else "")
        + f"; {summary.seconds:.1f} s; index: {index.index_path(args.save_path)}",
        file=sys.stderr,
    )
    for line in summary.ig_over_tolerance:
        print(f"warning: {line}", file=sys.stderr)
    return 1 if summary.failed else 0
