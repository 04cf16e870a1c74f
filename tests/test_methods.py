"""bench.methods (with the engine's probe phase): what each method builds and trains.

Why: the comparison SFT vs fine-tuning is only fair if each method is what
../shared/docs/methods.md says: sft starts exactly at the linear-probe solution (its
branch's last layer is zero), frozen parts stay frozen (weights and BatchNorm
statistics), seed_sft keeps the pretrained K-way classifier, and the trainable
parameter counts reported in tables are the ones that were trained.
"""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from torch import nn

from bench.backbones import build_backbone, get_backbone
from bench.engine import fit
from bench.methods import METHODS, SEED_RECIPE, HParams, build_net, method_name
from bench.registry import UserError
from bench.run import RunConfig, trainable_parameters

SFT_VARIANTS = ["sft", "sft-mlp", "sft-side"]
PROBE_METHODS = {"sft", "sft-mlp", "sft-side", "lp_ft"}

# Hand count for the tiny backbone (feature size d = 32, K = 16 pretrained logits) and
# C = 10 classes, default branch width 256.
TINY_BACKBONE = (3 * 16 * 9 + 2 * 16) + (16 * 32 * 9 + 2 * 32) + (32 * 32 * 9 + 2 * 32)  # 3 bias-free convs + BN
HEAD = 32 * 10 + 10
SEED_HEAD = (32 * 16 + 16) + (16 * 10 + 10)  # the pretrained Linear(32, 16), then Linear(16, 10)
MLP_BRANCH = (32 * 256 + 256) + (256 * 10 + 10)
SIDE_BRANCH = (3 * 32 * 9 + 32) + (32 * 64 * 9 + 64) + (64 * 10 + 10)  # width 256 // 8 = 32 channels, then 64
HAND_COUNT = {
    ("finetune", 1.0): TINY_BACKBONE + HEAD,
    ("finetune", 0.0): HEAD,
    ("linear_probe", 1.0): HEAD,
    ("lp_ft", 1.0): TINY_BACKBONE + HEAD,
    ("seed_sft", 1.0): TINY_BACKBONE + SEED_HEAD,
    ("seed_sft", 0.0): SEED_HEAD,
    ("sft", 1.0): TINY_BACKBONE + 2 * HEAD,
    ("sft", 0.0): 2 * HEAD,
    ("sft-mlp", 1.0): TINY_BACKBONE + HEAD + MLP_BRANCH,
    ("sft-mlp", 0.0): HEAD + MLP_BRANCH,
    ("sft-side", 1.0): TINY_BACKBONE + HEAD + SIDE_BRANCH,
    ("sft-side", 0.0): HEAD + SIDE_BRANCH,
}


@pytest.fixture(scope="module")
def batch(synthetic_data) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """120 training images (12 per class) of the synthetic set."""
    idx = torch.cat([torch.nonzero(synthetic_data.train_y == c).flatten()[:12] for c in range(10)])
    return synthetic_data.train_x[idx], synthetic_data.train_y[idx]


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_every_method_is_counted_by_hand() -> None:
    assert {m for m, _ in HAND_COUNT} == set(METHODS.names()), "a new method needs its hand count here"


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_maps_images_to_class_logits(method: str, batch: tuple, tiny_net) -> None:
    net = tiny_net(method).eval()
    with torch.no_grad():
        out = net(batch[0][:5])
    assert out.shape == (5, 10) and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("method", SFT_VARIANTS)
def test_sft_starts_exactly_at_the_heads_output(method: str, batch: tuple, tiny_net) -> None:
    """g's last layer is zero, so f + g == f before the first step, bit for bit."""
    net = tiny_net(method).eval()
    x = batch[0]
    with torch.no_grad():
        feats = net.encode(x)
        branch_in = net.adapter(x) if net.branch_on_image else feats
        assert torch.count_nonzero(net.branch(branch_in)) == 0
        assert torch.equal(net(x), net.head(feats))


@pytest.mark.parametrize("method", SFT_VARIANTS)
def test_sft_branch_is_trained(method: str, batch: tuple, tiny_net) -> None:
    net = tiny_net(method)
    hp = HParams(epochs=2, batch_size=32, probe_epochs=1, backbone_lr_mult=0.0)
    fit(net, METHODS.get(method), hp, *batch, seed=0)
    net.eval()
    x = batch[0]
    with torch.no_grad():
        branch_in = net.adapter(x) if net.branch_on_image else net.encode(x)
        assert torch.count_nonzero(net.branch(branch_in)) > 0, "the supervision branch never moved"


