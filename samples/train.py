"""Builds the sample models' artifacts locally (no downloads): a small sklearn iris classifier.

Run ``python -m samples.train``; ``make up`` and ``meshserve up`` do it when artifacts are missing.
"""

from __future__ import annotations

from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parent / "models" / "artifacts"


def train_iris(folder: Path) -> Path:
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    data = load_iris()
    model = LogisticRegression(max_iter=1000).fit(data.data, data.target)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.joblib"
    joblib.dump(model, path)
    return path


def ensure_artifacts() -> None:
    if not (ARTIFACTS / "iris" / "model.joblib").exists():
        train_iris(ARTIFACTS / "iris")


if __name__ == "__main__":
    train_iris(ARTIFACTS / "iris")
    print(f"wrote {ARTIFACTS / 'iris' / 'model.joblib'}")
