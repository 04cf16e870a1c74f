#!/usr/bin/env python
"""What protocol v3's linear probe costs and finds: the logistic regression of bench/train/logreg.py on
EfficientNet-Lite0 features of the real CIFAR-10, per label fraction.

    python scripts/probe_cost.py --data-dir data                       # 1% and 10%, 64 px, seed 0
    python scripts/probe_cost.py --data-dir data --resolution 32 --fractions 0.01

Prints, per fraction: the feature pass, the cross-validated strength and the CV accuracy of every
strength of the grid, the L-BFGS iterations (cross-validation and final fit), whether the final fit
reached its tolerance, the seconds the probe took, and its test accuracy (the linear_probe row).
Wall times depend on the machine and its load: say which when quoting them.
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
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--fractions", default="0.01,0.1")
    ap.add_argument("--seed", type=int, default=0)
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
    dev = torch.device("cpu")
    cfg = make_config(
        backbone="efficientnet_lite0",
        method="linear_probe",
        fraction=0.1,
        seed=a.seed,
        resolution=a.resolution,
        device=dev,
        data=data,
    )
    net = build_model(cfg, data.num_classes).to(memory_format=torch.channels_last)
    tx, ty = data.test()
    t0 = time.perf_counter()
    test_feats = encode_all(net, tx, "fp32")
    seconds = time.perf_counter() - t0
    print(f"efficientnet_lite0 @ {a.resolution} px, {torch.get_num_threads()} threads; test features {seconds:.1f} s")
    spec = ProbeSpec()
    print(f"probe: {spec}")
    for f in (float(x) for x in a.fractions.split(",")):
        split = label_split(data.train_y, f, a.seed)
        t0 = time.perf_counter()
        x = encode_all(net, data.train_x[split.labelled], "fp32")
        y = data.train_y[split.labelled]
        t_feat = time.perf_counter() - t0
        t0 = time.perf_counter()
        choice = choose_probe(x, y, data.num_classes, spec)
        t_probe = time.perf_counter() - t0
        cv = ", ".join(f"{l2:g}: {acc:.3f}" for l2, acc in zip(choice.grid, choice.cv_accuracy, strict=True))
        print(
            f"{100 * f:g}% ({len(y)} images): features {t_feat:.1f} s; probe {t_probe:.1f} s, l2 = {choice.l2:g} "
            f"({choice.folds}-fold CV), L-BFGS iterations {choice.cv_iterations} (CV) + {choice.fit.iterations} (final), "
            f"converged {choice.fit.converged} (max |grad| {choice.fit.grad_max:.1e}); "
            f"test accuracy {accuracy(choice.fit, test_feats, ty):.4f}\n  CV accuracy by l2: {cv}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
