"""Accuracy of a classifier, clean and under attack, over a data set.

    result = evaluate_robustness(model, dataset, eps=8/255, steps=20)
    result["clean_accuracy"], result["pgd_accuracy"]

Runs batch by batch (bounded memory), with a progress bar. Under torchrun each
rank attacks its share of the batches (`distributed.shard_batches`) with random
starts drawn per batch (`distributed.per_batch_seeds`), and the counts are
summed across ranks, so N processes report what one does. Every accuracy comes
with its 95% Wilson interval (`*_ci`), computed on the summed counts.
"""

from __future__ import annotations

import time
from typing import Optional

import torch
from torch.utils.data import DataLoader, Dataset

from . import distributed
from .data import collate_examples
from .attacks import APGD, PGD
from .metrics import wilson_interval
from .models.state import eval_mode, model_device
from .progress import progress_bar


def evaluate_robustness(
    model: torch.nn.Module,
    dataset: Dataset,
    eps: float = 8 / 255,
    norm: str = "linf",
    steps: int = 20,
    step_size: Optional[float] = None,
    apgd: bool = False,
    batch_size: int = 256,
    seed: int = 0,
    progress=True,
) -> dict:
    """Clean accuracy and robust accuracy under PGD-`steps` (and APGD) at `eps` (right on the clean image and on the
    attacked one); `steps=0`: clean accuracy only.

    PGD uses a random start and step `step_size` (default 2.5 * eps / steps, as in
    Madry et al.); the random start is seeded per batch from `seed`, so results
    repeat exactly, with any number of torchrun processes. Fewer images than
    processes (an empty data set too) is refused (ValueError) on every rank before any work. APGD runs at least
    10 steps (its step-size schedule needs them): its entry in the result says how many.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0 (0: clean accuracy only), got {steps}")
    if steps == 0 and apgd:
        raise ValueError("APGD is an attack: give it steps >= 1 (steps 0 measures clean accuracy only, without it)")
    if len(dataset) == 0:
        raise ValueError("the data set is empty: there are no images to measure accuracy on")
    device = model_device(model)
    step_size = step_size if step_size is not None else 2.5 * eps / max(steps, 1)
    generator = torch.Generator(device=device).manual_seed(seed)
    pgd = PGD(model, eps=eps, step_size=step_size, steps=steps, norm=norm, generator=generator) if steps else None
    auto = APGD(model, eps=eps, steps=max(steps, 10), norm=norm, generator=generator) if apgd else None
    share = distributed.shard_batches(DataLoader(dataset, batch_size=batch_size, collate_fn=collate_examples))
    counts = torch.zeros(4, dtype=torch.float64)  # n, clean, pgd, apgd
    started = time.perf_counter()
    with eval_mode(model), distributed.per_batch_seeds(generator) as reseed:
        for index, (x, y) in progress_bar(share, desc=f"eval (PGD-{steps})" if steps else "eval (clean)",
                                          progress=progress if distributed.is_main() else False):
            reseed(index)
            x, y = x.to(device), y.to(device)
            x_pgd = pgd(x, y) if pgd is not None else None
            x_auto = auto(x, y) if auto is not None else None
            with torch.no_grad():  # robust: right on the clean image and on the attacked one, as everywhere in robgen
                right = model(x).argmax(1) == y
                counts[1] += float(right.sum())
                if x_pgd is not None:
                    counts[2] += float((right & (model(x_pgd).argmax(1) == y)).sum())
                if x_auto is not None:
                    counts[3] += float((right & (model(x_auto).argmax(1) == y)).sum())
            counts[0] += len(y)
    n, clean, robust, auto_robust = distributed.reduce_sums(counts.tolist(), device)
    result = {"n": int(n), "clean_accuracy": clean / n, "clean_accuracy_ci": wilson_interval(clean, int(n)),
              "seconds": time.perf_counter() - started}
    if pgd is not None:
        result.update(pgd_accuracy=robust / n, pgd_accuracy_ci=wilson_interval(robust, int(n)), attack={
            "name": "pgd", "eps": eps, "norm": norm, "steps": steps, "step_size": step_size, "random_start": True,
            "seed": seed})
    if auto is not None:
        result["apgd_accuracy"] = auto_robust / n
        result["apgd_accuracy_ci"] = wilson_interval(auto_robust, int(n))
        result["apgd"] = {"name": "apgd", "eps": eps, "norm": norm, "steps": auto.steps, "loss": "ce", "seed": seed}
    return result
