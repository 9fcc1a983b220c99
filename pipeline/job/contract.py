"""What every method must deliver before its row is written: finite values, maps in [0, 1].

A NaN from an odd image or option must become a failed row with the reason, never a row with
status ``ok`` that later evaluation would score. Checked by the rows stage on the host copies of
a whole batch at once.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def contract_violations(
    label: str, native: np.ndarray, finite: Mapping[str, np.ndarray | None]
) -> list[str | None]:
    """Per image of the batch, why method ``label``'s outputs break the contract, or None.

    ``native``: (B, T, h, w) maps; ``finite``: other (B, ...) outputs that must be finite
    (logits, probabilities, weights).
    """
    flat = native.reshape(len(native), -1)
    finite_maps = np.isfinite(flat).all(axis=1)
    values = np.where(np.isfinite(flat), flat, 0.0)
    empty = np.zeros(len(flat))  # a map of no pixels breaks nothing
    low = values.min(axis=1) if flat.size else empty
    high = values.max(axis=1) if flat.size else empty
    broken = {
        name: ~np.isfinite(array.reshape(len(array), -1)).all(axis=1)
        for name, array in finite.items()
        if array is not None
    }
    reasons: list[str | None] = []
    for b in range(len(flat)):
        if not finite_maps[b]:
            reasons.append(f"{label}: map has non-finite values (NaN or infinity)")
        elif low[b] < 0.0 or high[b] > 1.0:
            reasons.append(f"{label}: map values outside [0, 1] ({low[b]:.3g}..{high[b]:.3g})")
        else:
            reasons.append(
                next((f"{label}: non-finite {n}" for n, bad in broken.items() if bad[b]), None)
            )
    return reasons


__all__ = ["contract_violations"]
