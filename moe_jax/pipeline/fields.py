"""Refusing unknown config fields (``moe_jax.pipeline.options.from_config`` uses it for every section).

``ConfigDict.update`` and config files add unknown keys silently, so a typo (``collect.batchsize``)
would otherwise leave the default in force without a word.
"""

from __future__ import annotations

import difflib
from typing import Any, Collection, Mapping

import ml_collections


class UnknownFieldError(ValueError):
    """A config holds a field its defaults do not know."""


def check_known_fields(values: Any, defaults: Any, where: str = "config", free_form: Collection[str] = ()) -> None:
    """Refuses fields of ``values`` (a config or one of its sections) that ``defaults`` lacks, at any
    depth, naming every unknown field with its closest known one.

    ``where``: the path of ``values`` in the pipeline config (``"config.collect"``); ``free_form``:
    paths whose keys are user data (``"config.analysis.accuracy"``: languages).
    """
    errors = _unknown_fields(values, defaults, where, free_form)
    if errors:
        raise UnknownFieldError("\n".join(errors))


def _unknown_fields(values: Any, defaults: Any, where: str, free_form: Collection[str]) -> list[str]:
    errors = []
    known = sorted(defaults.keys())
    for key in values.keys():
        path = f"{where}.{key}"
        if key not in defaults:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {where}.{close[0]}?)" if close else ""
            errors.append(f"{path} is not a known field{hint}; known fields of {where}: {', '.join(known)}")
        elif (isinstance(defaults[key], ml_collections.ConfigDict) and path not in free_form
              and isinstance(values[key], (ml_collections.ConfigDict, Mapping))):
            errors += _unknown_fields(values[key], defaults[key], path, free_form)
    return errors
