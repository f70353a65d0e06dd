"""Testing causes (docs/causal.md): activation patching of a prompt pair, ablation of heads and MLPs,
and attribution patching, as arrays of the prompt's cache.

- sites.py: what can be patched or ablated (hook names), and the flag checks;
- corruption.py: a prompt's corrupted run (another text, or noise on embeddings);
- metric.py: what is measured after the last token;
- runs.py: forwards with edited activations, one edit per batch row;
- patching.py, ablation.py: the sweeps;
- prompt_run.py: one prompt's arrays and meta.
"""

from lens_pipeline.capture.causal.corruption import Corruption, CorruptionError, corruption_of
from lens_pipeline.capture.causal.prompt_run import ABLATE_PREFIX, ESTIMATE_PREFIX, PATCH_PREFIX, causal_arrays, request
from lens_pipeline.capture.causal.sites import ABLATE_SITES, ABLATIONS, METRICS, PATCH_SITES, check_model, check_settings

__all__ = ["ABLATE_PREFIX", "ABLATE_SITES", "ABLATIONS", "Corruption", "CorruptionError", "ESTIMATE_PREFIX", "METRICS",
           "PATCH_PREFIX", "PATCH_SITES", "causal_arrays", "check_model", "check_settings", "corruption_of", "request"]