@pytest.mark.parametrize("method", sorted(PROBE_METHODS))
def test_head_starts_as_the_linear_probe_solution(method: str, batch: tuple, tiny_net) -> None:
    """The probe phase is a linear probe: the same head a `linear_probe` run with the probe's
    settings reaches. A learning rate of 1e-20 in the main phase leaves the head where the
    probe left it (an AdamW step moves a weight by about lr), so the two heads must agree."""
    probe_epochs, batch_size = 3, 32
    hp = HParams(lr=1e-20, epochs=1, batch_size=batch_size, probe_epochs=probe_epochs, probe_lr=0.01)
    net = tiny_net(method, hp)
    init_state = _snapshot(net.head)
    init = init_state["weight"]
    result = fit(net, METHODS.get(method), hp, *batch, seed=3)
    phases = [row["phase"] for row in result.history]
    assert phases == ["probe"] * probe_epochs + ["train"]

    lp_hp = HParams(
        optimizer="adamw",
        lr=0.01,
        weight_decay=1e-4,
        schedule="cosine",
        epochs=probe_epochs,
        batch_size=batch_size,
        augment=False,
    )
    probe = tiny_net("linear_probe", lp_hp)
    probe.head.load_state_dict(init_state)  # the same starting point
    fit(probe, METHODS.get("linear_probe"), lp_hp, *batch, seed=3)
    assert not torch.allclose(net.head.weight, init), "the probe phase did not train the head"
    torch.testing.assert_close(net.head.weight, probe.head.weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(net.head.bias, probe.head.bias, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", sorted(set(METHODS.names()) - PROBE_METHODS))
def test_methods_without_probe_have_no_probe_phase(method: str, batch: tuple, tiny_net) -> None:
    result = fit(tiny_net(method), METHODS.get(method), HParams(epochs=1, batch_size=64), *batch, seed=0)
    assert [row["phase"] for row in result.history] == ["train"]


@pytest.mark.parametrize("feature_cache", ["shared", "off"])
@pytest.mark.parametrize(
    "method, changes",
    [
        ("linear_probe", {}),
        ("sft", {"backbone_lr_mult": 0.0}),
        ("sft-side", {"backbone_lr_mult": 0.0}),
        ("finetune", {"backbone_lr_mult": 0.0}),
    ],
)
def test_frozen_backbone_gets_no_gradient_and_keeps_batchnorm_statistics(
    method: str, changes: dict, feature_cache: str, batch: tuple, tiny_net
) -> None:
    hp = HParams(epochs=2, batch_size=32, probe_epochs=1, lr=0.01).update(**changes)
    net = tiny_net(method, hp)
    before = _snapshot(net.backbone)
    head_before = _snapshot(net.head)
    fit(net, METHODS.get(method), hp, *batch, seed=0, feature_cache=feature_cache)
    assert all(p.grad is None for p in net.backbone.parameters())
    after = net.backbone.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]), f"frozen backbone's {key} changed"
    assert any(not torch.equal(v, net.head.state_dict()[k]) for k, v in head_before.items()), "the head was not trained"


def test_trained_backbone_does_update_batchnorm_statistics(batch: tuple, tiny_net) -> None:
    """The control for the test above: the same check sees a backbone that is trained."""
    hp = HParams(epochs=1, batch_size=32, lr=0.01)
    net = tiny_net("finetune", hp)
    before = _snapshot(net.backbone)
    fit(net, METHODS.get("finetune"), hp, *batch, seed=0)
    after = net.backbone.state_dict()
    assert not torch.equal(before["net.1.running_mean"], after["net.1.running_mean"])
    assert all(p.grad is not None for p in net.backbone.parameters())


@pytest.mark.parametrize("method, mult", sorted(HAND_COUNT))
def test_trainable_parameter_counts_match_a_hand_count(method: str, mult: float, batch: tuple, tiny_net) -> None:
    hp = HParams(epochs=1, batch_size=64, probe_epochs=1, backbone_lr_mult=mult)
    net = tiny_net(method, hp)
    cfg = RunConfig("tiny", method, 1.0, 0, hp=hp)
    assert trainable_parameters(net, cfg) == HAND_COUNT[method, mult]
    fit(net, METHODS.get(method), hp, *batch, seed=0)
    # ... and those are exactly the parameters that received a gradient.
    assert sum(p.numel() for p in net.parameters() if p.grad is not None) == HAND_COUNT[method, mult]


