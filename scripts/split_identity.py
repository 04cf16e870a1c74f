"""Are a labelled subset's frozen features, cut out of a whole-split encoding, bit-identical to
encoding the subset on its own? The question behind the feature store's keys (README, "The sweep"):
if not, one file per split would change results, so the store keys each subset.

    OMP_NUM_THREADS=1 python scripts/split_identity.py efficientnet_lite0 32 5000 1   # backbone px images threads
    python scripts/split_identity.py tiny 32 3000 1 [fp32|bf16]

Random uint8 images, the suite's label fractions 1% and 10%, seeds 0 and 1, their labelled, train
and validation subsets; prints, per subset, whether the rows are equal and the largest difference.
"""

from __future__ import annotations

import sys

import torch

from bench.data import label_split
from bench.models.backbones import build_backbone, get_backbone
from bench.models.hparams import HParams
from bench.models.methods import Backbone, InputAdapter, build_net
from bench.train.features import encode_all


def main() -> None:
    if len(sys.argv) < 5:
        raise SystemExit("usage: split_identity.py BACKBONE PIXELS IMAGES THREADS [fp32|bf16]")
    name, res, n, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    precision = sys.argv[5] if len(sys.argv) > 5 else "fp32"
    torch.set_num_threads(threads)
    spec = get_backbone(name)
    torch.manual_seed(0)
    feats, head = build_backbone(spec, True)
    backbone, adapter = Backbone(feats, head, spec.feature_dim), InputAdapter(spec.mean, spec.std, res)
    net = build_net("linear_probe", backbone, adapter, 10, HParams())
    net = net.to(memory_format=torch.channels_last)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    y = torch.arange(n) % 10
    full = encode_all(net, x, precision)
    worst = 0.0
    for fraction in (0.01, 0.1):
        for seed in (0, 1):
            split = label_split(y, fraction, seed, 0.2)
            for part, idx in (("labelled", split.labelled), ("train", split.train), ("val", split.val)):
                sub = encode_all(net, x[idx], precision)
                diff = (full[idx] - sub).abs().max().item()
                worst = max(worst, diff)
                same = torch.equal(full[idx], sub)
                print(f"{name}@{res} {precision} {fraction:g} seed {seed} {part:<8} n={len(idx):<5} equal={same} diff {diff:.3g}")
    print(f"worst max difference: {worst:.3g}")


if __name__ == "__main__":
    main()
