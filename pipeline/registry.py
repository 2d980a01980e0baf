"""The one module that imports mlflow: tracking runs, the model registry, aliases, loading.

The tracking URI is ``MLFLOW_TRACKING_URI`` when set, otherwise ``params.register.tracking_uri``
(``sqlite:///mlflow.db`` by default). Stages call :func:`tracked_run` and the ``log_*``
helpers; nobody else talks to mlflow.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline.atomic import default_dir_mode

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
MODEL_URI_PREFIX = "models:/"
NOTE_TAG = "mlflow.note.content"  # the tag the MLflow UI shows as a run's or model's description


def _mlflow():
    # Imported lazily: mlflow costs ~1 s to import and predict with a local folder needs none.
    import logging

    # MLflow retries a failing tracking server 7 times with a doubling backoff (minutes of
    # silence): here 3 times (1 + 2 + 4 s), each request given 30 s. A user's setting wins.
    for var, value in _HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(var, value)
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return mlflow


_HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
SERVER_PROBE_TIMEOUT_S = 3.0


def check_reachable(uri: str, timeout: float = SERVER_PROBE_TIMEOUT_S) -> None:
    """For an ``http(s)://`` tracking URI, open a connection to the server: LookupError within
    ``timeout`` seconds when nothing answers, instead of MLflow's retries and a misleading
    "not found". Other URIs (SQLite, files) are not probed."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as e:
        raise LookupError(
            f"{uri}: the MLflow tracking server is unreachable ({e.strerror or e}); start it, "
            "set MLFLOW_TRACKING_URI to one that runs, or pass a model folder with --model"
        ) from None


def tracking_uri(default: str = DEFAULT_TRACKING_URI) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default


_URI_ENV_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def configure(default_uri: str = DEFAULT_TRACKING_URI) -> str:
    """Point mlflow at the tracking store and registry; returns the URI in use.

    ``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI`` (and the registry's
    variable) into this process's environment, where it would then beat every later
    ``default_uri``: a notebook that predicts with one store and then another would silently
    keep the first. The environment is put back as it was, so only a variable the user set wins.
    """
    mlflow = _mlflow()
    uri = tracking_uri(default_uri)
    check_reachable(uri)
    before = {var: os.environ.get(var) for var in _URI_ENV_VARS}
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
    finally:
        for var, value in before.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
    return uri


@contextlib.contextmanager
def tracked_run(
    experiment: str,
    run_name: str,
    *,
    tags: Mapping[str, str] | None = None,
    tracking_default: str = DEFAULT_TRACKING_URI,
    run_id: str | None = None,
) -> Iterator[str]:
    """Start (or, given ``run_id``, reopen) an MLflow run; yields its id; ends it (FAILED on error)."""
    mlflow = _mlflow()
    configure(tracking_default)
    mlflow.set_experiment(experiment)
    kwargs = {"run_id": run_id} if run_id else {"run_name": run_name, "tags": dict(tags or {})}
    with mlflow.start_run(**kwargs) as run:
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


def log_text(text: str, artifact_file: str) -> None:
    _mlflow().log_text(text, artifact_file)


def set_run_description(text: str) -> None:
    """The active run's description (markdown), shown at the top of its page in the MLflow UI."""
    _mlflow().set_tag(NOTE_TAG, text)


def set_logged_model_description(model_uri: str, text: str) -> None:
    """The description (markdown) of a model logged by :func:`log_pyfunc_model`
    (``models:/m-<id>``): the MLflow UI shows it on the page a version links as its source model."""
    _client().set_logged_model_tags(model_uri.removeprefix(MODEL_URI_PREFIX), {NOTE_TAG: text})


def active_run_id() -> str | None:
    run = _mlflow().active_run()
    return run.info.run_id if run else None


def is_model_uri(ref: str) -> bool:
    return ref.startswith(MODEL_URI_PREFIX) or ref.startswith("runs:/")


_VERSION_URI = re.compile(r"models:/([^/@]+)(?:/(\d+)|@(.+))")


