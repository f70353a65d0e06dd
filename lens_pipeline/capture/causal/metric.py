"""What patching and ablation measure after the last token: a logit difference, the target's
probability or log-probability, or the KL divergence from the clean run's next-token distribution."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lens_pipeline.capture.explain.targets import Targets


@dataclass
class Metric:
    """metric(last-position logits [R, V]) -> [R] float64. `clean_logprobs` is set for "kl"."""

    name: str
    token: int
    contrast: int | None = None
    clean_logprobs: torch.Tensor | None = None  # [V] float64

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.double()
        if self.name == "logit_diff":
            value = logits[:, self.token]
            return value - logits[:, self.contrast] if self.contrast is not None else value
        logprobs = torch.log_softmax(logits, dim=-1)
        if self.name == "prob":
            return logprobs[:, self.token].exp()
        if self.name == "logprob":
            return logprobs[:, self.token]
        assert self.clean_logprobs is not None
        clean = self.clean_logprobs.to(logprobs.device)
        return (clean.exp() * (clean - logprobs)).sum(-1)  # KL(clean || run)

    def label(self, token_string: str, contrast_string: str | None) -> str:
        """What the metric is, in words for a figure's axis."""
        if self.name == "logit_diff":
            target = f"logit({token_string!r})"
            return f"{target} − logit({contrast_string!r})" if contrast_string is not None else target
        if self.name == "kl":
            return "KL(clean ‖ run) of the next-token distribution"
        return f"{'p' if self.name == 'prob' else 'log p'}({token_string!r})"


def metric_for(name: str, targets: Targets, clean_last_logits: torch.Tensor) -> Metric:
    """The metric of a prompt: its target (the clean run's top-1 when none is given) and contrast."""
    token = targets.token if targets.token is not None else int(clean_last_logits.argmax())
    metric = Metric(name, token, targets.contrast)
    if name == "kl":
        metric.clean_logprobs = torch.log_softmax(clean_last_logits.double(), dim=-1)
    return metric
