"""The activations stage: prompts -> model -> one cache file per (model, prompt) + index rows.

    python -m lens_pipeline.activations --prompts data/prompts.jsonl --save-path attn_data

Resumable: prompts with a complete cache (file present with the recorded sha256) made with
settings that cover this run's are skipped, and the model is not loaded when nothing is left.
A cache's identity is (model, prompt, settings): a run with other settings writes its caches
beside the earlier ones and never removes them, unless asked to with --prune.
Caches are compressed between forward passes on all the forward's threads, then written
atomically on a background thread while the next batch runs.

The modules, in the order a run uses them: settings (the run as one object), resume (which prompts
still need a cache), prompts_run (prompts through the model, batch by batch), writer (compress,
write atomically, record), rows (a cache's file name, bytes and index row), on_ray (the same over
Ray workers), stage (`run_activations`), cli (`python -m lens_pipeline.activations`).
"""

from lens_pipeline.activations.cli import build_parser, main, settings_from_args
from lens_pipeline.activations.prompts_run import run_prompts
from lens_pipeline.activations.settings import ActivationsSettings
from lens_pipeline.activations.stage import StageSummary, run_activations
from lens_pipeline.activations.writer import SavePathError

__all__ = ["ActivationsSettings", "SavePathError", "StageSummary", "build_parser", "main", "run_activations", "run_prompts",
           "settings_from_args"]
