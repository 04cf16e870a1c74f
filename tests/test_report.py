"""Reports (bench/report.py, `cli.py report` / `compare`): built from runs tables and Optuna journals made here.

The numbers are checked against pandas and scipy computed independently in the tests, the label-efficiency
figures against a hand-computed example, the LaTeX by pdflatex (or structurally where no TeX is installed),
and report.html in headless Chromium (every image must load).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench import report as R
from bench.registry import UserError

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
N_TEST = 200  # predictions per run: accuracies are multiples of 1/200, so the files match runs.csv exactly
HP_FIELDS = ["optimizer", "lr", "epochs", "batch_size"]

# (backbone, method, recipe) -> offset in accuracy points over finetune, per fraction (None: not run)
FRACTIONS = (0.01, 0.1, 1.0)
BASE = {0.01: 0.40, 0.1: 0.62, 1.0: 0.80}


def make_experiment(
    root: Path,
    name: str = "demo",
    *,
    rows: dict | None = None,
    seeds: tuple[int, ...] = (0, 1, 2),
    noise: float = 0.01,
    shift: float = 0.0,
    rng_seed: int = 0,
    journal: bool = True,
) -> Path:
    """Write R/E/runs.csv, predictions/ and optuna.journal the way the sweep's contract describes them.

    `rows` maps (backbone, method, recipe) -> {fraction: (offset, n_seeds)}; default: a grid that has
    a clear sft gain, a clear loss, a method at only some fractions and a single-seed cell."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = rows or {
        ("tiny", "finetune", "tuned"): {f: (0.0, 3) for f in FRACTIONS},
        ("tiny", "linear_probe", "tuned"): {0.01: (0.03, 3), 0.1: (-0.08, 3), 1.0: (-0.15, 1)},
        ("tiny", "sft", "tuned"): {0.01: (0.06, 3), 0.1: (0.005, 3), 1.0: (0.0, 3)},
        ("tiny", "sft-mlp", "tuned"): {0.01: (0.04, 3), 0.1: (0.01, 3)},
        ("tiny", "seed_sft", "seed"): {0.01: (-0.2, 3), 0.1: (-0.2, 3)},
        ("mini", "finetune", "tuned"): {f: (0.05, 3) for f in FRACTIONS},
        ("mini", "sft", "tuned"): {0.01: (0.02, 3), 0.1: (-0.01, 3), 1.0: (0.01, 3)},
    }
    exp = root / name
    (exp / "predictions").mkdir(parents=True)
    rng = np.random.default_rng(rng_seed)
    seed_noise = {s: rng.normal(0, noise) for s in range(10)}  # shared per seed: the pairing the tests exploit
    out = []
    for (b, m, r), cells in rows.items():
        for f, (offset, n) in cells.items():
            for s in seeds[:n]:
                acc = BASE[f] + offset + shift + seed_noise[s] + rng.normal(0, noise / 3)
                acc = round(min(max(acc, 0.05), 0.99) * N_TEST) / N_TEST
                rid = hashlib.sha256(f"{name}{b}{m}{r}{f}{s}".encode()).hexdigest()[:16]
                labels = np.arange(N_TEST) % 10
                preds = labels.copy()
                wrong = rng.choice(N_TEST, N_TEST - round(acc * N_TEST), replace=False)
                preds[wrong] = (labels[wrong] + 1 + rng.integers(0, 9, len(wrong))) % 10
                probs = np.full((N_TEST, 10), 0.01)
                probs[np.arange(N_TEST), preds] = 0.91
                pred_df = pd.DataFrame({"index": np.arange(N_TEST), "label": labels, "prediction": preds})
                for i, c in enumerate(CLASSES):
                    pred_df[f"prob_{c}"] = probs[:, i]
                rel = f"predictions/{rid}.csv.gz"
                with gzip.open(exp / rel, "wt") as fh:
                    pred_df.to_csv(fh, index=False)
                hp = {"optimizer": "adamw", "lr": 1e-3, "epochs": 4, "batch_size": 64}
                row = dict(experiment=name, backbone=b, method=m, recipe=r, fraction=f, seed=s, run_id=rid, resolution=32)
                row.update(pretrained=True, precision="fp32", device_type="cpu", test_accuracy=acc, macro_f1=acc - 0.01)
                row.update({f"acc_{c}": float((preds[labels == i] == i).mean()) for i, c in enumerate(CLASSES)})
                row.update(trainable_params=1000, train_seconds=5 + 100 * f * (2 if "sft" in m else 1), wall_seconds=6 + 100 * f)
                row.update(images_per_second=1000.0, peak_memory_mb=100.0, n_train=int(50000 * f), hparams=json.dumps(hp))
                row.update({f"hp_{k}": v for k, v in hp.items()})
                row.update(study="" if r == "seed" else f"{name}/{b}/{m}/{r}/{f:g}", predictions=rel, git_commit="abc123")
                row.update(
                    device="test CPU",
                    torch_version="2.x",
                    finished_at=f"2025-01-01T00:{len(out) // 60:02d}:{len(out) % 60:02d}+00:00",
                )
                out.append(row)
    pd.DataFrame(out).to_csv(exp / "runs.csv", index=False)
    (exp / "config.toml").write_text(f'name = "{name}"\nseeds = {len(seeds)}\ntrials = 4\n')
    if journal:
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(exp / "optuna.journal")))
        dists = {
            "lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
            "epochs": optuna.distributions.IntDistribution(1, 8),
        }
        for (b, m, r), cells in rows.items():
            if r == "seed":
                continue
            for f in cells:
                study = optuna.create_study(storage=storage, study_name=f"{name}/{b}/{m}/{r}/{f:g}", direction="maximize")
                for k, v in dict(experiment=name, backbone=b, method=m, recipe=r, fraction=f).items():
                    study.set_user_attr(k, v)
                n_complete = 1 if (b, m, f) == ("mini", "sft", 1.0) else 4  # one cell too thin for importances
                for t in range(n_complete + 1):
                    params = {"lr": float(10 ** rng.uniform(-4, -1)), "epochs": int(rng.integers(1, 9))}
                    val = BASE[f] + 0.05 * params["epochs"] / 8 + rng.normal(0, 0.005)
                    inter = {e: val - 0.01 * (params["epochs"] - e) for e in range(1, params["epochs"] + 1)}
                    pruned = t == n_complete
                    trial = optuna.trial.create_trial(
                        params=params,
                        distributions=dists,
                        value=None if pruned else val,
                        intermediate_values=inter,
                        state=optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.COMPLETE,
                        user_attrs={"pruned_reason": "diverged"} if pruned else {},
                    )
                    study.add_trial(trial)
    return exp