def parse_version_uri(ref: str) -> tuple[str, str | None, str | None] | None:
    """``models:/name/3`` -> (name, "3", None); ``models:/name@alias`` -> (name, None, alias);
    anything else (a folder, ``runs:/``, a stage such as ``models:/name/Production``) -> None."""
    m = _VERSION_URI.fullmatch(ref)
    return (m.group(1), m.group(2), m.group(3)) if m else None


def _pyfunc_artifact_dir(model_root: Path) -> Path:
    """The model folder inside a downloaded pyfunc model, as recorded in its MLmodel file."""
    import yaml

    mlmodel = yaml.safe_load((model_root / "MLmodel").read_text())
    rel = mlmodel["flavors"]["python_function"]["artifacts"]["model_dir"]["path"]
    folder = (model_root / rel).resolve()
    if not folder.is_relative_to(model_root.resolve()):
        raise LookupError(
            f"{model_root / 'MLmodel'}: its model_dir ({rel}) points outside the downloaded "
            "model; refusing to load files from there (re-register the model)"
        )
    return folder


CACHE_ENV = "ROADSEG_CACHE_DIR"


def model_cache_dir() -> Path:
    """Where downloaded registry models are kept: ``$ROADSEG_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/roadseg/models`` (``~/.cache/roadseg/models``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "roadseg" / "models"


def _store_identity(uri: str) -> str:
    """The tracking store as an absolute string (a relative SQLite path depends on the cwd)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + os.path.abspath(uri[len(prefix) :])
    return uri


def _missing_sqlite_file(store: str) -> Path | None:
    """The file of an absolute ``sqlite:///`` store that does not exist, else None."""
    prefix = "sqlite:///"
    if not store.startswith(prefix):
        return None
    path = Path(store[len(prefix) :])
    return None if path.exists() else path


def _cache_key(uri: str, store: str) -> str | None:
    """A folder name that names exactly one immutable set of model files, or None.

    A registered version (``models:/name/3``, or an alias resolved to its version now) and a run
    artifact (``runs:/<id>/path``) never change once written, so their files are downloaded
    once per store. Anything else (a stage such as ``models:/name/Production``) is not cached.
    """
    import hashlib

    parsed = parse_version_uri(uri)
    if parsed:
        name, version, alias = parsed
        client = _client()
        mv = (
            client.get_model_version(name, version)
            if version
            else client.get_model_version_by_alias(name, alias)
        )
        ident, label = f"{name}/{mv.version}/{mv.run_id}/{mv.source}", f"{name}-v{mv.version}"
    elif uri.startswith("runs:/"):
        ident, label = uri, "run-" + uri[len("runs:/") :].split("/", 1)[0]
    else:
        return None
    digest = hashlib.sha256(f"{store}\n{ident}".encode()).hexdigest()[:12]
    return f"{''.join(c if c.isalnum() or c in '-_.' else '_' for c in label)}-{digest}"


def download_model_dir(uri: str, tracking_default: str = DEFAULT_TRACKING_URI) -> Path:
    """Resolve ``models:/name@alias`` (or ``/version``, or ``runs:/``) to a local model folder.

    Registered versions and run artifacts are immutable, so they are downloaded once into
    :func:`model_cache_dir` (under a name from the store, model and version) and reused by
    every later call; the download goes to a hidden folder renamed into place, so a killed
    download is never mistaken for a model. An alias is resolved to its version on every call,
    so moving ``champion`` takes effect at once. Only plain files (safetensors weights,
    model.json) are used from the download; nothing is unpickled.
    """
    import shutil

    mlflow = _mlflow()
    store = _store_identity(configure(tracking_default))
    missing = _missing_sqlite_file(store)
    if missing is not None:  # connecting would create an empty store there
        raise LookupError(
            f"{uri}: no MLflow store at {missing}; run from the project folder that holds it, set "
            "MLFLOW_TRACKING_URI, or pass a model folder with --model"
        )
    try:
        key = _cache_key(uri, store)
        cache = model_cache_dir()
        if key is not None and (hit := _model_root(cache / key)) is not None:
            return _pyfunc_artifact_dir(hit)
        if key is None:
            dst = Path(tempfile.mkdtemp(prefix="roadseg-model-"))  # uncacheable: a fresh copy
        else:
            cache.mkdir(parents=True, exist_ok=True)
            dst = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache))
            # mkdtemp makes it owner-only; the cache is read by Dask workers of other users
            os.chmod(dst, default_dir_mode())
        try:
            root = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
        except BaseException:
            shutil.rmtree(dst, ignore_errors=True)
            raise
    except mlflow.exceptions.MlflowException as e:
        raise LookupError(f"{uri}: not found in the registry at {store} ({e.message})") from e
    if key is None:
        return _pyfunc_artifact_dir(root)
    try:
        os.rename(dst, cache / key)
    except OSError:  # another process cached the same version first: use theirs
        shutil.rmtree(dst, ignore_errors=True)
    hit = _model_root(cache / key)
    if hit is None:
        raise LookupError(f"{uri}: the download in {cache / key} holds no MLmodel file")
    return _pyfunc_artifact_dir(hit)


