"""A report page as data (sections of text, tables, figures) and its rendering as one
self-contained HTML file: styles and the table-sorting script inline, figures as inline SVG, no
request leaves the page.

Passes that add a page of their own (`PasscPass.report_sections`) build it from these types.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Block", "Details", "Figure", "Num", "Section", "Table", "Text", "render_page"]


@dataclass(frozen=True)
class Num:
    """A table cell shown as `text` and sorted by `value`."""

    value: float
    text: str


@dataclass(frozen=True)
class Text:
    """A paragraph of plain text (escaped when rendered)."""

    text: str


@dataclass(frozen=True)
class Table:
    """Rows of cells: str, int (shown with thousands separators), float (3 significant digits),
    `Num`, or None (shown as a dash). No `columns`: no header row. `sortable` lets a click on a
    header sort by that column."""

    columns: list[str]
    rows: list[list[Any]]
    sortable: bool = False
    caption: str = ""


@dataclass(frozen=True)
class Figure:
    """An inline SVG image (from `passc.report.charts`) and its caption."""

    svg: str
    caption: str = ""


@dataclass(frozen=True)
class Details:
    """Blocks folded under a one-line summary (an HTML <details>)."""

    summary: str
    blocks: list[Block]


Block = Text | Table | Figure | Details


@dataclass
class Section:
    """One titled part of the page; `anchor` (from the title by default) links it from the contents."""

    title: str
    blocks: list[Block] = field(default_factory=list)
    anchor: str = ""

    def __post_init__(self) -> None:
        self.anchor = self.anchor or re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


def _cell(value: Any) -> str:
    """One <td>: numbers right-aligned and carrying their sort value."""
    if value is None:
        return "<td>–</td>"
    if isinstance(value, bool):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, int):
        return f'<td class="num" data-v="{value}">{value:,}</td>'
    if isinstance(value, float):
        return f'<td class="num" data-v="{value!r}">{value:.3g}</td>'
    if isinstance(value, Num):
        return f'<td class="num" data-v="{value.value!r}">{html.escape(value.text)}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def _table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    head = f"<thead><tr>{head}</tr></thead>" if head else ""
    body = "\n".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in table.rows)
    caption = f"<caption>{html.escape(table.caption)}</caption>" if table.caption else ""
    cls = ' class="sortable"' if table.sortable else ""
    return f"<table{cls}>{caption}{head}<tbody>\n{body}\n</tbody></table>"


def _block(block: Block) -> str:
    if isinstance(block, Text):
        return f"<p>{html.escape(block.text)}</p>"
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Figure):
        caption = f"<figcaption>{html.escape(block.caption)}</figcaption>" if block.caption else ""
        return f"<figure>{block.svg}{caption}</figure>"
    inner = "\n".join(_block(b) for b in block.blocks)
    return f"<details><summary>{html.escape(block.summary)}</summary>\n{inner}\n</details>"


_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330}
header{background:#1d2330;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#c8cfdc}
nav{padding:10px 28px;border-bottom:1px solid #e3e6ec;background:#f6f7f9}
nav a{margin-right:16px;color:#2456b3;text-decoration:none}main{padding:8px 28px 40px;max-width:1200px}
h2{border-bottom:2px solid #e3e6ec;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;margin:10px 0 18px;font-size:13px}
caption{text-align:left;font-weight:600;padding:4px 0}
th,td{border:1px solid #dde1e8;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eef1f6}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.sortable th{cursor:pointer}table.sortable th:after{content:" \\2195";color:#98a2b3}
tbody tr:nth-child(even){background:#fafbfc}figure{margin:10px 0 18px}figure svg{max-width:100%;height:auto}
figcaption{color:#5b6474;font-size:12px}details{margin:6px 0}summary{cursor:pointer;color:#2456b3}
"""

# Sorts a table.sortable's rows by the clicked column: numbers by data-v, text by its content.
_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function (th) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0];
    var col = Array.prototype.indexOf.call(th.parentNode.children, th);
    var down = th.dataset.dir !== "down"; th.dataset.dir = down ? "down" : "up";
    var rows = Array.prototype.slice.call(body.rows);
    function key(row) {
      var cell = row.cells[col];
      if (!cell) return "";
      return cell.dataset.v !== undefined ? parseFloat(cell.dataset.v) : cell.textContent;
    }
    rows.sort(function (a, b) {
      var x = key(a), y = key(b), c = typeof x === "number" && typeof y === "number" ? x - y
        : String(x).localeCompare(String(y));
      return down ? -c : c;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
"""


def render_page(title: str, subtitle: str, sections: list[Section]) -> str:
    """The whole page as one HTML document: a header, a contents line, then each section."""
    nav = "".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in sections)
    body = "\n".join(
        f'<section id="{s.anchor}"><h2>{html.escape(s.title)}</h2>\n'
        + "\n".join(_block(b) for b in s.blocks)
        + "</section>"
        for s in sections
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body>"
        f"<header><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p></header>"
        f"<nav>{nav}</nav><main>\n{body}\n</main><script>{_SCRIPT}</script></body></html>\n"
    )
