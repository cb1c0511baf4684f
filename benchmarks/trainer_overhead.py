"""How much do forgeml's training loop and batch path cost over plain PyTorch? (CPU, one process)

1. Loop overhead. The examples/mnist_cnn.yaml CNN (Conv32-Pool-Conv64-Pool-Dense128-Dense10, built
   by forgeml's ``build_cnn`` for both sides) trained on the in-memory mnist5k tensors
   (5000 x 1 x 28 x 28 float32, standardised; int64 labels), batch 64, by
     (a) forgeml's ``fit`` (no validation, checkpoints, log or progress), and
     (b) a minimal hand-written loop: randperm + index_select, Adam, cross-entropy,
         zero_grad / backward / step.
   Blocks of ``--steps`` (60) steps alternate between (a) and (b) in ABBA order. Each block
   re-seeds torch and builds a fresh model the same way, outside the timer; ``time.perf_counter``
   wraps the whole block, so fit()'s per-run setup (optimizer, GradScaler, loop state) is inside
   the timer and amortised over the block, as the plain loop's optimizer construction is. Both
   sides draw the same batches and dropout masks, so they do identical arithmetic (the trained
   weights are compared). Both sides are warmed up first. fit()'s setup is also measured on its
   own: fit(max_steps=1) minus a one-step plain block (fastest of several each).
1b. Fixed-cost probe (no target): the same comparison with Flatten-Linear(784, 10), whose steps are
   so cheap that the loop's own per-step cost (in microseconds) shows.
2. Batch path. Shuffled epochs (batch 64) of forgeml's ``InMemoryBatches`` against
   ``DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)`` (num_workers=0), iteration only
   (each batch's labels are summed, and each epoch's row count and label sum checked), in blocks
   of whole epochs lasting >= ``--block-seconds``, ABBA order; median time per epoch.

Timings are medians over block pairs. On a small shared machine another process on the same
cores stalls torch's OpenMP threads (a step can take 10x longer), so every block records the share
of the CPUs other processes used meanwhile (/proc/stat); the verdicts use only undisturbed pairs,
the benchmark waits for a quiet moment before each pair and runs extra pairs (within ``--budget``)
to replace disturbed ones, and says INCONCLUSIVE when too few pairs were undisturbed.

    .venv/bin/python benchmarks/trainer_overhead.py            # full: about 2 minutes on a quiet 2-core machine
    .venv/bin/python benchmarks/trainer_overhead.py --quick    # smoke run, about 15 s
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from forgeml.config import TrainConfig, load_config
from forgeml.data.batches import InMemoryBatches
from forgeml.data.builtin_datasets import load_mnist5k_table
from forgeml.inputs import InputSpec
from forgeml.models.cnn import CNNConfig, build_cnn

from forgeml.training.loop import fit

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
# timing


class Clock:
    """Wall time of a block, plus the CPU time other processes (and the hypervisor) took meanwhile.

    On a 2-core machine another busy process stalls torch's 2-thread OpenMP team at every barrier
    (a training step can take 5-10x longer), so each block records ``others``: the machine's busy
    time from /proc/stat (user, nice, system, irq, softirq, steal) minus this process's own CPU
    time, as a share of wall time x cores. Where /proc/stat is missing it stays 0.
    """

    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    @staticmethod
    def busy_seconds() -> float | None:
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
        return (user + nice + system + irq + softirq + steal) / Clock.ticks

    def __enter__(self) -> "Clock":
        gc.collect()
        self.busy0, self.cpu0 = self.busy_seconds(), time.process_time()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
        own = time.process_time() - self.cpu0
        busy1 = self.busy_seconds()
        if self.busy0 is None or busy1 is None:
            self.others = 0.0
        else:
            self.others = max(0.0, (busy1 - self.busy0 - own) / (self.seconds * _cores()))


@dataclass
class Block:
    seconds: float
    units: int  # optimizer steps or epochs
    others: float  # share of the CPUs other processes used meanwhile

    @property
    def per_unit(self) -> float:
        return self.seconds / self.units


def others_share(seconds: float) -> float:
    """Share of the CPUs other processes used over the next ``seconds`` (this process sleeps)."""
    with Clock() as clock:
        time.sleep(seconds)
    return clock.others


def interleave(sides: dict[str, Callable[[int], Block]], wanted: int, quiet: float, budget: float) -> list[dict[str, Block]]:
    """Pairs of blocks, one per side, in ABBA order, until ``wanted`` undisturbed pairs are timed.

    A pair is undisturbed when, in each of its blocks, other processes used under ``quiet`` of the
    CPUs. Before each pair it waits (up to 15 s) for a quiet half-second; extra pairs replace
    disturbed ones, up to 3 x wanted pairs, and no pair starts after ``budget`` seconds. Each side
    is called with the pair's index (its seed).
    """
    names = list(sides)
    started = time.perf_counter()
    pairs: list[dict[str, Block]] = []
    while True:
        undisturbed = sum(1 for pair in pairs if pair_quiet(pair, quiet))
        if undisturbed >= wanted or len(pairs) >= 3 * wanted:
            break
        if pairs and time.perf_counter() - started > budget:
            break
        waiting = time.perf_counter()
        while others_share(0.5) >= quiet and time.perf_counter() - waiting < 15 and time.perf_counter() - started < budget:
            pass
        r = len(pairs)
        order = names if r % 2 == 0 else names[::-1]  # ABBA: neither side always goes first
        blocks = {name: sides[name](r) for name in order}
        pairs.append({name: blocks[name] for name in names})  # keys in the sides' order
    return pairs


def pair_quiet(pair: dict[str, Block], quiet: float) -> bool:
    return all(block.others < quiet for block in pair.values())


def summarise(pairs: list[dict[str, Block]], quiet: float, wanted: int) -> dict:
    """Median time per unit of each side, over undisturbed pairs and over all pairs.

    ``head`` is the selection the verdict uses: the undisturbed pairs when there are at least half
    of ``wanted`` (and 2), else None (the machine was too busy to judge).
    """

    def over(chosen: list[dict[str, Block]]) -> dict | None:
        if not chosen:
            return None
        a, b = list(chosen[0])[:2]
        ta = [pair[a].per_unit for pair in chosen]
        tb = [pair[b].per_unit for pair in chosen]
        return {
            "pairs": len(chosen),
            "median": {a: statistics.median(ta), b: statistics.median(tb)},
            "range": {a: (min(ta), max(ta)), b: (min(tb), max(tb))},
            "units": {a: chosen[0][a].units, b: chosen[0][b].units},
            "ratio": statistics.median(ta) / statistics.median(tb),  # a / b
            "paired_ratio": statistics.median(x / y for x, y in zip(ta, tb)),
            "paired_quartiles": _quartiles([x / y for x, y in zip(ta, tb)]),
        }

    undisturbed = [pair for pair in pairs if pair_quiet(pair, quiet)]
    result = {"undisturbed": over(undisturbed), "all": over(pairs)}
    result["head"] = result["undisturbed"] if len(undisturbed) >= max(2, wanted // 2) else None
    result["worst_others"] = max(block.others for pair in pairs for block in pair.values())
    return result


# --------------------------------------------------------------------------------------------------
# 1. loop overhead


ModelMaker = Callable[[], torch.nn.Module]


def cnn_maker() -> ModelMaker:
    """The examples/mnist_cnn.yaml network, built by forgeml's build_cnn (for both sides)."""
    cfg = model_config()
    return lambda: build_cnn(cfg, inputs=InputSpec("image", (1, 28, 28)), num_outputs=10)


