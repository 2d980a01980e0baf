"""The MLflow pyfunc flavour of the road U-Net, logged "from code".

MLflow runs this file when the model is loaded (``mlflow.pyfunc.load_model``): the model is
rebuilt from its folder (safetensors + model.json) and nothing is unpickled. This is the one
file besides registry.py that imports mlflow, because models-from-code requires it.

Input: float32 array (N, C, H, W) (or one (C, H, W) image) of raw band values in the model's
band order (a model trained with percentile normalisation stretches each input by its own
2-98 % band range). Output: float32 array (N, 1, H, W) of road probabilities.

The numbers are those of ``pipeline predict`` on one window: the same normalisation
(``normalise.standardise``) and the same forward pass (``inference.forward_padded``: any
height and width, channels-last, precision ``auto``).
"""

from __future__ import annotations

import numpy as np
import torch
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel

from pipeline.inference import forward_padded, load_for_inference
from pipeline.normalise import percentile_stretch, standardise


class RoadUNetPyfunc(PythonModel):
    def load_context(self, context) -> None:
        self.model, self.config, self.device = load_for_inference(
            context.artifacts["model_dir"], "auto"
        )

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        x = np.asarray(model_input, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        if x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"input has {x.shape[1]} bands, the model expects {self.config.in_channels} ({self.config.bands})"
            )
        batch = torch.from_numpy(np.stack([self._normalise(image) for image in x]))
        return forward_padded(self.model, batch, self.device)[:, None]

    def _normalise(self, image: np.ndarray) -> np.ndarray:
        """One (C, H, W) input as predict normalises a raster (no nodata in an array input)."""
        stretch = None
        if self.config.normalisation == "percentile":  # this input's own band range -> 0..1
            pixels = image.reshape(image.shape[0], -1)
            stretch = np.asarray(percentile_stretch(pixels), np.float32)
        mean = np.asarray(self.config.mean, np.float32)
        std = np.asarray(self.config.std, np.float32)
        return standardise(image, mean, std, stretch=stretch)


set_model(RoadUNetPyfunc())
