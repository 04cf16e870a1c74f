"""The training engine, by the names the rest of the suite imports (one idea per module):

device.py     eval_batch, autocast, sync: what a training asks of its device
features.py   encode_all, FeatureCache: frozen-backbone features, computed once
probe.py      ProbeCache, fit_probe: the linear probe (logreg.py: its solver)
loop.py       train_steps, optimiser and schedule, FitResult, Diverged: the step loop
fit.py        fit: one model trained by one method, top to bottom (start reading here)
compiling.py  compile_encoder, warm_up, graph_count: torch.compile of the training step
evaluate.py   predict, classification_metrics
caches.py     Caches: the feature, probe and data caches one owner shares across fits
meter.py      BackboneMeter: the images through the backbone, counted by the callers
syncs.py      HostSyncs: counts where the host waits for the device (diagnostics, tests, gpu_check)
store.py      FeatureStore: features and probes on disk, shared by processes and resumes
"""

from __future__ import annotations

from bench.models.methods import HParams
from bench.train.caches import Caches
from bench.train.compiling import COMPILE_MODES, CompileSpec, compile_encoder, compile_spec, graph_count
from bench.train.device import CPU_EVAL_BATCH, EVAL_BATCH, autocast, eval_batch, sync
from bench.train.evaluate import classification_metrics, predict
from bench.train.features import FeatureCache, encode_all
from bench.train.fit import FEATURE_CACHE_MODES, check_fit, fit
from bench.train.loop import (
    Diverged,
    FitResult,
    lr_factor,
    make_optimizer,
    make_scheduler,
    set_train_mode,
    train_steps,
)
from bench.train.meter import BackboneMeter
from bench.train.probe import ProbeCache, fit_probe
from bench.train.store import FeatureStore

# the former private names, for callers written against the one-file engine
_optimizer = make_optimizer
_scheduler = make_scheduler
_sync = sync

__all__ = [
    "COMPILE_MODES",
    "CPU_EVAL_BATCH",
    "EVAL_BATCH",
    "FEATURE_CACHE_MODES",
    "BackboneMeter",
    "Caches",
    "CompileSpec",
    "Diverged",
    "FeatureCache",
    "FeatureStore",
    "FitResult",
    "HParams",
    "ProbeCache",
    "autocast",
    "check_fit",
    "classification_metrics",
    "compile_encoder",
    "compile_spec",
    "encode_all",
    "eval_batch",
    "fit",
    "fit_probe",
    "graph_count",
    "lr_factor",
    "make_optimizer",
    "make_scheduler",
    "predict",
    "set_train_mode",
    "sync",
    "train_steps",
]
