"""Great Expectations Data Docs that work offline: no CDN, the run list in plain HTML.

GX 1.24 builds pages that load Bootstrap, bootstrap-table, jQuery, Font Awesome, Vega and
a logo from CDNs; without network the index is blank, because bootstrap-table fills its
run list from JavaScript. None of those libraries is in the project's environment, so
the built pages are rewritten here instead (text in, text out; no GX import):

- every ``<link>``/``<script>`` that loads from another host is dropped, an ``<img>`` from
  GX's asset host points at the copy GX ships in ``static/images/``, and ``url(http…)`` in
  inline CSS becomes ``none``;
- each bootstrap-table (the index's runs and suites) becomes a static ``<table>`` built
  from the rows GX embedded in the page, newest run first, each row linking to its page;
- a suite marked ``"role": "information"`` in its meta reads as information, not as a
  pass or fail: on the index and on its validation pages;
- on a validation page, the section of :data:`FIRST_COLUMN` (``rms_dbfs``: the RMS-spread gate,
  the check that catches per-clip peak normalization) comes right after the overview, not in
  GX's alphabetical order of columns near the bottom.

The look (layout, tables, the status glyphs that Font Awesome drew) comes from the
project's ``gx/plugins/custom_data_docs/styles/data_docs_custom_styles.css``, which GX
inlines into every page.
"""

from __future__ import annotations

import ast
import html
import re
import typing as tp
from pathlib import Path

_REMOTE = r"""["']?https?://"""
_LINK = re.compile(r"<link\b[^>]*\bhref=" + _REMOTE + r"[^>]*>", re.I)
_SCRIPT = re.compile(r"<script\b[^>]*\bsrc=" + _REMOTE + r"[^>]*>\s*</script>", re.I)
_IMG_SRC = re.compile(r"""(<img\b[^>]*?\bsrc=)"(https?://[^"]*)\"""", re.I | re.S)
_CSS_URL = re.compile(r"""url\(\s*['"]?https?://[^)]*\)""", re.I)
_TABLE_INIT = re.compile(
    r"<script>\s*\$\('#(?P<id>[\w-]+)'\)\.bootstrapTable\(\s*Object\.assign\(\s*\{\s*"
    r"columns: (?P<columns>\[.*?\]),\s*data: (?P<data>\[.*?\]),\s*toolbar: .*?</script>",
    re.S,
)
_SUCCESS_ICON = 'class="fas fa-check-circle text-success"'
_INFO_ICON = 'class="fas fa-info-circle text-info"'
_STATUS_SUCCEEDED = re.compile(r"<i " + re.escape(_SUCCESS_ICON) + r"[^>]*></i>\s*Succeeded")


def make_offline(site: Path, information_suites: tp.Mapping[str, str] | None = None) -> list[Path]:
    """Rewrite every page (and stylesheet) of the Data Docs ``site`` in place; return the pages.

    ``information_suites`` maps a suite name to its notes (shown on its validation pages).
    """
    information_suites = information_suites or {}
    pages = sorted(site.rglob("*.html"))
    images = site / "static" / "images"
    for page in pages:
        rel = page.relative_to(site)
        prefix = "../" * (len(rel.parts) - 1)
        text = offline_page(page.read_text(encoding="utf-8"), prefix, images)
        if rel.parts == ("index.html",):
            text = static_index(text, set(information_suites))
        elif len(rel.parts) > 2 and rel.parts[0] == "validations":
            text = column_first(text, FIRST_COLUMN)
            if rel.parts[1] in information_suites:
                text = information_page(text, information_suites[rel.parts[1]])
        page.write_text(text, encoding="utf-8")
    for sheet in site.rglob("*.css"):  # GX's copies in static/ (the pages inline their styles)
        sheet.write_text(_CSS_URL.sub("none", sheet.read_text(encoding="utf-8")), encoding="utf-8")
    return pages


def offline_page(text: str, prefix: str, images: Path) -> str:
    """``text`` without anything loaded from another host (links to other sites stay)."""
    text = _LINK.sub("", text)
    text = _SCRIPT.sub("", text)

    def local_image(m: re.Match[str]) -> str:
        name = m.group(2).split("?")[0].rsplit("/", 1)[-1]
        return f'{m.group(1)}"{prefix}static/images/{name}"' if (images / name).is_file() else f'{m.group(1)}""'

    text = _IMG_SRC.sub(local_image, text)
    return _CSS_URL.sub("none", text)


FIRST_COLUMN = "rms_dbfs"
_SECTION = re.compile(r'<div id="section-(\d+)" class="ge-section\b[^>]*>')
_DIV = re.compile(r"<div\b|</div>", re.I)


def _div_end(text: str, start: int) -> int:
    """The index just past the ``</div>`` that closes the ``<div`` at ``start`` (-1: none)."""
    depth = 0
    for m in _DIV.finditer(text, start):
        depth += 1 if m.group(0)[1] != "/" else -1
        if depth == 0:
            return m.end()
    return -1


def _heading(text: str, start: int) -> str:
    m = re.search(r"<h[1-6]\b[^>]*>\s*([^<]*?)\s*<", text[start : start + 3000])
    return m.group(1) if m else ""


