"""What a trained model is: its config (model.json) and where its folder is. No torch here.

A trained model is a folder: ``model.safetensors`` (the smp.Unet state dict) and
``model.json`` (:class:`ModelConfig`). The predict client reads only this module, so
``pipeline predict`` starts without importing torch; the workers build the network
(``pipeline.model``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from pipeline.registry import DEFAULT_TRACKING_URI

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model.json"
# smp's U-Net default; what every model saved before train.decoder_channels existed has
DECODER_CHANNELS = (256, 128, 64, 32, 16)


class ModelError(ValueError):
    """A model folder that cannot be used as it is; the message names the file and the fix."""


class ModelConfig(BaseModel):
    """What a trained model is and how to feed it; stored as model.json beside the weights."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    architecture: str = Field("unet", description="Segmentation architecture (smp)")
    encoder: str = Field(description="Zoo backbone used as encoder, e.g. resnet18")
    encoder_weights: str = Field(
        "none", description="How the encoder was initialised: repo, none, imagenet"
    )
    init_from: str = Field(
        "", description="The model this one was fine-tuned from; '' when trained from scratch"
    )
    bands: list[str] = Field(description="Input band names, in order")
    mean: list[float] = Field(description="Per-band mean used for normalisation")
    std: list[float] = Field(description="Per-band standard deviation used for normalisation")
    normalisation: Literal["dataset", "percentile"] = Field(
        "dataset",
        description="dataset: (x - mean) / std; percentile: each raster's bands first stretched "
        "between their own 2nd and 98th percentiles (to 0..1), then (x - mean) / std",
    )
    chip_size: int = Field(description="Training chip side in pixels")
    dtype: str = Field(
        "", description="Sample type of the training imagery (uint8, uint16, ...); '' unknown"
    )
    gsd_m: float | None = Field(
        None, gt=0, description="Median pixel size of the training scenes, metres"
    )
    threshold: float = Field(
        0.5, ge=0, le=1, description="Decision threshold on the road probability"
    )
    threshold_tta: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Decision threshold on the mean of the eight flips and rotations (predict "
        "--tta), chosen by evaluate with tta on the validation chips; None: threshold",
    )
    decoder_upsampling: str = Field("interp", description="interp or transposed")
    dropout: float = Field(0.0, description="Dropout before the segmentation head")
    decoder_attention: str = Field("none", description="Decoder attention: none or scse")
    decoder_channels: list[PositiveInt] = Field(
        default_factory=lambda: list(DECODER_CHANNELS),
        min_length=5,
        max_length=5,
        description="Output channels of the five U-Net decoder blocks, deepest first",
    )
    data_fingerprint: str = Field("", description="Fingerprint of the training chips")
    git_commit: str = Field("", description="Commit of the code that trained the model")
    metrics: dict[str, float] = Field(default_factory=dict, description="Validation/test metrics")
    weights_sha256: str = Field(
        "",
        description="SHA-256 of model.safetensors, recorded when the model was saved and checked "
        "when it is loaded; '' (models saved before 2026-12) skips the check",
    )

    @model_validator(mode="after")
    def _one_statistic_per_band(self) -> ModelConfig:
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != len(self.bands):
                raise ValueError(
                    f"{name} has {len(values)} value(s) but bands lists {len(self.bands)} "
                    f"({', '.join(self.bands)}); give one {name} per band"
                )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive for every band, got {self.std}")
        return self

    @property
    def in_channels(self) -> int:
        return len(self.bands)


def config_json(config: ModelConfig) -> str:
    """model.json's text. ``threshold_tta`` (2026-12-07) is written only when set: a roadseg
    from before it refuses a file naming a field it does not know, and most models have none."""
    unset = {"threshold_tta"} if config.threshold_tta is None else None
    return config.model_dump_json(indent=2, exclude=unset)


def read_config(folder: Path) -> ModelConfig:
    """The model.json of ``folder``; ModelError naming the file when it is not a valid config."""
    path = Path(folder) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{folder}: not a model folder (no {CONFIG_FILE})")
    try:
        return ModelConfig.model_validate(json.loads(path.read_text()))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(
            f"{path}: not JSON ({e}); restore the file written with the model"
        ) from None
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'model'}: {err['msg']}" for err in e.errors()
        )
        newer = any(err["type"] == "extra_forbidden" for err in e.errors())
        hint = "; a field this roadseg does not know: saved by a newer one? upgrade" * newer
        raise ModelError(f"{path}: not a valid model config ({problems}){hint}") from None


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()


def check_weights(folder: Path, config: ModelConfig) -> None:
    """Refuse weights that are not the ones saved with ``config``, or not safetensors at all.

    The SHA-256 recorded in model.json at save time must match (a model.json without one is
    not checked); the safetensors header must parse and describe the whole file. A corrupted
    data byte would otherwise load and predict garbage. No torch: the predict client runs this
    before any cluster starts.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise ModelError(f"{path}: missing; a model folder holds {WEIGHTS_FILE} and {CONFIG_FILE}")
    if config.weights_sha256 and file_sha256(path) != config.weights_sha256:
        raise ModelError(
            f"{path}: checksum differs from the weights_sha256 in {CONFIG_FILE}; the file is "
            "corrupt or was replaced: copy or download the model again"
        )
    try:
        with safe_open(str(path), framework="numpy"):
            pass
    except (SafetensorError, OSError) as e:
        raise ModelError(
            f"{path}: not a readable safetensors file ({e}); copy or download the model again"
        ) from None


def resolve_model(ref: str | Path, tracking_default: str = DEFAULT_TRACKING_URI) -> Path:
    """A model folder for ``ref``: a local folder as it is, or a ``models:/…`` URI downloaded."""
    from pipeline import registry

    if isinstance(ref, str) and registry.is_model_uri(ref):
        return registry.download_model_dir(ref, tracking_default=tracking_default)
    path = Path(ref)
    if not (path / CONFIG_FILE).exists():
        raise FileNotFoundError(
            f"{path}: no model folder here (expected {CONFIG_FILE} and {WEIGHTS_FILE})"
        )
    return path
