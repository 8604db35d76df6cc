"""Train the quickstart model: a logistic regression on scikit-learn's bundled iris data set.

Writes model.pkl beside this file and prints one line. Skips the work when model.pkl is newer
than this script, so `make run` stays fast after the first time. No download is involved.
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MODEL_PATH = HERE / "model.pkl"


def train() -> dict[str, Any]:
    """Fit the model and return what replica.py needs: the estimator and its class names."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    iris = load_iris()
    model = LogisticRegression(max_iter=1000)
    model.fit(iris.data, iris.target)
    return {
        "model": model,
        "class_names": [str(name) for name in iris.target_names],
        "feature_names": [str(name) for name in iris.feature_names],
        "training_accuracy": float(model.score(iris.data, iris.target)),
    }


def is_up_to_date(model_path: Path = MODEL_PATH) -> bool:
    # ">=": on file systems with coarse timestamps both files can carry the same time.
    return model_path.exists() and model_path.stat().st_mtime >= Path(__file__).stat().st_mtime


def save(bundle: dict[str, Any], model_path: Path) -> None:
    # Write a file of our own, then rename: replicas starting together on a fresh machine may
    # all train at once, and none of them must ever read a half-written model.
    partial = model_path.with_name(f"{model_path.name}.{os.getpid()}.partial")
    with partial.open("wb") as handle:
        pickle.dump(bundle, handle)
    partial.replace(model_path)


def ensure_model(model_path: Path = MODEL_PATH) -> tuple[dict[str, Any], bool]:
    """Load the model, training and saving it first if needed. Returns (bundle, trained_now)."""
    if is_up_to_date(model_path):
        try:
            with model_path.open("rb") as handle:
                return pickle.load(handle), False
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
            pass  # unreadable, or saved by another scikit-learn version: train again
    bundle = train()
    save(bundle, model_path)
    return bundle, True


def main() -> int:
    if is_up_to_date():
        print(f"model up to date: {MODEL_PATH}")
        return 0
    bundle, _ = ensure_model()
    accuracy = bundle["training_accuracy"]
    print(f"trained iris logistic regression (training accuracy {accuracy:.3f}): {MODEL_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
