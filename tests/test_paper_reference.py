"""``PAPER_REFERENCE`` against the paper's published numbers in ../shared/docs/paper-tables.md.

Every transcribed value must equal the document's and every number of the document that
``refsnn.reproduce`` prints must be transcribed. Skipped where the document is absent (an
installed package or a checkout without ../shared).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from refsnn import reproduce as rp
from refsnn.input_sets import DEFAULT_ROBUST_T

PAPER_TABLES = Path(__file__).resolve().parents[1] / ".." / "shared" / "docs" / "paper-tables.md"
SETTINGS = {"MNIST": "mnist", "FMNIST": "fmnist", "N-MNIST": "nmnist"}


@pytest.fixture(scope="module")
def document() -> str:
    if not PAPER_TABLES.is_file():
        pytest.skip(f"{PAPER_TABLES} not present (only in the project's shared checkout)")
    return PAPER_TABLES.read_text()


def _section(text: str, title: str) -> str:
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def _table_rows(section: str) -> List[List[str]]:
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("|")]
    return rows[2:]   # without header and rule


def _percent(cell: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?) %", cell)
    assert match, f"unexpected cell {cell!r}"
    return float(match.group(1))


def _table2(document: str) -> List[Tuple[str, float, List[float]]]:
    rows = _table_rows(_section(document, "Table 2"))
    assert len(rows) == 24
    return [(f"{SETTINGS[row[0]]}-{row[1].lower()}", float(row[2]), [_percent(c) for c in row[3:7]]) for row in rows]


def test_table1_clean_accuracy(document):
    expected: Dict[str, Dict[str, float]] = {}
    rows = _table_rows(_section(document, "Table 1"))
    assert len(rows) == 2
    for arch, *cells in rows:
        for dataset, cell in zip(("mnist", "fmnist", "nmnist"), cells, strict=True):
            expected[f"{dataset}-{arch.lower()}"] = {"regular": _percent(cell)}
    assert rp.PAPER_REFERENCE["clean_accuracy"] == expected


def test_table2_attack_eps_and_cells(document):
    eps: Dict[str, List[float]] = {}
    cells: Dict[str, Dict[str, Dict[str, float]]] = {}
    for key, attack_eps, values in _table2(document):
        eps.setdefault(key, []).append(attack_eps)
        cells.setdefault(key, {})[rp.eps_key(attack_eps)] = dict(zip(
            ("regular_original_error", "regular_attack_error", "robust_original_error", "robust_attack_error"),
            values, strict=True))
    assert rp.PAPER_REFERENCE["attack_eps"] == eps
    assert rp.PAPER_REFERENCE["table2_cells"] == cells
    # the presets attack at exactly these eps
    for key, values in eps.items():
        dataset, arch = key.split("-")
        assert rp.attack_eps_for(dataset, arch) == (values, "paper")


def test_training_eps_and_robust_horizon(document):
    line = re.search(r"Training eps of the robust network: (.*?)\.\s", _section(document, "Table 2"), re.S).group(1)
    expected = {}
    for part in " ".join(line.split()).split("; "):
        name, fc, conv = re.fullmatch(r"(\S+) FC (\S+), CONV (\S+)", part).groups()
        expected[f"{SETTINGS[name]}-fc"], expected[f"{SETTINGS[name]}-conv"] = float(fc), float(conv)
    assert rp.PAPER_REFERENCE["train_eps"] == expected
    assert f"robust training T' = {DEFAULT_ROBUST_T}" in _section(document, "Setting")


def test_figure5_time_ratios(document):
    found = re.findall(r"(\d+(?:\.\d+)?)x at T' = (\d+)", " ".join(_section(document, "Figure 5").split()))
    assert len(found) == 3
    assert rp.PAPER_REFERENCE["figure5_time_ratio"] == {horizon: float(ratio) for ratio, horizon in found}


def test_headline_is_the_best_row_of_table2(document):
    """The abstract's headline: the largest reduction of Table 2 and the clean-error cost of its row."""
    rows = _table2(document)
    best = max(rows, key=lambda row: row[2][1] - row[2][3])
    reduction, cost = best[2][1] - best[2][3], best[2][2] - best[2][0]
    assert rp.PAPER_REFERENCE["headline"] == (f"up to {reduction:.1f} points less attack error for {cost:.1f} "
                                              "points of clean accuracy")


def test_paper_reduction_summary_of_mnist_fc():
    """The paper's text: 2.7 to 25.7 points for 4.4 points of clean error (MNIST FC), from the cells."""
    reference = rp.PAPER_REFERENCE
    assert rp.paper_reduction(reference["table2_cells"]["mnist-fc"], reference["attack_eps"]["mnist-fc"]) == (
        2.7, 25.7, 4.4)
    assert rp.paper_reduction(reference["table2_cells"]["mnist-fc"], [0.2]) is None
