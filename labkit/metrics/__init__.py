"""Accuracy and F1 through the `evaluate` API, working offline.

`evaluate.load("accuracy")` fetches a script from the hub. labkit ships the two metric scripts it needs
beside this file and loads them by path, which `evaluate` supports without any network.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

METRICS_DIR = Path(__file__).resolve().parent
BUNDLED = ("accuracy", "f1")


@lru_cache(maxsize=None)
def load_metric(name: str):
    """An `evaluate` metric module: labkit's bundled copy for accuracy/f1, otherwise `evaluate.load(name)` (hub)."""
    import evaluate

    if name in BUNDLED:
        return evaluate.load(str(METRICS_DIR / name))
    try:
        return evaluate.load(name)
    except Exception as err:  # noqa: BLE001 - evaluate raises many kinds; we re-raise with the fix
        raise ValueError(
            f"metric {name!r} is not bundled with labkit (bundled: {', '.join(BUNDLED)}) and could not be "
            f"loaded from the hub ({type(err).__name__}: {err}). Connect to the hub or use a bundled metric."
        ) from err


def classification_metrics(predictions, references) -> dict[str, float]:
    """Accuracy and binary F1 (positive label 1) of integer predictions against references."""
    predictions, references = np.asarray(predictions).tolist(), np.asarray(references).tolist()
    out = {}
    for name in BUNDLED:
        out.update(load_metric(name).compute(predictions=predictions, references=references))
    return out


def trainer_compute_metrics(eval_pred) -> dict[str, float]:
    """`compute_metrics` for the HF Trainer: argmax of the logits, then accuracy and F1."""
    logits, labels = eval_pred
    if isinstance(logits, tuple):
        logits = logits[0]
    return classification_metrics(np.argmax(logits, axis=-1), labels)
