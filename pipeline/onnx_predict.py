"""Predict's windows through onnxruntime instead of torch (``--runtime onnx``), on the workers.

Each worker exports the model it loaded (``export.export_graph``, in memory) once and keeps an
onnxruntime session of it (``parallel.worker_cached``), with as many intra-op threads as the
worker gives torch. The session takes the same normalised batches as the torch model and
returns the same probabilities (within 1e-5, tests/test_export.py), so everything around it,
windows, blending, streaming, is predict's own: a pixel still does not depend on how many
workers ran or how the raster was split into blocks. onnxruntime ran the demo U-Net's windows
in about half the CPU time of torch on our 2-core machine (BENCHMARKS.md); it runs on CPU
only, in float32.
"""

from __future__ import annotations

import io

import numpy as np
import torch

from pipeline import parallel
from pipeline.export import INPUT_NAME, export_graph


def _session(model: torch.nn.Module, in_channels: int):
    import onnxruntime as ort

    buffer = io.BytesIO()
    export_graph(model, in_channels, buffer)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])


def worker_session(model_dir: str, model: torch.nn.Module, in_channels: int):
    """This worker's onnxruntime session of ``model`` (loaded from ``model_dir``), built on
    first use."""
    return parallel.worker_cached(("onnx", model_dir), lambda: _session(model, in_channels))


def forward_probs(
    model_dir: str, model: torch.nn.Module, x: np.ndarray, tta: bool = False
) -> np.ndarray:
    """Road probability (N, H, W) float32 for a normalised batch (N, C, H, W), as
    ``inference.forward_probs`` computes it; ``tta`` averages the eight dihedral transforms."""
    session = worker_session(model_dir, model, x.shape[1])

    def run(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {INPUT_NAME: np.ascontiguousarray(batch, np.float32)})[0][:, 0]

    if not tta:
        return run(x)
    prob = np.zeros((x.shape[0], x.shape[2], x.shape[3]), np.float32)
    for k in range(4):
        for flip in (False, True):
            t = np.rot90(x, k, axes=(-2, -1))
            t = t[..., ::-1] if flip else t
            y = run(t)
            y = y[..., ::-1] if flip else y
            prob += np.rot90(y, -k, axes=(-2, -1))
    return prob / 8
