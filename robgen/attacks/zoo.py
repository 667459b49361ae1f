"""The attack zoo: every attack the energy detector is measured against, by name.

    attack = zoo_attack("CW-L2", model, generator=torch.Generator().manual_seed(0))
    x_adv = attack(x, y)
    ZOO_NAMES   # "FGSM", "PGD-10", "PGD-40", "PGD-L2", "PGD-T", "HE-PGD", "APGD-CE", "APGD-DLR",
                # "APGD-T", "CW-L2", "DeepFool", "FAB-L2", "Square", "AutoAttack"

robgen's own attacks (FGSM, PGD, HE-PGD, APGD) come from robgen.attacks; the
others are torchattacks' (Kim 2020, "Torchattacks: A PyTorch repository for
adversarial attacks"), run through `TorchAttacksAttack`, which holds them to
robgen's conventions:
- pixels in [0, 1] in and out, checked as every robgen attack checks them;
- randomness from a `torch.Generator`: torchattacks draws from the global RNG
  (and some attacks take a `seed`), so each call runs inside
  `seeded_global_rng` (robgen/engine/random.py), seeded from the generator, as
  apgd.py does; the caller's global random state is left as it was, and
  concurrent calls take turns (one process-wide lock), so that they stay
  reproducible;
- the model in eval mode during the attack and the caller's mode after it,
  through its fused copy when the caller left it in eval mode (see
  robgen/engine/fused.py);
- bounded attacks (an eps-ball) return points projected into the ball and
  [0, 1], whatever float drift the attack left; minimum-norm attacks (CW-L2,
  DeepFool, FAB-L2) have no ball: their outputs are only clipped to [0, 1],
  and a study reports their perturbation size instead.

Targets. "PGD-T" is targeted: called without `target`, it draws a random
other class for every image from its generator, t = (y + U{1, ..., K-1}) mod K
(`RandomTarget`); `TorchAttacksAttack(..., targeted=True)` called without a
target is an error. APGD-T and AutoAttack choose their own targets (the
top-scoring wrong classes) and are called like untargeted attacks.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple, Type, Union

import torch
import torch.nn.functional as F

from ..checks import check_positive, check_steps
from ..engine import make_constraint, random_seed
from ..engine.random import generator_device, seeded_global_rng
from ..models.state import CastInputs, model_dtype, working_dtype
from .apgd import APGD
from .base import Attack, class_indices_for
from .hepgd import HighEnergyPGD
from .pgd import FGSM, PGD

_TORCHATTACKS_NORMS = {"linf": "Linf", "l2": "L2"}
FLOAT32_ONLY = ("FAB", "AutoAttack")  # FAB (AutoAttack's FAB-T too) fails on float64 gradients: it is given float32
# pixels and gradients by float32 models and by float16 and bfloat16 ones, whose graph casts (`working_dtype`)
ROUNDING = 1e-6  # a torchattacks output this close to its input (in every pixel) is the input, round-tripped


def _native_norm(attack_class: Type, takes) -> Optional[str]:
    """The ball of a torchattacks class that takes an eps but no `norm` (asked for another, it would silently attack
    in its own): L2 for the classes named ...L2 (PGDL2, PGDRSL2), L-inf for the rest (PGD, Jitter, SPSA, ...). None
    for the others: those with a `norm` argument, the minimum-norm attacks (CW, DeepFool), which have no ball of
    their own and may be projected into any, and a class from outside torchattacks (taken on trust)."""
    if "eps" not in takes or "norm" in takes or not attack_class.__module__.startswith("torchattacks"):
        return None
    return "l2" if attack_class.__name__.endswith("L2") else "linf"


class _ContiguousGrad(torch.autograd.Function):
    """The identity, whose gradient comes back contiguous: the fused copy's is channels-last, and torchattacks'
    PGDL2 and SparseFool `.view` it (a RuntimeError on every call)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


