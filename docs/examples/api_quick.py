"""The Python API in a notebook-style script (docs/python-api.md): a tiny grid, its rows, then its report.

    python docs/examples/api_quick.py            # from the repository root; CIFAR-10 in ./data (downloaded if missing)

Each `# %%` block is a notebook cell (VS Code and Jupytext open it as a notebook). The environment moves the
folders and sets the step budget; tests/test_python_api.py runs this file exactly as written, on synthetic
data: SFT_BENCH_EXAMPLE_RESULTS (default results), SFT_BENCH_EXAMPLE_DATA (default data),
SFT_BENCH_EXAMPLE_STEPS (default 20).
"""

# %% The grid: docs/examples/tiny.toml, with the step budget from the environment
import csv
import os
from pathlib import Path

import optuna

import bench.report
import bench.sweep

# Optuna logs every trial at INFO level; the CLI quiets it, a library does not touch a notebook's logging
optuna.logging.set_verbosity(optuna.logging.WARNING)

results = os.environ.get("SFT_BENCH_EXAMPLE_RESULTS", "results")
data = os.environ.get("SFT_BENCH_EXAMPLE_DATA", "data")
steps = int(os.environ.get("SFT_BENCH_EXAMPLE_STEPS", "20"))

# %% Run it: the same checks, rows and files as `python cli.py sweep --config docs/examples/tiny.toml`
seen = []
result = bench.sweep.run(
    Path("docs/examples/tiny.toml"),  # a Path is a file; text is a name from experiments/ ("quick")
    results_dir=results,
    data_dir=data,
    steps=steps,  # any CLI flag is a keyword: fractions="0.01,0.1", methods="finetune", seeds=3, ...
    threads=1,
    # report=bench.report.write_report would write the report at the end, as the CLI does; here it is written
    # below, with bench.report.write
    on_progress=seen.append,  # each new status of the grid (bench.records.GridStatus)
)
done, total = result.status.runs
print(f"exit code {result.code}: {done} of {total} final runs; {len(seen)} progress updates; rows in {result.runs_csv}")

# %% The rows: one per final run (runs.csv), the same columns as the CLI writes
with open(result.runs_csv, newline="") as f:
    for row in csv.DictReader(f):
        print(row["method"], row["fraction"], row["seed"], row["test_accuracy"])

# %% The report: tables, plots and report.html, as `python cli.py report` writes them
report = bench.report.write(results, result.experiment.name)
print(f"{len(report.files)} files; open {report.html}")
