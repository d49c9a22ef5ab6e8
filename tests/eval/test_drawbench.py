import pytest

from imagen_lit.eval.drawbench import CATEGORIES, drawbench_prompts


def test_drawbench_is_the_papers_200_prompts_in_11_categories():
    rows = drawbench_prompts()
    assert len(rows) == 200 and len({p for p, _ in rows}) == 200
    assert {c for _, c in rows} == set(CATEGORIES) and len(CATEGORIES) == 11
    counts = {c: len(drawbench_prompts(c)) for c in CATEGORIES}
    assert counts["Reddit"] == 38 and counts["Colors"] == 25 and counts["Rare Words"] == 7
    assert ("A red colored car.", "Colors") in rows


def test_unknown_category():
    with pytest.raises(ValueError, match="unknown DrawBench category 'Colours'"):
        drawbench_prompts("Colours")