def test_seed_sft_maps_the_pretrained_logits_to_classes_tiny(tiny_net) -> None:
    spec = get_backbone("tiny")
    _, pretrained_head = build_backbone(spec, True)
    net = tiny_net("seed_sft")
    assert isinstance(net.head, nn.Sequential) and len(net.head) == 2
    assert torch.equal(net.head[0].weight, pretrained_head.weight)  # the pretrained K = 16 logits, kept
    assert (net.head[1].in_features, net.head[1].out_features) == (16, 10)


def test_seed_sft_maps_the_pretrained_logits_to_classes_lite0() -> None:
    spec = get_backbone("efficientnet_lite0")
    feats, pretrained_head = build_backbone(spec, True)
    reference = pretrained_head.weight.detach().clone()
    net = build_net("seed_sft", feats, pretrained_head, spec.feature_dim, 10, SEED_RECIPE, spec.mean, spec.std, 32).eval()
    assert torch.equal(net.head[0].weight, reference)  # the ImageNet classifier, K = 1000
    assert (net.head[1].in_features, net.head[1].out_features) == (1000, 10)
    with torch.no_grad():
        assert net(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)).shape == (2, 10)


@pytest.mark.parametrize("method", METHODS.names())
def test_search_space_yields_valid_hyperparameters(method: str) -> None:
    spec = METHODS.get(method)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(8):
        changes = spec.search_space(study.ask())
        hp = HParams().update(**spec.defaults).update(**changes)
        assert math.isfinite(hp.lr) and hp.lr > 0
    HParams().update(**spec.defaults)  # the defaults themselves are valid


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"lr": "abc"}, "lr must be of type float"),
        ({"lr": float("nan")}, "finite"),
        ({"lr": float("inf")}, "finite"),
        ({"lr": 0.0}, "lr must be positive"),
        ({"epochs": 2.5}, "epochs must be of type int"),
        ({"epochs": 0}, "epochs must be positive"),
        ({"augment": "yes"}, "augment must be of type bool"),
        ({"optimizer": "adam"}, "optimizer 'adam'"),
        ({"schedule": "step"}, "schedule 'step'"),
        ({"weight_decay": -1e-4}, "weight_decay must be >= 0"),
        ({"grad_clip": -1.0}, "grad_clip must be >= 0"),
        ({"momentum": 1.5}, "momentum"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"backbone_lr_mult": -1.0}, "backbone_lr_mult"),
        ({"probe_epochs": 0}, "probe_epochs must be positive"),
        ({"branch_width": 0}, "branch_width must be positive"),
        ({"learning_rate": 0.1}, "unknown hyperparameter"),
    ],
)
def test_bad_hyperparameters_are_user_errors(changes: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        HParams().update(**changes)


def test_numbers_are_normalised_so_equal_settings_share_a_run_id() -> None:
    a = HParams().update(lr=1, epochs=3.0, weight_decay=0)
    assert isinstance(a.lr, float) and isinstance(a.epochs, int) and isinstance(a.weight_decay, float)
    b = HParams().update(lr=1.0, epochs=3, weight_decay=0.0)
    assert RunConfig("tiny", "sft", 0.1, 0, hp=a).run_id == RunConfig("tiny", "sft", 0.1, 0, hp=b).run_id
    assert RunConfig("tiny", "sft", 0.1, 0, hp=a).run_id != RunConfig("tiny", "sft", 0.1, 0, hp=b.update(lr=0.5)).run_id


def test_branch_names() -> None:
    assert method_name("sft", None) == "sft" and method_name("sft", "linear") == "sft"
    assert method_name("sft", "mlp") == "sft-mlp" and method_name("sft", "side") == "sft-side"
    with pytest.raises(UserError, match="sft only"):
        method_name("finetune", "mlp")
    with pytest.raises(UserError, match="not one of"):
        method_name("sft", "cnn")
    with pytest.raises(UserError, match="did you mean 'sft'"):
        METHODS.get("sftt")
