"""bench.models.methods (with the engine's probe phase): what each method builds and trains.

Why: the comparison SFT vs fine-tuning is only fair if each method is what
../shared/docs/methods.md (protocol v3) says: sft* and lp_ft start exactly at the
linear_probe row's model (a converged logistic regression) (the branch's last layer is zero), frozen parts stay frozen
(weights and BatchNorm statistics), one BatchNorm policy and one search space serve every
method, article_sft keeps the pretrained K-way classifier, and the trainable parameter counts
reported in tables are the ones that were trained.
"""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from torch import nn

from bench.models.backbones import build_backbone, get_backbone
from bench.models.hparams import ARTICLE_RECIPE, BN_POLICIES, HParams, ProbeSpec
from bench.models.kinds import METHODS
from bench.models.methods import Backbone, InputAdapter, build_net
from bench.names import method_name
from bench.registry import UserError
from bench.run_config import RunConfig
from bench.sweep.space import (
    BACKBONE_LR_MULT_CHOICES,
    LABEL_SMOOTHING_CHOICES,
    LR_RANGE,
    WARMUP_CHOICES,
    WEIGHT_DECAY_RANGE,
    method_space,
)
from bench.train.caches import Caches
from bench.train.context import FitContext, FitData
from bench.train.fit import fit
from bench.train.run import trainable_parameters

SFT_VARIANTS = ["sft", "sft-mlp", "sft-side", "sft-mlp-frozen", "sft-side-frozen"]
PROBE_METHODS = {"sft", "sft-mlp", "sft-side", "lp_ft", "sft-mlp-frozen", "sft-side-frozen"}
FROZEN_ROWS = {"linear_probe", "sft-mlp-frozen", "sft-side-frozen"}
PROBE = ProbeSpec(folds=3)  # the linear probe sft*/lp_ft start from here

# Hand count for the tiny backbone (feature size d = 32, K = 16 pretrained logits) and
# C = 10 classes, default branch width 256.
TINY_BACKBONE = (3 * 16 * 9 + 2 * 16) + (16 * 32 * 9 + 2 * 32) + (32 * 32 * 9 + 2 * 32)  # 3 bias-free convs + BN
HEAD = 32 * 10 + 10
SEED_HEAD = (32 * 16 + 16) + (16 * 10 + 10)  # the pretrained Linear(32, 16), then Linear(16, 10)
MLP_BRANCH = (32 * 256 + 256) + (256 * 10 + 10)
SIDE_BRANCH = (3 * 32 * 9 + 32) + (32 * 64 * 9 + 64) + (64 * 10 + 10)  # width 256 // 8 = 32 channels, then 64
HAND_COUNT = {
    "finetune": TINY_BACKBONE + HEAD,
    "linear_probe": HEAD,
    "lp_ft": TINY_BACKBONE + HEAD,
    "article_sft": TINY_BACKBONE + SEED_HEAD,
    "sft": TINY_BACKBONE + 2 * HEAD,
    "sft-mlp": TINY_BACKBONE + HEAD + MLP_BRANCH,
    "sft-side": TINY_BACKBONE + HEAD + SIDE_BRANCH,
    "sft-mlp-frozen": HEAD + MLP_BRANCH,
    "sft-side-frozen": HEAD + SIDE_BRANCH,
}


def _hp(method: str, **changes: object) -> HParams:
    """The method's defaults (frozen rows: augment off) with changes."""
    return HParams().update(**METHODS.get(method).defaults).update(**changes)


