"""An example third-party plugin: one loss, one combiner and one command.

Install it (``pip install ./plugins/ee-example``) and ``ee plugins`` lists it; nothing in
ensemble-engine names it. It uses only the public hooks and contracts.
"""

from __future__ import annotations

import click
import numpy as np
import torch
import torch.nn.functional as F

from ensemble_engine import Combiner, Output, hookimpl


class Poly1Loss(torch.nn.Module):
    """Poly-1 loss (Leng et al. 2022): cross-entropy + epsilon * (1 - p_target)."""

    def __init__(self, epsilon: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        self.epsilon, self.reduction = epsilon, reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        if target.ndim == 1:
            target = F.one_hot(target, logits.shape[1]).float()
        ce = -(target * logp).sum(dim=1)
        pt = (target * logp.exp()).sum(dim=1)
        loss = ce + self.epsilon * (1.0 - pt)
        if self.reduction == "none":
            return loss
        return loss.sum() if self.reduction == "sum" else loss.mean()


class MedianVote(Combiner):
    """The per-class median of the inputs' probabilities, renormalised per row."""

    output_kind = "probs"

    def apply(self, inputs, rows, on_fit_split):
        probs = np.stack([chunk.probs() for chunk in inputs["inputs"]])
        med = np.median(probs, axis=0)
        return Output(kind="probs", scores=med / med.sum(axis=1, keepdims=True))


@hookimpl
def register_losses(register):
    register("poly1", Poly1Loss, description="Poly-1: cross-entropy + epsilon (1 - p_target)")


@hookimpl
def register_combiners(register):
    register("median_vote", MedianVote, description="Per-class median of probabilities")


@click.command("classes")
@click.argument("store")
def classes_command(store: str) -> None:
    """Print the class ids of STORE, one per line with its index."""
    from ensemble_engine import open_store

    for index, cls in enumerate(open_store(store, "r").classes):
        click.echo(f"{index}\t{cls}")


@hookimpl
def register_commands(cli):
    cli.add_command(classes_command)
