"""The MLflow pyfunc flavour of the road U-Net, logged "from code".

MLflow runs this file when the model is loaded (``mlflow.pyfunc.load_model``): the model is
rebuilt from its folder (safetensors + model.json) and nothing is unpickled. This is the one
file besides registry.py that imports mlflow, because models-from-code requires it.

Input: float32 array (N, C, H, W) of raw band values in the model's band order (a model
trained with percentile normalisation stretches each input by its own 2-98 % band range).
Output: float32 array (N, 1, H, W) of road probabilities.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class RoadUNetPyfunc(PythonModel):
    def load_context(self, context) -> None:
        from pipeline.model import load_model, pick_device

        self.device = pick_device("auto")
        self.model, self.config = load_model(context.artifacts["model_dir"], self.device)

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> np.ndarray:
        x = np.asarray(model_input, dtype=np.float32)
        if x.ndim == 3:
            x = x[None]
        if x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"input has {x.shape[1]} bands, the model expects {self.config.in_channels} ({self.config.bands})"
            )
        if self.config.normalisation == "percentile":  # each input's own band range -> 0..1
            lo, hi = np.percentile(x, (2, 98), axis=(2, 3), keepdims=True)
            x = (x - lo) / np.maximum(hi - lo, 1.0)
        mean = np.asarray(self.config.mean, np.float32)[None, :, None, None]
        std = np.asarray(self.config.std, np.float32)[None, :, None, None]
        t = torch.from_numpy((x - mean) / std).to(self.device)
        h, w = t.shape[-2:]
        ph, pw = (-h) % 32, (-w) % 32
        if ph or pw:
            t = F.pad(t, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "constant")
        with torch.no_grad():
            prob = torch.sigmoid(self.model(t))[..., :h, :w]
        return prob.float().cpu().numpy()


set_model(RoadUNetPyfunc())
