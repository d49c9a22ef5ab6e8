"""DrawBench (Imagen Sec. 4.4, App. C): 200 prompts in 11 categories for side-by-side human evaluation.

The prompts ship as package data (eval/data/drawbench.csv, columns prompt,category): the list the Imagen
authors released with the paper, as handed to this project in shared/data/drawbench.csv.
"""

from __future__ import annotations

import csv
from functools import cache
from importlib import resources

CATEGORIES = (
    "Colors", "Conflicting", "Counting", "DALL-E", "Descriptions", "Gary Marcus et al.",
    "Misspellings", "Positional", "Rare Words", "Reddit", "Text",
)


@cache
def _rows() -> tuple[tuple[str, str], ...]:
    text = resources.files("imagen_lit.eval").joinpath("data/drawbench.csv").read_text(encoding="utf-8")
    return tuple((r["prompt"], r["category"]) for r in csv.DictReader(text.splitlines()))


def drawbench_prompts(category: str | None = None) -> list[tuple[str, str]]:
    """(prompt, category) pairs in file order, all of them or one category's."""
    if category is not None and category not in CATEGORIES:
        raise ValueError(f"unknown DrawBench category {category!r}; choose one of {', '.join(CATEGORIES)}")
    return [(p, c) for p, c in _rows() if category is None or c == category]
