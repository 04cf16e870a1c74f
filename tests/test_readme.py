"""The README's answer is copied from the reports' generated summaries, never written by hand.

Why: protocol v2's README said "within 1 point" where the table said 1.9, "4 of 5" where it was 5 of
5; issue 17 asks that the answer be copied from the verdicts. Every figure of the README's answer
paragraph about a committed study must stand in that study's `tables/summary.md`, and every docs/
page the README links must exist.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _answer(readme: str) -> str:
    start = readme.index("## The answer so far")
    return readme[start : readme.index("\n## ", start + 1)]


def _figures(text: str) -> list[str]:
    """Signed decimals (a paired difference or a CI end), normalised to ASCII minus."""
    return [m.replace("\u2212", "-") for m in re.findall(r"[+\u2212-]\d+\.\d+", text)]


# Each answer paragraph of the README (its bold lead): the committed study whose summary it is copied from,
# the fewest signed figures it quotes, and whether it quotes the family's minimum detectable difference.
PARAGRAPHS = {
    "**At 32 px**": ("study", 8, True),
    "**At 64 px**": ("study64", 8, True),
    "**A control, post hoc**": ("study64-defaults", 2, False),
}


def _paragraph(lead: str) -> str:
    answer = _answer((REPO / "README.md").read_text())
    start = answer.index(lead)
    ends = [answer.index(other, start) for other in PARAGRAPHS if other != lead and other in answer[start:]]
    return answer[start : min(ends, default=len(answer))]


@pytest.mark.parametrize("lead", PARAGRAPHS)
def test_every_figure_of_an_answer_paragraph_is_in_its_study_summary(lead: str) -> None:
    paragraph = _paragraph(lead)
    folder, fewest, states_mdd = PARAGRAPHS[lead]
    summary = (REPO / "results/examples" / folder / "tables/summary.md").read_text()
    figures = _figures(paragraph)
    assert len(figures) >= fewest, figures
    missing = [f for f in figures if f not in _figures(summary)]
    assert not missing, f"README figures not in results/examples/{folder}/tables/summary.md: {missing}"
    mdd = re.search(r"a difference under (\d+\.\d+) points", paragraph)
    assert (mdd is not None) == states_mdd, lead
    assert mdd is None or f"a difference of {mdd.group(1)} points" in summary


@pytest.mark.parametrize("lead", PARAGRAPHS)
def test_every_verdict_word_of_an_answer_paragraph_is_its_summarys(lead: str) -> None:
    paragraph = _paragraph(lead)
    summary = (REPO / "results/examples" / PARAGRAPHS[lead][0] / "tables/summary.md").read_text()
    words = re.findall(r"\*\*(inconclusive|equivalent|better|worse)\*\*", paragraph)
    assert words, f"{lead} states no verdict"
    assert [w for w in words if f"is {w}" not in summary] == []


def test_every_page_the_readme_links_exists() -> None:
    readme = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(((?:docs|results)/[^)#]+)\)", readme)
    assert links
    assert [link for link in links if not (REPO / link).exists()] == []
