"""What a trained model is: its config (model.json) and where its folder is. No torch here.

A trained model is a folder: ``model.safetensors`` (the smp.Unet state dict) and
``model.json`` (:class:`ModelConfig`). The predict client reads only this module, so
``pipeline predict`` starts without importing torch; the workers build the network
(``pipeline.model``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model.json"


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
    decoder_upsampling: str = Field("interp", description="interp or transposed")
    dropout: float = Field(0.0, description="Dropout before the segmentation head")
    decoder_attention: str = Field("none", description="Decoder attention: none or scse")
    data_fingerprint: str = Field("", description="Fingerprint of the training chips")
    git_commit: str = Field("", description="Commit of the code that trained the model")
    metrics: dict[str, float] = Field(default_factory=dict, description="Validation/test metrics")

    @property
    def in_channels(self) -> int:
        return len(self.bands)


def read_config(folder: Path) -> ModelConfig:
    path = Path(folder) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{folder}: not a model folder (no {CONFIG_FILE})")
    return ModelConfig.model_validate(json.loads(path.read_text()))


def resolve_model(ref: str | Path, tracking_default: str = "sqlite:///mlflow.db") -> Path:
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
