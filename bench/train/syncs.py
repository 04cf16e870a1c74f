"""Host syncs: the places where the host waits for the device (`HostSyncs` counts them, on any device).

Why count them: on a GPU a training step is a queue of kernels the host launches ahead of the
device; every value the host reads back (a loss printed, an accuracy compared, a mask turned
into indices) drains that queue and leaves the device idle until the next launches arrive. The
loop (bench/train/loop.py) is written to read nothing between its history rows: its documented
counts are `loop.SYNCS_PER_STEP` and `loop.syncs_per_row`, and tests/test_gpu_ready.py holds it to
them on this CPU, where the same calls happen even though they cost nothing.

What counts, whatever the device (a CPU tensor does not sync, but the call would on CUDA):
- a device-wide wait: `bench.train.device.sync` (timings), `torch.cuda.synchronize`;
- a value read on the host: `.item()`, `float()`/`int()`/`bool()` of a tensor (one dispatched
  `_local_scalar_dense` each), `.tolist()`, `.numpy()`, `.cpu()`, a copy to the CPU;
- an op whose output size depends on the data (`nonzero`, boolean-mask indexing, `masked_select`,
  `unique`, `repeat_interleave` without its size): CUDA computes the size and waits for it.
On CUDA, `torch.cuda.set_sync_debug_mode("warn")` is the device's own account (gpu_check.py uses both).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bench.train import device as device_module

_SIZE_FROM_DATA = {
    "aten::nonzero",
    "aten::nonzero_static",
    "aten::masked_select",
    "aten::_unique",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::argwhere",
}
_HOST_METHODS = ("tolist", "numpy", "cpu")  # on a CPU tensor these dispatch nothing, so they are counted at the call


class HostSyncs(TorchDispatchMode):
    """Counts host syncs while active (`with HostSyncs() as s: ...; s.total`), by kind in `s.kinds`.

    A TorchDispatchMode sees every op below autograd, so the reads and data-dependent ops of any code
    inside are counted, the library's or torch's; the method calls that dispatch nothing on a CPU
    tensor (`tolist`, `numpy`, `cpu`) and the explicit waits are counted by wrapping them for the
    duration. Diagnostics only: slow, never on a timed path."""

    def __init__(self) -> None:
        super().__init__()
        self.kinds: Counter[str] = Counter()
        self._saved: list[tuple[Any, str, Any]] = []

    @property
    def total(self) -> int:
        """All syncs counted so far."""
        return sum(self.kinds.values())

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = func._schema.name
        if name == "aten::_local_scalar_dense":
            self.kinds["read"] += 1
        elif name in _SIZE_FROM_DATA:
            self.kinds["size from data"] += 1
        elif name in ("aten::index", "aten::index_put_", "aten::index_put") and _has_bool_index(args):
            self.kinds["size from data"] += 1
        elif name in ("aten::repeat_interleave",) and kwargs.get("output_size") is None:
            self.kinds["size from data"] += 1
        elif name in ("aten::_to_copy", "aten::copy_") and _to_host(name, args, kwargs):
            self.kinds["copy to host"] += 1
        return func(*args, **kwargs)

    def __enter__(self) -> HostSyncs:
        def wrap_method(method: str) -> Any:
            real = getattr(torch.Tensor, method)

            def counted(t: torch.Tensor, *a: Any, **kw: Any) -> Any:
                if t.device.type == "cpu":  # elsewhere the dispatched copy is what counts
                    self.kinds["copy to host"] += 1
                return real(t, *a, **kw)

            return counted

        waiting = [False]  # inside `sync`: its own torch.cuda.synchronize is not a second wait

        def wrap_sync(real: Any, kind: str) -> Any:
            def counted(*a: Any, **kw: Any) -> Any:
                if waiting[0]:
                    return real(*a, **kw)
                self.kinds[kind] += 1
                waiting[0] = True
                try:
                    return real(*a, **kw)
                finally:
                    waiting[0] = False

            return counted

        for method in _HOST_METHODS:
            self._patch(torch.Tensor, method, wrap_method(method))
        self._patch(device_module, "_wait", wrap_sync(device_module._wait, "device sync"))
        self._patch(torch.cuda, "synchronize", wrap_sync(torch.cuda.synchronize, "cuda synchronize"))
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        while self._saved:
            owner, name, value = self._saved.pop()
            setattr(owner, name, value)

    def _patch(self, owner: Any, name: str, value: Any) -> None:
        self._saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)


def _has_bool_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())


def _to_host(name: str, args: tuple, kwargs: dict) -> bool:
    """Whether a copy goes from a device other than the CPU to the CPU."""
    if name == "aten::copy_":
        dst, src = args[0], args[1]
        return dst.device.type == "cpu" and src.device.type != "cpu"
    src, target = args[0], kwargs.get("device")
    return src.device.type != "cpu" and target is not None and torch.device(target).type == "cpu"
