"""The one module that imports mlflow: tracking runs, the model registry, aliases, loading.

The tracking URI is ``MLFLOW_TRACKING_URI`` when set, otherwise ``params.register.tracking_uri``
(``sqlite:///mlflow.db`` by default). Stages call :func:`tracked_run` and the ``log_*``
helpers; nobody else talks to mlflow.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
MODEL_URI_PREFIX = "models:/"


def _mlflow():
    # Imported lazily: mlflow costs ~1 s to import and predict with a local folder needs none.
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return mlflow


def tracking_uri(default: str = DEFAULT_TRACKING_URI) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default


def configure(default_uri: str = DEFAULT_TRACKING_URI) -> str:
    """Point mlflow at the tracking store and registry; returns the URI in use."""
    mlflow = _mlflow()
    uri = tracking_uri(default_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


@contextlib.contextmanager
def tracked_run(
    experiment: str,
    run_name: str,
    *,
    tags: Mapping[str, str] | None = None,
    tracking_default: str = DEFAULT_TRACKING_URI,
) -> Iterator[str]:
    """Start an MLflow run in ``experiment``; yields the run id; ends it (FAILED on error)."""
    mlflow = _mlflow()
    configure(tracking_default)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=run_name, tags=dict(tags or {})) as run:
        yield run.info.run_id


def log_params(params: Mapping[str, Any], prefix: str = "") -> None:
    """Log a (nested) mapping as flat ``a.b.c`` params."""
    flat: dict[str, str] = {}

    def walk(obj: Any, key: str) -> None:
        if isinstance(obj, Mapping):
            for k, v in obj.items():
                walk(v, f"{key}.{k}" if key else str(k))
        else:
            flat[key] = str(obj)[:6000]

    walk(params, prefix)
    mlflow = _mlflow()
    items = list(flat.items())
    for i in range(0, len(items), 100):
        mlflow.log_params(dict(items[i : i + 100]))


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    _mlflow().log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    _mlflow().log_artifact(str(path), artifact_path=artifact_path)


def log_artifacts(folder: str | Path, artifact_path: str | None = None) -> None:
    _mlflow().log_artifacts(str(folder), artifact_path=artifact_path)


def log_figure(figure: Any, artifact_file: str) -> None:
    _mlflow().log_figure(figure, artifact_file)


def log_dict(data: Mapping[str, Any], artifact_file: str) -> None:
    _mlflow().log_dict(dict(data), artifact_file)


def active_run_id() -> str | None:
    run = _mlflow().active_run()
    return run.info.run_id if run else None


def is_model_uri(ref: str) -> bool:
    return ref.startswith(MODEL_URI_PREFIX) or ref.startswith("runs:/")


def download_model_dir(uri: str, tracking_default: str = DEFAULT_TRACKING_URI) -> Path:
    """Resolve ``models:/name@alias`` (or ``runs:/``) to a local folder holding the model files.

    The registered pyfunc carries the model folder as its artifact ``model_dir``; only those
    plain files are downloaded, nothing is unpickled.
    """
    mlflow = _mlflow()
    configure(tracking_default)
    dst = Path(tempfile.mkdtemp(prefix="roadseg-model-"))
    local = mlflow.artifacts.download_artifacts(artifact_uri=uri.rstrip("/") + "/artifacts/model_dir", dst_path=str(dst))
    return Path(local)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