class _ContiguousGradients(torch.nn.Module):
    """`model` as torchattacks gets it: the same outputs, and input gradients in the inputs' own layout."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(_ContiguousGrad.apply(x))


class TorchAttacksAttack(Attack):
    """A torchattacks attack behind robgen's `Attack` interface and conventions (see the module notes).

    Args:
        model: a classifier taking [0, 1] pixels and returning logits.
        attack: a torchattacks class or its name ("CW", "DeepFool", "FAB", "Square", "APGDT", "AutoAttack", ...).
        eps: the radius of the threat model; None for a minimum-norm attack (no ball: outputs are only
            clipped to [0, 1]; a torchattacks `eps` it takes is set to the diameter of the pixel cube).
        norm: "linf" or "l2": the ball's norm, and the attack's (passed to torchattacks as "Linf" / "L2").
        targeted: run torchattacks' targeted mode; calls then need `target`.
        generator: the source of the attack's randomness.
        fused: see `Attack`.
        settings: torchattacks constructor arguments (e.g. `steps=50`, `n_queries=1000`); `eps`, `norm`,
            `n_classes` and `seed` are filled in from the above and the model when the class takes them.

    Example:
        >>> square = TorchAttacksAttack(model, "Square", eps=8/255, n_queries=1000)
        >>> x_adv = square(x, y)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        attack: Union[str, Type],
        eps: Optional[float] = 8 / 255,
        norm: str = "linf",
        targeted: bool = False,
        generator: Optional[torch.Generator] = None,
        fused: Optional[bool] = None,
        **settings,
    ) -> None:
        bounded = eps is not None
        self.attack_norm = make_constraint(norm, 1.0).norm  # the attack's norm, bounded or not
        super().__init__(model, eps=eps if bounded else 1.0, steps=int(settings.get("steps", 1)),
                         norm=norm if bounded else "none", random_start=False, generator=generator, fused=fused)
        self.attack_class = _torchattacks_class(attack)
        self.bounded, self.targeted = bounded, bool(targeted)
        takes = set(inspect.signature(self.attack_class.__init__).parameters) - {"self", "model"}
        unknown = sorted(set(settings) - takes)
        if unknown:
            raise TypeError(f"torchattacks.{self.attack_class.__name__} does not take {', '.join(unknown)}; "
                            f"it takes {', '.join(sorted(takes))}")
        if bounded and "eps" in takes:
            settings.setdefault("eps", self.eps)
        if "norm" in takes and self.attack_norm in _TORCHATTACKS_NORMS:
            settings.setdefault("norm", _TORCHATTACKS_NORMS[self.attack_norm])
        native = _native_norm(self.attack_class, takes)
        if bounded and native is not None and native != self.attack_norm:
            raise ValueError(f"torchattacks.{self.attack_class.__name__} attacks in the {native} norm only, not "
                             f"{self.attack_norm}: pass norm={native!r}"
                             + (", or use PGDL2 for l2" if self.attack_class.__name__ == "PGD" else ""))
        self._check_classes(model, settings)
        if self.attack_class.__name__ in FLOAT32_ONLY and working_dtype(model) != torch.float32:
            raise ValueError(f"torchattacks.{self.attack_class.__name__} builds float32 tensors inside (FAB's "
                             f"projection) and fails on a {model_dtype(model)} model: attack a float32 copy "
                             "(model.float())")
        self._takes, self.settings = takes, settings

    def _check_classes(self, model, settings, classes: Optional[int] = None) -> None:
        """torchattacks' targeted DLR (APGDT, AutoAttack's APGD-T) reads the fourth-largest logit, its DLR the third:
        on fewer classes it fails deep inside with an IndexError. `classes`: the count read from the logits, for a
        model without a robgen spec (checked again at the first call)."""
        name = self.attack_class.__name__
        need = {"APGDT": 4, "AutoAttack": 3 if settings.get("version") == "rand" else 4}.get(name)
        classes = classes if classes is not None else getattr(getattr(model, "spec", None), "num_classes", None)
        if need is not None and classes is not None and classes < need:
            raise ValueError(f"torchattacks.{name} needs at least {need} classes (its DLR loss reads the "
                             f"{'fourth' if need == 4 else 'third'}-largest logit); this model has {classes}")

    def perturb(self, x, y, target, recorder, progress):
        if self.targeted and target is None:
            raise ValueError(f"{self!r} is targeted: call it with target=<classes> (the zoo's 'PGD-T' draws a "
                             "random other class per image instead)")
        if not self.targeted and target is not None:
            raise ValueError(f"{self!r} is untargeted: call it without target (or build it with targeted=True)")
        graph = self.graph
        settings = dict(self.settings)
        if not self.bounded and "eps" in self._takes:  # a minimum-norm attack that keeps points within eps:
            # the whole pixel cube's diameter, so that it rejects none
            settings.setdefault("eps", 1.0 if self.attack_norm == "linf" else float(x[0].numel()) ** 0.5)
        if "n_classes" in self._takes or getattr(self.model, "spec", None) is None:
            with torch.no_grad():
                classes = int(graph(x[:1]).shape[1])
            self._check_classes(self.model, settings, classes)
            if "n_classes" in self._takes:
                settings.setdefault("n_classes", classes)
        seed = random_seed(self.generator, x.device)
        if "seed" in self._takes:
            settings["seed"] = seed
        if recorder is not None:
            self._record(recorder, 0, x, y, target)
        kept = [(parameter, parameter.grad) for parameter in graph.parameters()]
        for parameter, _ in kept:  # set aside, not left in place: backward() would add into them
            parameter.grad = None
        try:
            with seeded_global_rng(seed):
                atk = self.attack_class(_ContiguousGradients(graph), **settings)
                if self.targeted:
                    atk.set_mode_targeted_by_label(quiet=True)  # torchattacks then reads its labels as targets
                # in the model's dtype: FAB writes float64 gradients into a float32 copy of a float32 input; but
                # float32 iterates for a float16 or bfloat16 model, which the graph casts (its grid rounds steps away)
                inputs = x if isinstance(graph, CastInputs) else x.to(model_dtype(graph))
                x_adv = atk(inputs, target if self.targeted else y).detach().to(x.dtype)
        finally:  # CW and FAB call backward(): the caller's model (unfused) keeps the gradients it had, not theirs
            for parameter, grad in kept:
                parameter.grad = grad
        # CW returns tanh(atanh(2x - 1)) where it changed nothing (an image already misclassified): a copy 1e-8 off,
        # which would count as perturbed and reach the adversarial side of a fit; such rows are the clean image
        # (a bounded attack's whole step may be that small: eps = 5e-7 lost every perturbation it found)
        rounding = min(ROUNDING, 1e-3 * self.eps) if self.bounded else ROUNDING
        untouched = (x_adv - x).abs().flatten(1).amax(1) <= rounding
        x_adv = torch.where(untouched.view(-1, *[1] * (x.ndim - 1)), x, x_adv)
        x_adv = self.constraint.project(x_adv, x)  # the eps-ball and [0, 1] (only [0, 1] if unbounded)
        if recorder is not None:
            self._record(recorder, self.steps, x_adv, y, target)
        if progress is not None:
            progress(1.0)
        return x_adv

    @torch.no_grad()
    def _record(self, recorder, step, images, labels, target):
        logits = self.graph(images)
        loss = (-F.cross_entropy(logits, target, reduction="none") if target is not None
                else F.cross_entropy(logits, labels, reduction="none"))
        recorder.record(step, logits, loss)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v!r}" for k, v in self.settings.items()
                          if not (self.bounded and k in ("eps", "norm")))
        threat = f"eps={self.eps:.5g}, norm={self.norm!r}" if self.bounded else f"minimum-norm {self.attack_norm}"
        return f"TorchAttacksAttack({self.attack_class.__name__}, {threat}{', ' if shown else ''}{shown}" + \
            (", targeted)" if self.targeted else ")")


