"""Reports: `runs.csv` + the Optuna storage -> tables, plots, label efficiency and `report.html`;
and `compare(a, b)` for two experiments side by side.

Why this module only reads: a report has to be rebuildable at any time from the two things a
sweep leaves behind (the runs table and the Optuna storage), so it never writes to them, never
reruns anything, and computes every number and every figure in memory before it writes a single
file (bad input leaves nothing half-written, and a failed report leaves the last good one).

Statistics, stated once so every output says the same thing:
- a cell is (backbone, recipe, method, fraction); its value is the mean +- sample std (ddof=1)
  of `test_accuracy` over seeds, with n; n=1 has no std ("–") and is never tested;
- baselines (protocol v2): each method is compared with `finetune` of the same backbone at the
  same fraction, and every `sft*` method (not `seed_sft`) also with `linear_probe` and `lp_ft`,
  the two simpler methods it contains, where the experiment has them; paired by seed (seed s =
  the same labelled subset for every method), with a paired t-test (default) or Wilcoxon's
  signed-rank test; the p-values of all these comparisons form one family, Holm-corrected together;
  a mark needs at least 2 paired seeds;
- a baseline is the baseline method of the same recipe when it exists, else of another recipe of
  the same backbone (`tuned` first); significance.csv names the one used;
- "not significantly worse than the best": in each (backbone, fraction) column every cell is also
  tested against the cell with the best mean (same test, paired, two-sided); these comparisons are
  a second Holm family, and a cell where it does not reject gets a dagger. Not rejecting is not
  evidence of equality: with few seeds the test has little power, and the notes say so;
- Wilcoxon is refused (one line, nothing written) where the largest number of paired seeds n
  cannot reach alpha at all: its smallest two-sided exact p is 2/2^n.

Protocol labels: results written before protocol version 2 (no `protocol` column) are read as
protocol v1 and labelled so; v2 results say whether the search ran per seed or was shared, and
whether any run's step budget fell below the protocol's floor (`min_steps`, default 500).

The package, one idea per module, in the order a report runs:
- schema.py: the runs table's columns, a cell's key, the baselines, the display order;
- load.py: experiment folders, runs.csv (checked), the Optuna studies; protocol.py: which protocol ran;
  grid.py: config.toml's grid against runs.csv (an unfinished grid says what it lacks, at the top of everything);
- stats.py: the statistics stated above, as DataFrames (tests, Holm, win/tie/loss, label efficiency);
- tables.py: one format-free model per table (compute.py: the compute table);
  render.py: one renderer per format (Markdown, LaTeX, HTML, CSV);
- figure.py: a figure as PNG and PDF bytes; plots.py: one function per figure (search_plots.py: the Optuna
  search's three); origin.py: provenance; html.py: report.html;
- writer.py: `write_report` (and `write`, which finds the experiment first), which computes everything in memory,
  then writes a staging folder and moves it into place;
- compare.py: `compare(a, b)`; text.py: the formatting every output shares.
This module re-exports the names callers use (`from bench.report import write_report`, `R.holm`, ...).
"""

from __future__ import annotations

# `compare` is both a submodule and its function: importing bench/report/compare.py sets the package attribute
# to the module, and the name imported from it then replaces that with the function callers expect.
from bench.report.compare import CompareResult, compare
from bench.report.compute import COMPUTE_FIELDS, compute_table
from bench.report.figure import PNG_DPI, Figure, drawn_texts, text_problems
from bench.report.grid import Completeness, completeness, grid_cells
from bench.report.html import CSS, render_html
from bench.report.load import (
    SEED_PART,
    StudyInfo,
    experiment_name,
    experiments_in,
    find_experiment_dir,
    load_runs,
    load_studies,
    resolve_experiment,
    search_seconds,
    storage_location,
    thread_notes,
)
from bench.report.origin import provenance
from bench.report.plots import log_ticks, make_plots
from bench.report.protocol import DEFAULT_MIN_STEPS, SEARCH_MODE_TEXT, ProtocolInfo, protocol_info
from bench.report.render import TableModel, to_csv, to_html, to_latex, to_markdown
from bench.report.schema import (
    BASELINE,
    BASELINE_ORDER,
    EXTRA_BASELINES,
    JOURNAL,
    KEY,
    METHOD_ORDER,
    METRIC,
    RECIPE_ORDER,
    REQUIRED,
    RUNS_CSV,
    TEST_NAMES,
    TESTS,
    baseline_recipe,
    baselines_of,
    is_sft,
    row_sort_key,
)
from bench.report.stats import (
    BEST_COLUMNS,
    EFFICIENCY_LEVELS,
    TEST_COLUMNS,
    WTL_COLUMNS,
    auc_log_fraction,
    best_tests,
    check_wilcoxon_reachable,
    fraction_to_reach,
    holm,
    label_efficiency,
    largest_pairing,
    mark_of,
    paired_tests,
    rank_sum_floor,
    signed_rank_floor,
    summarise,
    t_interval,
    wilcoxon_min_seeds,
    win_tie_loss,
)
from bench.report.tables import Tables, build_tables
from bench.report.text import (
    DAGGER,
    DOWN,
    TEX_UNICODE,
    UP,
    fmt_needed,
    frac_estimate,
    frac_label,
    frac_range,
    pct,
    points,
    slug,
    tex_escape,
    tex_note,
)
from bench.report.writer import ReportResult, atomic_write_text, write, write_report

__all__ = [
    "BASELINE",
    "BASELINE_ORDER",
    "BEST_COLUMNS",
    "COMPUTE_FIELDS",
    "CSS",
    "CompareResult",
    "Completeness",
    "DAGGER",
    "DEFAULT_MIN_STEPS",
    "DOWN",
    "EFFICIENCY_LEVELS",
    "EXTRA_BASELINES",
    "Figure",
    "JOURNAL",
    "KEY",
    "METHOD_ORDER",
    "METRIC",
    "PNG_DPI",
    "ProtocolInfo",
    "RECIPE_ORDER",
    "REQUIRED",
    "RUNS_CSV",
    "ReportResult",
    "SEARCH_MODE_TEXT",
    "SEED_PART",
    "StudyInfo",
    "TESTS",
    "TEST_COLUMNS",
    "TEST_NAMES",
    "TEX_UNICODE",
    "TableModel",
    "Tables",
    "UP",
    "WTL_COLUMNS",
    "atomic_write_text",
    "auc_log_fraction",
    "baseline_recipe",
    "baselines_of",
    "best_tests",
    "build_tables",
    "check_wilcoxon_reachable",
    "compare",
    "completeness",
    "compute_table",
    "experiment_name",
    "experiments_in",
    "find_experiment_dir",
    "fmt_needed",
    "frac_estimate",
    "frac_label",
    "frac_range",
    "drawn_texts",
    "fraction_to_reach",
    "grid_cells",
    "holm",
    "is_sft",
    "label_efficiency",
    "largest_pairing",
    "load_runs",
    "load_studies",
    "log_ticks",
    "make_plots",
    "mark_of",
    "paired_tests",
    "pct",
    "points",
    "protocol_info",
    "provenance",
    "rank_sum_floor",
    "render_html",
    "resolve_experiment",
    "row_sort_key",
    "search_seconds",
    "signed_rank_floor",
    "slug",
    "storage_location",
    "summarise",
    "t_interval",
    "tex_escape",
    "tex_note",
    "text_problems",
    "thread_notes",
    "to_csv",
    "to_html",
    "to_latex",
    "to_markdown",
    "wilcoxon_min_seeds",
    "win_tie_loss",
    "write",
    "write_report",
]
