"""Evaluation: accuracy, loss, per-class accuracy and the confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Evaluation:
    accuracy: float  # percent
    loss: float  # mean NLL
    per_class_accuracy: list[float]  # percent, digits 0-9
    confusion: list[list[int]]  # confusion[true][predicted]
    count: int

    def to_dict(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "loss": self.loss,
            "per_class_accuracy": self.per_class_accuracy,
            "confusion": self.confusion,
            "count": self.count,
        }


@torch.no_grad()
def predict_log_probs(model: nn.Module, images: torch.Tensor, batch_size: int = 2000) -> torch.Tensor:
    """Log-probabilities for normalized images [N, 1, 28, 28], computed in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    outputs = [model(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0, 10)


def evaluate(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 2000
) -> Evaluation:
    """Evaluate on normalized images [N, 1, 28, 28] with integer labels [N]."""
    log_probs = predict_log_probs(model, images, batch_size)
    return evaluate_log_probs(log_probs, labels)


def evaluate_log_probs(log_probs: torch.Tensor, labels: torch.Tensor) -> Evaluation:
    """The same figures from precomputed log-probabilities (any backend can produce them)."""
    labels = labels.cpu()
    predicted = log_probs.argmax(dim=1)
    confusion = torch.bincount(labels * 10 + predicted, minlength=100).reshape(10, 10)
    per_class = confusion.diag().double() / confusion.sum(dim=1).clamp(min=1).double() * 100
    return Evaluation(
        accuracy=float((predicted == labels).double().mean() * 100) if len(labels) else 0.0,
        loss=float(F.nll_loss(log_probs, labels)) if len(labels) else 0.0,
        per_class_accuracy=[round(float(v), 4) for v in per_class],
        confusion=confusion.tolist(),
        count=len(labels),
    )
