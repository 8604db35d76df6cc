"""An Azure ML scoring script for azmlinfsrv: init() once per worker, run(raw_data) per request.

The model is a logistic regression on scikit-learn's bundled iris data set (no download), trained
in init() in well under a second. The request body is JSON:

    {"data": [[5.1, 3.5, 1.4, 0.2], ...]}   -> {"predictions": ["setosa", ...]}

Two switches exist so tests can drive failure and load through the router:

    {"raise": true}     run() raises: azmlinfsrv answers 500 with x-ms-run-function-failed
    {"sleep_ms": 300}   run() sleeps that long first (a slow model; combines with "data")
"""

from __future__ import annotations

import json
import time
from typing import Any

CLASS_NAMES: list[str] = []
_model: Any = None


class ScoringError(RuntimeError):
    """What run() raises when the request asks it to."""


def init() -> None:
    """Train the model (azmlinfsrv calls this once per worker before serving)."""
    global _model
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    iris = load_iris()
    _model = LogisticRegression(max_iter=1000).fit(iris.data, iris.target)
    CLASS_NAMES[:] = [str(name) for name in iris.target_names]


def run(raw_data: str | bytes) -> dict[str, Any]:
    """Score the rows in `data`; `raise` and `sleep_ms` are test switches (see the docstring)."""
    request = json.loads(raw_data)
    if not isinstance(request, dict):
        raise ValueError("the body must be a JSON object")
    if request.get("raise"):
        raise ScoringError("run() was asked to raise")
    sleep_ms = request.get("sleep_ms", 0)
    if sleep_ms:
        time.sleep(float(sleep_ms) / 1000)
    rows = request.get("data", [])
    if not rows:
        return {"predictions": [], "classes": CLASS_NAMES}
    labels = _model.predict(rows)
    return {"predictions": [CLASS_NAMES[int(i)] for i in labels], "classes": CLASS_NAMES}