# ---------------------------------------------------------------- fixtures and parsers


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, R.ReportResult]:
    exp = make_experiment(tmp_path_factory.mktemp("results"))
    before = {p: p.read_bytes() for p in (exp / "runs.csv", exp / "optuna.journal")}
    res = R.write_report(exp)
    for p, data in before.items():
        assert p.read_bytes() == data, f"the report changed {p.name}"
    return exp, res


def runs_of(exp: Path) -> pd.DataFrame:
    return pd.read_csv(exp / "runs.csv")


MD_CELL = re.compile(r"^(\*\*)?(\d+\.\d\d) ± (–|\d+\.\d\d)(\*\*)? \(n=(\d+)\)( ↑| ↓)?$")
TEX_CELL = re.compile(
    r"^(\\textbf\{)?(\d+\.\d\d) \$\\pm\$ (--|\d+\.\d\d)(\})?(\$\^\{\\(uparrow|downarrow)\}\$)? \{\\scriptsize \((\d+)\)\}$"
)


def parse_md(text: str) -> dict:
    """{(backbone, method, recipe, column): (mean, std, n, bold, mark) or None for '—'}."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    out = {}
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        b, m, r = cells[0], cells[1].strip("`"), cells[2]
        for col, cell in zip(head[3:], cells[3:], strict=True):
            if cell == "—":
                out[(b, m, r, col)] = None
                continue
            g = MD_CELL.match(cell)
            assert g, f"unexpected Markdown cell {cell!r}"
            assert bool(g[1]) == bool(g[4])
            mark = {" ↑": "better", " ↓": "worse", None: ""}[g[6]]
            out[(b, m, r, col)] = (g[2], g[3], int(g[5]), bool(g[1]), mark)
    return out


def parse_tex(text: str) -> dict:
    body = text.split("\\midrule", 1)[1].split("\\bottomrule", 1)[0]
    head = text.split("\\toprule", 1)[1].split("\\midrule", 1)[0].strip().rstrip("\\").split("&")
    cols = [h.strip().replace("\\%", "%") for h in head]
    out, backbone = {}, None
    for ln in body.splitlines():
        ln = ln.strip()
        if not ln or ln == "\\midrule":
            continue
        cells = [c.strip() for c in ln.removesuffix("\\\\").split("&")]
        backbone = cells[0] or backbone
        m, r = cells[1].replace("\\_", "_"), cells[2]
        for col, cell in zip(cols[3:], cells[3:], strict=True):
            if cell == "---":
                out[(backbone, m, r, col)] = None
                continue
            g = TEX_CELL.match(cell)
            assert g, f"unexpected LaTeX cell {cell!r}"
            std = "–" if g[3] == "--" else g[3]
            mark = {"uparrow": "better", "downarrow": "worse", None: ""}[g[6]]
            out[(backbone, m, r, col)] = (g[2], std, int(g[7]), bool(g[1]), mark)
    return out


# ---------------------------------------------------------------- tables


def test_tables_agree_with_each_other_and_with_pandas(built: tuple[Path, R.ReportResult]) -> None:
    exp, _ = built
    md = parse_md((exp / "tables/accuracy.md").read_text())
    tex = parse_tex((exp / "tables/accuracy.tex").read_text())
    csv = pd.read_csv(exp / "tables/accuracy.csv")
    assert md == tex
    # pandas' own aggregation of the runs table, independent of bench.report
    agg = runs_of(exp).groupby(["backbone", "method", "recipe", "fraction"])["test_accuracy"].agg(["mean", "std", "count"])
    present = {(b, m, r, f"{100 * f:g}%") for b, m, r, f in agg.index}
    assert {k for k, v in md.items() if v is not None} == present
    assert len(csv) == len(present) and any(v is None for v in md.values())  # the fixture has missing cells
    for (b, m, r, f), row in agg.iterrows():
        mean, std, n, _, _ = md[(b, m, r, f"{100 * f:g}%")]
        assert abs(float(mean) - 100 * row["mean"]) <= 0.005 + 1e-9
        assert n == row["count"]
        assert (std == "–") if n == 1 else abs(float(std) - 100 * row["std"]) <= 0.005 + 1e-9
    for c in csv.itertuples(index=False):
        mean, std, n, bold, mark = md[(c.backbone, c.method, c.recipe, c.column)]
        assert (mean, n, bold) == (f"{100 * c.accuracy_mean:.2f}", c.n, c.bold)
        assert std == ("–" if c.n == 1 else f"{100 * c.accuracy_std:.2f}")
        assert mark == (c.mark if c.mark in ("better", "worse") else "")
    # bold: the best mean as shown, per backbone and column (ties all bold)
    for (b, col), grp in csv.groupby(["backbone", "column"]):
        shown = (100 * grp["accuracy_mean"]).round(2)
        assert list(grp["bold"]) == list(shown == shown.max()), (b, col)
    assert any(v is not None and v[1] == "–" for v in md.values())  # a single-seed cell is in the fixture


def holm_reference(p: list[float]) -> list[float]:
    """Holm written out differently from bench.report.holm: step through the sorted p-values."""
    idx = [i for i, v in enumerate(p) if not math.isnan(v)]
    m = len(idx)
    ranked = sorted(idx, key=lambda i: p[i])
    adj = [math.nan] * len(p)
    prev = 0.0
    for k, i in enumerate(ranked):
        prev = max(prev, min(1.0, (m - k) * p[i]))
        adj[i] = prev
    return adj


def test_holm_by_hand() -> None:
    got = R.holm([0.01, 0.04, 0.03, math.nan])
    assert np.allclose(got[:3], [0.03, 0.06, 0.06]) and math.isnan(got[3])
    assert list(R.holm([0.5, 0.9])) == [1.0, 1.0]
    assert len(R.holm([])) == 0


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # scipy, on near-constant differences
def test_significance_marks_agree_with_scipy(built: tuple[Path, R.ReportResult]) -> None:
    exp, _ = built
    runs = runs_of(exp)
    csv = pd.read_csv(exp / "tables/accuracy.csv")
    md = parse_md((exp / "tables/accuracy.md").read_text())
    tested = csv[~csv["mark"].isin(["baseline", "no baseline"])].reset_index(drop=True)
    ps = []
    for c in tested.itertuples(index=False):
        mine = runs[
            (runs.backbone == c.backbone) & (runs.method == c.method) & (runs.recipe == c.recipe) & (runs.fraction == c.fraction)
        ]
        base = runs[
            (runs.backbone == c.backbone) & (runs.method == "finetune") & (runs.recipe == "tuned") & (runs.fraction == c.fraction)
        ]
        pair = mine.merge(base, on="seed", suffixes=("", "_b"))
        assert c.n_pairs == len(pair)
        ps.append(stats.ttest_rel(pair["test_accuracy"], pair["test_accuracy_b"]).pvalue if len(pair) >= 2 else math.nan)
    adj = holm_reference(ps)
    for c, p, q in zip(tested.itertuples(index=False), ps, adj, strict=True):
        want = "untested" if math.isnan(q) else ("ns" if q >= 0.05 else ("better" if c.diff_mean > 0 else "worse"))
        assert c.mark == want, (c.backbone, c.method, c.fraction, p, q)
        assert (math.isnan(p) and math.isnan(c.p)) or math.isclose(c.p, p, rel_tol=1e-9)
        assert md[(c.backbone, c.method, c.recipe, c.column)][4] == (want if want in ("better", "worse") else "")
    assert {"better", "worse", "ns", "untested"} <= set(tested["mark"])  # every kind of mark is exercised


def test_wilcoxon_option_matches_scipy(built: tuple[Path, R.ReportResult]) -> None:
    exp, _ = built
    df, _ = R.load_runs(exp)
    tests = R.paired_tests(df, "wilcoxon")
    for t in tests[tests["n_pairs"] >= 2].itertuples(index=False):
        mine = df[(df.backbone == t.backbone) & (df.method == t.method) & (df.recipe == t.recipe) & (df.fraction == t.fraction)]
        base = df[(df.backbone == t.backbone) & (df.method == "finetune") & (df.recipe == "tuned") & (df.fraction == t.fraction)]
        pair = mine.merge(base, on="seed", suffixes=("", "_b"))
        p = stats.wilcoxon(pair["test_accuracy"], pair["test_accuracy_b"]).pvalue
        assert (math.isnan(p) and math.isnan(t.p)) or math.isclose(t.p, p)
    # with three seeds the exact two-sided Wilcoxon p is at least 0.25: nothing can be significant, and nothing is
    assert not tests["mark"].isin(["better", "worse"]).any()


# ---------------------------------------------------------------- label efficiency


def test_label_efficiency_by_hand() -> None:
    f, a = [0.01, 0.1, 1.0], [0.60, 0.76, 0.82]
    # 90% of 0.80 = 0.72 lies between 0.60 (1%) and 0.76 (10%): log10 f = -2 + 0.12/0.16 = -1.25
    v, bound = R.fraction_to_reach(f, a, 0.9 * 0.80)
    assert bound == "=" and math.isclose(v, 10**-1.25) and math.isclose(v, 0.0562341, rel_tol=1e-6)
    assert R.fraction_to_reach(f, a, 0.95 * 0.80) == (0.1, "=")  # 0.76 exactly at 10%
    assert R.fraction_to_reach(f, a, 0.5) == (0.01, "<=")  # reached below the range: no extrapolation
    assert R.fraction_to_reach(f, a, 0.9) == (1.0, ">")  # never reached
    v, _ = R.fraction_to_reach(f, [0.5, 0.8, 0.7], 0.75)  # not monotone: the first crossing counts
    assert math.isclose(v, 10 ** (-2 + 0.25 / 0.3))
    # AUC: trapezoids (0.60+0.76)/2 + (0.76+0.82)/2 over two decades, divided by 2 decades
    assert math.isclose(R.auc_log_fraction(f, a), (0.68 + 0.79) / 2)
    assert math.isnan(R.auc_log_fraction([0.1], [0.5]))
    assert R.fmt_needed(10**-1.25, "=") == "5.623%" and R.fmt_needed(0.01, "<=") == "≤1%" and R.fmt_needed(1.0, ">") == ">100%"


def test_label_efficiency_references() -> None:
    """Full-label finetune when present; else finetune's largest fraction, said so; no finetune: n/a."""
    rows = []
    for b, m, f, acc in [
        ("full", "finetune", 0.01, 0.60), ("full", "finetune", 1.0, 0.80), ("full", "sft", 0.01, 0.60),
        ("full", "sft", 0.1, 0.76), ("full", "sft", 1.0, 0.82), ("part", "finetune", 0.01, 0.5), ("part", "finetune", 0.1, 0.7),
        ("part", "sft", 0.01, 0.66), ("none", "sft", 0.01, 0.5), ("none", "sft", 0.1, 0.6),
    ]:  # fmt: skip
        for s in range(2):
            rows.append(dict(backbone=b, method=m, recipe="tuned", fraction=f, seed=s, test_accuracy=acc))
    df = pd.DataFrame(rows)
    eff = R.label_efficiency(df, R.summarise(df)).set_index(["backbone", "method"])
    e = eff.loc[("full", "sft")]
    assert e["full_label"] and e["reference"] == "finetune/tuned @ 100%" and math.isclose(e["frac90"], 10**-1.25)
    assert math.isclose(e["auc"], 0.735)
    e = eff.loc[("part", "sft")]
    assert not e["full_label"] and e["reference"] == "finetune/tuned @ 10%" and "no full-label" in e["note"]
    assert e["frac90"] == 0.01 and e["frac90_bound"] == "<=" and math.isnan(e["auc"])  # 0.66 >= 0.9 * 0.7; one fraction
    e = eff.loc[("none", "sft")]
    assert e["reference"] == "n/a" and e["frac90_bound"] == "n/a" and "no finetune" in e["note"]


