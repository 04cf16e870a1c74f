"""The committed 64 px study, checked from its files.

Why: the README's 64 px answer stands on `results/examples/study64`; these are what issue 17 asks of
that folder, checked from what it records rather than from what we remember: every cell complete with
8 paired seeds, 64 px (the article's recipe at its 32 px), protocol v3, the one frozen code commit
(tag study64-v3) it ran at, the data copy named.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

EXAMPLES = Path(__file__).resolve().parent.parent / "results" / "examples"
STUDY = EXAMPLES / "study64"
FROZEN_COMMIT = "6ac52c8dcee2b26341563b665bc4525cebe60979"  # tag study64-v3


def _runs(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "runs.csv")


def test_the_64px_study_is_complete_and_says_what_produced_it() -> None:
    runs = _runs(STUDY)
    cells = runs.groupby(["backbone", "method", "recipe", "fraction"])["seed"].apply(lambda s: sorted(s))
    assert len(cells) == 18, cells.index.tolist()
    assert all(seeds == list(range(8)) for seeds in cells), cells[[s != list(range(8)) for s in cells]]
    article = runs["recipe"] == "article"  # the article's own model runs at its 32 px (methods.md)
    assert set(runs.loc[~article, "resolution"]) == {64} and set(runs.loc[article, "resolution"]) == {32}
    assert set(runs["protocol"]) == {3}
    assert set(runs["git_commit"]) == {FROZEN_COMMIT}
    assert set(runs["data_copy"]) == {"derived"}
    assert not runs["run_id"].duplicated().any()
