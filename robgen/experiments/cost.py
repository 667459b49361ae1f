"""What a run cost: model passes counted where the attacks run, one batch pass timed on this hardware,
and the floor they set on the wall time (so a reader sees how close a pipeline is to its floor).

The unit is one image through the model once. `PassLedger` counts the passes of
every `model_outputs` call of a run; `measure_pass_time` times one forward+backward
and one forward pass of a batch; `PassLedger.summary` compares passes x time per
pass with the wall time.
"""

from __future__ import annotations

import time
from typing import List, Optional, Tuple

import torch

from .. import distributed
from ..attacks import APGD
from ..detection.baselines import penultimate_features
from ..engine.fused import inference_graph
from ..models.state import eval_mode, model_device


def attack_passes(attack, images: int, correct: int) -> Tuple[int, int]:
    """(forward+backward, forward-only) image-passes of one traced `model_outputs` run (a pass of one image = 1).

    PGD / HE-PGD: `steps` gradient passes per image, the trace's forward of the last iterate and the features
    forward. APGD (torchattacks): a forward to find the correctly classified images, (steps + 1) gradient passes
    per restart on those (`correct` of them; an upper bound after the first restart), the trace's two forwards
    (start and result) and the features forward. No attack: the features forward only.
    """
    if attack is None:
        return 0, images
    if isinstance(attack, APGD):
        return (attack.steps + 1) * attack.n_restarts * correct, 4 * images
    return attack.steps * images, 2 * images


class PassLedger:
    """The model passes of a run, one entry per `model_outputs` call, and the floor they set on its wall time."""

    def __init__(self) -> None:
        self.runs: List[dict] = []

    def add(self, name: str, split: str, attack, images: int, correct: int) -> None:
        backward, forward = attack_passes(attack, images, correct)
        self.runs.append({"run": name, "split": split, "steps": getattr(attack, "steps", 0), "images": images,
                          "forward_backward": backward, "forward": forward})

    def summary(self, timing: dict, wall_seconds: float) -> dict:
        backward = sum(run["forward_backward"] for run in self.runs)
        forward = sum(run["forward"] for run in self.runs)
        size = timing["batch_size"]
        floor = (backward * timing["seconds_per_forward_backward_batch"] + forward * timing["seconds_per_forward_batch"]) / size
        floor /= distributed.world_size()  # ranks share the images; each rank's share runs at the same time
        return {
            "forward_backward_passes": backward, "forward_passes": forward,
            "forward_backward_batches": backward / size, "forward_batches": forward / size, **timing,
            "world_size": distributed.world_size(), "floor_seconds": floor, "wall_seconds": wall_seconds,
            "floor_fraction_of_wall": floor / wall_seconds if wall_seconds > 0 else float("nan"),
            "runs": self.runs,
            "not_counted": "KD+BU's MC-dropout passes (through the final linear layer only), the baselines' fits, "
                           "intervals, data loading and decoding; the figures are drawn after the clock stops",
        }


def measure_pass_time(model, batch_size: int, repeats: int = 5, generator: Optional[torch.Generator] = None) -> dict:
    """Seconds of one forward+backward pass (a PGD step, as the attacks run it: the fused eval-mode graph) and of
    one forward pass (features and logits, as `model_outputs` runs it) over a batch of `batch_size` images.

    Each is the fastest of `repeats` timed passes after one untimed warm-up, on uniform random pixels: a
    floor, as the accounting wants, since a busy machine only ever makes a pass slower.
    """
    device = model_device(model)
    images = torch.rand((batch_size, *model.spec.input_size), generator=generator, device=device)
    labels = torch.zeros(batch_size, dtype=torch.long, device=device)
    # The graph an attack runs, made once here as an attack makes it once per call (and not timed: a 1-step
    # attack call would time that making, which a 40-step call spreads over its steps)
    graph = inference_graph(model, example=images)

    def one_step() -> None:
        x = images.clone().requires_grad_(True)
        torch.autograd.grad(torch.nn.functional.cross_entropy(graph(x), labels), x)

    def timed(run) -> float:
        run()  # warm-up: allocations, the fused copy of the model
        times = []
        for _ in range(repeats):
            _synchronize(device)
            start = time.perf_counter()
            run()
            _synchronize(device)
            times.append(time.perf_counter() - start)
        return min(times)

    started = time.perf_counter()
    with eval_mode(model):
        backward = timed(one_step)
        forward = timed(lambda: penultimate_features(model, images))
    return {"batch_size": batch_size, "timing_repeats": repeats, "seconds_per_forward_backward_batch": backward,
            "seconds_per_forward_batch": forward, "timing_seconds": time.perf_counter() - started}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
