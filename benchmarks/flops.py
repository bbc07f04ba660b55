"""Compiled matmul FLOPs of a jitted program, with loop bodies counted as often as they run.

XLA's ``compiled.cost_analysis()["flops"]`` counts each computation once: a ``while`` body (a
``lax.scan`` of 300 blocks) adds its FLOPs once, not 300 times. ``compiled_flops`` reads the
optimised HLO instead and sums ``2 * prod(output) * prod(contracted dims)`` over every ``dot``,
multiplying through ``while`` loops by their known trip count, taking the costlier branch of a
``conditional``, and following fusions and calls. On a loop-free program it agrees with XLA's own
count up to the elementwise work (``benchmarks/prefill.py`` prints both).

A loop whose trip count depends on the data (``grouped``'s loops over experts and chunks) has no
static count: ``dynamic_loops="skip"`` counts it as 0 (the caller adds what it ran, e.g. the rows
``grouped`` counts inside its loops), ``"raise"`` (default) refuses.
"""

from __future__ import annotations

import math
import re

_ARRAY = r"[a-z]+\d*\[([\d,]*)\]"
_PARAM = re.compile(r"([\w.\-]+): " + _ARRAY)
_INSTR = re.compile(r"^(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*" + _ARRAY)
_DOT = re.compile(r"\sdot\(%?([\w.\-]+)")
_LHS_CONTRACT = re.compile(r"lhs_contracting_dims=\{([\d,]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')


def _dims(text: str) -> list[int]:
    return [int(d) for d in text.split(",") if d]


def _parse(hlo: str) -> tuple[dict[str, list[str]], dict[str, dict[str, list[int]]], str]:
    """Instructions and array shapes (parameters and results) of each computation, and the entry's name."""
    comps: dict[str, list[str]] = {}
    shapes: dict[str, dict[str, list[int]]] = {}
    entry, name = "", None
    for line in hlo.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):  # a computation's header
            head = line[len("ENTRY "):] if line.startswith("ENTRY ") else line
            name = re.match(r"%?([\w.\-]+)", head).group(1)
            comps[name] = []
            shapes[name] = {p: _dims(d) for p, d in _PARAM.findall(head.split("->")[0])}
            entry = name if line.startswith("ENTRY ") else entry
        elif name is not None and line.strip() == "}":
            name = None
        elif name is not None:
            s = line.strip()
            comps[name].append(s)
            m = _INSTR.match(s)
            if m:
                shapes[name][m.group(1)] = _dims(m.group(2))
    return comps, shapes, entry


def _flops(name: str, comps, shapes, memo: dict[str, float], skip_dynamic: bool) -> float:
    if name in memo:
        return memo[name]
    total = 0.0
    for s in comps.get(name, []):
        dot = _DOT.search(s)
        if dot:
            out = shapes[name][_INSTR.match(s).group(1)]
            lhs = shapes[name][dot.group(1)]
            contract = _LHS_CONTRACT.search(s)
            total += 2.0 * math.prod(out) * math.prod(lhs[i] for i in _dims(contract.group(1)) if contract)
        if " while(" in s:
            body = re.search(r"body=%?([\w.\-]+)", s).group(1)
            trip = _TRIP.search(s)
            if trip is None and not skip_dynamic:
                raise ValueError(f"while loop without a known trip count: {s[:200]}")
            total += int(trip.group(1)) * _flops(body, comps, shapes, memo, skip_dynamic) if trip else 0.0
        elif " conditional(" in s:
            branches = re.search(r"branch_computations=\{([^}]*)\}", s)
            names = re.findall(r"%?([\w.\-]+)", branches.group(1)) if branches else \
                re.findall(r"(?:true|false)_computation=%?([\w.\-]+)", s)
            total += max(_flops(b, comps, shapes, memo, skip_dynamic) for b in names)
        else:
            for callee in re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)", s):
                total += _flops(callee, comps, shapes, memo, skip_dynamic)
    memo[name] = total
    return total


def compiled_flops(compiled, dynamic_loops: str = "raise") -> float:
    """Matmul FLOPs of a ``jax.stages.Compiled``, loops counted by trip count; ``dynamic_loops``:
    ``"raise"`` on a loop without a static trip count, or ``"skip"`` it (count 0)."""
    if dynamic_loops not in ("raise", "skip"):
        raise ValueError(f"dynamic_loops must be 'raise' or 'skip', got {dynamic_loops!r}")
    comps, shapes, entry = _parse(compiled.as_text())
    return _flops(entry, comps, shapes, {}, dynamic_loops == "skip")
