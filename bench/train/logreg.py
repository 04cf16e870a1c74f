"""The linear probe of protocol v3: a converged, L2-regularised multinomial logistic regression on
frozen features, its strength chosen by stratified k-fold cross-validation from a fixed grid.

Why not a searched SGD run (protocol v2): with 100 validation images at 1%, the v2 search chose
each seed's probe learning rate on margins under one standard error, and the deficit of every
probe-initialised method tracked how confident that probe was (r = 0.90 over 5 seeds). A convex
problem solved to a stated tolerance has one answer for given features, labels and strength, so
the probe is no longer a source of selection noise (Kumar et al. 2022 and SimCLR's linear
evaluation fit it the same way).

    objective(W, b) = mean cross-entropy(X W^T + b, y) + l2 / 2 * ||W||^2     (b not penalised)

on standardised features (per-feature mean and standard deviation of the images it is fitted on;
`to_raw` gives the exactly equivalent head on raw features), solved in float64 by full-batch
L-BFGS with a strong-Wolfe line search until the largest absolute gradient entry is at most `tol`
(or `max_iter` iterations: the fit then says it did not converge). The objective is strictly
convex for l2 > 0, so the solution does not depend on the starting point; the grid is walked
from the strongest penalty to the weakest, each fit started at the previous solution (fewer
iterations, the same optimum to within `tol`).

Cross-validation: fold j of each class holds the class's images at positions j, j + k, ... of
the order they are given in (the labelled subset's own seeded order), so the folds are
stratified and deterministic. The chosen strength is the one with the best mean fold accuracy;
ties go to the stronger penalty (the simpler model).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.history import HistoryRow
from bench.models.hparams import ProbeSpec


@dataclass(frozen=True)
class LogRegFit:
    """One solved problem: the weights (as float32, for the head), the iterations it took, whether the
    tolerance was reached, and the largest absolute gradient entry at the end."""

    weight: torch.Tensor  # [C, d]
    bias: torch.Tensor  # [C]
    iterations: int
    converged: bool
    grad_max: float
    loss: float


@dataclass(frozen=True)
class ProbeChoice:
    """The probe a run starts from: the final fit at the chosen strength, and how it was chosen."""

    fit: LogRegFit
    l2: float
    folds: int  # folds actually used (fewer than asked when a class has fewer images; 0: no CV)
    cv_accuracy: tuple[float, ...]  # mean fold accuracy per grid value (empty without CV)
    cv_iterations: int  # L-BFGS iterations of every CV fit together (compute beside the final fit)
    note: str = ""
    grid: tuple[float, ...] = ()  # the strengths cross-validated (empty without CV)

    def history(self, train_accuracy: float) -> list[HistoryRow]:
        """The rows a record keeps of the probe: one per grid value (its CV accuracy) and the final fit
        (with its accuracy on the images it was fitted on)."""
        rows = [HistoryRow(phase="probe_cv", l2=l2, cv_accuracy=acc) for l2, acc in zip(self.grid, self.cv_accuracy, strict=True)]
        final = HistoryRow(
            phase="probe",
            l2=self.l2,
            iterations=self.fit.iterations,
            converged=self.fit.converged,
            grad_max=self.fit.grad_max,
            loss=self.fit.loss,
            step=1,
            steps=1,
            train_accuracy=train_accuracy,
            cv_iterations=self.cv_iterations,
            folds=self.folds,
            note=self.note or None,
        )
        return [*rows, final]


def _objective(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, l2: float) -> torch.Tensor:
    return F.cross_entropy(x @ w.T + b, y) + 0.5 * l2 * (w * w).sum()


def fit_logreg(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    l2: float,
    spec: ProbeSpec,
    start: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> LogRegFit:
    """Solve the objective above for features `x` [n, d] (float64, standardised: see `standardise`)
    and labels `y` [n]."""
    x64 = x.detach().to(torch.float64)
    d = x64.shape[1]
    w = torch.zeros(num_classes, d, dtype=torch.float64, device=x.device)
    b = torch.zeros(num_classes, dtype=torch.float64, device=x.device)
    if start is not None:
        w.copy_(start[0])
        b.copy_(start[1])
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=spec.max_iter,
        max_eval=spec.max_iter * 2,
        tolerance_grad=spec.tol,
        tolerance_change=0.0,  # stop on the gradient only: the tolerance the record states
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=False)
        loss = _objective(x64, y, w, b, l2)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
        loss = _objective(x64, y, w, b, l2)
        gw, gb = torch.autograd.grad(loss, [w, b])
    grad_max = float(max(gw.abs().max(), gb.abs().max()))
    state = opt.state_dict()["state"]
    iterations = int(state[0]["n_iter"]) if state else 0
    return LogRegFit(w.detach().clone(), b.detach().clone(), iterations, grad_max <= spec.tol, grad_max, float(loss.detach()))


def standardise(x: torch.Tensor, floor: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x - mean) / std per feature, in float64, with the mean and std (a constant feature: std 1).

    Why: raw backbone features differ in scale by orders of magnitude, which makes the problem
    ill-conditioned (measured: 500 L-BFGS iterations without reaching 1e-5 at 10% of CIFAR-10);
    the penalty then acts on standardised weights, as in a scaler + logistic regression pipeline,
    and `to_raw` turns the solution into the exactly equivalent head on raw features."""
    x64 = x.detach().to(torch.float64)
    mean = x64.mean(0)
    std = x64.std(0, unbiased=False)
    if floor > 0 and bool((std > 0).any()):
        std = torch.clamp(std, min=floor * float(std[std > 0].median()))  # ProbeSpec.std_floor: why
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (x64 - mean) / std, mean, std