def _torchattacks_class(attack: Union[str, Type]) -> Type:
    import torchattacks

    if attack == "CW" or attack is torchattacks.CW:
        return _carlini_wagner_class()
    if attack == "DeepFool" or attack is torchattacks.DeepFool:
        return _deepfool_class()
    if not isinstance(attack, str):
        return attack
    found = getattr(torchattacks, attack, None)
    if not (isinstance(found, type) and issubclass(found, torchattacks.attack.Attack)):
        known = sorted(name for name in dir(torchattacks) if isinstance(getattr(torchattacks, name), type)
                       and issubclass(getattr(torchattacks, name), torchattacks.attack.Attack) and name != "Attack")
        raise ValueError(f"torchattacks has no attack {attack!r}; it has {', '.join(known)}")
    return found


@functools.lru_cache(maxsize=None)
def _carlini_wagner_class() -> Type:
    """torchattacks.CW with Carlini & Wagner (2017)'s loss f₆ = max(Z_y - max_{j≠y} Z_j, -κ) (targeted: with the
    target t, max(max_{j≠t} Z_j - Z_t, -κ)).

    torchattacks 3.5.1 reads both logits through a 0/1 mask (max((1 - onehot) Z), max(onehot Z)), which computes
    max(Z_y, 0) - max(0, max_{j≠y} Z_j): on a model whose logits are negative the runner-up is never pulled up,
    and once Z_y < 0 the loss is flat and the attack stops (a review's toy model with every logit 20 lower: 0 of
    16 images fooled, against 16 of 16 with f₆, which a constant shift of the logits cannot change)."""
    import torchattacks

    class CW(torchattacks.CW):
        def f(self, outputs, labels):
            own = F.one_hot(labels, outputs.shape[1]).bool()
            other = outputs.masked_fill(own, -math.inf).amax(dim=1)
            real = outputs.gather(1, labels[:, None])[:, 0]
            return torch.clamp(other - real if self.targeted else real - other, min=-self.kappa)

    return CW


