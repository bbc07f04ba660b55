"""A static, self-contained HTML page: inline CSS, figures embedded as base64 PNG, no scripts,
no external resources, so it opens offline and can be mailed as one file."""

from __future__ import annotations

import base64
import html
from typing import Any, Iterable, Mapping, Sequence

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1180px;margin:2em auto;
padding:0 1.2em;color:#1d1d1f;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
.warning{background:#fde8e8;border:2px solid #c0392b;color:#7b1d14;padding:.8em 1em;border-radius:6px;
font-weight:600;font-size:1.1em;margin:1em 0}
.note{background:#f4f6f8;border-left:4px solid #7f8c8d;padding:.5em .9em;margin:.8em 0}
figure{margin:1.2em 0}figure img{max-width:100%;border:1px solid #e3e3e3}
figcaption{font-size:.92em;color:#444;margin-top:.3em}
table{border-collapse:collapse;font-size:.88em;margin:.6em 0}td,th{border:1px solid #ddd;padding:.25em .6em;
text-align:left;vertical-align:top}th{background:#f4f6f8}code{font-size:.92em}
nav a{margin-right:1em}
"""


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def figure(png: bytes, name: str, caption: str) -> str:
    """An embedded PNG figure; ``name`` is the PNG's file name (kept in ``data-file`` and the alt text)."""
    b64 = base64.b64encode(png).decode("ascii")
    return (f'<figure id="fig-{esc(name)}"><img alt="{esc(name)}" data-file="{esc(name)}" '
            f'src="data:image/png;base64,{b64}"><figcaption>{esc(caption)}</figcaption></figure>')


def table(rows: Iterable[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    head = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{head}{body}</table>"


def mapping_table(values: Mapping[str, Any]) -> str:
    return table(((k, v) for k, v in values.items()), ("key", "value"))


def paragraph(text: str, cls: str | None = None) -> str:
    attr = f' class="{esc(cls)}"' if cls else ""
    return f"<p{attr}>{esc(text)}</p>"


def section(title: str, anchor: str, blocks: Sequence[str]) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{"".join(blocks)}</section>'


def page(title: str, sections: Sequence[tuple[str, str, Sequence[str]]], warning: str | None = None,
         intro: Sequence[str] = ()) -> str:
    """The whole document; ``sections`` are ``(title, anchor, blocks)``; ``warning`` is shown on top."""
    nav = "<nav>" + "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for t, a, _ in sections) + "</nav>"
    warn = f'<div class="warning">&#9888; {esc(warning)}</div>' if warning else ""
    body = "".join(section(t, a, b) for t, a, b in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1>{warn}{''.join(intro)}{nav}{body}"
            "</body></html>\n")