@pytest.fixture(scope="module")
def batch(synthetic_data) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """120 training images (12 per class) of the synthetic set."""
    idx = torch.cat([torch.nonzero(synthetic_data.train_y == c).flatten()[:12] for c in range(10)])
    return synthetic_data.train_x[idx], synthetic_data.train_y[idx]


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_every_method_is_counted_by_hand() -> None:
    assert set(HAND_COUNT) == set(METHODS.names()), "a new method needs its hand count here"


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
    hp = _hp(method, steps=8, batch_size=32)
    net = tiny_net(method, hp)
    fit(net, METHODS.get(method), hp, FitData(*batch), FitContext(seed=0, probe=PROBE))
    net.eval()
    x = batch[0]
    with torch.no_grad():
        branch_in = net.adapter(x) if net.branch_on_image else net.encode(x)
        assert torch.count_nonzero(net.branch(branch_in)) > 0, "the supervision branch never moved"


@pytest.mark.parametrize("method", sorted(PROBE_METHODS))
def test_head_starts_as_the_linear_probe_rows_model(method: str, batch: tuple, tiny_net) -> None:
    """H_f is the linear_probe row's model: a `linear_probe` run with the probe's hyperparameters
    on the same data and seed reaches the very head the method starts from (methods.md)."""
    caches = Caches()
    hp = _hp(method, lr=0.0, steps=1, batch_size=32)  # lr 0: the head stays where the probe left it
    net = tiny_net(method, hp)
    init = _snapshot(net.head)["weight"]
    caches.probes.clear()
    result = fit(net, METHODS.get(method), hp, FitData(*batch), FitContext(seed=3, probe=PROBE, caches=caches))
    assert {row.phase for row in result.history} == {"probe_cv", "probe", "train"}
    assert result.probe_steps > 0 and result.steps == 1 and result.probe_converged
    assert not torch.allclose(net.head.weight, init), "the probe phase did not fit the head"

    lp_hp = _hp("linear_probe")
    row = tiny_net("linear_probe", lp_hp)
    caches.probes.clear()  # fitted again, not served from the cache
    lp = fit(row, METHODS.get("linear_probe"), lp_hp, FitData(*batch), FitContext(seed=7, probe=PROBE, caches=caches))
    assert not lp.probe_cache_hit and lp.steps == 0 and lp.probe_steps == result.probe_steps
    assert torch.equal(net.head.weight, row.head.weight) and torch.equal(net.head.bias, row.head.bias)


def test_the_probe_is_fitted_once_and_a_cached_probe_is_bit_identical(batch: tuple, tiny_net) -> None:
    caches = Caches()
    caches.probes.clear()
    hp = _hp("sft", lr=0.0, steps=1, batch_size=32)
    first = fit(tiny_net("sft", hp), METHODS.get("sft"), hp, FitData(*batch), FitContext(seed=1, probe=PROBE, caches=caches))
    net = tiny_net("sft", hp)
    second = fit(net, METHODS.get("sft"), hp, FitData(*batch), FitContext(seed=1, probe=PROBE, caches=caches))
    assert not first.probe_cache_hit and second.probe_cache_hit and caches.probes.hits == 1
    cached = _snapshot(net.head)
    caches.probes.clear()
    net = tiny_net("sft", hp)
    fit(net, METHODS.get("sft"), hp, FitData(*batch), FitContext(seed=1, probe=PROBE, caches=caches))
    assert all(torch.equal(v, net.head.state_dict()[k]) for k, v in cached.items())
    # the probe is deterministic (protocol v3): another seed is the same probe; other settings or
    # other images are another
    same = fit(tiny_net("sft", hp), METHODS.get("sft"), hp, FitData(*batch), FitContext(seed=2, probe=PROBE, caches=caches))
    assert same.probe_cache_hit
    other = fit(
        tiny_net("sft", hp),
        METHODS.get("sft"),
        hp,
        FitData(*batch),
        FitContext(seed=1, probe=PROBE.update(folds=2), caches=caches),
    )
    assert not other.probe_cache_hit
    fewer = fit(
        tiny_net("sft", hp),
        METHODS.get("sft"),
        hp,
        FitData(batch[0][1:], batch[1][1:]),
        FitContext(seed=1, probe=PROBE, caches=caches),
    )
    assert not fewer.probe_cache_hit


