"""The README's answer is copied from the reports' generated summaries, never written by hand.

Why: protocol v2's README said "within 1 point" where the table said 1.9, "4 of 5" where it was 5 of
5; issue 17 asks that the answer be copied from the verdicts. Every figure of the README's answer
paragraph about a committed study must stand in that study's `tables/summary.md`, and every docs/
page the README links must exist.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _answer(readme: str) -> str:
    start = readme.index("## The answer so far")
    return readme[start : readme.index("\n## ", start + 1)]


def _figures(text: str) -> list[str]:
    """Signed decimals (a paired difference or a CI end), normalised to ASCII minus."""
    return [m.replace("\u2212", "-") for m in re.findall(r"[+\u2212-]\d+\.\d+", text)]


def test_every_figure_of_the_32px_answer_is_in_the_study_summary() -> None:
    answer = _answer((REPO / "README.md").read_text())
    paragraph = answer[answer.index("**At 32 px**") : answer.index("**At 64 px**")]
    summary = (REPO / "results/examples/study/tables/summary.md").read_text()
    figures = _figures(paragraph)
    assert len(figures) >= 8, figures
    missing = [f for f in figures if f not in _figures(summary)]
    assert not missing, f"README figures not in results/examples/study/tables/summary.md: {missing}"
    mdd = re.search(r"a difference under (\d+\.\d+) points", paragraph)
    assert mdd and f"a difference of {mdd.group(1)} points" in summary


def test_every_verdict_word_of_the_32px_answer_is_the_summarys() -> None:
    answer = _answer((REPO / "README.md").read_text())
    summary = (REPO / "results/examples/study/tables/summary.md").read_text()
    for word in re.findall(r"\*\*(inconclusive|equivalent|better|worse)\*\*", answer):
        assert f"is {word}" in summary


def test_every_page_the_readme_links_exists() -> None:
    readme = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(((?:docs|results)/[^)#]+)\)", readme)
    assert links
    assert [link for link in links if not (REPO / link).exists()] == []
