"""What each compared method is (see ../shared/docs/methods.md), torch-free: its kind, the head it
builds (by name), its defaults and its one-line summary; the registry `METHODS` every other part
reads (the CLI's choices, the sweep's validation and search, the run's config checks).

Why apart from the models (bench/models/methods.py): a run's config, an experiment's validation
and the report decide what a method *is* without building a network, so they never import torch.
The networks each head name builds are methods.py's `HEADS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from bench.names import METHOD_ALIASES
from bench.registry import Registry


class MethodKind(StrEnum):
    """The four kinds of method: whether the backbone trains, and where the head starts.

    FINETUNE           the backbone trains; a new head (finetune, article_sft)
    PROBE              the linear probe itself: a solved logistic regression on frozen features
    FROM_PROBE         the backbone trains; the head starts as the linear probe (lp_ft, sft*)
    FROZEN_FROM_PROBE  the backbone is frozen; the head starts as the linear probe, a branch
                       trains beside it on cached features (sft-mlp-frozen, sft-side-frozen)
    """

    FINETUNE = "finetune"
    PROBE = "probe"
    FROM_PROBE = "from_probe"
    FROZEN_FROM_PROBE = "frozen_from_probe"

    @property
    def trains_backbone(self) -> bool:
        """False: a frozen-backbone row, trained on cached features (never augmented)."""
        return self in (MethodKind.FINETUNE, MethodKind.FROM_PROBE)

    @property
    def probe_init(self) -> bool:
        """H_f starts as the linear_probe row's model."""
        return self in (MethodKind.FROM_PROBE, MethodKind.FROZEN_FROM_PROBE)

    @property
    def is_probe(self) -> bool:
        """The linear probe itself: its fit is the probe every probe-initialised method starts from."""
        return self is MethodKind.PROBE

    @property
    def fits_probe(self) -> bool:
        """Whether a run of this kind fits a linear probe (so its config carries a `ProbeSpec`)."""
        return self.is_probe or self.probe_init


# Frozen rows train on cached features: they cannot augment (methods.md), so they say so.
FROZEN_DEFAULTS = {"augment": False}


@dataclass(frozen=True)
class MethodSpec:
    """One method: `head` names the builder in bench/models/methods.py's `HEADS`; `branch` says
    whether it has a supervision branch of searched width (the sweep's space adds `branch_width`)."""

    name: str
    kind: MethodKind
    head: str
    branch: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)
    summary: str = ""

    # the kind's answers, on the spec for brevity at the many call sites that hold a spec
    @property
    def trains_backbone(self) -> bool:
        """Whether B trains (see MethodKind)."""
        return self.kind.trains_backbone

    @property
    def probe_init(self) -> bool:
        """Whether H_f starts as the linear probe (see MethodKind)."""
        return self.kind.probe_init

    @property
    def is_probe(self) -> bool:
        """Whether this is the linear probe itself (see MethodKind)."""
        return self.kind.is_probe

    @property
    def searched(self) -> bool:
        """Whether a tuned cell of this method searches: not the linear probe (protocol v3), whose one
        setting, its L2 strength, is cross-validated inside its fit."""
        return not self.is_probe


METHODS: Registry[MethodSpec] = Registry("method")


def register_method(name: str, kind: MethodKind, head: str, *, branch: bool = False, summary: str = "") -> MethodSpec:
    """Declare a method (a plug-in also adds its head builder to bench/models/methods.py's `HEADS`)."""
    defaults = {} if kind.trains_backbone else dict(FROZEN_DEFAULTS)
    return METHODS.register(name)(MethodSpec(name, kind, head, branch, defaults, summary))


register_method("finetune", MethodKind.FINETUNE, "linear", summary="new head on B(x); everything trained")
register_method(
    "linear_probe",
    MethodKind.PROBE,
    "linear",
    summary="new head on frozen B(x): a converged logistic regression, its L2 strength cross-validated (no search)",
)
register_method("lp_ft", MethodKind.FROM_PROBE, "linear", summary="head started as the linear probe, then everything trained")
register_method(
    "article_sft",
    MethodKind.FINETUNE,
    "article",
    summary="the article's model: full pretrained classifier (K logits) -> Linear(K, C)",
)
# sft (linear branch) with B frozen is the linear probe again (methods.md), so it has no frozen row.
register_method(
    "sft",
    MethodKind.FROM_PROBE,
    "sft-linear",
    summary="f + g, g = V B(x) + c (linear, zero-init): lp_ft with a doubled head step (W and V get identical gradients)",
)
register_method("sft-mlp", MethodKind.FROM_PROBE, "mlp", branch=True, summary="f + g, g = one-hidden-layer MLP on B(x)")
register_method("sft-side", MethodKind.FROM_PROBE, "side", branch=True, summary="f + g, g = small CNN on the image")
register_method(
    "sft-mlp-frozen", MethodKind.FROZEN_FROM_PROBE, "mlp", branch=True, summary="f + g on frozen B(x), g = MLP (an MLP probe)"
)
register_method(
    "sft-side-frozen",
    MethodKind.FROZEN_FROM_PROBE,
    "side",
    branch=True,
    summary="f + g, B frozen, g = small CNN on the image (side-tuning as published)",
)

for _old, _new in METHOD_ALIASES.items():  # the old names (bench/names.py says why, and until when)
    METHODS.alias(_old, _new)
