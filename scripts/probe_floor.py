#!/usr/bin/env python
"""What a floor on the probe's standardisation changes: the logistic-regression probe of
bench/train/logreg.py fitted with ProbeSpec(std_floor=c) for several c, on EfficientNet-Lite0
features of the real CIFAR-10, per resolution and seed (docs/protocol.md, "A known problem at 32 px").

    OMP_NUM_THREADS=1 python scripts/probe_floor.py --data-dir data --resolutions 32,64 --seeds 0,1,2 \
        --floors 0,0.05,0.1,0.3,1 --out results/probe_floor/probe_floor.md

Per (resolution, seed, floor): the chosen L2 strength, its CV accuracy, the test accuracy of the
probe (the linear_probe row), the largest absolute weight of the head on raw features (what the
backbone-training methods start from: the fragility) and how many features the floor lifted.
No training: what the floor does to the probe; what it does to fine-tuning from it needs runs.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--resolutions", default="32,64")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--floors", default="0,0.05,0.1,0.3,1")
    ap.add_argument("--fraction", type=float, default=0.01)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()

    import torch

    from bench.data import label_split, load_cifar10
    from bench.models.hparams import ProbeSpec
    from bench.run_config import make_config
    from bench.train.features import encode_all
    from bench.train.logreg import accuracy, choose_probe
    from bench.train.run import build_model

    warnings.filterwarnings("ignore", message=".*md5 sums differ.*")
    data = load_cifar10(a.data_dir, download_missing=False)
    tx, ty = data.test()
    floors = [float(v) for v in a.floors.split(",")]
    lines = [
        f"# The probe's standardisation floor: efficientnet_lite0, {100 * a.fraction:g}% of the labels",
        "",
        f"`{' '.join(['python', *sys.argv])}` ({torch.get_num_threads()} threads)",
        "",
        "| px | seed | floor | l2 | CV acc | test acc | max abs raw weight | features lifted | fit s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in (int(v) for v in a.resolutions.split(",")):
        cfg = make_config(
            backbone="efficientnet_lite0",
            method="linear_probe",
            fraction=a.fraction,
            seed=0,
            resolution=res,
            data=data,
            device=torch.device("cpu"),
        )
        net = build_model(cfg, data.num_classes).to(memory_format=torch.channels_last)
        test_feats = encode_all(net, tx, "fp32")
        for seed in (int(v) for v in a.seeds.split(",")):
            split = label_split(data.train_y, a.fraction, seed)
            x = encode_all(net, data.train_x[split.labelled], "fp32")
            y = data.train_y[split.labelled]
            std = x.double().std(0, unbiased=False)
            med = float(std[std > 0].median())
            for c in floors:
                t0 = time.perf_counter()
                choice = choose_probe(x, y, data.num_classes, ProbeSpec(std_floor=c))
                secs = time.perf_counter() - t0
                lifted = int(((std > 0) & (std < c * med)).sum())
                cv = max(choice.cv_accuracy) if choice.cv_accuracy else float("nan")
                row = (
                    f"| {res} | {seed} | {c:g} | {choice.l2:g} | {cv:.3f} | {accuracy(choice.fit, test_feats, ty):.4f} | "
                    f"{float(choice.fit.weight.abs().max()):.3g} | {lifted} | {secs:.1f} |"
                )
                print(row, flush=True)
                lines.append(row)
    text = "\n".join(lines) + "\n"
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