def column_first(text: str, column: str) -> str:
    """A validation page with the section of ``column`` moved right after the first section
    (the overview); unchanged when it has no such section or it is there already."""
    sections = list(_SECTION.finditer(text))
    if len(sections) < 3:
        return text
    target = next((s for s in sections[1:] if _heading(text, s.end()) == column), None)
    if target is None or target is sections[1]:
        return text
    end = _div_end(text, target.start())
    if end < 0:
        return text
    block = text[target.start() : end]
    rest = text[: target.start()] + text[end:]
    at = sections[1].start()  # before the target, so not shifted by its removal
    return _toc_first(rest[:at] + block + "\n" + rest[at:], target.group(1), sections[1].group(1))


def _toc_item(text: str, section: str) -> tuple[int, int] | None:
    """The span of the table of contents' ``<li>`` linking to ``#section-<section>``."""
    link = text.find(f'href="#section-{section}"')
    start = text.rfind("<li", 0, link)
    end = text.find("</li>", link)
    return (start, end + len("</li>")) if link >= 0 and start >= 0 and end >= 0 else None


def _toc_first(text: str, moved: str, before: str) -> str:
    """The table of contents in the page's new order: ``moved``'s entry before ``before``'s."""
    item, anchor = _toc_item(text, moved), _toc_item(text, before)
    if item is None or anchor is None or anchor[0] > item[0]:
        return text
    entry = text[item[0] : item[1]]
    text = text[: item[0]] + text[item[1] :]
    return text[: anchor[0]] + entry + "\n" + text[anchor[0] :]


def remote_loads(text: str) -> list[str]:
    """What ``text`` would still fetch from another host (stylesheets, scripts, images, CSS)."""
    found = [m.group(0) for m in (*_LINK.finditer(text), *_SCRIPT.finditer(text), *_CSS_URL.finditer(text))]
    return found + [m.group(2) for m in _IMG_SRC.finditer(text)]


def static_index(text: str, information_suites: set[str]) -> str:
    """Replace each bootstrap-table of the index page by a plain HTML table of its rows."""

    def table(m: re.Match[str]) -> str:
        columns = ast.literal_eval(m.group("columns"))  # GX writes these as Python literals
        rows = ast.literal_eval(m.group("data"))
        if rows and "_run_time_sort" in rows[0]:  # newest run first, its gate above its profile
            rows.sort(key=lambda r: r.get("_expectation_suite_name_sort", "") in information_suites)
            rows.sort(key=lambda r: r["_run_time_sort"], reverse=True)
        return _html_table(m.group("id"), columns, rows, information_suites)

    text, n = _TABLE_INIT.subn(table, text)
    if n:
        # The empty placeholders, the filter buttons and their helper functions served bootstrap-table.
        text = re.sub(r'<table\s+id="[\w-]+-body-table"[^>]*>\s*</table>', "", text)
        text = re.sub(r'<div id="[\w-]+-body-table-toolbar" class="ml-1">.*?</div>', "", text, flags=re.S)
        text = re.sub(r"<script>\s*function rowStyleLinks\(.*?</script>", "", text, flags=re.S)
    return text


def _html_table(
    table_id: str, columns: list[dict[str, tp.Any]], rows: list[dict[str, tp.Any]], information_suites: set[str]
) -> str:
    head = "".join(f"<th>{html.escape(str(c.get('title', c['field'])))}</th>" for c in columns)
    body = []
    for row in rows:
        suite = str(row.get("_expectation_suite_name_sort", row.get("expectation_suite_name", "")))
        link = html.escape(str(row.get("_table_row_link_path", "")), quote=True)
        status = _status(row, suite in information_suites)
        cells = []
        for c in columns:
            field = c["field"]
            value = str(row.get(field, ""))  # HTML, as GX handed it to bootstrap-table
            if field == "validation_success":
                value = f'<a href="{link}">{_STATUS_HTML[status]}</a>'
            elif field == "run_time" or (field == "expectation_suite_name" and "<a " not in value):
                value = f'<a href="{link}">{value.strip()}</a>'
            cells.append(f'<td class="ge-cell-{field}">{value}</td>')
        attrs = f' data-suite="{html.escape(suite, quote=True)}"' + (f' data-status="{status}"' if status else "")
        body.append(f"<tr{attrs}>{''.join(cells)}</tr>")
    return (
        f'<table id="{table_id}" class="table table-sm ge-offline-table">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


_STATUS_HTML = {
    "": "",
    "passed": f'<i {_SUCCESS_ICON} aria-hidden="true"></i> Passed',
    "failed": '<i class="fas fa-times text-danger" aria-hidden="true"></i> Failed',
    "information": f'<i {_INFO_ICON} aria-hidden="true"></i> Information',
}


def _status(row: tp.Mapping[str, tp.Any], information: bool) -> str:
    text = str(row.get("_validation_success_text", ""))
    if not text:
        return ""
    if information:
        return "information"
    return "passed" if text == "Success" else "failed"


def information_page(text: str, notes: str) -> str:
    """A validation page of an information-only suite: its status reads as information."""
    if not notes.lower().startswith("information"):
        notes = "Information only" + (f" — {notes}" if notes else "")
    label = html.escape(notes)
    text = _STATUS_SUCCEEDED.sub(f'<i {_INFO_ICON} aria-hidden="true"></i> {label}', text, count=1)
    return text.replace(_SUCCESS_ICON, _INFO_ICON)  # each expectation's mark too
