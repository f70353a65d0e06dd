"""The benchmarks, one module each, run from the repository root as `python -m scripts.bench.<name>`:

    stage            the activations stage against a bare forward; cache size, encodings, figures, rerun
                     (--sweep: the length sweep, scripts/bench/sweep.py)
    figures          the built-in figures on one CPU core
    explain          what explaining a prediction costs, in forward passes
    ig_tolerance     integrated gradients to a completeness tolerance against fixed steps
    server           the viewer on a large synthetic index
    corpus           the neuron dashboards: full build against the incremental update
    interactive      sizes and load times of the interactive (Plotly) figures
    vs_pattern_lens  side by side with pattern-lens 0.6.0 (not in CI)

What they share (A/B alternation, medians, a child's peak RSS, result files, markdown rows) is in
common.py; what the stage benchmark and its sweep time (bare forward, stage loop) in passes.py.
This file imports nothing: scripts.bench.figures pins its thread counts before numpy loads.
"""
