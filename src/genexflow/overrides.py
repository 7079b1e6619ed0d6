"""The one parser of ``KEY=VALUE`` overrides (``genexflow train --set``, ``genexflow pipeline --param``,
search-space keys, config files): ``a.b=VALUE`` sets key ``b`` of the dict option ``a``; values are JSON when
they parse. Errors are :class:`~genexflow.errors.InputError` naming the bad key."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from genexflow.errors import InputError


def parse_override(item: str) -> tuple[str, Any]:
    """``"model.d_model=32"`` -> ``("model.d_model", 32)``: the value is read as JSON when it parses
    (numbers, booleans, lists, null), else kept as the string."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or "" in key.split("."):
        raise InputError(f"override {item!r}: use KEY=VALUE, e.g. lr=1e-3 or model.d_model=32")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def nest_dotted(flat: Mapping[str, Any], nested: Collection[str] | None = None) -> dict[str, Any]:
    """``{"lr": 1e-3, "model.d_model": 32}`` -> ``{"lr": 1e-3, "model": {"d_model": 32}}``.

    Only the fields in ``nested`` take dotted keys (``None``: any); a dotted key under another name is an
    :class:`InputError` that names it.
    """
    out: dict[str, Any] = {}
    for key, val in flat.items():
        head, _, rest = key.partition(".")
        if not rest:
            out[key] = {**out[key], **val} if isinstance(val, dict) and isinstance(out.get(key), dict) else val
            continue
        if nested is not None and head not in nested:
            raise InputError(f"unknown option {key!r}: dotted keys go under {', '.join(nested)} "
                             "(e.g. model.d_model=32)")
        sub = out.setdefault(head, {})
        if not isinstance(sub, dict):
            raise InputError(f"option {key!r} conflicts with {head}={sub!r}")
        sub[rest] = val
    return out


def parse_overrides(items: Iterable[str] | None, nested: Collection[str] | None = None) -> dict[str, Any]:
    """``["lr=1e-3", "model.d_model=32", "model.readout_dims=[64,32]"]`` -> nested overrides (see
    :func:`parse_override` and :func:`nest_dotted`); later items win."""
    return nest_dotted(dict(parse_override(i) for i in items or []), nested)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML (``.yaml``/``.yml``) or JSON file; dotted keys (``model.d_model: 32``) nest."""
    text = Path(path).read_text()
    data = (yaml.safe_load(text) if str(path).endswith((".yaml", ".yml")) else json.loads(text)) or {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of options (epochs, lr, model, ...)")
    return nest_dotted(data, nested=None)