@pytest.mark.parametrize("feature_cache", ["shared", "off"])
@pytest.mark.parametrize("method", sorted(FROZEN_ROWS))
def test_frozen_rows_get_no_gradient_and_keep_batchnorm_statistics(
    method: str, feature_cache: str, batch: tuple, tiny_net
) -> None:
    hp = _hp(method, steps=8, batch_size=32, lr=0.01)
    net = tiny_net(method, hp)
    before = _snapshot(net.backbone)
    head_before = _snapshot(net.head)
    fit(net, METHODS.get(method), hp, FitData(*batch), FitContext(seed=0, feature_cache=feature_cache, probe=PROBE))
    assert all(p.grad is None for p in net.backbone.parameters())
    after = net.backbone.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]), f"frozen backbone's {key} changed"
    assert any(not torch.equal(v, net.head.state_dict()[k]) for k, v in head_before.items()), "the head was not trained"


@pytest.mark.parametrize("method", sorted(set(METHODS.names()) - FROZEN_ROWS))
def test_frozen_batchnorm_policy_keeps_the_pretrained_statistics_while_the_backbone_trains(
    method: str, batch: tuple, tiny_net
) -> None:
    """bn = "frozen" (the default, every method alike): weights and BN affine parameters train,
    running statistics stay the pretrained ones. bn = "train" is the control: they move."""
    moved = {}
    for bn in BN_POLICIES:
        hp = _hp(method, steps=4, batch_size=32, lr=0.01, bn=bn)
        net = tiny_net(method, hp)
        before = _snapshot(net.backbone)
        fit(net, METHODS.get(method), hp, FitData(*batch), FitContext(seed=0, probe=PROBE))
        after = net.backbone.state_dict()
        assert not torch.equal(before["net.0.weight"], after["net.0.weight"]), "the backbone did not train"
        assert not torch.equal(before["net.1.weight"], after["net.1.weight"]), "BN affine parameters did not train"
        moved[bn] = not torch.equal(before["net.1.running_mean"], after["net.1.running_mean"])
        assert all(p.grad is not None for p in net.backbone.parameters())
    assert moved == {"frozen": False, "train": True}


def test_methods_that_train_the_backbone_refuse_a_zero_multiplier_and_frozen_rows_refuse_augmentation(
    batch: tuple, tiny_net
) -> None:
    from bench.registry import UserError

    for method in sorted(set(METHODS.names()) - FROZEN_ROWS):
        with pytest.raises(UserError, match="frozen backbone is a row of its own"):
            hp = _hp(method, steps=1, backbone_lr_mult=0.0)
            fit(tiny_net(method, hp), METHODS.get(method), hp, FitData(*batch), FitContext(seed=0, probe=PROBE))
    for method in sorted(FROZEN_ROWS):
        with pytest.raises(UserError, match="cannot be augmented"):
            hp = _hp(method, steps=1, augment=True)
            fit(tiny_net(method, hp), METHODS.get(method), hp, FitData(*batch), FitContext(seed=0, probe=PROBE))


@pytest.mark.parametrize("method", sorted(HAND_COUNT))
def test_trainable_parameter_counts_match_a_hand_count(method: str, batch: tuple, tiny_net) -> None:
    hp = _hp(method, steps=2, batch_size=64)
    net = tiny_net(method, hp)
    probe = PROBE if METHODS.get(method).probe_init else None
    cfg = RunConfig(backbone="tiny", method=method, fraction=1.0, seed=0, hp=hp, probe=probe)
    assert trainable_parameters(net, cfg) == HAND_COUNT[method]
    head = _snapshot(net.head)
    fit(net, METHODS.get(method), hp, FitData(*batch), FitContext(seed=0, probe=probe))
    if METHODS.get(method).is_probe:
        # the linear probe is fitted as a Linear of its own and loaded into the head (so the sft*
        # rows can start from the very same model): the head changed, nothing else has a gradient
        assert all(p.grad is None for p in net.parameters())
        assert not torch.equal(head["weight"], net.head.weight)
        return
    # ... and those are exactly the parameters that received a gradient.
    assert sum(p.numel() for p in net.parameters() if p.grad is not None) == HAND_COUNT[method]


