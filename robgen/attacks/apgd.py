"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks"), through torchattacks.

torchattacks' APGD seeds the global RNG; here it runs inside
`seeded_global_rng` (robgen/engine/random.py), seeded from our generator: the
caller's global random state is left as it was, and concurrent calls (the web
app's threads) take turns, so that a seeded call gives the same result however
many run at once.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..checks import check_steps
from ..engine import random_seed
from ..engine.random import seeded_global_rng
from .base import Attack


class _ReportedGraph(torch.nn.Module):
    """`graph`, reporting progress as the share of `expected` forward passes made (torchattacks' APGD does not
    show its steps: one pass per step and restart, one more to start each; below 1 until the attack returns)."""

    def __init__(self, graph: torch.nn.Module, progress, expected: int) -> None:
        super().__init__()
        self.graph, self.progress, self.expected, self.calls = graph, progress, expected, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.progress(min(self.calls / self.expected, 0.99))
        return self.graph(x)


class APGD(Attack):
    """Step-size-free PGD with momentum; `loss` is "ce" or "dlr".

    As in AutoAttack (torchattacks runs it), an image the model already misclassifies, and one the attack does
    not make misclassified, comes back as it was given (the clean image, not the last iterate): compare energies
    only over the images it fooled. Its trace holds two entries, the clean input (step 0) and the result,
    since torchattacks does not expose its iterates.

    Example:
        >>> x_adv = APGD(model, eps=8/255, steps=10)(x, y)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        eps: float = 8 / 255,
        steps: int = 10,
        norm: str = "linf",
        loss: str = "ce",
        n_restarts: int = 1,
        rho: float = 0.75,
        generator: Optional[torch.Generator] = None,
        *,
        fused: Optional[bool] = None,
    ) -> None:
        super().__init__(model, eps=eps, step_size=eps, steps=steps, norm=norm, random_start=True, generator=generator,
                         fused=fused)
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"APGD supports norm 'linf' or 'l2', got {norm!r}")
        if loss not in ("ce", "dlr"):
            raise ValueError(f"APGD loss must be 'ce' or 'dlr', got {loss!r}")
        self.loss, self.n_restarts, self.rho = loss, check_steps(n_restarts, "n_restarts"), float(rho)

    def perturb(self, x, y, target, recorder, progress):
        if target is not None:
            raise ValueError("APGD here is untargeted: call it without target (torchattacks.APGDT is the targeted one)")
        import torchattacks

        if self.loss == "dlr":  # DLR divides by the gap between the largest and the third-largest logit
            with torch.no_grad():
                classes = int(self.graph(x[:1]).shape[1])
            if classes < 3:
                raise ValueError(f"APGD's DLR loss needs at least 3 classes (it reads the third-largest logit); "
                                 f"this model has {classes}: use loss='ce'")
        seed = random_seed(self.generator, x.device)
        if recorder is not None:
            self._record(recorder, 0, x, y)
        graph = self.graph
        if progress is not None:  # in the graph's own mode: torchattacks puts its model back in the mode it found
            # it in, and a new module's is train (the cached fused copy stayed in train mode after the attack)
            graph = _ReportedGraph(graph, progress, self.n_restarts * (self.steps + 1)).train(graph.training)
        with seeded_global_rng(seed):  # torchattacks reseeds the global RNG with `seed` itself
            atk = torchattacks.APGD(
                graph, norm="Linf" if self.norm == "linf" else "L2", eps=self.eps, steps=self.steps,
                n_restarts=self.n_restarts, seed=seed, loss=self.loss, eot_iter=1, rho=self.rho, verbose=False,
            )
            x_adv = atk(x, y).detach()
        x_adv = self.constraint.project(x_adv, x)  # guard float drift
        if recorder is not None:
            self._record(recorder, self.steps, x_adv, y)
        if progress is not None:
            progress(1.0)
        return x_adv

    @torch.no_grad()
    def _record(self, recorder, step, images, labels):
        logits = self.graph(images)
        recorder.record(step, logits, torch.nn.functional.cross_entropy(logits, labels, reduction="none"))

    def __repr__(self) -> str:
        return f"APGD(eps={self.eps:.5g}, steps={self.steps}, norm={self.norm!r}, loss={self.loss!r})"
