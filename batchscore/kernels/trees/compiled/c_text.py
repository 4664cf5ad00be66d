"""C literals for generated code: exact doubles and constant integer arrays."""

from __future__ import annotations

import math

import numpy as np


def c_double(value: float) -> str:
    """An exact C literal for a float64 (hex float; infinities and NaN by name)."""
    v = float(value)
    if math.isnan(v):
        return "NAN"
    if math.isinf(v):
        return "INFINITY" if v > 0 else "(-INFINITY)"
    return v.hex()


def int_array(name: str, ctype: str, values: np.ndarray | list[int]) -> str:
    body = ",".join(str(int(v)) for v in values) or "0"
    return f"static const {ctype} {name}[] = {{{body}}};"
