"""The formulas of docs/methods.md that the report's figures show, rendered into their captions.

A copied report cannot follow a link into the repository, so each caption carries the formula itself
(plain HTML: ``<sub>``/``<sup>`` and a math font; no script, no web font, works offline) and names
the docs/methods.md section that explains it. Formulas are written in a small notation: ``_{..}``
and ``^{..}`` (or ``_x`` / ``^x`` for one character) become subscripts and superscripts; the rest is
text, escaped.
"""

from __future__ import annotations

import html
import re

METHODS = "docs/methods.md"
_SCRIPT = re.compile(r"([_^])(?:\{([^{}]*)\}|([^\s{}(),]))")

# name: (section heading in docs/methods.md, formulas in the notation above)
FORMULAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "divergence": ("Divergence from the pivot", (
        "Div(x, l) = (1/N) Σ_{i} D(q_{i}^{pivot, l}, q_{i}^{x, l}),   q_{i}^{l} = (1/L_{i}) Σ_{t} softmax(z_{t}^{l})",)),
    # the metrics D of config.analysis.metrics, by name
    "entropy_normalized_js": ("Distances between distributions", (
        "D(p, q) = JSD(p, q) / max(log E − (H(p) + H(q))/2, 10^{−6})",)),
    "split_half": ("Split-half baseline", (
        "baseline(x, l) = (1/|A|) Σ_{j} D(q_{A_j}^{l}, q_{B_j}^{l}),   A, B: random halves of the sequences of x",)),
    "aggregate": ("Divergence from the pivot", (
        "D(c^{pivot}[l] / Σ_{e} c^{pivot}[l, e],  c^{x}[l] / Σ_{e} c^{x}[l, e]),   c[l, e]: tokens whose top-k holds e",)),
    "js_divergence": ("Distances between distributions", (
        "D(p, q) = JSD(p, q) = ½ KL(p ‖ m) + ½ KL(q ‖ m),   m = (p + q)/2,   KL(p ‖ q) = Σ_{e} p_{e} log(p_{e} / q_{e})",)),
    "kl_divergence": ("Distances between distributions", (
        "D(p, q) = KL(p ‖ q) = Σ_{e} p_{e} log(p_{e} / max(q_{e}, 10^{−10}))",)),
    "cosine_distance": ("Distances between distributions", ("D(p, q) = 1 − p·q / (|p| |q|)",)),
    "token_entropy": ("Routing entropy", (
        "Σ_{i} L_{i} h_{i}[l] / (Σ_{i} L_{i} · log E),   h_{i}[l] = (1/L_{i}) Σ_{t} H(softmax(z_{t}^{l})),"
        "   H(p) = −Σ_{e} p_{e} log p_{e}",)),
    "utilization_entropy": ("Routing entropy", ("H(c[l] / Σ_{e} c[l, e]) / log E",)),
    "consistency": ("Token consistency", (
        "J(A, B) = |A ∩ B| / (|A| + |B| − |A ∩ B|),   A, B: top-k expert sets of two tokens",)),
    "similarity_cosine": ("Language similarity and clustering", (
        "S(x, y) = mean_{l ∈ band} cos(f_{x}[l], f_{y}[l]),   f_{x}[l] = c_{x}[l] / T_{x}[l]",
        "distance = max(1 − (S + S^{T})/2, 0)")),
    "similarity_js": ("Language similarity and clustering", (
        "S(x, y) = mean_{l ∈ band} (1 − D(f_{x}[l] / k, f_{y}[l] / k)),   f_{x}[l] = c_{x}[l] / T_{x}[l]",
        "distance = max(1 − (S + S^{T})/2, 0)")),
    "exclusive": ("Shared and exclusive experts", (
        "p_{x}[l, e] = kept_{x}[l, e] / Σ_{x'} kept_{x'}[l, e];   exclusive to x: p_{x} > thr;"
        "   shared: kept by some language, every p_{x} < thr",)),
    "delta": ("Task and language experts", (
        "Δ[l, e] = (1/N_{t}) Σ_{i ∈ target} f_{i}[l, e] − (1/N_{r}) Σ_{i ∈ reference} f_{i}[l, e];"
        "   expert when Δ[l, e] > τ",)),
    "wilson": ("Evaluation", (
        "(p + z^{2}/(2n) ± z √(p(1 − p)/n + z^{2}/(4n^{2}))) / (1 + z^{2}/n),   z = 1.959964",)),
    "correlation": ("Correlation with accuracy", (
        "r = Σ_{j} (x_{j} − x̄)(y_{j} − ȳ) / √(Σ_{j} (x_{j} − x̄)^{2} · Σ_{j} (y_{j} − ȳ)^{2}),"
        "   ρ = r of the ranks;   x_{j} = mean_{l ∈ band} Div(j, l),  y_{j} = accuracy of language j",)),
    "correlation_layer": ("Correlation with accuracy", (
        "r_{l} = corr(Div(j, l), accuracy_{j}) over the languages j,   ρ_{l}: the same on ranks",)),
    "representation_similarity": ("Hidden representations", (
        "Sim(j, l) = (1/n) Σ_{i} cos(u_{i}^{l}, v_{i}^{l}),   u_{i} ← u_{i} − (1/n) Σ_{i'} u_{i'}  (each language centred)",)),
    "retrieval": ("Hidden representations", (
        "share of i with argmax_{i'} cos(v_{i}^{l}, u_{i'}^{l}) = i   (nearest pivot sentence among all n)",)),
    "logit_lens": ("Hidden representations", (
        "mass_{S}(l) = mean_{t} Σ_{v ∈ S} softmax(W_{U} norm_{f}(h_{t}^{l}))_{v},   S: the pivot's or the own language's tokens",)),
    "paired": ("Paired statistics", (
        "Δ = mean(steered) − mean(baseline);   p = exact binomial test of b in b + c trials at ½"
        "   (b: right only when steered, c: right only at baseline)",)),
}


def render(source: str) -> str:
    """One formula of the notation above as HTML."""
    out, last = [], 0
    for m in _SCRIPT.finditer(source):
        tag = "sub" if m.group(1) == "_" else "sup"
        body = render(m.group(2)) if m.group(2) is not None else html.escape(m.group(3))
        out += [html.escape(source[last:m.start()]), f"<{tag}>{body}</{tag}>"]
        last = m.end()
    return "".join(out) + html.escape(source[last:])


def block(*names: str) -> str:
    """The caption block of formulas ``names``: each formula, then the docs/methods.md section(s)."""
    sections = list(dict.fromkeys(FORMULAS[n][0] for n in names))
    maths = "".join(f'<div class="formula"><span class="math">{render(f).replace("   ", " &emsp; ")}</span></div>'
                    for n in names for f in FORMULAS[n][1])
    refs = "; ".join(f"“{s}”" for s in sections)
    return f'{maths}<div class="formula ref">Details: {METHODS}, section{"s" if len(sections) > 1 else ""} {refs}.</div>'
