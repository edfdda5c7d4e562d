"""A benchmark's table, defined once and rendered both ways: aligned text for the
terminal and Markdown for BENCHMARKS.md.

    table = Table(["jobs at once", Column("added p50", key=True)])
    table.add(10, "+0.41")
    print(table.text())       # columns padded, numbers right-aligned
    print(table.markdown())   # the key columns in bold
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Column:
    title: str
    key: bool = False  # the column the table is about: bold in Markdown


@dataclass
class Table:
    columns: list[Column | str]
    rows: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.columns = [c if isinstance(c, Column) else Column(c) for c in self.columns]

    def add(self, *cells: object) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        self.rows.append([str(cell) for cell in cells])

    def text(self) -> str:
        titles = [column.title for column in self.columns]  # type: ignore[union-attr]
        widths = [max(len(row[i]) for row in [titles, *self.rows]) for i in range(len(titles))]
        lines = []
        for number, row in enumerate([titles, *self.rows]):
            cells = []
            for i, (cell, width) in enumerate(zip(row, widths, strict=True)):
                # The first column names the row; the others are figures, right-aligned.
                left = i == 0 or (number > 0 and not _figure(cell))
                cells.append(cell.ljust(width) if left else cell.rjust(width))
            lines.append("  ".join(cells).rstrip())
        return "\n".join(lines)

    def markdown(self) -> str:
        columns: list[Column] = self.columns  # type: ignore[assignment]

        def line(cells: list[str]) -> str:
            return "| " + " | ".join(cells) + " |"

        def bold(cells: list[str]) -> list[str]:
            return [
                f"**{cell}**" if column.key and cell else cell
                for cell, column in zip(cells, columns, strict=True)
            ]

        lines = [line(bold([c.title for c in columns])), "|" + "---|" * len(columns)]
        lines += [line(bold(row)) for row in self.rows]
        return "\n".join(lines)


def _figure(cell: str) -> bool:
    return (bool(cell) and (cell[0].isdigit() or cell[0] in "+-.")) or cell == "n/a"
