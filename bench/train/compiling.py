"""torch.compile for the training step: what is compiled, in which mode, warmed up where, and how many
graphs a process has compiled.

What: the input adapter and the backbone (`Net.encode`), not the head or the branch. The encoder's
shapes depend only on (backbone, resolution, batch, precision, BatchNorm policy), never on the method
or its hyperparameters, so one compiled graph serves every trial of a sweep cell and every method
that trains the same backbone (a head of another width, a side branch or a probe-initialised head
runs eagerly on its output: small layers, a few kernels). With protocol v3's full batches
(bench/train/loop.py `FullBatches`) every step has one input shape, so a whole quick grid compiles a
handful of graphs, and a graph is reused across trials (torch inlines nn.Modules: parameters are
graph inputs, not constants, so a new model of the same architecture is not a new graph).

Mode: `compile` is True (inductor, default mode), a torch.compile mode ("reduce-overhead": CUDA
graphs, the lever for launch-bound steps at 32-64 px; "max-autotune", "max-autotune-no-cudagraphs")
or a backend name ("eager", "aot_eager", ...). On a CPU the CUDA-graph modes compile as inductor's
default: inductor skips CUDA graphs for CPU tensors.

Warm-up: the first call compiles (seconds to minutes); `warm_up` makes it on a copy of the model
before the timed steps, so a run's `train_seconds` holds steps only and its `compile_seconds` says
what compiling cost.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench.models.methods import Net
from bench.train.device import autocast, sync

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
OFF = ("", "off", "none", "false", "no", "0")


@dataclass(frozen=True)
class CompileSpec:
    """How the encoder is compiled: a torch.compile backend and, for inductor, a mode (None: its default)."""

    backend: str = "inductor"
    mode: str | None = None

    @property
    def cuda_graphs(self) -> bool:
        """Whether this mode replays CUDA graphs (on a CUDA device; a CPU runs the same graph without them)."""
        return self.mode in CUDA_GRAPH_MODES

    def describe(self) -> str:
        """'inductor', 'inductor/reduce-overhead', 'aot_eager': as logs and records name it."""
        return self.backend if self.mode is None else f"{self.backend}/{self.mode}"


def compile_spec(compile: bool | str | None) -> CompileSpec | None:
    """The spec of a `compile` setting (run, sweep, perf): None when off; True is inductor's default;
    a mode name (COMPILE_MODES) is inductor in that mode; any other string is a backend name."""
    if compile is None or compile is False or (isinstance(compile, str) and compile.strip().lower() in OFF):
        return None
    if compile is True:
        return CompileSpec()
    if compile in COMPILE_MODES:
        return CompileSpec("inductor", None if compile == "default" else compile)
    return CompileSpec(backend=compile)


def check_compile(compile: bool | str | None) -> None:
    """Refuse a compile setting torch would only refuse at the first training step: a string that is
    neither a mode (COMPILE_MODES) nor a registered torch.compile backend."""
    spec = compile_spec(compile)
    if spec is None or spec.mode is not None or spec.backend == "inductor":
        return
    from bench.registry import UserError

    backends = torch._dynamo.list_backends(exclude_tags=())
    if spec.backend not in backends:
        raise UserError(
            f"compile '{spec.backend}' is neither a mode ({', '.join(COMPILE_MODES)}) nor a torch.compile backend "
            f"({', '.join(sorted(backends))})"
        )


def graph_count() -> int:
    """Graphs torch.compile has compiled in this process so far (dynamo's count of unique graphs; a
    recompilation is one more). Subtract two readings for what one run or one grid compiled."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def compile_encoder(net: Net, spec: CompileSpec) -> Callable[[torch.Tensor], torch.Tensor]:
    """`net.encode` through torch.compile with static shapes (`dynamic=False`: full batches give one
    shape, and a static graph is what CUDA graphs replay). In a CUDA-graph mode each call starts a
    new step of the CUDA-graph tree (its outputs of the step before may be overwritten: the loop
    never keeps them)."""
    kw = {} if spec.mode is None else {"mode": spec.mode}
    fn = torch.compile(net.encode, backend=spec.backend, dynamic=False, **kw)
    if not spec.cuda_graphs:
        return fn

    def step(x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        return fn(x)

    return step


def warm_up(net: Net, spec: CompileSpec, xb: torch.Tensor, precision: str) -> float:
    """Seconds to compile the encoder (forward and backward) for batches like `xb`, or to find it compiled.

    On a copy of `net`: a forward in train mode may update BatchNorm statistics (bn = train) and
    the backward leaves gradients, and the run's model must see neither. The random state is forked
    (dropout inside the backbone draws from it), so the run trains exactly as without the warm-up.
    `xb` must be made as the steps make their batches (same shape, dtype and strides: an augmented
    batch is not laid out like a plain gather), else the first step compiles once more. In a
    CUDA-graph mode on CUDA, the graphs recorded for earlier models are released first: each fit
    has a new model, and its steps record their own."""
    device = xb.device
    if spec.cuda_graphs and device.type == "cuda":
        from torch._inductor.cudagraph_trees import reset_cudagraph_trees

        reset_cudagraph_trees()
    twin = copy.deepcopy(net)
    encode = compile_encoder(twin, spec)
    sync(device)
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        with autocast(device, precision):
            out = encode(xb)
            loss = out.float().sum()
        loss.backward()
    sync(device)
    return time.perf_counter() - t0
