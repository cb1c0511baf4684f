"""How much does forgeml's training loop and batch path cost over plain PyTorch?

Two benchmarks, in one process, on the CPU:

1. Loop overhead: the examples/mnist_cnn.yaml CNN (Conv32-Pool-Conv64-Pool-Dense128-Dense10, built
   with forgeml's ``build_cnn`` for both sides) trained on the in-memory mnist5k tensors by
   (a) ``forgeml.train.loop.fit`` (no validation, checkpoints, log or progress) and
   (b) a minimal hand-written loop (randperm + index_select, Adam, cross-entropy,
       zero_grad / backward / step).
   Blocks of ``--steps`` optimizer steps alternate between the two (ABBA order), ``--repeats``
   times. Each block re-seeds torch and rebuilds the model the same way, outside the timer; the
   timer (``time.perf_counter``) wraps the whole block, so forgeml's per-run setup inside ``fit``
   (optimizer, GradScaler, state) is included and amortised over the block's steps, just as the
   plain loop's optimizer construction is. Both sides draw the same batches (same shuffle seed) and
   the same dropout masks, so they do identical arithmetic: the final weights are compared as a
   check. The setup cost of ``fit`` is measured separately as the median of
   fit(max_steps=1) minus the median of a one-step plain block.

2. Batch path: one shuffled epoch (batch 64) of forgeml's ``InMemoryBatches`` against
   ``DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)`` (num_workers=0), iteration
   only (each batch is touched: its labels are summed), interleaved, median epoch time.

    .venv/bin/python benchmarks/trainer_overhead.py            # full (about 1-2 minutes on 2 cores)
    .venv/bin/python benchmarks/trainer_overhead.py --quick    # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from forgeml.config import TrainConfig, load_config
from forgeml.data.batches import InMemoryBatches
from forgeml.data.sources import load_mnist5k_table
from forgeml.models.cnn import CNNConfig, build_cnn
from forgeml.train.loop import fit

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "mnist_cnn.yaml"
BATCH_SIZE = 64
LOOP_TARGET = 1.05  # forgeml / plain per-step time, at most
BATCH_TARGET = 5.0  # DataLoader / InMemoryBatches epoch time, at least


# --------------------------------------------------------------------------------------------------
# machine and data


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """mnist5k as N x 1 x 28 x 28 float32 (standardised with the set's mean/std) and int64 labels."""
    table = load_mnist5k_table()
    x = torch.from_numpy(table.columns["image"]).float().unsqueeze(1).contiguous()
    x = ((x - x.mean()) / x.std()).contiguous()
    y = torch.from_numpy(table.columns["label"]).long().contiguous()
    return x, y


def model_config() -> CNNConfig:
    """The model section of examples/mnist_cnn.yaml (falls back to the same architecture inline)."""
    if EXAMPLE.is_file():
        return load_config(EXAMPLE).model
    return CNNConfig(type="cnn", blocks=[{"channels": 32}, {"channels": 64}], dense=[128], dropout=0.25)


# --------------------------------------------------------------------------------------------------
# 1. loop overhead


def build_model(cfg: CNNConfig, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)  # same initial weights and, from here on, the same dropout masks
    model = build_cnn(cfg, input_shape=(1, 28, 28), num_outputs=10)
    torch.manual_seed(seed + 1)
    return model


def run_forgeml(model_cfg: CNNConfig, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> tuple[float, torch.nn.Module]:
    model = build_model(model_cfg, seed)
    batches = InMemoryBatches((x, y), BATCH_SIZE, shuffle=True, seed=seed)
    cfg = TrainConfig(optimizer="adam", lr=1e-3, batch_size=BATCH_SIZE, epochs=10_000, max_steps=steps, device="cpu")
    gc.collect()
    start = time.perf_counter()
    fit(model, batches, cfg, task="classification", num_outputs=10, device=torch.device("cpu"))
    return time.perf_counter() - start, model


def run_plain(model_cfg: CNNConfig, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> tuple[float, torch.nn.Module]:
    model = build_model(model_cfg, seed)
    generator = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    gc.collect()
    start = time.perf_counter()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    step = 0
    while step < steps:
        order = torch.randperm(n, generator=generator)
        for begin in range(0, n, BATCH_SIZE):
            index = order[begin : begin + BATCH_SIZE]
            xb, yb = x.index_select(0, index), y.index_select(0, index)
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step == steps:
                break
    return time.perf_counter() - start, model


def max_weight_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(float((p - q).abs().max()) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def loop_benchmark(x: torch.Tensor, y: torch.Tensor, steps: int, repeats: int, warmup: int, setup_repeats: int) -> dict:
    model_cfg = model_config()
    runners: dict[str, Callable] = {"forgeml": run_forgeml, "plain": run_plain}

    for _ in range(2):  # warm up both: allocator, oneDNN primitives, lazy imports
        for run in runners.values():
            run(model_cfg, x, y, warmup, seed=0)

    times: dict[str, list[float]] = {"forgeml": [], "plain": []}
    ratios = []
    weight_diff = 0.0
    for r in range(repeats):
        order = ["forgeml", "plain"] if r % 2 == 0 else ["plain", "forgeml"]  # ABBA: no order bias
        block, models = {}, {}
        for name in order:
            block[name], models[name] = runners[name](model_cfg, x, y, steps, seed=r)
            times[name].append(block[name] / steps)
        ratios.append(block["forgeml"] / block["plain"])
        weight_diff = max(weight_diff, max_weight_difference(models["forgeml"], models["plain"]))

    # fit()'s per-run setup: a one-step fit minus a one-step plain block (both include building the
    # optimizer and the first step's lazy Adam state)
    one = {"forgeml": [], "plain": []}
    for r in range(setup_repeats):
        for name in (["forgeml", "plain"] if r % 2 == 0 else ["plain", "forgeml"]):
            one[name].append(runners[name](model_cfg, x, y, 1, seed=r)[0])

    f, p = statistics.median(times["forgeml"]), statistics.median(times["plain"])
    return {
        "steps": steps,
        "repeats": repeats,
        "forgeml_step_ms": f * 1e3,
        "plain_step_ms": p * 1e3,
        "forgeml_spread_ms": (min(times["forgeml"]) * 1e3, max(times["forgeml"]) * 1e3),
        "plain_spread_ms": (min(times["plain"]) * 1e3, max(times["plain"]) * 1e3),
        "ratio": f / p,
        "paired_ratio": statistics.median(ratios),
        "setup_ms": (statistics.median(one["forgeml"]) - statistics.median(one["plain"])) * 1e3,
        "fit_one_step_ms": statistics.median(one["forgeml"]) * 1e3,
        "plain_one_step_ms": statistics.median(one["plain"]) * 1e3,
        "weight_diff": weight_diff,
    }


# --------------------------------------------------------------------------------------------------
# 2. batch path


def epoch_forgeml(batches: InMemoryBatches) -> tuple[float, int, int]:
    rows, label_sum = 0, torch.zeros((), dtype=torch.int64)
    start = time.perf_counter()
    for xb, yb in batches.epoch():
        rows += xb.shape[0]
        label_sum += yb.sum()
    return time.perf_counter() - start, rows, int(label_sum)


def epoch_dataloader(loader: DataLoader) -> tuple[float, int, int]:
    rows, label_sum = 0, torch.zeros((), dtype=torch.int64)
    start = time.perf_counter()
    for xb, yb in loader:
        rows += xb.shape[0]
        label_sum += yb.sum()
    return time.perf_counter() - start, rows, int(label_sum)


def batch_benchmark(x: torch.Tensor, y: torch.Tensor, repeats: int) -> dict:
    batches = InMemoryBatches((x, y), BATCH_SIZE, shuffle=True, seed=0)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH_SIZE, shuffle=True)
    expected = (x.shape[0], int(y.sum()))
    for _ in range(2):  # warm up
        epoch_forgeml(batches)
        epoch_dataloader(loader)
    times: dict[str, list[float]] = {"forgeml": [], "dataloader": []}
    ratios = []
    for r in range(repeats):
        order = ["forgeml", "dataloader"] if r % 2 == 0 else ["dataloader", "forgeml"]
        this = {}
        for name in order:
            gc.collect()
            seconds, rows, label_sum = epoch_forgeml(batches) if name == "forgeml" else epoch_dataloader(loader)
            if (rows, label_sum) != expected:
                raise AssertionError(f"{name}: an epoch gave {rows} rows / label sum {label_sum}, expected {expected}")
            this[name] = seconds
            times[name].append(seconds)
        ratios.append(this["dataloader"] / this["forgeml"])
    f, d = statistics.median(times["forgeml"]), statistics.median(times["dataloader"])
    return {
        "repeats": repeats,
        "batches": len(batches),
        "forgeml_epoch_ms": f * 1e3,
        "dataloader_epoch_ms": d * 1e3,
        "forgeml_spread_ms": (min(times["forgeml"]) * 1e3, max(times["forgeml"]) * 1e3),
        "dataloader_spread_ms": (min(times["dataloader"]) * 1e3, max(times["dataloader"]) * 1e3),
        "speedup": d / f,
        "paired_speedup": statistics.median(ratios),
    }


# --------------------------------------------------------------------------------------------------
# report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per timed block (default 60)")
    parser.add_argument("--repeats", type=int, default=10, help="timed blocks per side in the loop benchmark (default 10)")
    parser.add_argument("--warmup-steps", type=int, default=10, help="steps of each untimed warm-up block (default 10)")
    parser.add_argument("--setup-repeats", type=int, default=10, help="one-step blocks per side to measure fit()'s setup (default 10)")
    parser.add_argument("--epochs", type=int, default=30, help="timed epochs per side in the batch-path benchmark (default 30)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's default)")
    parser.add_argument("--quick", action="store_true", help="a short smoke run: 10 steps x 2 repeats, 5 epochs")
    parser.add_argument("--only", choices=["loop", "batches"], default=None, help="run one benchmark only")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.warmup_steps, args.setup_repeats, args.epochs = 10, 2, 3, 2, 5
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    x, y = load_tensors()
    print(f"forgeml trainer overhead benchmark{' (--quick)' if args.quick else ''}")
    print(f"  torch {torch.__version__}, {torch.get_num_threads()} threads (interop {torch.get_num_interop_threads()}), "
          f"python {platform.python_version()}")
    print(f"  CPU: {cpu_model()} ({_cores()} cores visible)")
    print(f"  data: mnist5k {tuple(x.shape)} {x.dtype}, labels {tuple(y.shape)} {y.dtype}; batch {BATCH_SIZE}")
    print()

    ok = True
    if args.only in (None, "loop"):
        loop = loop_benchmark(x, y, args.steps, args.repeats, args.warmup_steps, args.setup_repeats)
        met = loop["ratio"] <= LOOP_TARGET
        ok &= met
        print(f"1. loop overhead: {loop['steps']} steps per block, {loop['repeats']} blocks per side, interleaved (ABBA)")
        print(f"   {'':28}{'median ms/step':>16}{'min..max':>18}")
        print(f"   {'forgeml fit()':28}{loop['forgeml_step_ms']:>16.3f}{_range(loop['forgeml_spread_ms']):>18}")
        print(f"   {'plain PyTorch loop':28}{loop['plain_step_ms']:>16.3f}{_range(loop['plain_spread_ms']):>18}")
        print(f"   ratio forgeml / plain (medians)   {loop['ratio']:.4f}   target <= {LOOP_TARGET}: {'met' if met else 'NOT met'}")
        print(f"   ratio, median of paired blocks    {loop['paired_ratio']:.4f}")
        print(f"   fit() setup cost                  {loop['setup_ms']:.3f} ms "
              f"(fit max_steps=1 {loop['fit_one_step_ms']:.2f} ms - plain 1 step {loop['plain_one_step_ms']:.2f} ms), "
              f"{loop['setup_ms'] / loop['steps'] / loop['plain_step_ms'] * 100:.2f}% of a {loop['steps']}-step block")
        print(f"   same arithmetic check: max |w_forgeml - w_plain| = {loop['weight_diff']:.3g}")
        print()
    if args.only in (None, "batches"):
        bat = batch_benchmark(x, y, args.epochs)
        met = bat["speedup"] >= BATCH_TARGET
        ok &= met
        print(f"2. batch path: one shuffled epoch ({bat['batches']} batches), iteration only, {bat['repeats']} epochs per side, interleaved")
        print(f"   {'':28}{'median ms/epoch':>16}{'min..max':>18}")
        print(f"   {'forgeml InMemoryBatches':28}{bat['forgeml_epoch_ms']:>16.3f}{_range(bat['forgeml_spread_ms']):>18}")
        print(f"   {'DataLoader(TensorDataset)':28}{bat['dataloader_epoch_ms']:>16.3f}{_range(bat['dataloader_spread_ms']):>18}")
        print(f"   speed-up DataLoader / forgeml     {bat['speedup']:.1f}x   target >= {BATCH_TARGET:g}x: {'met' if met else 'NOT met'}")
        print(f"   speed-up, median of paired epochs {bat['paired_speedup']:.1f}x")
        print()
    print(f"total {time.perf_counter() - started:.1f} s; targets {'all met' if ok else 'NOT all met'}")
    return 0


def _range(pair: tuple[float, float]) -> str:
    return f"{pair[0]:.3f}..{pair[1]:.3f}"


def _cores() -> int:
    try:
        import os

        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        import os

        return os.cpu_count() or 1


if __name__ == "__main__":
    sys.exit(main())