def tiny_maker() -> ModelMaker:
    """Flatten + Linear(784, 10): so little compute that the loop's fixed cost per step shows."""
    return lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))


def build_model(make: ModelMaker, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)  # same initial weights
    model = make()
    torch.manual_seed(seed + 1)  # same dropout masks from here on
    return model


def run_forgeml(make: ModelMaker, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> tuple[Block, torch.nn.Module]:
    model = build_model(make, seed)
    batches = InMemoryBatches((x, y), BATCH_SIZE, shuffle=True, seed=seed)
    cfg = TrainConfig(optimizer="adam", lr=1e-3, batch_size=BATCH_SIZE, epochs=10_000, max_steps=steps, device="cpu")
    with Clock() as clock:
        fit(model, batches, cfg, task="classification", num_outputs=10, device=torch.device("cpu"))
    return Block(clock.seconds, steps, clock.others), model


def run_plain(make: ModelMaker, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> tuple[Block, torch.nn.Module]:
    model = build_model(make, seed)
    generator = torch.Generator().manual_seed(seed)  # the same shuffle as InMemoryBatches(seed=seed)
    n = x.shape[0]
    with Clock() as clock:
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
    return Block(clock.seconds, steps, clock.others), model


def max_weight_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(float((p - q).abs().max()) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def loop_benchmark(
    x: torch.Tensor, y: torch.Tensor, make: ModelMaker, steps: int, repeats: int, setup_repeats: int, budget: float, args: argparse.Namespace
) -> dict:
    runners = {"forgeml": run_forgeml, "plain": run_plain}
    started = time.perf_counter()
    for _ in range(2):  # warm up both: allocator, oneDNN primitives, lazy imports
        for run in runners.values():
            run(make, x, y, args.warmup_steps, 0)

    models: dict[str, torch.nn.Module] = {}
    weight_diff = [0.0]

    def side(name: str) -> Callable[[int], Block]:
        def block(r: int) -> Block:
            timed, models[name] = runners[name](make, x, y, steps, r)
            if len(models) == 2:  # the pair's second block: compare the two trained models
                weight_diff[0] = max(weight_diff[0], max_weight_difference(models["forgeml"], models["plain"]))
                models.clear()
            return timed

        return block

    pairs = interleave({"forgeml": side("forgeml"), "plain": side("plain")}, repeats, args.quiet, budget)
    result = summarise(pairs, args.quiet, repeats)

    # fit()'s per-run setup: a one-step fit minus a one-step plain block (both build the optimizer
    # and take the first step, with its lazy Adam state); the fastest of each, to dodge disturbance
    one: dict[str, list[float]] = {"forgeml": [], "plain": []}
    for r in range(setup_repeats):
        for name in ["forgeml", "plain"] if r % 2 == 0 else ["plain", "forgeml"]:
            one[name].append(runners[name](make, x, y, 1, r)[0].seconds)
    result |= {
        "setup": min(one["forgeml"]) - min(one["plain"]),
        "fit_one_step": min(one["forgeml"]),
        "plain_one_step": min(one["plain"]),
        "weight_diff": weight_diff[0],
        "seconds": time.perf_counter() - started,
    }
    return result


# --------------------------------------------------------------------------------------------------
# 2. batch path


def epochs_for(min_seconds: float, epoch: Callable[[], tuple[int, int]], expected: tuple[int, int], name: str) -> Block:
    """Whole epochs until ``min_seconds`` have passed (so that /proc/stat's 10 ms ticks resolve)."""
    epochs = 0
    with Clock() as clock:
        while True:
            got = epoch()
            epochs += 1
            if got != expected:
                raise AssertionError(f"{name}: an epoch gave (rows, label sum) {got}, expected {expected}")
            if time.perf_counter() - clock.start >= min_seconds:
                break
    return Block(clock.seconds, epochs, clock.others)


def batch_benchmark(x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace) -> dict:
    batches = InMemoryBatches((x, y), BATCH_SIZE, shuffle=True, seed=0)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH_SIZE, shuffle=True)
    expected = (x.shape[0], int(y.sum()))

    def touch(iterable: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[int, int]:
        rows, label_sum = 0, torch.zeros((), dtype=torch.int64)
        for xb, yb in iterable:
            rows += xb.shape[0]
            label_sum += yb.sum()
        return rows, int(label_sum)

    def forgeml_epoch() -> tuple[int, int]:
        return touch(batches.epoch())

    def dataloader_epoch() -> tuple[int, int]:
        return touch(loader)

    for _ in range(3):  # warm up
        forgeml_epoch(), dataloader_epoch()
    started = time.perf_counter()
    sides = {
        "dataloader": lambda r: epochs_for(args.block_seconds, dataloader_epoch, expected, "DataLoader"),
        "forgeml": lambda r: epochs_for(args.block_seconds, forgeml_epoch, expected, "InMemoryBatches"),
    }
    pairs = interleave(sides, args.epoch_pairs, args.quiet, args.budget / 5)
    return summarise(pairs, args.quiet, args.epoch_pairs) | {"batches": len(batches), "seconds": time.perf_counter() - started}


# --------------------------------------------------------------------------------------------------
# report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per timed training block (default 60)")
    parser.add_argument("--repeats", type=int, default=14, help="undisturbed (forgeml, plain) block pairs wanted (default 14)")
    parser.add_argument("--epoch-pairs", type=int, default=15, help="undisturbed (DataLoader, InMemoryBatches) block pairs wanted (default 15)")
    parser.add_argument("--block-seconds", type=float, default=0.25, help="batch path: each block runs whole epochs for at least this long (default 0.25)")
    parser.add_argument("--quiet", type=float, default=0.05, help="a block is disturbed when other processes used this share of the CPUs (default 0.05)")
    parser.add_argument("--budget", type=float, default=150.0,
                        help="seconds after which the CNN loop benchmark stops replacing disturbed pairs (a fifth of it for the others; default 150)")
    parser.add_argument("--tiny-steps", type=int, default=500, help="steps per block of the tiny-model fixed-cost probe (default 500)")
    parser.add_argument("--warmup-steps", type=int, default=10, help="steps of each untimed warm-up block (default 10)")
    parser.add_argument("--setup-repeats", type=int, default=10, help="one-step blocks per side to measure fit()'s setup (default 10)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's default)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds: 10-step blocks, 2 pairs each")
    parser.add_argument("--only", choices=["loop", "tiny", "batches"], default=None, help="run one part only")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.epoch_pairs, args.block_seconds = 10, 2, 2, 0.1
        args.budget, args.warmup_steps, args.setup_repeats, args.tiny_steps = 8.0, 3, 2, 50
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    x, y = load_tensors()
    gc.collect()
    gc.freeze()  # imported modules out of the collector's way: each block starts with a gc.collect()
    print(f"forgeml trainer overhead benchmark{' (--quick: smoke run, figures not meaningful)' if args.quick else ''}")
    print(f"  torch {torch.__version__}, {torch.get_num_threads()} threads (interop {torch.get_num_interop_threads()}), "
          f"python {platform.python_version()}")
    print(f"  CPU: {cpu_model()}, {_cores()} cores visible")
    print(f"  data: mnist5k x {tuple(x.shape)} {x.dtype} (standardised), y {tuple(y.shape)} {y.dtype}; batch {BATCH_SIZE}")
    print(f"  a block is 'disturbed' when other processes used >= {args.quiet:.0%} of the CPUs meanwhile (/proc/stat)")
    print()
    verdicts = []

    def table(result: dict, names: dict[str, str], unit: str, scale: float) -> None:
        print(f"   {'':40}{'pairs':>6}{'median ' + unit:>17}{'min..max':>24}")
        for label, key in (("undisturbed", "undisturbed"), ("all", "all")):
            sel = result[key]
            if sel is None:
                print(f"   {label + ' pairs':40}{0:>6}")
                continue
            for name, shown in names.items():
                lo, hi = sel["range"][name]
                print(f"   {shown + ', ' + label:40}{sel['pairs']:>6}{sel['median'][name] * scale:>17.3f}{f'{lo * scale:.3f}..{hi * scale:.3f}':>24}")
        print(f"   worst block: others used {result['worst_others']:.0%} of the CPUs")

    def verdict(result: dict, what: str, ok: Callable[[float], bool], target: str, fmt: str) -> None:
        head = result["head"]
        if args.quick:
            text = "not judged (--quick)"
            verdicts.append(None)
        elif head is None:
            text = f"INCONCLUSIVE (only {0 if result['undisturbed'] is None else result['undisturbed']['pairs']} undisturbed pairs: machine busy; rerun)"
            verdicts.append(None)
        else:
            met = ok(head["ratio"])
            verdicts.append(met)
            text = f"{'met' if met else 'NOT met'}"
        shown = head or result["all"]
        q1, q3 = shown["paired_quartiles"]
        print(f"   {what}: {format(shown['ratio'], fmt)} ({'undisturbed' if head else 'all'} pairs; "
              f"per-pair ratios: median {format(shown['paired_ratio'], fmt)}, quartiles {format(q1, fmt)}..{format(q3, fmt)})")
        print(f"   target {target}: {text}")

    if args.only in (None, "loop"):
        loop = loop_benchmark(x, y, cnn_maker(), args.steps, args.repeats, args.setup_repeats, args.budget, args)
        print(f"1. loop overhead, mnist_cnn.yaml CNN: training blocks of {args.steps} steps, fit() setup inside the timer "
              f"(amortised over the block), pairs in ABBA order ({loop['seconds']:.0f} s)")
        table(loop, {"forgeml": "forgeml fit()", "plain": "plain PyTorch loop"}, "ms/step", 1e3)
        verdict(loop, "ratio forgeml / plain", lambda r: r <= LOOP_TARGET, f"<= {LOOP_TARGET}", ".4f")
        plain_step = (loop["head"] or loop["all"])["median"]["plain"]
        print(f"   fit() setup: {loop['setup'] * 1e3:.2f} ms = fit(max_steps=1) {loop['fit_one_step'] * 1e3:.2f} ms "
              f"- plain 1-step block {loop['plain_one_step'] * 1e3:.2f} ms (fastest of {args.setup_repeats} each); "
              f"{loop['setup'] / (args.steps * plain_step):+.2%} of a {args.steps}-step block")
        print(f"   same arithmetic: max |w_forgeml - w_plain| after each pair = {loop['weight_diff']:.3g}")
        print()
    if args.only in (None, "tiny"):
        tiny = loop_benchmark(x, y, tiny_maker(), args.tiny_steps, args.repeats, 5 * args.setup_repeats, args.budget / 5, args)
        sel = tiny["head"] or tiny["all"]
        extra = (sel["median"]["forgeml"] - sel["median"]["plain"]) * 1e6
        print(f"1b. fixed cost probe, Flatten-Linear(784, 10) (no target): blocks of {args.tiny_steps} steps, "
              f"pairs in ABBA order ({tiny['seconds']:.0f} s)")
        table(tiny, {"forgeml": "forgeml fit()", "plain": "plain PyTorch loop"}, "us/step", 1e6)
        share = ""
        if args.only is None:
            cnn_step = (loop["head"] or loop["all"])["median"]["plain"]
            share = f" = {extra / (cnn_step * 1e6):+.2%} of a plain CNN step"
        print(f"   fit() costs {extra:+.1f} us per step over the plain loop ({sel['ratio']:.3f}x, "
              f"{'undisturbed' if tiny['head'] else 'all'} pairs){share}")
        print(f"   fit() setup: {tiny['setup'] * 1e6:.0f} us = fit(max_steps=1) {tiny['fit_one_step'] * 1e6:.0f} us "
              f"- plain 1-step block {tiny['plain_one_step'] * 1e6:.0f} us (fastest of {5 * args.setup_repeats} each)")
        print(f"   same arithmetic: max |w_forgeml - w_plain| after each pair = {tiny['weight_diff']:.3g}")
        print()
    if args.only in (None, "batches"):
        bat = batch_benchmark(x, y, args)
        print(f"2. batch path: shuffled epochs of {bat['batches']} batches of {BATCH_SIZE}, iteration only (labels summed), "
              f"blocks of whole epochs >= {args.block_seconds:g} s, pairs in ABBA order ({bat['seconds']:.0f} s)")
        table(bat, {"forgeml": "forgeml InMemoryBatches", "dataloader": "DataLoader(TensorDataset)"}, "ms/epoch", 1e3)
        verdict(bat, "speed-up DataLoader / InMemoryBatches", lambda r: r >= BATCH_TARGET, f">= {BATCH_TARGET:g}x", ".1f")
        print()
    if all(v is True for v in verdicts):
        summary = "all targets met"
    elif any(v is False for v in verdicts):
        summary = "a target is NOT met"
    elif args.quick:
        summary = "smoke run, no verdict"
    else:
        summary = "inconclusive: the machine was busy"
    print(f"total {time.perf_counter() - started:.0f} s; {summary}")
    return 0


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


if __name__ == "__main__":
    sys.exit(main())
