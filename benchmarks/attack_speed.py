"""How much does robgen's PGD cost beyond the model itself, and against torchattacks?

Prints, measured side by side in one run on the same model and batch:
- robgen PGD time,
- torchattacks PGD time (same settings, random_start=False for both),
- the raw cost: `steps` x (forward + input-gradient backward), nothing else,
and the ratios robgen/torchattacks and robgen/raw. Rounds are interleaved and
the median over rounds is reported, so machine noise hits all three alike.

    python benchmarks/attack_speed.py [--width 64] [--batch 32] [--steps 10] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import robgen  # noqa: E402


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=64, help="ResNet10 width (64 = the paper's model)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    import torchattacks

    device = torch.device(args.device)
    model = robgen.load_model("timm:resnet10_cifar", pretrained=False, width=args.width, device=device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(device)
    settings = dict(eps=8 / 255, step_size=1 / 255, steps=args.steps, random_start=False)
    ours = robgen.PGD(model, **settings)
    theirs = torchattacks.PGD(model, **settings)

    def raw():
        for _ in range(args.steps):
            xr = x.detach().requires_grad_(True)
            loss = F.cross_entropy(model(xr), y, reduction="sum")
            torch.autograd.grad(loss, xr)

    contenders = {"robgen": lambda: ours(x, y), "torchattacks": lambda: theirs(x, y), "raw": raw}
    for fn in contenders.values():  # warm-up
        fn()
    times = {name: [] for name in contenders}
    for round_index in range(args.rounds):
        order = list(contenders)
        order = order[round_index % 3:] + order[: round_index % 3]  # rotate who goes first
        for name in order:
            times[name].append(timed(contenders[name]))
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}; ResNet10 width {args.width}, "
          f"batch {args.batch}, {args.steps} steps, median of {args.rounds} interleaved rounds")
    for name in contenders:
        print(f"  {name:13s} {median[name] * 1000:9.1f} ms")
    print(f"  robgen/torchattacks = {median['robgen'] / median['torchattacks']:.3f}   (target <= 1.00)")
    print(f"  robgen/raw          = {median['robgen'] / median['raw']:.3f}   (target <= 1.10)")


if __name__ == "__main__":
    main()