@functools.lru_cache(maxsize=None)
def _deepfool_class() -> Type:
    """torchattacks.DeepFool with Moosavi-Dezfooli et al. (2016)'s overshoot: the point is x₀ + (1 + η)·r_tot, the
    overshoot applied to the summed perturbation, each step r_i = (|f'|/‖w'‖ + 1e-4) w'/‖w'‖ toward the nearest
    boundary of the model linearised at the last point (as their code takes it), every point clamped to [0, 1].

    torchattacks 3.5.1 applies (1 + η) to each step from the last point instead; as r_i shrinks near the boundary
    the iterate creeps onto it and stays with the top two logits tied (a review's run on the shipped standard model:
    83 of 88 images fooled, the other 5 at margins of 1e-5 and below, against 88 of 88 with the overshoot on r_tot).
    """
    import torchattacks

    class DeepFool(torchattacks.DeepFool):
        def forward_return_target_labels(self, images, labels):
            images = images.clone().detach().to(self.device)
            labels = labels.clone().detach().to(self.device)
            points, total, reached = images.clone(), torch.zeros_like(images), labels.clone()
            going = list(range(len(images)))
            for _ in range(self.steps):
                still = []
                for i in going:
                    fooled, predicted, step = self._step(points[i:i + 1], labels[i])
                    reached[i] = predicted
                    if fooled:
                        continue
                    total[i] += step
                    points[i] = torch.clamp(images[i] + (1 + self.overshoot) * total[i], 0, 1)
                    still.append(i)
                going = still
                if not going:
                    break
            return points.detach(), reached

        def _step(self, image, label):
            """(fooled, class reached, r_i): the step to the nearest linearised boundary from `image`."""
            image = image.clone().detach().requires_grad_(True)
            logits = self.get_logits(image)[0]
            predicted = logits.argmax()
            if predicted != label:
                return True, predicted, None
            jacobian = self._construct_jacobian(logits, image)
            others = [k for k in range(len(logits)) if k != label]
            gaps = (logits[others] - logits[label]).detach()
            normals = (jacobian[others] - jacobian[label]).flatten(1)
            lengths = normals.norm(dim=1).clamp_min(1e-12)
            nearest = int(torch.argmin(gaps.abs() / lengths))
            distance = gaps[nearest].abs() / lengths[nearest] + 1e-4  # to that boundary, a hair past it
            step = distance * normals[nearest] / lengths[nearest]
            return False, torch.tensor(others[nearest], device=label.device), step.view_as(image[0])

    return DeepFool


def random_other_class(labels: torch.Tensor, num_classes: int, generator: Optional[torch.Generator]) -> torch.Tensor:
    """One class per label, uniform over the K - 1 others: (y + U{1, ..., K-1}) mod K, drawn from `generator`."""
    if num_classes < 2:
        raise ValueError("a targeted attack needs a model with at least 2 classes")
    device = generator_device(generator, labels.device)
    shift = torch.randint(1, num_classes, labels.shape, generator=generator, device=device).to(labels.device)
    return (labels + shift) % num_classes


