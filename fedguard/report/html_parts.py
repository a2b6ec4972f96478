"""Small HTML building blocks for the report: escaped text, tables with machine-readable cells, sections, images.

Every number in a table is a :class:`Cell` whose ``data-value`` attribute holds the exact value from the run's
files (for scripts and tests) while the text shows it rounded for people.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["Cell", "Header", "fmt", "image", "paragraph", "section", "table"]


def fmt(value: object, digits: int = 4) -> str:
    """A number for people: ``–`` for missing/NaN, ints with thousands separators, floats to ``digits``
    significant digits; anything else as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


@dataclass(frozen=True)
class Cell:
    """A table cell: ``text`` shown (escaped), ``value`` kept exactly in ``data-value`` when given."""

    text: str
    value: object = None
    css: str = ""

    @classmethod
    def number(cls, value: object, digits: int = 4) -> Cell:
        return cls(fmt(value, digits), value if value is not None else "null", "num")

    def html(self, tag: str = "td", extra: str = "") -> str:
        attrs = f' class="{self.css}"' if self.css else ""
        if self.value is not None:
            attrs += f' data-value="{escape(repr(self.value) if isinstance(self.value, float) else str(self.value))}"'
        return f"<{tag}{attrs}{extra}>{escape(self.text)}</{tag}>"


@dataclass(frozen=True)
class Header:
    """A column header; ``attrs`` are extra ``data-*`` attributes (e.g. ``{"kind": "guarantee"}``)."""

    text: str
    attrs: tuple[tuple[str, str], ...] = ()

    def html(self) -> str:
        extra = "".join(f' data-{name}="{escape(value)}"' for name, value in self.attrs)
        return f"<th{extra}>{escape(self.text)}</th>"


def table(table_id: str, headers: Sequence[str | Header], rows: Iterable[Sequence[Cell | str]]) -> str:
    """A ``<table id=...>`` with a header row; plain strings become escaped text cells."""
    head = "".join((h if isinstance(h, Header) else Header(h)).html() for h in headers)
    body = "\n".join("<tr>" + "".join((c if isinstance(c, Cell) else Cell(c)).html() for c in row) + "</tr>"
                     for row in rows)
    return f'<table id="{table_id}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>'


def section(section_id: str, title: str, *parts: str) -> str:
    """A ``<section id=...>`` with an ``<h2>`` title and the given (already HTML) parts."""
    body = "\n".join(p for p in parts if p)
    return f'<section id="{section_id}">\n<h2>{escape(title)}</h2>\n{body}\n</section>'


def paragraph(text: str, css: str = "") -> str:
    """An escaped ``<p>``."""
    attrs = f' class="{css}"' if css else ""
    return f"<p{attrs}>{escape(text)}</p>"


def image(png: bytes, alt: str, name: str) -> str:
    """A PNG embedded as a ``data:`` URI (the page needs no other file)."""
    data = base64.b64encode(png).decode("ascii")
    return f'<figure><img src="data:image/png;base64,{data}" alt="{escape(alt)}" data-name="{escape(name)}">' \
           f"<figcaption>{escape(alt)}</figcaption></figure>"