def _model_root(folder: Path) -> Path | None:
    """The folder holding the MLmodel file of a (cached) download, or None."""
    found = sorted(folder.rglob("MLmodel"), key=lambda p: len(p.parts)) if folder.is_dir() else []
    return found[0].parent if found else None


# ----------------------------------------------------------------------------- registry
def log_pyfunc_model(model_dir: Path, input_example: Any) -> str:
    """Log the U-Net folder as a pyfunc model "from code" in the active run; returns its URI."""
    mlflow = _mlflow()
    from mlflow.models import infer_signature

    code = Path(__file__).with_name("pyfunc.py")
    import numpy as np

    example = np.asarray(input_example, dtype=np.float32)
    output = np.zeros((example.shape[0], 1, *example.shape[2:]), np.float32)
    info = mlflow.pyfunc.log_model(
        name="model",
        pip_requirements=_requirements(),
        python_model=str(code),
        artifacts={"model_dir": str(model_dir)},
        signature=infer_signature(example, output),
        input_example=example,
    )
    return info.model_uri


def _requirements() -> list[str]:
    """The runtime packages a serving environment needs, at the versions installed here.

    Given explicitly: MLflow would otherwise load the model once more to infer them.
    """
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in (
        "torch",
        "segmentation-models-pytorch",
        "safetensors",
        "numpy",
        "pydantic",
        "mlflow",
    ):
        try:
            out.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            out.append(dist)
    return out


def _client():
    return _mlflow().tracking.MlflowClient()


def register_version(
    model_uri: str, name: str, tags: Mapping[str, str], description: str = ""
) -> str:
    """Register ``model_uri`` as a new version of ``name``; returns the version number."""
    mlflow = _mlflow()
    mv = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})
    if description:
        _client().update_model_version(name, mv.version, description=description)
    return str(mv.version)


def alias_version(name: str, alias: str) -> str | None:
    """The version an alias points to, or None."""
    mlflow = _mlflow()
    try:
        return str(_client().get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def version_tags(name: str, version: str) -> dict[str, str]:
    return dict(_client().get_model_version(name, version).tags)


def set_alias(name: str, alias: str, version: str) -> None:
    _client().set_registered_model_alias(name, alias, version)


def delete_alias(name: str, alias: str) -> None:
    _client().delete_registered_model_alias(name, alias)


def list_versions(name: str) -> list[dict[str, Any]]:
    """Versions of ``name`` (newest first) with their aliases and tags."""
    mlflow = _mlflow()
    store = _store_identity(mlflow.get_tracking_uri())
    missing = _missing_sqlite_file(store)
    if missing is not None:  # asking would create an empty store there
        raise LookupError(
            f"no MLflow store at {missing}, so no registered model {name!r}; run from the "
            "project folder that holds it, or set MLFLOW_TRACKING_URI"
        )
    client = _client()
    try:
        aliases = client.get_registered_model(name).aliases
    except mlflow.exceptions.MlflowException as e:
        raise LookupError(f"no registered model {name!r} at {mlflow.get_tracking_uri()}") from e
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    out = []
    for mv in client.search_model_versions(f"name='{name}'"):
        out.append(
            dict(
                version=str(mv.version),
                aliases=sorted(by_version.get(str(mv.version), [])),
                tags=dict(mv.tags),
                run_id=mv.run_id,
                created=mv.creation_timestamp,
            )
        )
    return sorted(out, key=lambda r: int(r["version"]), reverse=True)


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