class RandomTarget:
    """A targeted attack that, called without `target`, aims every image at a random other class.

    The targets are drawn from `generator` with `random_other_class`, so that
    a targeted attack fits pipelines that call `attack(images, labels)`.
    """

    def __init__(self, attack: Attack, num_classes: int, generator: Optional[torch.Generator] = None) -> None:
        self.attack, self.num_classes, self.generator = attack, int(num_classes), generator

    @property
    def model(self) -> torch.nn.Module:
        return self.attack.model

    def __call__(self, x: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor] = None, **call_settings):
        if target is None:  # y as the attack reads it: class indices, one class for all, or labels
            labels = class_indices_for(getattr(self.attack, "model", None), y, len(x), self.num_classes, x.device)
            target = random_other_class(labels, self.num_classes, self.generator)
        return self.attack(x, y, target=target, **call_settings)

    def __repr__(self) -> str:
        return f"RandomTarget({self.attack!r})"


@dataclass(frozen=True)
class ZooSettings:
    """The threat models of the zoo: one L-inf and one L2 budget for every bounded attack."""

    eps: float = 8 / 255  # L-inf radius (the paper's)
    l2_eps: float = 0.5  # L2 radius (for 32x32 CIFAR images; scale with sqrt(C*H*W) for others)
    step_size: float = 1 / 255  # PGD-40, PGD-T and HE-PGD (the paper's)
    lam: float = 1.2  # HE-PGD's energy weight (the paper's text)
    square_queries: int = 1000  # Square's query budget (AutoAttack uses 5000)

    def __post_init__(self) -> None:  # here, before any attack runs, not when the zoo reaches the attack
        if check_positive(self.eps, "eps") > 1:
            raise ValueError(f"eps is an L-inf radius in (0, 1] pixel units (e.g. 8/255), got {self.eps}")
        check_positive(self.l2_eps, "l2_eps"), check_positive(self.step_size, "step_size")
        if not (math.isfinite(float(self.lam)) and self.lam >= 0):
            raise ValueError(f"lam must be a finite number >= 0, got {self.lam}")
        check_steps(self.square_queries, "square_queries")


@dataclass(frozen=True)
class ZooEntry:
    """One attack of the zoo: how to build it and what it is."""

    name: str
    threat: str  # "linf", "l2" or "min-l2" (minimum-norm, unbounded)
    access: str  # "white-box" or "black-box"
    source: str  # "robgen" or "torchattacks"
    reference: str
    build: Callable[..., Callable]  # (model, settings, generator, fused) -> attack(x, y)
    targeted: bool = False

    @property
    def bounded(self) -> bool:
        return not self.threat.startswith("min")


def _num_classes(model) -> int:
    spec = getattr(model, "spec", None)
    if spec is None:
        raise ValueError("a zoo attack needs a robgen model with `model.spec` (for its number of classes)")
    return spec.num_classes


