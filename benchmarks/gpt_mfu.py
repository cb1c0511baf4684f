"""GPT training throughput and model FLOPs utilisation (MFU): forgeml's loop beside a plain PyTorch loop.

    .venv/bin/python benchmarks/gpt_mfu.py                      # CPU: a small GPT, fp32
    .venv/bin/python benchmarks/gpt_mfu.py --size 124m --precision bf16 --compile   # on a GPU

Both sides train the same ``forgeml.models.gpt`` model on the same random token windows with AdamW
(fused on CUDA): (a) forgeml's ``fit`` reading windows from a token file through ``WindowBatches``;
(b) a hand-written loop over the same windows already in memory. Steps are timed after warm-up steps,
in alternating blocks. Reported per side: tokens/s, and MFU = tokens/s x FLOPs per token / peak,
with FLOPs per token = 6N + 12·L·H·Q·T (N non-embedding parameters, L layers, H heads, Q head
width, T context). The peak is the device's dense bf16 figure when known (H100/H200 SXM: 989
TFLOP/s); otherwise the best matrix-multiply rate measured here, labelled as such.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from forgeml.config import TrainConfig
from forgeml.data.corpus import WindowBatches
from forgeml.inputs import InputSpec
from forgeml.models.gpt import GPTConfig, build_gpt, flops_per_token, num_parameters
from forgeml.training.job import known_peak_flops
from forgeml.training.loop import LANGUAGE_MODELLING, autocast, fit

SIZES = {
    "124m": dict(layers=12, heads=12, dim=768, context=1024, vocab=50304, batch=16),
    "small": dict(layers=4, heads=4, dim=256, context=256, vocab=8192, batch=8),
    "tiny": dict(layers=2, heads=2, dim=64, context=64, vocab=1024, batch=8),
}


def device_peak(device: torch.device, precision: str) -> tuple[float, str]:
    peak = known_peak_flops(device)
    if peak is not None:
        return peak, f"{torch.cuda.get_device_name(device)} dense bf16 peak"
    # no published figure to hand: the best rate of a large matmul measured now
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(1024, 1024, device=device, dtype=dtype)
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(4):
            a @ a
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * 1024**3 / (time.perf_counter() - start))
    return best, f"measured {dtype} matmul rate on {device}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (both sides)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per block")
    parser.add_argument("--blocks", type=int, default=3, help="timed blocks per side (alternating)")
    args = parser.parse_args()
    size = SIZES[args.size]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    cfg = GPTConfig(type="gpt", layers=size["layers"], heads=size["heads"], dim=size["dim"], context=size["context"], dropout=0.0)
    inputs = InputSpec("tokens", (size["context"],), vocab_size=size["vocab"], pad_id=-1)
    batch, context = size["batch"], size["context"]

    def new_model() -> torch.nn.Module:
        torch.manual_seed(0)
        model = build_gpt(cfg, inputs=inputs, num_outputs=size["vocab"]).to(device)
        return torch.compile(model) if args.compile else model

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, size["vocab"], size=batch * context * (args.steps + 2) * 4, dtype=np.uint16)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "train.bin"
        tokens.tofile(path)
        memmap = np.memmap(path, dtype=np.uint16, mode="r")

        def forgeml_block(steps: int) -> float:
            model = new_model()
            train = TrainConfig(optimizer="adamw", lr=3e-4, batch_size=batch, max_steps=steps, precision=args.precision, log_every=10**6)
            batches = WindowBatches(memmap, context, batch, seed=0, device=device)
            start = time.perf_counter()
            fit(model, batches, train, task=LANGUAGE_MODELLING, num_outputs=size["vocab"], device=device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

        windows = [b for b, _ in zip(WindowBatches(memmap, context, batch, seed=0, device=device).epoch(), range(args.steps))]

        def plain_block(steps: int) -> float:
            model = new_model()
            optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=device.type == "cuda")
            start = time.perf_counter()
            for step in range(steps):
                x, y = windows[step % len(windows)]
                with autocast(device, args.precision):
                    logits = model(x)
                loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - start

        forgeml_block(2), plain_block(2)  # warm-up (and compilation)
        times: dict[str, list[float]] = {"forgeml": [], "plain": []}
        for index in range(args.blocks):
            order = [("forgeml", forgeml_block), ("plain", plain_block)]
            for name, block in order if index % 2 == 0 else order[::-1]:
                times[name].append(block(args.steps) / args.steps)

    model = build_gpt(cfg, inputs=inputs, num_outputs=size["vocab"])
    n = num_parameters(model)
    per_token = flops_per_token(cfg, n, context)
    peak, peak_label = device_peak(device, args.precision)
    print(f"GPT {args.size}: {size['layers']} layers, {size['heads']} heads, {size['dim']} wide, context {context}, "
          f"{n / 1e6:.1f}M non-embedding parameters, {per_token / 1e6:.1f} MFLOP per token; batch {batch}; {args.precision}"
          f"{', compiled' if args.compile else ''}; device {device}")
    print(f"peak: {peak / 1e12:.2f} TFLOP/s ({peak_label})\n")
    print("| side | s/step (median) | tokens/s | MFU |\n|---|---|---|---|")
    rates = {}
    for name, samples in times.items():
        seconds = statistics.median(samples)
        rates[name] = batch * context / seconds
        print(f"| {name} | {seconds:.4f} | {rates[name]:,.0f} | {rates[name] * per_token / peak:.1%} |")
    print(f"\nforgeml / plain tokens/s: {rates['forgeml'] / rates['plain']:.3f}")


if __name__ == "__main__":
    main()
