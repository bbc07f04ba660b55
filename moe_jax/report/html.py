"""A static, self-contained HTML page: inline CSS, figures embedded as base64 PNG, no scripts,
no external resources, so it opens offline and can be mailed as one file.

Text goes through ``text``: escaped, and a token longer than ``MAX_TOKEN`` characters (a path, a
hash) gets a line-break opportunity every ``MAX_TOKEN`` characters, so no table, caption or paragraph
is wider than the page; a table cell that is a hex digest shows its first characters and the whole
value on a click (``<details>``). Tables scroll sideways inside their own box when they are wider.
"""

from __future__ import annotations

import base64
import html
import re
from typing import Any, Iterable, Mapping, Sequence

MAX_TOKEN = 24  # characters between line-break opportunities of a long token
DIGEST = re.compile(r"(?:[a-z0-9]+:)?[0-9a-f]{32,}")  # sha256, md5, git commits; "sha256:..." too
_LONG = re.compile(r"\S{%d,}" % (MAX_TOKEN + 1))

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1180px;margin:2em auto;
padding:0 1.2em;color:#1d1d1f;line-height:1.45;overflow-wrap:anywhere}
h1{font-size:1.7em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
.warning{background:#fde8e8;border:2px solid #c0392b;color:#7b1d14;padding:.8em 1em;border-radius:6px;
font-weight:600;font-size:1.1em;margin:1em 0}
.note{background:#f4f6f8;border-left:4px solid #7f8c8d;padding:.5em .9em;margin:.8em 0}
figure{margin:1.2em 0}figure img{max-width:100%;border:1px solid #e3e3e3}
figcaption{font-size:.92em;color:#444;margin-top:.3em}
.formula{margin:.35em 0 0 1.2em}.math{font-family:"Cambria Math","STIX Two Math","Latin Modern Math",
Cambria,"Times New Roman",serif;font-size:1.08em;color:#1d1d1f}.ref{color:#666;font-size:.92em}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.88em;margin:.6em 0}td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:left;vertical-align:top;overflow-wrap:anywhere;word-break:break-word}th{background:#f4f6f8}
code{font-size:.92em}details summary{cursor:pointer}
nav a{margin-right:1em}
"""


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _break(token: str) -> str:
    """An escaped ``token`` with ``<wbr>`` every MAX_TOKEN characters."""
    return "<wbr>".join(esc(token[i:i + MAX_TOKEN]) for i in range(0, len(token), MAX_TOKEN))


def text(value: Any) -> str:
    """Escaped text in which no run of more than MAX_TOKEN characters lacks a line-break opportunity."""
    s = str(value)
    out, last = [], 0
    for m in _LONG.finditer(s):
        out += [esc(s[last:m.start()]), _break(m.group())]
        last = m.end()
    return "".join(out) + esc(s[last:])


def cell(value: Any) -> str:
    """A table cell's content: a hex digest shows its first 12 characters, the whole value in a
    ``<details>`` (and the ``title``); other text as ``text``."""
    s = str(value)
    if DIGEST.fullmatch(s):
        return (f'<details title="{esc(s)}"><summary><code>{esc(s[:12])}&hellip;</code></summary>'
                f"<code>{_break(s)}</code></details>")
    return text(s)


def figure(png: bytes, name: str, caption: str, math: str = "") -> str:
    """An embedded PNG figure; ``name`` is the PNG's file name (kept in ``data-file`` and the alt text);
    ``math`` (trusted HTML, e.g. ``formulas.block``) is appended to the escaped ``caption``."""
    b64 = base64.b64encode(png).decode("ascii")
    return (f'<figure id="fig-{esc(name)}"><img alt="{esc(name)}" data-file="{esc(name)}" '
            f'src="data:image/png;base64,{b64}"><figcaption>{text(caption)}{math}</figcaption></figure>')


def table(rows: Iterable[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    """A table in a box that scrolls sideways when the table is wider than the page."""
    head = "<tr>" + "".join(f"<th>{text(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<div class="scroll"><table>{head}{body}</table></div>'


def mapping_table(values: Mapping[str, Any]) -> str:
    return table(((k, v) for k, v in values.items()), ("key", "value"))


def paragraph(value: str, cls: str | None = None) -> str:
    attr = f' class="{esc(cls)}"' if cls else ""
    return f"<p{attr}>{text(value)}</p>"


def section(title: str, anchor: str, blocks: Sequence[str]) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{"".join(blocks)}</section>'


def page(title: str, sections: Sequence[tuple[str, str, Sequence[str]]], warning: str | None = None,
         intro: Sequence[str] = ()) -> str:
    """The whole document; ``sections`` are ``(title, anchor, blocks)``; ``warning`` is shown on top."""
    nav = "<nav>" + "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for t, a, _ in sections) + "</nav>"
    warn = f'<div class="warning">&#9888; {text(warning)}</div>' if warning else ""
    body = "".join(section(t, a, b) for t, a, b in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1>{warn}{''.join(intro)}{nav}{body}"
            "</body></html>\n")
