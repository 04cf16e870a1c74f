"""The ratios perf's issue sets targets for, per case, from the measured rows (by their typed identity);
where the comparison was also measured in alternation (interleave.py), the alternating median is the
figure, with its range, and a ratio whose range is too wide is flagged instead of judged."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from bench.perf.interleave import Interleaved
from bench.perf.rows import PerfRow

# Targets of the speed issue (ratios, so that a noisy shared machine can still judge them).
TARGETS = {"b/a": 0.9, "b/c cpu": 1.5, "b/c cuda": 3.0, "d": 10.0, "e/a": 0.9}
SUMMARY_COLUMNS = ("case", "metric", "value", "low", "high", "rounds", "target", "met", "detail")


@dataclass(frozen=True)
class Ratio:
    """One perf_summary.csv row: a ratio, its range over alternating rounds (when measured so), its
    target (if the issue sets one) and the verdict: yes, no, untrusted (range too wide) or blank."""

    case: str
    metric: str
    value: float | None
    target: float | None
    met: str
    detail: str
    low: float | None = None
    high: float | None = None
    rounds: int | None = None

    def as_dict(self) -> dict:
        return {k: asdict(self)[k] for k in SUMMARY_COLUMNS}


def _ips(r: PerfRow) -> float:
    return r.images_per_second


def _ratio(case: str, metric: str, value: float | None, target: float | None, detail: str) -> Ratio:
    """A ratio measured once (sequentially): its target (if the issue sets one) and whether it is met."""
    met = "" if target is None or value is None else ("yes" if value >= target else "no")
    return Ratio(case, metric, None if value is None else round(value, 3), target, met, detail)


def _alternating(r: Ratio, m: Interleaved) -> Ratio:
    """`r` with the alternating measurement's median as its value; untrusted when its range is too wide."""
    if not m.trusted:
        met = "untrusted"
    elif r.target is None:
        met = ""
    else:
        met = "yes" if m.median >= r.target else "no"
    value, low, high = (round(v, 3) for v in (m.median, m.low, m.high))
    return replace(r, value=value, low=low, high=high, rounds=len(m.ratios), met=met, detail=m.describe())


class CaseRows:
    """One case's measurements by their identity (path and setting), never by their notes."""

    def __init__(self, rows: list[PerfRow]) -> None:
        self.by: dict[tuple[str, str], list[PerfRow]] = {}
        for r in rows:
            self.by.setdefault((r.id.path, r.id.setting), []).append(r)

    def all(self, path: str, setting: str = "suite") -> list[PerfRow]:
        """Every row of a path (in the order measured)."""
        return self.by.get((path, setting), [])

    def first(self, path: str, setting: str = "suite") -> PerfRow | None:
        """The first row of a path, or None when it was not measured."""
        return next(iter(self.all(path, setting)), None)


def _same_config(rows: list[PerfRow], like: PerfRow) -> list[PerfRow]:
    return [r for r in rows if (r.id.precision, r.id.memory_format) == (like.id.precision, like.id.memory_format)]


def _training_ratios(case: str, got: CaseRows, device_type: str) -> list[Ratio]:
    """b/a (the suite's loop against the ceiling), b/c (against the article's pipeline), c/a."""
    a_train = got.all("a_train")
    a_best = max(a_train, key=_ips, default=None)
    b, c = got.first("b_suite_train"), got.first("c_article_train")
    out = []
    if a_best and b:
        detail = f"suite {b.describe()}; ceiling {a_best.describe()}"
        out.append(_ratio(case, "b/a", _ips(b) / _ips(a_best), TARGETS["b/a"], detail))
        same = _same_config(a_train, b)
        if same:
            detail = f"ceiling {same[0].describe()}: the loop's own overhead"
            out.append(_ratio(case, "b/a same config", _ips(b) / _ips(same[0]), None, detail))
    b_alt = got.first("b_suite_train_alt")
    if a_best and b_alt:
        out.append(_ratio(case, "b/a at ceiling precision", _ips(b_alt) / _ips(a_best), None, f"suite {b_alt.describe()}"))
    if b and c:
        target = TARGETS["b/c cuda" if device_type == "cuda" else "b/c cpu"]
        out.append(_ratio(case, "b/c", _ips(b) / _ips(c), target, f"suite {b.describe()}; article {c.describe()}"))
    art = got.first("a_train", setting="article")
    if art and c:
        detail = f"the article's loop over its ceiling {art.describe()}"
        out.append(_ratio(case, "c/a article config", _ips(c) / _ips(art), None, detail))
    return out


def _frozen_ratios(case: str, got: CaseRows) -> list[Ratio]:
    """d: a frozen trial recomputing the backbone over the same trial with the caches (warm and cold)."""
    out = []
    for method in ("linear_probe", "sft-mlp-frozen"):  # linear_probe: perf folders written under protocol v2
        off = got.first(f"d_{method}_recompute")
        for label in ("cached_warm", "cached_cold"):
            cached = got.first(f"d_{method}_{label}")
            if off and cached and cached.seconds > 0:
                target = TARGETS["d"] if label == "cached_warm" else None
                detail = f"trial {off.seconds:.2f} s recomputing vs {cached.seconds:.3f} s cached ({off.note})"
                out.append(_ratio(case, f"d {method} {label.split('_')[1]}", off.seconds / cached.seconds, target, detail))
    return out


def _eval_ratios(case: str, got: CaseRows) -> list[Ratio]:
    """e/a: evaluation against the forward-only ceiling (the fastest, and in the same configuration)."""
    e, forward = got.first("e_suite_eval"), got.all("a_forward")
    a_fwd_best = max(forward, key=_ips, default=None)
    if not (e and a_fwd_best):
        return []
    detail = f"eval {e.describe()}; forward ceiling {a_fwd_best.describe()}"
    out = [_ratio(case, "e/a", _ips(e) / _ips(a_fwd_best), TARGETS["e/a"], detail)]
    same = _same_config(forward, e)
    if same:
        ref = max(same, key=_ips)
        out.append(_ratio(case, "e/a same config", _ips(e) / _ips(ref), None, f"forward ceiling {ref.describe()}"))
    return out


def summarise_case(case: str, rows: list[PerfRow], device_type: str, alternating: list[Interleaved] | None = None) -> list[Ratio]:
    """The ratios of one case's rows (perf_summary.csv rows); a metric measured in alternation too
    takes that measurement (the sequential figure stays in perf.csv's rows)."""
    got = CaseRows(rows)
    out = _training_ratios(case, got, device_type) + _frozen_ratios(case, got) + _eval_ratios(case, got)
    by_metric = {m.metric: m for m in alternating or [] if m.case == case}
    return [_alternating(r, by_metric[r.metric]) if r.metric in by_metric else r for r in out]


def summarise(rows: list[PerfRow], device_type: str, alternating: list[Interleaved] | None = None) -> list[Ratio]:
    """The ratios the issue sets targets for, per case."""
    out = []
    for case in dict.fromkeys(r.id.case.name for r in rows):
        out += summarise_case(case, [r for r in rows if r.id.case.name == case], device_type, alternating)
    return out