def test_efficiency_table_formats_agree(built: tuple[Path, R.ReportResult]) -> None:
    exp, _ = built
    csv = pd.read_csv(exp / "tables/efficiency.csv", keep_default_na=False, na_values=[""])
    md = (exp / "tables/efficiency.md").read_text()
    tex = (exp / "tables/efficiency.tex").read_text()
    for e in csv.itertuples(index=False):
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| {e.backbone} | `{e.method}` | {e.recipe} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[4] == R.fmt_needed(e.frac90, e.frac90_bound) and cells[5] == R.fmt_needed(e.frac95, e.frac95_bound)
        assert cells[6] == ("n/a" if math.isnan(e.auc) else f"{100 * e.auc:.2f}" + ("*" if e.auc_partial else ""))
        assert cells[6].replace("*", "") in tex
    # tiny/sft-mlp lacks 100%: partial AUC range, marked
    assert csv.set_index(["backbone", "method"]).loc[("tiny", "sft-mlp"), "auc_partial"]


# ---------------------------------------------------------------- LaTeX


def latex_problems(tex: str) -> list[str]:
    """Structural check for when no LaTeX engine is installed."""
    problems = []
    lines = [ln for ln in tex.splitlines() if not ln.lstrip().startswith("%")]
    text = "\n".join(lines)
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", text):
        if kind == "begin":
            stack.append(env)
        elif not stack or stack.pop() != env:
            problems.append(f"unbalanced \\end{{{env}}}")
    problems += [f"unclosed \\begin{{{e}}}" for e in stack]
    pos = [text.find(r) for r in ("\\toprule", "\\midrule", "\\bottomrule")]
    if -1 in pos or pos != sorted(pos):
        problems.append("booktabs rules missing or out of order")
    if re.search(r"\\hline|\\vline|\|", text):
        problems.append("vertical or non-booktabs rules")
    spec = re.search(r"\\begin\{tabular\}\{([lrc]+)\}", text)
    if not spec:
        problems.append("no tabular column spec")
    for ln in lines:
        if re.search(r"(?<!\\)[_#%]", ln):
            problems.append(f"unescaped special character: {ln[:60]}")
        if len(re.findall(r"(?<!\\)\$", ln)) % 2:
            problems.append(f"odd number of $: {ln[:60]}")
        if ln.count("{") - ln.count("\\{") != ln.count("}") - ln.count("\\}"):
            problems.append(f"unbalanced braces: {ln[:60]}")
        if spec and ln.rstrip().endswith("\\\\") and len(re.findall(r"(?<!\\)&", ln)) != len(spec[1]) - 1:
            problems.append(f"wrong number of columns: {ln[:60]}")
        if any(ord(ch) > 127 for ch in ln):
            problems.append(f"non-ASCII character (needs a package): {ln[:60]}")
    return problems