def to_raw(fit: LogRegFit, mean: torch.Tensor, std: torch.Tensor) -> LogRegFit:
    """The same classifier on raw features: x W'^T + b' = ((x - mean) / std) W^T + b."""
    w = fit.weight / std
    b = fit.bias - w @ mean
    return LogRegFit(w, b, fit.iterations, fit.converged, fit.grad_max, fit.loss)


def stratified_folds(y: torch.Tensor, k: int) -> list[torch.Tensor]:
    """k validation index sets: class c's images at positions j, j + k, ... of their order in `y`."""
    yc = y.cpu()
    out: list[list[torch.Tensor]] = [[] for _ in range(k)]
    for c in torch.unique(yc).tolist():
        idx = torch.nonzero(yc == c).flatten()
        for j in range(k):
            out[j].append(idx[j::k])
    return [torch.sort(torch.cat(parts)).values.to(y.device) for parts in out]


def _path(x: torch.Tensor, y: torch.Tensor, num_classes: int, spec: ProbeSpec) -> list[LogRegFit]:
    """One fit per grid value, strongest penalty first, each started at the previous solution;
    returned in the grid's order."""
    order = sorted(range(len(spec.l2_grid)), key=lambda i: -spec.l2_grid[i])
    fits: dict[int, LogRegFit] = {}
    start = None
    for i in order:
        fit = fit_logreg(x, y, num_classes, spec.l2_grid[i], spec, start)
        fits[i] = fit
        start = (fit.weight, fit.bias)
    return [fits[i] for i in range(len(spec.l2_grid))]


def accuracy(fit: LogRegFit, x: torch.Tensor, y: torch.Tensor) -> float:
    logits = x.detach().to(torch.float64) @ fit.weight.T + fit.bias
    return float((logits.argmax(1) == y).double().mean())


def choose_probe(x: torch.Tensor, y: torch.Tensor, num_classes: int, spec: ProbeSpec) -> ProbeChoice:
    """Cross-validate the grid on (x, y), then fit all of it at the chosen strength."""
    counts = torch.bincount(y.cpu(), minlength=num_classes)
    smallest = int(counts[counts > 0].min()) if len(y) else 0
    k = min(spec.folds, smallest)
    if len(spec.l2_grid) == 1 or k < 2:
        l2 = spec.l2_grid[0] if len(spec.l2_grid) == 1 else spec.fallback_l2
        note = "" if len(spec.l2_grid) == 1 else f"no cross-validation: a class has {smallest} image(s); l2 = {l2:g}"
        return ProbeChoice(_fit_raw(x, y, num_classes, l2, spec), l2, 0, (), 0, note, grid=())
    folds = stratified_folds(y, k)
    scores = [0.0] * len(spec.l2_grid)
    iters = 0
    everything = torch.arange(len(y), device=y.device)
    for val in folds:
        keep = torch.ones(len(y), dtype=torch.bool, device=y.device)
        keep[val] = False
        train = everything[keep]
        xs, mean, std = standardise(x[train], spec.std_floor)
        for i, fit in enumerate(_path(xs, y[train], num_classes, spec)):
            scores[i] += accuracy(to_raw(fit, mean, std), x[val], y[val]) / k
            iters += fit.iterations
    best = max(range(len(scores)), key=lambda i: (round(scores[i], 12), spec.l2_grid[i]))
    l2 = spec.l2_grid[best]
    note = "" if k == spec.folds else f"{k} folds instead of {spec.folds}: the smallest class has {smallest} images"
    return ProbeChoice(_fit_raw(x, y, num_classes, l2, spec), l2, k, tuple(scores), iters, note, grid=tuple(spec.l2_grid))


def _fit_raw(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, spec: ProbeSpec) -> LogRegFit:
    xs, mean, std = standardise(x, spec.std_floor)
    return to_raw(fit_logreg(xs, y, num_classes, l2, spec), mean, std)


def probe_state(choice: ProbeChoice) -> dict[str, torch.Tensor]:
    """The chosen probe as a Linear(d, C) state dict (float32), what H_f loads."""
    return {"weight": choice.fit.weight.float().contiguous(), "bias": choice.fit.bias.float().contiguous()}


def log_grid(low_exp: float, high_exp: float, per_decade: int) -> tuple[float, ...]:
    """10^low_exp ... 10^high_exp with `per_decade` values a decade (the probe's fixed grid)."""
    n = round((high_exp - low_exp) * per_decade)
    return tuple(float(f"{10 ** (low_exp + i / per_decade):.6g}") for i in range(n + 1))
