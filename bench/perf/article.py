"""(c) The article's pipeline, as its example trains: torchvision transforms on PIL images,
DataLoader(num_workers=2), batch 100, SGD, fp32, the default memory format, `loss.item()`
every step. What the suite's loop (b) is compared against.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

from bench.models.backbones import build_backbone, get_backbone
from bench.perf.rows import PerfRow, RowId, measured
from bench.perf.settings import ARTICLE_BATCH

if TYPE_CHECKING:
    from bench.perf.measure import Bench


class ArticleCifar(torch.utils.data.Dataset):
    """torchvision.datasets.CIFAR10.__getitem__ on the suite's arrays (HWC uint8 -> PIL -> transform)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Callable) -> None:
        self.data = x.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = y.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def article_transform(resolution: int) -> Callable:
    """The article's augmentation and normalisation, resized to the case's resolution after the
    crop (on PIL) so the model sees the same input as in (a) and (b)."""
    from torchvision import transforms

    resize = [transforms.Resize(resolution)] if resolution != 32 else []
    return transforms.Compose(
        [
            transforms.RandomHorizontalFlip(),
            transforms.RandomCrop(32, padding=4),
            *resize,
            transforms.ToTensor(),
            transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ]
    )


def article_units(bench: Bench) -> list[tuple[int, float]]:
    """Time the article's training loop on the case's backbone; a step is timed from the end of the
    previous one, so waiting for the loader counts."""
    s, dev, res = bench.s, bench.device, bench.case.resolution
    total = ARTICLE_BATCH * (s.warmup + s.article_steps + 4)
    ds = ArticleCifar(bench.data.train_x[:total], bench.data.train_y[:total], article_transform(res))
    torch.manual_seed(0)
    feats, _ = build_backbone(get_backbone(bench.case.backbone), bench.pretrained)
    model = nn.Sequential(feats, nn.Linear(get_backbone(bench.case.backbone).feature_dim, 10)).to(dev)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    loader = torch.utils.data.DataLoader(ds, batch_size=ARTICLE_BATCH, shuffle=True, num_workers=s.workers)
    running_loss = 0.0
    times: list[float] = []
    t0 = time.perf_counter()
    for i, (inputs, labels) in enumerate(loader):
        inputs, labels = inputs.to(dev), labels.to(dev)
        optimizer.zero_grad()
        outputs = model(inputs)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
        t1 = time.perf_counter()
        if i >= s.warmup:
            times.append(t1 - t0)
            if len(times) >= s.article_steps or (len(times) >= 2 and sum(times) > s.max_seconds):
                break
        t0 = t1
    return [(ARTICLE_BATCH, t) for t in times]


def article_pipeline(bench: Bench) -> PerfRow:
    """(c) as a row: `article_units` once."""
    s, res = bench.s, bench.case.resolution
    note = f"PIL transforms, DataLoader(num_workers={s.workers}), SGD, loss.item() per step" + (
        ", Resize on PIL" if res != 32 else ""
    )
    units = article_units(bench)
    rid = RowId(bench.case, "c_article_train", "fp32", "contiguous", ARTICLE_BATCH)
    return measured(rid, bench.weights, units, note)
