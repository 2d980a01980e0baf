"""U-Net training and inference throughput per precision and memory layout, on this machine.

Measures, side by side in one process, the demo's U-Net (rs-<encoder>, 4 bands, random
weights, one output) in three settings:

- float32, contiguous (NCHW) tensors: the baseline every ratio is against;
- float32, channels_last: what train and predict use when autocast is off;
- bf16 autocast, channels_last: what ``precision: auto`` picks for training on a CPU with
  native bf16 (AMX / AVX-512 BF16) and on CUDA, and ``--precision bf16`` for predict.

Training: AdamW steps (forward, BCE, backward, step) on batches of ``--train-batch`` chips of
``--chip`` px; inference: forward + sigmoid of ``--infer-batch`` windows of ``--window`` px
under ``inference_mode``. Each figure is the median of ``--repeats`` timings after a warm-up.
Also prints the largest probability difference bf16 makes on the same input.

    .venv/bin/python benchmarks/precision.py                 # every core, CPU (or CUDA if present)
    .venv/bin/python benchmarks/precision.py --threads 1
    .venv/bin/python benchmarks/precision.py --decoder-channels 128,64,32,16,16   # the demo's decoder
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pipeline.model import build_unet, cpu_has_native_bf16, pick_device  # noqa: E402
from pipeline.model_config import ModelConfig  # noqa: E402

SETTINGS = (
    ("fp32, NCHW", False, None),
    ("fp32, channels_last", True, None),
    ("bf16 autocast, channels_last", True, torch.bfloat16),
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up: kernels, allocator
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(
    config: ModelConfig,
    device: torch.device,
    channels_last: bool,
    dtype: torch.dtype | None,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_infer: torch.Tensor,
    repeats: int,
) -> tuple[float, float, torch.Tensor]:
    """(seconds per training step, seconds per inference batch, the inference output)."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = build_unet(config).to(device).to(memory_format=layout)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    xt, xi = x_train.contiguous(memory_format=layout), x_infer.contiguous(memory_format=layout)
    autocast = {"device_type": device.type, "dtype": dtype, "enabled": dtype is not None}

    def train_step() -> None:
        model.train()
        with torch.autocast(**autocast):
            logits = model(xt)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y_train)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer() -> torch.Tensor:
        model.eval()
        with torch.inference_mode(), torch.autocast(**autocast):
            return torch.sigmoid(model(xi).float())

    infer_s = _timed(infer, repeats, device)
    out = infer().float().cpu()
    return _timed(train_step, repeats, device), infer_s, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)"
    )
    ap.add_argument("--chip", type=int, default=256)
    ap.add_argument("--train-batch", type=int, default=4)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--infer-batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--decoder-channels",
        default="256,128,64,32,16",
        help="the U-Net decoder's widths, deepest first (train.decoder_channels)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device("auto")
    print(
        f"device {device}, torch threads {torch.get_num_threads()}, native CPU bf16 {cpu_has_native_bf16()}, "
        f"encoder rs-{args.encoder}, decoder {args.decoder_channels}, train {args.train_batch} x {args.chip} px, infer {args.infer_batch} x {args.window} px"
    )

    config = ModelConfig(
        encoder=args.encoder,
        bands=["r", "g", "b", "nir"],
        mean=[0.0] * 4,
        std=[1.0] * 4,
        chip_size=args.chip,
        decoder_channels=[int(c) for c in args.decoder_channels.split(",")],
    )
    gen = torch.Generator().manual_seed(0)
    x_train = torch.randn(args.train_batch, 4, args.chip, args.chip, generator=gen).to(device)
    y_train = (
        (torch.rand(args.train_batch, 1, args.chip, args.chip, generator=gen) > 0.9)
        .float()
        .to(device)
    )
    x_infer = torch.randn(args.infer_batch, 4, args.window, args.window, generator=gen).to(device)

    rows, probs = [], {}
    for name, channels_last, dtype in SETTINGS:
        train_s, infer_s, probs[name] = measure(
            config, device, channels_last, dtype, x_train, y_train, x_infer, args.repeats
        )
        rows.append(
            (name, args.train_batch / train_s, args.infer_batch * args.window**2 / infer_s / 1e6)
        )

    base_train, base_infer = rows[0][1], rows[0][2]
    print("\n| setting | training chips/s | vs fp32 NCHW | inference Mpix/s | vs fp32 NCHW |")
    print("|---|---|---|---|---|")
    for name, chips, mpix in rows:
        print(
            f"| {name} | {chips:.2f} | {chips / base_train:.2f}x | {mpix:.2f} | {mpix / base_infer:.2f}x |"
        )
    diff = (probs[SETTINGS[2][0]] - probs[SETTINGS[1][0]]).abs().max().item()
    print(
        f"\nlargest probability difference, bf16 vs fp32 (random weights, same input): {diff:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
