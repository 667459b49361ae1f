"""Training on the CPU flushes subnormal numbers to zero (robgen/training/loop.py, `_subnormals_as_zero`): what
it buys, and that starting torch's worker threads first (so they do not keep the mode after training) costs nothing.

A width-32 ResNet10 with 57% of its weights subnormal (what Adam with weight decay left in the official-recipe
model), forward + backward of a batch of 64, each setting in a fresh process so that each starts its own threads:

- none: torch's default, subnormals computed as they are;
- threads first: the worker threads started, then the mode set (what training does now);
- threads inside: the mode set, then the threads started by the first big operation (what it did before: they
  keep flushing for the rest of the process);

the median time over rounds (the three settings in turn each round), the ratios, and for each whether a
subnormal still reads as nonzero in a multi-threaded operation after the mode is switched back.

    python benchmarks/subnormals.py [--rounds 3] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time, torch
setting, steps = sys.argv[1], int(sys.argv[2])
if setting == "threads first":
    torch.zeros(1 << 17).add_(1)
if setting != "none":
    assert torch.set_flush_denormal(True), "this CPU has no flush-to-zero mode"
from robgen.models.checkpoint import build_network
from robgen.models.classifier import ModelSpec
torch.manual_seed(0)
net = build_network(ModelSpec("resnet10_cifar", 10, [str(i) for i in range(10)], arch_kwargs={"width": 32}))
with torch.no_grad():
    for p in net.parameters():
        p[torch.rand_like(p) < 0.57] = 1e-39
x = torch.rand(64, 3, 32, 32)
def step():
    net.zero_grad()
    net(x).sum().backward()
step()
started = time.perf_counter()
for _ in range(steps):
    step()
seconds = (time.perf_counter() - started) / steps
torch.set_flush_denormal(False)
kept = bool((torch.full((1_000_000,), 1e-40, dtype=torch.float64).float() * 1 > 0).all())
print(json.dumps({"seconds": seconds, "subnormals_after": kept}))
"""

SETTINGS = ("none", "threads first", "threads inside")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    times = {name: [] for name in SETTINGS}
    after = {}
    for _ in range(args.rounds):
        for name in SETTINGS:
            out = subprocess.run([sys.executable, "-c", CHILD, name, str(args.steps)], cwd=ROOT, check=True,
                                 capture_output=True, text=True).stdout
            record = json.loads(out.strip().splitlines()[-1])
            times[name].append(record["seconds"])
            after[name] = record["subnormals_after"]
    median = {name: statistics.median(values) for name, values in times.items()}
    for name in SETTINGS:
        print(f"{name:15s} {median[name]:.3f} s a forward+backward   subnormals read as nonzero afterwards: "
              f"{after[name]}")
    print(f"threads first / none: {median['threads first'] / median['none']:.3f}   "
          f"threads first / threads inside: {median['threads first'] / median['threads inside']:.3f}")


if __name__ == "__main__":
    main()