def test_latex_compiles_or_is_well_formed(built: tuple[Path, R.ReportResult], tmp_path: Path) -> None:
    exp, _ = built
    tables = [(exp / "tables" / f"{n}.tex").read_text() for n in ("accuracy", "efficiency")]
    for tex in tables:
        assert latex_problems(tex) == [], latex_problems(tex)
    # the checker itself catches what it is there for
    assert latex_problems(tables[0].replace("linear\\_probe", "linear_probe", 1))
    assert latex_problems(tables[0].replace("\\bottomrule\n", "", 1))
    assert latex_problems(tables[0].replace("\\end{tabular}", "", 1))
    engine = shutil.which("pdflatex")
    if engine is None:
        return  # structure checked above; CI does not install TeX Live (too slow)
    doc = tmp_path / "doc.tex"
    doc.write_text(
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n" + "\n".join(tables) + "\\end{document}\n"
    )
    r = subprocess.run(
        [engine, "-interaction=nonstopmode", "-halt-on-error", doc.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and (tmp_path / "doc.pdf").is_file(), r.stdout[-2000:]


# ---------------------------------------------------------------- HTML in a real browser


CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var pre = document.createElement('pre'); pre.id = 'imgcheck';
  pre.textContent = JSON.stringify({n: imgs.length, ok: ok, h1: (document.querySelector('h1') || {}).textContent || ''});
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def browser_check(page: str, tmp_path: Path, name: str) -> dict:
    """Load `page` (with the check script added) in headless Chromium; return what the script saw."""
    path = tmp_path / name
    path.write_text(page.replace("</body>", CHECK_SCRIPT + "</body>"))
    cmd = [chromium(), "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={tmp_path / f'profile-{name}'}"]
    cmd += ["--virtual-time-budget=10000", "--dump-dom", path.as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="imgcheck">(.*?)</pre>', r.stdout, re.S)
    assert found, f"the check script did not run (rc {r.returncode}): {r.stderr[-1500:]}"
    import html as html_mod

    return json.loads(html_mod.unescape(found[1]))


@pytest.mark.skipif(chromium() is None, reason="no chromium binary (CI installs Debian's chromium in .ci/run)")
def test_html_renders_in_headless_chromium(built: tuple[Path, R.ReportResult], tmp_path: Path) -> None:
    exp, res = built
    page = (exp / "report.html").read_text()
    # self-contained: no external resource, images embedded
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page) and "<link" not in page and "<script" not in page
    n_figs = len(list((exp / "plots").glob("*.png")))
    assert page.count('src="data:image/png;base64,') == n_figs >= 9
    seen = browser_check(page, tmp_path, "report.html")
    assert seen == {"n": n_figs, "ok": n_figs, "h1": "sft-bench report: demo"}
    # the harness can fail: a page with a broken image is caught
    broken = page.replace('src="data:image/png;base64,', 'src="data:image/png;base64,AAAA', 1)
    assert browser_check(broken, tmp_path, "broken.html")["ok"] == n_figs - 1
    for heading in ("Summary", "Protocol", "Provenance", "Accuracy", "Label efficiency", "Plots"):
        assert f"<h2>{heading}</h2>" in page
    assert "sft vs finetune</b>: " in page and "total compute" in page


def test_report_contents_and_files(built: tuple[Path, R.ReportResult]) -> None:
    exp, res = built
    names = {p.name for p in (exp / "plots").iterdir()}
    for stem in (
        "accuracy_vs_fraction",
        "gain_over_finetune",
        "accuracy_vs_compute",
        "optuna_history_tiny",
        "optuna_importance_mini",
        "confusion_tiny",
    ):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names
        assert (exp / "plots" / f"{stem}.pdf").read_bytes().startswith(b"%PDF")
    assert any("fewer than 2 complete trials (1)" in n for n in res.notes)  # mini/sft/1.0 has one complete trial
    wtl = pd.read_csv(exp / "tables/win_tie_loss.csv").set_index("method")
    sig = pd.read_csv(exp / "tables/significance.csv")
    s = sig[sig["method"] == "sft"]
    assert wtl.loc["sft", ["win", "tie", "loss", "untested"]].tolist() == [
        int((s["mark"] == k).sum()) for k in ("better", "ns", "worse", "untested")
    ]
    assert res.seconds < 90, "a report of ~60 runs should take seconds"


# ---------------------------------------------------------------- edge cases


def test_edge_cases_are_reported_honestly(tmp_path: Path) -> None:
    rows = {
        ("solo", "linear_probe", "tuned"): {0.01: (0.0, 3), 0.1: (0.0, 1)},  # no finetune for this backbone at all
        ("solo", "sft", "tuned"): {0.01: (0.02, 3)},
        ("nofull", "finetune", "tuned"): {0.01: (0.0, 3), 0.1: (0.0, 3)},  # no fraction 1.0
        ("nofull", "sft", "tuned"): {0.01: (0.05, 2), 0.1: (0.02, 1)},  # 2 pairs, then 1
    }
    exp = make_experiment(tmp_path, "edge", rows=rows, journal=False)
    first = next((exp / "predictions").iterdir())
    first.unlink()
    (exp / "plots").mkdir()
    stale = exp / "plots" / "optuna_history_gone.png"
    stale.write_bytes(b"old")
    res = R.write_report(exp)
    assert not stale.exists() and stale in res.removed
    notes = " ".join(res.notes)
    assert "No Optuna storage" in notes and "solo: no finetune runs" in notes and "is missing" in notes
    assert not list((exp / "plots").glob("optuna_*"))
    csv = pd.read_csv(exp / "tables/accuracy.csv").set_index(["backbone", "method", "fraction"])
    assert set(csv.loc["solo", "mark"]) == {"no baseline"}
    assert csv.loc[("nofull", "sft", 0.01), "n_pairs"] == 2 and csv.loc[("nofull", "sft", 0.01), "mark"] != "untested"
    assert csv.loc[("nofull", "sft", 0.1), "mark"] == "untested"
    md = (exp / "tables/accuracy.md").read_text()
    assert re.search(r"± –(\*\*)? \(n=1\)", md)
    eff = pd.read_csv(exp / "tables/efficiency.csv", keep_default_na=False, na_values=[""]).set_index(["backbone", "method"])
    assert eff.loc[("nofull", "sft"), "reference"] == "finetune/tuned @ 10%" and not eff.loc[("nofull", "sft"), "full_label"]
    assert eff.loc[("solo", "sft"), "reference"] == "n/a"
    assert "[not full-label]" in (exp / "tables/efficiency.md").read_text()
    assert (exp / "report.html").is_file()


def test_bad_runs_tables_are_one_line_errors(tmp_path: Path) -> None:
    exp = tmp_path / "bad"
    exp.mkdir()
    with pytest.raises(UserError, match="no runs table"):
        R.load_runs(exp)
    (exp / "runs.csv").write_text("backbone,method\ntiny,sft\n")
    with pytest.raises(UserError, match="lacks column"):
        R.load_runs(exp)
    (exp / "runs.csv").write_text("backbone,method,recipe,fraction,seed,test_accuracy\n")
    with pytest.raises(UserError, match="no rows"):
        R.load_runs(exp)
    (exp / "runs.csv").write_text("backbone,method,recipe,fraction,seed,test_accuracy\ntiny,sft,tuned,0.1,0,87\n")
    with pytest.raises(UserError, match="fraction in"):
        R.load_runs(exp)
    (exp / "runs.csv").write_text("backbone,method,recipe,fraction,seed,test_accuracy\ntiny,sft,tuned,ten,0,0.5\n")
    with pytest.raises(UserError, match="non-numeric fraction"):
        R.load_runs(exp)
    with pytest.raises(UserError, match="test 'z'"):
        R.write_report(exp, test="z")
    assert sorted(p.name for p in exp.iterdir()) == ["runs.csv"]  # nothing half-written
    # duplicates: the latest row wins, and it is said
    (exp / "runs.csv").write_text(
        "backbone,method,recipe,fraction,seed,test_accuracy,finished_at\n"
        "tiny,sft,tuned,0.1,0,0.6,2025-01-02\ntiny,sft,tuned,0.1,0,0.5,2025-01-01\n"
    )
    df, notes = R.load_runs(exp)
    assert df["test_accuracy"].tolist() == [0.6] and "latest" in notes[0]


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_cli_bad_input_exit_2_one_line(tmp_path: Path) -> None:
    for args in (
        ["report", "--results-dir", str(tmp_path / "nowhere")],
        ["report", "--results-dir", str(tmp_path), "--experiment", "nope"],
        ["compare", "x", "y", "--results-dir", str(tmp_path)],
    ):
        r = cli(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error:")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "runs.csv").write_text("backbone,method\n")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "runs.csv").write_text("x\n")
    r = cli("report", "--results-dir", str(tmp_path))
    assert r.returncode == 2 and "several experiments (a, b)" in r.stderr
    r = cli("report", "--results-dir", str(tmp_path), "--experiment", "a", "--test", "wilcoxon")
    assert r.returncode == 2 and "lacks column" in r.stderr
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["runs.csv"]


# ---------------------------------------------------------------- compare


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")
def test_compare_two_experiments(tmp_path: Path) -> None:
    a = make_experiment(tmp_path / "results", "a", journal=False)
    b = tmp_path / "results" / "b"
    b.mkdir()
    runs = runs_of(a)
    rng = np.random.default_rng(1)
    sft = runs["method"] == "sft"
    runs.loc[sft, "test_accuracy"] += 0.03 + rng.normal(0, 0.004, int(sft.sum()))  # B: sft 3 points better, others equal
    runs = runs[~((runs["method"] == "sft-mlp") & (runs["fraction"] == 0.1))]  # a cell only A has
    runs.to_csv(b / "runs.csv", index=False)
    res = R.compare(a, b)
    fr = res.frame.set_index(["backbone", "method", "recipe", "fraction"])
    ra, rb = runs_of(a), runs_of(b)
    ps = []
    for k in fr.index:
        sel = (ra.backbone == k[0]) & (ra.method == k[1]) & (ra.recipe == k[2]) & (ra.fraction == k[3])
        selb = (rb.backbone == k[0]) & (rb.method == k[1]) & (rb.recipe == k[2]) & (rb.fraction == k[3])
        pair = ra[sel].merge(rb[selb], on="seed", suffixes=("_a", "_b"))
        assert math.isclose(fr.loc[k, "diff"], rb[selb].test_accuracy.mean() - ra[sel].test_accuracy.mean(), abs_tol=1e-12)
        p = stats.ttest_rel(pair["test_accuracy_b"], pair["test_accuracy_a"]).pvalue if len(pair) >= 2 else math.nan
        ps.append(p)
        assert (math.isnan(p) and math.isnan(fr.loc[k, "p"])) or math.isclose(p, fr.loc[k, "p"])
    adj = holm_reference(ps)
    assert np.allclose(fr["p_holm"].to_numpy(), adj, equal_nan=True)
    assert set(fr.loc[fr.index.get_level_values("method") == "sft", "mark"]) == {"better"}
    assert set(fr.loc[fr.index.get_level_values("method") != "sft", "mark"]) == {"untested"}  # identical runs
    assert res.only_a == ["tiny/sft-mlp/tuned@10%"] and res.only_b == []
    out = tmp_path / "cmp.md"
    r = cli("compare", "a", "b", "--results-dir", str(tmp_path / "results"), "--output", str(out))
    assert r.returncode == 0, r.stderr
    md = out.read_text()
    assert "B − A" in r.stdout and "| tiny | sft | tuned | 1% |" in md and "Only in A (1): tiny/sft-mlp/tuned@10%" in md
    sft1 = fr.loc[("tiny", "sft", "tuned", 0.01)]
    assert f"{100 * sft1['diff']:+.2f} ↑" in md
    # A and B as folders, as names, or as results folders holding the same experiment
    results = tmp_path / "results"
    assert R.resolve_experiment(str(a), tmp_path / "elsewhere") == a
    assert R.resolve_experiment("b", results) == results / "b"
    (tmp_path / "other" / "a").mkdir(parents=True)
    shutil.copy(b / "runs.csv", tmp_path / "other" / "a" / "runs.csv")
    assert R.resolve_experiment(str(tmp_path / "other"), results, "a") == tmp_path / "other" / "a"
    assert R.resolve_experiment(str(tmp_path / "other"), results) == tmp_path / "other" / "a"  # its only experiment
    with pytest.raises(UserError, match="did you mean 'a'"):
        R.resolve_experiment("aa", results)
