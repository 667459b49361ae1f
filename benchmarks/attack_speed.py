"""robgen's PGD against torchattacks' on the same model: fused, unfused, torchattacks and the raw floor.

For each of two models, the shipped `cifar10-resnet10-standard` and a
width-64 ResNet10 with random weights (`timm:resnet10_cifar`, the paper's
architecture), prints in one run:

- robgen fused: `PGD(model)` on an eval-mode model, which runs the fused copy
  (batch norm folded into the convolutions, channels-last; robgen/engine/fused.py);
- robgen unfused: `PGD(model, fused=False)`;
- torchattacks: `torchattacks.PGD` with the same settings;
- raw: `steps` x (forward + input-gradient backward) of the original model,
  nothing else: the floor of any attack that runs the model as it is;
and the ratios, with the target fused/torchattacks <= 0.65. All run PGD
L-inf 8/255, step 1/255, no random start (so every contender is deterministic).

Every round attacks a new batch of CIFAR-10 test images (random pixels where
the data set is not found), all four contenders on the same batch in a
rotating order; the median time over rounds is reported, so that machine noise
hits all alike. Then, over all the rounds' images, the adversarial accuracy
and mean energy E(x) of robgen fused and of torchattacks, which must agree
within 1% (accuracy within 1 point, mean energy within 1%).

    python benchmarks/attack_speed.py [--rounds 5] [--batch 32] [--steps 10] [--device cpu]
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
from robgen.engine.fused import clear_fusion_cache, inference_graph  # noqa: E402

TARGET = 0.65  # robgen fused / torchattacks


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return time.perf_counter() - start, result


def test_images(n: int, data_root, device: torch.device):
    """The first n CIFAR-10 test images and labels, or random pixels and labels where the data set is absent."""
    try:
        dataset = robgen.data.load_dataset("cifar10", "test", root=data_root)
        x, y = robgen.data.load_tensors(dataset, limit=n)
        source = f"the first {n} CIFAR-10 test images"
    except (FileNotFoundError, ValueError) as error:
        g = torch.Generator().manual_seed(0)
        x, y = torch.rand(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
        source = f"{n} random images (CIFAR-10 not found: {error})"
    return x.to(device), y.to(device), source


def raw_floor(model, x, y, steps: int) -> torch.Tensor:
    """`steps` forward and input-gradient backward passes of the model as it is; returns the last input."""
    for _ in range(steps):
        xr = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(xr), y, reduction="sum")
        torch.autograd.grad(loss, xr)
    return x


def benchmark(name: str, model, x_all, y_all, args, device) -> bool:
    import torchattacks

    model.eval()
    clear_fusion_cache(model)
    fusion_seconds, _ = timed(lambda: inference_graph(model), device)
    settings = dict(eps=8 / 255, steps=args.steps, random_start=False)
    contenders = {
        "robgen fused": robgen.PGD(model, step_size=1 / 255, fused=True, **settings),
        "robgen unfused": robgen.PGD(model, step_size=1 / 255, fused=False, **settings),
        "torchattacks": torchattacks.PGD(model, alpha=1 / 255, **settings),
        "raw": lambda x, y: raw_floor(model, x, y, args.steps),
    }
    batches = [(x_all[i:i + args.batch], y_all[i:i + args.batch]) for i in range(0, len(x_all), args.batch)]
    for attack in contenders.values():  # warm-up (allocators, oneDNN primitives)
        attack(*batches[0])
    times = {key: [] for key in contenders}
    outputs = {key: [] for key in contenders}
    for index, (x, y) in enumerate(batches):
        order = list(contenders)
        order = order[index % len(order):] + order[: index % len(order)]  # rotate who goes first
        for key in order:
            seconds, x_adv = timed(lambda: contenders[key](x, y), device)
            times[key].append(seconds)
            outputs[key].append(x_adv)
    median = {key: statistics.median(values) for key, values in times.items()}
    print(f"\n{name}: batch {args.batch}, {args.steps} steps, median of {len(batches)} interleaved rounds "
          f"(fused copy made once in {fusion_seconds * 1000:.0f} ms)")
    for key in contenders:
        spread = f"{min(times[key]) * 1000:.0f}-{max(times[key]) * 1000:.0f}"
        print(f"  {key:15s} {median[key] * 1000:9.1f} ms   (range {spread} ms)")
    ratio = median["robgen fused"] / median["torchattacks"]
    print(f"  robgen fused / torchattacks   = {ratio:.3f}   (target <= {TARGET:.2f}) "
          f"{'PASS' if ratio <= TARGET else 'MISS'}")
    print(f"  robgen fused / raw            = {median['robgen fused'] / median['raw']:.3f}")
    print(f"  robgen fused / robgen unfused = {median['robgen fused'] / median['robgen unfused']:.3f}")
    print(f"  robgen unfused / torchattacks = {median['robgen unfused'] / median['torchattacks']:.3f}")
    print(f"  torchattacks / raw            = {median['torchattacks'] / median['raw']:.3f}")

    y = torch.cat([labels for _, labels in batches])
    stats = {}
    with torch.no_grad():
        for key in ("robgen fused", "robgen unfused", "torchattacks"):
            logits = torch.cat([model(x_adv) for x_adv in outputs[key]]).float()
            stats[key] = (float((logits.argmax(1) == y).double().mean()), float(robgen.energy(logits).double().mean()))
    fused_acc, fused_energy = stats["robgen fused"]
    theirs_acc, theirs_energy = stats["torchattacks"]
    accuracy_gap = abs(fused_acc - theirs_acc)
    energy_gap = abs(fused_energy - theirs_energy) / max(abs(theirs_energy), 1e-12)
    agree = accuracy_gap <= 0.01 and energy_gap <= 0.01
    print(f"  on the same {len(y)} images: adversarial accuracy / mean E(x_adv)")
    for key, (accuracy, mean_energy) in stats.items():
        print(f"    {key:15s} {100 * accuracy:6.2f}%   {mean_energy:9.4f}")
    print(f"    fused vs torchattacks: accuracy {100 * accuracy_gap:.2f} points apart, mean energy "
          f"{100 * energy_gap:.3f}% apart (<= 1% each) {'PASS' if agree else 'FAIL'}")
    unfused_equal = all(torch.equal(a, b) for a, b in zip(outputs["robgen unfused"], outputs["torchattacks"]))
    print(f"    unfused vs torchattacks: {'bit-identical examples' if unfused_equal else 'examples differ'}")
    return ratio <= TARGET and agree


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds, each on a new batch (default 5)")
    parser.add_argument("--batch", type=int, default=32, help="images per batch (default 32)")
    parser.add_argument("--steps", type=int, default=10, help="PGD steps (default 10)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-root", help="folder holding cifar10/ (default $ROBGEN_DATA or ~/.cache/robgen-data)")
    args = parser.parse_args()

    device = torch.device(args.device)
    x_all, y_all, source = test_images(args.rounds * args.batch, args.data_root, device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"PGD L-inf 8/255, step 1/255, no random start; images: {source}")
    models = {
        "cifar10-resnet10-standard (shipped)": lambda: robgen.load_model("cifar10-resnet10-standard", device=device),
        "ResNet10 width 64, random weights": lambda: robgen.load_model("timm:resnet10_cifar", pretrained=False,
                                                                       width=64, device=device),
    }
    passed = True
    for name, load in models.items():
        torch.manual_seed(0)  # the random-weights model: the same weights every run (a script, not library code)
        passed &= benchmark(name, load(), x_all, y_all, args, device)
    print("\nall targets met" if passed else "\nsome target missed (see above)")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