def test_article_sft_maps_the_pretrained_logits_to_classes_tiny(tiny_net) -> None:
    spec = get_backbone("tiny")
    _, pretrained_head = build_backbone(spec, True)
    net = tiny_net("article_sft")
    assert isinstance(net.head, nn.Sequential) and len(net.head) == 2
    assert torch.equal(net.head[0].weight, pretrained_head.weight)  # the pretrained K = 16 logits, kept
    assert (net.head[1].in_features, net.head[1].out_features) == (16, 10)


def test_article_sft_maps_the_pretrained_logits_to_classes_lite0() -> None:
    spec = get_backbone("efficientnet_lite0")
    feats, pretrained_head = build_backbone(spec, True)
    reference = pretrained_head.weight.detach().clone()
    backbone, adapter = Backbone(feats, pretrained_head, spec.feature_dim), InputAdapter(spec.mean, spec.std, 32)
    net = build_net("article_sft", backbone, adapter, 10, ARTICLE_RECIPE).eval()
    assert torch.equal(net.head[0].weight, reference)  # the ImageNet classifier, K = 1000
    assert (net.head[1].in_features, net.head[1].out_features) == (1000, 10)
    with torch.no_grad():
        assert net(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)).shape == (2, 10)


@pytest.mark.parametrize("method", METHODS.names())
def test_search_space_yields_valid_hyperparameters(method: str) -> None:
    spec = METHODS.get(method)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(8):
        changes = method_space(study.ask(), spec)
        hp = HParams().update(**spec.defaults).update(**changes)
        assert math.isfinite(hp.lr) and hp.lr > 0
        assert "steps" not in changes, "the step budget is the cell's, never searched"
    HParams().update(**spec.defaults)  # the defaults themselves are valid


