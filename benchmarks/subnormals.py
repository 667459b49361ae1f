"""What training on the CPU does about subnormal numbers (robgen/models/subnormals.py,
`flush_training_subnormals`), and against what.

A width-32 ResNet10 whose weights are 57% subnormal (what Adam with weight decay left in the official-recipe
model), a training step on a random batch of 64 with an optimiser that leaves them where they are (SGD with
momentum at learning rate 0: in a real run such weights have no gradient but the weight decay, and move by far
less than their size), each setting in a fresh process:

- none: torch's default, subnormals computed as they are;
- zeroed each step: `flush_training_subnormals` after every optimiser step (what training does);
- flush-to-zero mode: the CPU's mode switched on before torch starts its worker threads, which copy it (what
  training did before when it started them; the mode then outlives the run on those threads); the line says
  whether every thread flushed;

the median time of a training step (forward, backward, the optimiser, and the zeroing where it applies) over rounds, the
three settings in turn each round, and the ratios. The subnormal weights are written as their bits (under the
mode, writing the float 1e-39 stores 0).

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
from robgen.models.checkpoint import build_network
from robgen.models.classifier import ModelSpec
from robgen.models.subnormals import flush_training_subnormals
setting, steps = sys.argv[1], int(sys.argv[2])
if setting == "flush-to-zero mode":  # before any torch work: every worker thread starts with it
    assert torch.set_flush_denormal(True), "this CPU has no flush-to-zero mode"
torch.manual_seed(0)
net = build_network(ModelSpec("resnet10_cifar", 10, [str(i) for i in range(10)], arch_kwargs={"width": 32}))
with torch.no_grad():
    for p in net.parameters():  # 1e-39's bits, written as integers (which no mode flushes)
        p.view(torch.int32)[torch.rand_like(p) < 0.57] = 713_311
bits = [p.detach().view(torch.int32) for p in net.parameters()]
subnormal = sum(int(((b & 0x7F800000) == 0).logical_and((b & 0x7FFFFF) != 0).sum()) for b in bits)
share = subnormal / sum(b.numel() for b in bits)
flushing = bool((torch.full((1_000_000,), 1e-40, dtype=torch.float64).float().mul(1) == 0).all())
optimizer = torch.optim.SGD(net.parameters(), lr=0.0, momentum=0.9)
x, y = torch.rand(64, 3, 32, 32), torch.randint(0, 10, (64,))
def step():
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    optimizer.step()
    if setting == "zeroed each step":
        flush_training_subnormals(net, optimizer)
step()
started = time.perf_counter()
for _ in range(steps):
    step()
print(json.dumps({"seconds": (time.perf_counter() - started) / steps, "subnormal_share": share,
                  "every_thread_flushes": flushing}))
"""

SETTINGS = ("none", "zeroed each step", "flush-to-zero mode")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    times = {name: [] for name in SETTINGS}
    share, flushing = 0.0, {}
    for _ in range(args.rounds):
        for name in SETTINGS:
            out = subprocess.run([sys.executable, "-c", CHILD, name, str(args.steps)], cwd=ROOT, check=True,
                                 capture_output=True, text=True).stdout
            record = json.loads(out.strip().splitlines()[-1])
            times[name].append(record["seconds"])
            share = record["subnormal_share"]
            flushing[name] = record["every_thread_flushes"]
    print(f"weights subnormal at the start: {share:.1%}")
    median = {name: statistics.median(values) for name, values in times.items()}
    for name in SETTINGS:
        print(f"{name:20s} {median[name]:.3f} s a training step (batch 64); every thread flushes: {flushing[name]}")
    print(f"zeroed each step / none: {median['zeroed each step'] / median['none']:.3f}   "
          f"zeroed each step / flush-to-zero mode: {median['zeroed each step'] / median['flush-to-zero mode']:.3f}")


if __name__ == "__main__":
    main()