_ENTRIES = [
    ZooEntry("FGSM", "linf", "white-box", "robgen", "Goodfellow et al. 2015",
             lambda m, s, g, f: FGSM(m, eps=s.eps, generator=g, fused=f)),
    ZooEntry("PGD-10", "linf", "white-box", "robgen", "Madry et al. 2018 (step 2.5·eps/10, random start)",
             lambda m, s, g, f: PGD(m, eps=s.eps, step_size=2.5 * s.eps / 10, steps=10, generator=g, fused=f)),
    ZooEntry("PGD-40", "linf", "white-box", "robgen", "Madry et al. 2018; the paper's detector attack (step 1/255)",
             lambda m, s, g, f: PGD(m, eps=s.eps, step_size=s.step_size, steps=40, generator=g, fused=f)),
    ZooEntry("PGD-L2", "l2", "white-box", "robgen", "Madry et al. 2018, L2 (20 steps of 2.5·eps/20)",
             lambda m, s, g, f: PGD(m, eps=s.l2_eps, step_size=2.5 * s.l2_eps / 20, steps=20, norm="l2",
                                    generator=g, fused=f)),
    ZooEntry("PGD-T", "linf", "white-box", "robgen", "targeted PGD-40 toward a random other class",
             lambda m, s, g, f: RandomTarget(PGD(m, eps=s.eps, step_size=s.step_size, steps=40, generator=g,
                                                 fused=f), _num_classes(m), g), targeted=True),
    ZooEntry("HE-PGD", "linf", "white-box", "robgen", "Beadini & Masi 2023 (λ·E added to CE, 40 steps)",
             lambda m, s, g, f: HighEnergyPGD(m, eps=s.eps, step_size=s.step_size, steps=40, lam=s.lam,
                                              generator=g, fused=f)),
    ZooEntry("APGD-CE", "linf", "white-box", "robgen", "Croce & Hein 2020 (20 iterations)",
             lambda m, s, g, f: APGD(m, eps=s.eps, steps=20, loss="ce", generator=g, fused=f)),
    ZooEntry("APGD-DLR", "linf", "white-box", "robgen", "Croce & Hein 2020 (DLR loss, 20 iterations)",
             lambda m, s, g, f: APGD(m, eps=s.eps, steps=20, loss="dlr", generator=g, fused=f)),
    ZooEntry("APGD-T", "linf", "white-box", "torchattacks", "Croce & Hein 2020 (targeted DLR, every other class)",
             lambda m, s, g, f: TorchAttacksAttack(m, "APGDT", eps=s.eps, steps=20, generator=g, fused=f)),
    ZooEntry("CW-L2", "min-l2", "white-box", "torchattacks", "Carlini & Wagner 2017 (c=1, 50 steps)",
             lambda m, s, g, f: TorchAttacksAttack(m, "CW", eps=None, norm="l2", c=1.0, kappa=0.0, steps=50, lr=0.01,
                                                   generator=g, fused=f)),
    ZooEntry("DeepFool", "min-l2", "white-box", "torchattacks", "Moosavi-Dezfooli et al. 2016 (50 steps)",
             lambda m, s, g, f: TorchAttacksAttack(m, "DeepFool", eps=None, norm="l2", steps=50, overshoot=0.02,
                                                   generator=g, fused=f)),
    ZooEntry("FAB-L2", "min-l2", "white-box", "torchattacks", "Croce & Hein 2020, FAB (L2, minimum norm, 20 steps)",
             lambda m, s, g, f: TorchAttacksAttack(m, "FAB", eps=None, norm="l2", steps=20, generator=g, fused=f)),
    ZooEntry("Square", "linf", "black-box", "torchattacks", "Andriushchenko et al. 2020 (score-based queries)",
             lambda m, s, g, f: TorchAttacksAttack(m, "Square", eps=s.eps, n_queries=s.square_queries,
                                                   generator=g, fused=f)),
    ZooEntry("AutoAttack", "linf", "white-box", "torchattacks",
             "Croce & Hein 2020, standard set: APGD-CE, APGD-T, FAB-T, Square (torchattacks' step counts)",
             lambda m, s, g, f: TorchAttacksAttack(m, "AutoAttack", eps=s.eps, version="standard", generator=g,
                                                   fused=f)),
]

ZOO: Dict[str, ZooEntry] = {entry.name: entry for entry in _ENTRIES}
ZOO_NAMES: Tuple[str, ...] = tuple(ZOO)
_ALIASES = {"pgd": "PGD-40", "cw": "CW-L2", "fab": "FAB-L2", "apgd": "APGD-CE", "aa": "AutoAttack",
            "targetedpgd": "PGD-T", "pgdtargeted": "PGD-T", "pgdlinf": "PGD-40"}


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


_BY_KEY = {**{_key(name): name for name in ZOO}, **_ALIASES}


def zoo_entry(name: str) -> ZooEntry:
    """The zoo's entry for a name (case, dashes and spaces ignored: "pgd40", "PGD 40"), or an error listing them."""
    found = _BY_KEY.get(_key(name))
    if found is None:
        raise ValueError(f"unknown zoo attack {name!r}: choose from {', '.join(ZOO_NAMES)}")
    return ZOO[found]


def zoo_attack(name: str, model: torch.nn.Module, settings: Optional[ZooSettings] = None,
               generator: Optional[torch.Generator] = None, fused: Optional[bool] = None) -> Callable:
    """The zoo's attack called `name` on `model`: call it as `attack(x, y)` on [0, 1] pixels.

    Example:
        >>> x_adv = zoo_attack("DeepFool", model)(x, y)
    """
    entry = zoo_entry(name)
    return entry.build(model, settings or ZooSettings(), generator, fused)
