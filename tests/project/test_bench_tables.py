"""bench/tables.py: one table, rendered as aligned text and as Markdown."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from tables import Column, Table


def example() -> Table:
    table = Table(["store", "tokens/s", Column("against sqlite", key=True)])
    table.add("sqlite", "31,633", "1.00")
    table.add("redis", "18,002", "0.57")
    return table


def test_text_pads_names_left_and_figures_right() -> None:
    assert example().text().splitlines() == [
        "store   tokens/s  against sqlite",
        "sqlite    31,633            1.00",
        "redis     18,002            0.57",
    ]


def test_markdown_bolds_the_key_column() -> None:
    assert example().markdown().splitlines() == [
        "| store | tokens/s | **against sqlite** |",
        "|---|---|---|",
        "| sqlite | 31,633 | **1.00** |",
        "| redis | 18,002 | **0.57** |",
    ]


def test_a_row_must_fill_every_column() -> None:
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        example().add("memory", "40,000")
