"""onnxruntime against torch for predict's CPU inference of the same windows.

The demo's U-Net (rs-<encoder>, 4 bands, random weights: speed does not depend on them) is
exported with ``pipeline.export.export_onnx`` and both run the same normalised batches of
``--batch`` windows of ``--window`` px: torch as predict runs it (``inference.forward_probs``:
channels_last, inference_mode, float32 on CPU) and onnxruntime's CPU provider with all graph
optimisations. Both use ``--threads`` threads (default: every core). Timings alternate
between the two, after a warm-up each; figures are medians of ``--repeats``, wall and process
CPU seconds (the fairer figure on a shared machine, though spinning threads count in it). Also prints the
largest probability difference between the two.

    .venv/bin/python benchmarks/onnx_runtime.py
    .venv/bin/python benchmarks/onnx_runtime.py --window 256 --batch 4 --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from pipeline.export import INPUT_NAME, export_onnx  # noqa: E402
from pipeline.inference import forward_probs  # noqa: E402
from pipeline.model import build_unet, load_model, save_model  # noqa: E402
from pipeline.model_config import ModelConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2, help="windows per forward pass (CPU default)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = ModelConfig(
        encoder=args.encoder, bands=["red", "green", "blue", "nir"], mean=[0.0] * 4,
        std=[1.0] * 4, chip_size=256,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_model(build_unet(config), config, Path(tmp) / "unet")
        t0 = time.perf_counter()
        onnx_path = export_onnx(folder, Path(tmp) / "unet.onnx")
        export_s = time.perf_counter() - t0
        model, _ = load_model(folder, torch.device("cpu"))
        model = model.to(memory_format=torch.channels_last)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    x = np.random.default_rng(0).normal(size=(args.batch, 4, args.window, args.window))
    x = x.astype(np.float32)

    def run_torch() -> np.ndarray:
        return forward_probs(model, torch.from_numpy(x), torch.device("cpu"))

    def run_onnx() -> np.ndarray:
        return session.run(None, {INPUT_NAME: x})[0][:, 0]

    diff = float(np.abs(run_torch() - run_onnx()).max())  # also the warm-up of both
    times: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
    cpu: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
    for _ in range(args.repeats):
        for name, fn in (("torch", run_torch), ("onnxruntime", run_onnx)):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    print(
        f"U-Net rs-{args.encoder}, {args.batch} x {args.window}^2 windows, {args.threads} thread(s), "
        f"torch {torch.__version__}, onnxruntime {ort.__version__}; export {export_s:.1f} s"
    )
    for name, s in med.items():
        spread = f"{min(times[name]):.3f}-{max(times[name]):.3f}"
        print(
            f"  {name:<12} {s:.3f} s/batch ({spread})  "
            f"{args.batch * args.window**2 / 1e6 / s:.2f} Mpix/s; CPU {med_cpu[name]:.3f} s/batch"
        )
    print(
        f"  onnxruntime / torch: wall {med['onnxruntime'] / med['torch']:.2f}, "
        f"CPU {med_cpu['onnxruntime'] / med_cpu['torch']:.2f}"
    )
    print(f"  largest probability difference: {diff:.2e}")


if __name__ == "__main__":
    main()