def test_shared_hyperparameters_have_one_search_space_for_every_method() -> None:
    """methods.md: optimiser, lr, weight decay, label smoothing, warm-up, multiplier and BN policy
    have the same distributions for every method that has them; frozen rows have no multiplier
    and no BN policy; only branch width is method-specific."""
    shared = {
        "optimizer": optuna.distributions.CategoricalDistribution(["sgd", "adamw"]),
        "lr": optuna.distributions.FloatDistribution(*LR_RANGE, log=True),
        "weight_decay": optuna.distributions.FloatDistribution(*WEIGHT_DECAY_RANGE, log=True),
        "label_smoothing": optuna.distributions.CategoricalDistribution(LABEL_SMOOTHING_CHOICES),
        "warmup": optuna.distributions.CategoricalDistribution(WARMUP_CHOICES),
    }
    trained = {
        "backbone_lr_mult": optuna.distributions.CategoricalDistribution(BACKBONE_LR_MULT_CHOICES),
        "bn": optuna.distributions.CategoricalDistribution(list(BN_POLICIES)),
    }
    assert 0.0 not in BACKBONE_LR_MULT_CHOICES, "a frozen backbone is a row of its own, not a searched value"
    for method in METHODS.names():
        spec = METHODS.get(method)
        study = optuna.create_study()
        trial = study.ask()
        method_space(trial, spec)
        dists = dict(trial.distributions)
        width = dists.pop("branch_width", None)
        assert (width is not None) == (method in {"sft-mlp", "sft-side", "sft-mlp-frozen", "sft-side-frozen"})
        assert dists == {**shared, **(trained if spec.trains_backbone else {})}, method


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"lr": "abc"}, "lr must be of type float"),
        ({"lr": float("nan")}, "finite"),
        ({"lr": float("inf")}, "finite"),
        ({"lr": -0.1}, "lr must be >= 0"),
        ({"steps": 2.5}, "steps must be of type int"),
        ({"steps": 0}, "steps must be positive"),
        ({"warmup": 1.0}, "warmup must be a fraction"),
        ({"bn": "eval"}, "bn 'eval' is not one of"),
        ({"augment": "yes"}, "augment must be of type bool"),
        ({"optimizer": "adam"}, "optimizer 'adam'"),
        ({"schedule": "step"}, "schedule 'step'"),
        ({"weight_decay": -1e-4}, "weight_decay must be >= 0"),
        ({"grad_clip": -1.0}, "grad_clip must be >= 0"),
        ({"momentum": 1.5}, "momentum"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"backbone_lr_mult": -1.0}, "backbone_lr_mult"),
        ({"branch_width": 0}, "branch_width must be positive"),
        ({"learning_rate": 0.1}, "unknown hyperparameter"),
    ],
)
def test_bad_hyperparameters_are_user_errors(changes: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        HParams().update(**changes)


def test_numbers_are_normalised_so_equal_settings_share_a_run_id() -> None:
    a = HParams().update(lr=1, steps=3.0, weight_decay=0)
    assert isinstance(a.lr, float) and isinstance(a.steps, int) and isinstance(a.weight_decay, float)
    b = HParams().update(lr=1.0, steps=3, weight_decay=0.0)
    run = lambda hp, probe=PROBE: RunConfig(backbone="tiny", method="sft", fraction=0.1, seed=0, hp=hp, probe=probe).run_id  # noqa: E731
    assert run(a) == run(b)
    assert run(a) != run(b.update(lr=0.5))
    assert run(a) != run(a, PROBE.update(folds=4)), "the probe it starts from is part of a run's id"
    assert run(a, None) == run(a, ProbeSpec()), "no probe named: the default one, the same id"
    assert ProbeSpec(l2_grid=(1, 0.1)) == ProbeSpec(l2_grid=(1.0, 0.1))


def test_the_probe_std_floor_is_part_of_the_id_except_at_0() -> None:
    """std_floor 0 is the probe every earlier run fitted: same run id, cache key and record as before the
    setting existed; any other floor (the default, 1, included) is another probe, so another id."""
    run = lambda probe: RunConfig(backbone="tiny", method="sft", fraction=0.1, seed=0, probe=probe).run_id  # noqa: E731
    assert "std_floor" not in ProbeSpec(std_floor=0).as_data() and ProbeSpec().as_data()["std_floor"] == 1.0
    assert run(ProbeSpec(std_floor=0.0)) != run(ProbeSpec()) and run(ProbeSpec(std_floor=1)) == run(ProbeSpec())
    assert run(ProbeSpec(std_floor=0.3)) != run(ProbeSpec()) and ProbeSpec(std_floor=0.3).as_data()["std_floor"] == 0.3
    for floor in (0.0, 0.3, 1.0):  # a record's probe_hparams read back as the probe that was fitted
        assert ProbeSpec.from_dict(ProbeSpec(std_floor=floor).as_data()) == ProbeSpec(std_floor=floor)
    assert ProbeSpec.from_table({"folds": 3}) == ProbeSpec(folds=3) and ProbeSpec().std_floor == 1.0
    for bad in (-0.1, 1.5, True):
        with pytest.raises(UserError, match="std_floor"):
            ProbeSpec(std_floor=bad)


def test_a_std_floor_bounds_the_raw_weight_of_a_nearly_constant_feature() -> None:
    """At 32 px Lite0 has features with a spread 200x under the median: standardised, the probe may weigh
    them like any other, and the head on raw features then divides by that spread (weights up to 849 on
    the real data, results/probe_floor/). A floor of c x the median spread bounds the division."""
    from bench.train.logreg import choose_probe, standardise

    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 4
    x = torch.randn(200, 16, generator=g) + torch.nn.functional.one_hot(y, 16).float()  # 4 informative, 12 noise features
    x[:, 15] = 1e-4 * (y == 0).float() + 1e-5 * torch.randn(200, generator=g)  # informative, nearly constant
    spec = ProbeSpec(folds=2, l2_grid=(0.01,), std_floor=0)
    plain = choose_probe(x, y, 4, spec).fit.weight[:, 15].abs().max()
    floored = choose_probe(x, y, 4, spec.update(std_floor=1.0)).fit.weight[:, 15].abs().max()
    assert plain > 100 and floored < plain / 100
    xs, _, std = standardise(x.double(), 0.5)
    median = x.double().std(0, unbiased=False).median()
    assert float(std.min()) == pytest.approx(0.5 * float(median)) and torch.equal(
        standardise(x.double())[0], standardise(x.double(), 0.0)[0]
    )


def test_branch_names() -> None:
    assert method_name("sft", None) == "sft" and method_name("sft", "linear") == "sft"
    assert method_name("sft", "mlp") == "sft-mlp" and method_name("sft", "side") == "sft-side"
    with pytest.raises(UserError, match="sft only"):
        method_name("finetune", "mlp")
    with pytest.raises(UserError, match="not one of"):
        method_name("sft", "cnn")
    with pytest.raises(UserError, match="did you mean 'sft'"):
        METHODS.get("sftt")


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_sft_linear_is_lp_ft_with_a_doubled_head_step(optimizer: str, batch: tuple, tiny_net) -> None:
    """methods.md v3: with the linear branch, y = (W + V) B(x) + (b + c), and W and V get identical
    gradients, so W + V moves by twice lp_ft's head step while the backbone sees the same gradients.
    Without weight decay (on two copies it differs), sft at lr, multiplier m is lp_ft at 2 lr, m / 2:
    the same logits after training, up to float rounding. The report therefore does not count sft
    and lp_ft as independent evidence."""
    x, y = batch
    common = dict(optimizer=optimizer, weight_decay=0.0, steps=6, batch_size=32, warmup=0.0, bn="frozen")
    sft_hp = _hp("sft", lr=0.01, backbone_lr_mult=1.0, **common)
    lp_hp = _hp("lp_ft", lr=0.02, backbone_lr_mult=0.5, **common)
    sft, lp = tiny_net("sft", sft_hp), tiny_net("lp_ft", lp_hp)
    fit(sft, METHODS.get("sft"), sft_hp, FitData(x, y), FitContext(seed=5, probe=PROBE))
    fit(lp, METHODS.get("lp_ft"), lp_hp, FitData(x, y), FitContext(seed=5, probe=PROBE))
    start = tiny_net("lp_ft", lp_hp)
    fit(start, METHODS.get("lp_ft"), lp_hp.update(lr=0.0), FitData(x, y), FitContext(seed=5, probe=PROBE))
    with torch.no_grad():
        a, b = sft.eval()(x), lp.eval()(x)
        moved = float((b - start.eval()(x)).abs().max())
    assert moved > 1e-2, "the runs must have trained for the identity to mean something"
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # with weight decay the two differ (decay on two copies of the head)
    decay = dict(common, weight_decay=0.1)
    sft_wd_hp, lp_wd_hp = _hp("sft", lr=0.01, backbone_lr_mult=1.0, **decay), _hp("lp_ft", lr=0.02, backbone_lr_mult=0.5, **decay)
    sft_wd, lp_wd = tiny_net("sft", sft_wd_hp), tiny_net("lp_ft", lp_wd_hp)
    for net, method, hp in ((sft_wd, "sft", sft_wd_hp), (lp_wd, "lp_ft", lp_wd_hp)):
        fit(net, METHODS.get(method), hp, FitData(x, y), FitContext(seed=5, probe=PROBE))
    with torch.no_grad():
        assert not torch.allclose(sft_wd.eval()(x), lp_wd.eval()(x), rtol=1e-4, atol=1e-4)
