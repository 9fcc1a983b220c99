"""What every method must deliver before its row is written: finite values, maps in [0, 1].

A NaN from an odd image or option must become a failed row with the reason, never a row with
status ``ok`` that later evaluation would score.
"""

from __future__ import annotations

import numpy as np


def contract_violation(label: str, arrays: dict[str, np.ndarray], b: int) -> str | None:
    """Why image ``b``'s outputs of method ``label`` break the contract, or None when they hold."""
    native = arrays["native"][b]
    if not np.isfinite(native).all():
        return f"{label}: map has non-finite values (NaN or infinity)"
    if native.size and (native.min() < 0.0 or native.max() > 1.0):
        return f"{label}: map values outside [0, 1] ({native.min():.3g}..{native.max():.3g})"
    for name in ("logits", "probabilities", "weights"):
        if name in arrays and not np.isfinite(arrays[name][b]).all():
            return f"{label}: non-finite {name}"
    return None


__all__ = ["contract_violation"]
