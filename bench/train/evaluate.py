"""Evaluation: class probabilities in eval and inference mode (`predict`), and the metrics a
record reports from them (`classification_metrics`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.models.methods import Net
from bench.train.device import autocast, eval_batch
from bench.train.meter import BackboneMeter, count


@torch.inference_mode()
def predict(
    net: Net,
    x: torch.Tensor,
    precision: str,
    batch: int | None = None,
    feats: torch.Tensor | None = None,
    meter: BackboneMeter | None = None,
) -> torch.Tensor:
    """Class probabilities for every image (fp32), in eval mode (batch: `eval_batch` of the device at the
    network's input resolution).

    `feats`: the images' frozen-backbone features when already computed (frozen rows), so
    evaluation runs only the head and branch on them. `meter` counts the images through the backbone."""
    batch = batch or eval_batch(x.device, net.adapter.resolution)
    if feats is None:
        count(meter, len(x))
    was = net.training
    net.eval()
    outs = []
    with autocast(x.device, precision):
        for i in range(0, len(x), batch):
            xb = x[i : i + batch]
            logits = net(xb) if feats is None else net.from_features(feats[i : i + batch], xb)
            outs.append(logits.float().softmax(1))
    net.train(was)
    return torch.cat(outs)


@dataclass(frozen=True)
class Scores:
    """What one evaluation measured: a final run's test metrics, or a trial fold's validation
    metrics (the record names them by stage)."""

    accuracy: float
    macro_f1: float
    per_class: list[float]  # accuracy (recall) per class, in the dataset's class order


def classification_metrics(probs: torch.Tensor, y: torch.Tensor, num_classes: int) -> Scores:
    """Accuracy, macro F1 and per-class accuracy (recall) of the arg-max predictions, from one
    confusion matrix (a class never predicted has precision 0, never a division by zero)."""
    pred = probs.argmax(1).cpu()
    y = y.cpu()
    conf = torch.bincount(y * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes).double()
    tp = conf.diag()
    support = conf.sum(1)
    predicted = conf.sum(0)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), torch.zeros_like(tp))
    return Scores(float(tp.sum() / conf.sum()), float(f1.mean()), recall.tolist())
