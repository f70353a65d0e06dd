"""Explaining predictions, one batch at a time: targets -> input attributions, direct logit
attribution and the lens trajectory, as per-prompt arrays (their rows are in cache.CACHE_ARRAYS).

What is explained is f, one number per target: the logit of a target token at a position, or the
difference of two logits (a contrast). The targets of a prompt come from its JSONL fields
(prompts.TARGET_FIELDS); by default there is one, the model's top-1 prediction after the last
token, and with "target_positions": "all" there is one per actual next token.

- Input attribution (`settings.attribution`) is with respect to the token embeddings (the output
  of the embedding layer; GPT-2's position embeddings are not attributed): `grad_x_input`
  = Σ_d ∂f/∂e·e, `grad_norm` = ‖∂f/∂e‖₂, and `ig`, integrated gradients along the straight line
  from a baseline (IG_BASELINES) to e, with the integration rules Captum names (IG_RULES).
- Direct logit attribution (`settings.logit_attribution`) splits f over the embeddings, every
  head, every MLP and the biases, with the final norm's scale frozen at its value on the actual
  input; the parts sum to f on models whose residual stream is that sum (checked per batch).
- The lens trajectory (`settings.lens_trajectory`) reads each layer's residual stream through
  the final norm and unembedding.

`forward` stands in for run_batch's forward pass when a setting here is on: the gradient methods
share that forward, and their backward computes no weight gradients.

The modules: targets (what is explained), passes (the forwards they share), attribution,
logit_attribution, lens, and batch (one batch explained, each prompt's arrays and summary).
"""

from lens_pipeline.capture.explain.attribution import (
    ATTRIBUTION_ARRAYS,
    ATTRIBUTION_METHODS,
    IG_BASELINES,
    IG_RULES,
    ig_baseline,
    integration_rule,
)
from lens_pipeline.capture.explain.batch import check_model, check_settings, forward, model_dtype, prompt_arrays, summary
from lens_pipeline.capture.explain.lens import lens_row_names
from lens_pipeline.capture.explain.passes import frozen_parameters, run_to_final_norm
from lens_pipeline.capture.explain.targets import TargetError, Targets, resolve_targets

__all__ = ["ATTRIBUTION_ARRAYS", "ATTRIBUTION_METHODS", "IG_BASELINES", "IG_RULES", "TargetError", "Targets",
           "check_model", "check_settings", "forward", "frozen_parameters", "ig_baseline", "integration_rule",
           "lens_row_names", "model_dtype", "prompt_arrays", "resolve_targets", "run_to_final_norm", "summary"]
