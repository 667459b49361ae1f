"""Detection-aware metrics of a classifier with a reject option, as pure functions on per-image booleans.

The reporting rule of Tramèr, Carlini, Brendel & Madry (2020, "On adaptive attacks to adversarial
example defenses"): the threshold is fixed on clean held-out data, and a test image counts as
defended when its clean image is classified correctly and accepted and no attack finds a point in
the ε-ball that is misclassified *and* accepted. Inputs are booleans per test image (N,):

    clean_correct     the model classifies the clean image correctly
    clean_accepted    the reject option accepts the clean image (score <= 0)
    evaded            an attack found an accepted, misclassified point in the ball: one (N,) tensor,
                      an (A, N) stack, or a mapping {attack name: (N,)}
    adversarial_correct / adversarial_rejected
                      an attack's point (e.g. one made against the bare model) is still classified
                      correctly / is rejected

Every rate comes as {"rate", "ci", "count", "n"} with Wilson's 95% interval (robgen.metrics).
`tramer_ceiling_note` states the bound of Tramèr (2022, "Detecting adversarial examples is (nearly)
as hard as classifying them"): a detector robust at ε gives a (slow) classifier robust at ε/2, so
a DARA at ε above the best robust accuracy known at ε/2 points to a weak attack.
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Union

import torch

from ..metrics import PAIRED_INTERVAL, paired_difference_interval, rate_interval, yes_no

Flags = Union[torch.Tensor, Mapping[str, torch.Tensor]]


def as_flags(values, name: str, n: Optional[int] = None) -> torch.Tensor:
    """A 1-D bool tensor from booleans (or 0/1 numbers), of length `n` if given; a clear error otherwise."""
    flags = torch.as_tensor(values).detach().cpu()
    if flags.ndim != 1:
        raise ValueError(f"{name} must hold one boolean per test image, shape (N,), got {tuple(flags.shape)}")
    flags = yes_no(flags, name)  # booleans, or numbers all 0 or 1
    if n is not None and len(flags) != n:
        raise ValueError(f"{name} has {len(flags)} entries but the clean results have {n}: pass the same test images")
    return flags


def _stack(values: Flags, name: str, n: int) -> Dict[str, torch.Tensor]:
    """{attack name: (N,) flags} from a mapping, an (A, N) stack or one (N,) tensor."""
    if isinstance(values, Mapping):
        if not values:
            raise ValueError(f"{name} names no attack: pass at least one")
        return {str(key): as_flags(flags, f"{name}[{key!r}]", n) for key, flags in values.items()}
    tensor = torch.as_tensor(values)
    if tensor.ndim == 1:
        return {"attack": as_flags(tensor, name, n)}
    if tensor.ndim == 2:
        if tensor.shape[0] == 0:  # read as "no attack broke anything", the DARA was the clean accuracy
            raise ValueError(f"{name} is an empty stack of attacks, shape {tuple(tensor.shape)}: pass at least one")
        return {f"attack {i}": as_flags(row, f"{name}[{i}]", n) for i, row in enumerate(tensor)}
    raise ValueError(f"{name} must be (N,), (attacks, N) or a mapping of attack names to (N,), got {tuple(tensor.shape)}")


def rate(flags: torch.Tensor) -> Dict[str, object]:
    """{"rate", "ci" (Wilson 95%), "count", "n"} of a boolean tensor; rate and ci are nan when n = 0."""
    flags = as_flags(flags, "flags")
    n, count = int(flags.numel()), int(flags.sum())
    return {"rate": count / n if n else math.nan, "ci": rate_interval(flags), "count": count, "n": n}


def clean_accuracy_with_rejection(clean_correct, clean_accepted) -> Dict[str, Dict[str, object]]:
    """Clean test images: accuracy with rejection (correct and accepted), the rejection rate (the test FPR counted
    among all of them) and among the correctly classified ones (the test FPR as Chen et al. 2023 count it, a
    threshold's fpr_among="correct"), the accuracy without the detector, and the accuracy among accepted images."""
    correct = as_flags(clean_correct, "clean_correct")
    accepted = as_flags(clean_accepted, "clean_accepted", len(correct))
    return {"accuracy": rate(correct & accepted), "rejection_rate": rate(~accepted),
            "rejection_rate_of_correct": rate(~accepted[correct]),
            "accuracy_without_detector": rate(correct), "accuracy_among_accepted": rate(correct[accepted])}


def defended_images(clean_correct, clean_accepted, evaded: Flags) -> torch.Tensor:
    """(N,) bool: clean image correct and accepted, and no attack found an accepted misclassified point."""
    correct = as_flags(clean_correct, "clean_correct")
    accepted = as_flags(clean_accepted, "clean_accepted", len(correct))
    broken = torch.zeros_like(correct)
    for flags in _stack(evaded, "evaded", len(correct)).values():
        broken |= flags
    return correct & accepted & ~broken


def detection_aware_robust_accuracy(clean_correct, clean_accepted, evaded: Flags) -> Dict[str, object]:
    """DARA: the fraction of test images defended against every attack (`defended_images`), over all N."""
    return rate(defended_images(clean_correct, clean_accepted, evaded))


def detection_rate(clean_correct, adversarial_correct, adversarial_rejected) -> Dict[str, object]:
    """Among the images an attack succeeds on (clean correct, its point misclassified), the fraction rejected.

    For attacks made against the bare model this is the detector's usual "detection rate"; n is the
    number of successes (0 gives a nan rate).
    """
    correct = as_flags(clean_correct, "clean_correct")
    succeeded = correct & ~as_flags(adversarial_correct, "adversarial_correct", len(correct))
    rejected = as_flags(adversarial_rejected, "adversarial_rejected", len(correct))
    return rate(rejected[succeeded])


def bare_robust_accuracy(clean_correct, adversarial_correct: Flags) -> Dict[str, object]:
    """The model without its detector: clean correct and still correct under every attack."""
    correct = as_flags(clean_correct, "clean_correct")
    robust = correct.clone()
    for flags in _stack(adversarial_correct, "adversarial_correct", len(correct)).values():
        robust &= flags
    return rate(robust)


def gain_over_bare(robust, defended, rejected_clean=None, confidence: float = 0.95) -> Dict[str, object]:
    """What a detector adds to the bare model on the same test images: DARA minus the bare model's robust
    accuracy, paired image by image (`robust`: the bare model right at every point of the detector-off suite;
    `defended`: `defended_images` with the detector). The difference's interval is the paired one
    (`metrics.paired_difference_interval`): the two rates' own intervals side by side ignore that both are
    measured on the same images and can overlap where the difference excludes 0.

    Also the images only one side holds. "only_with_detector": the detector-off suite broke them and the
    detector's suite found no accepted mistake there (the detector's catches, and whatever the two suites'
    random draws differ by). "only_bare": robust without the detector, not defended with it; with
    `rejected_clean` (the clean images it rejects) split into those rejected on the clean image (the cost of its
    false positives) and the rest, where the detector's suite found an accepted mistake the detector-off suite
    missed (so the bare model is not robust there either: attack variance, not a cost of the detector); None
    where the clean rejections are not known."""
    robust = as_flags(robust, "robust")
    defended = as_flags(defended, "defended", len(robust))
    n = int(robust.numel())
    difference = (int(defended.sum()) - int(robust.sum())) / n if n else math.nan
    only_bare = robust & ~defended
    rejected = None if rejected_clean is None else as_flags(rejected_clean, "rejected_clean", n) & only_bare
    return {"difference": difference, "ci": list(paired_difference_interval(robust, defended, confidence)),
            "only_with_detector": int((defended & ~robust).sum()), "only_bare": int(only_bare.sum()),
            "only_bare_rejected_clean": None if rejected is None else int(rejected.sum()),
            "only_bare_evaded": None if rejected is None else int((only_bare & ~rejected).sum()),
            "n": n, "interval": PAIRED_INTERVAL}


def per_attack_breakdown(clean_correct, clean_accepted, evaded: Flags) -> Dict[str, Dict[str, object]]:
    """Per attack: its DARA alone, its evasion rate among the images defended on clean inputs, and how many
    images only it broke (so which attacks the final number rests on)."""
    correct = as_flags(clean_correct, "clean_correct")
    accepted = as_flags(clean_accepted, "clean_accepted", len(correct))
    attacks = _stack(evaded, "evaded", len(correct))
    clean_ok = correct & accepted
    counts = torch.stack([flags & clean_ok for flags in attacks.values()]).sum(0)  # attacks that broke each image
    return {name: {"dara": rate(clean_ok & ~flags), "evasion_rate": rate(flags[clean_ok]),
                   "only_this_attack": int((flags & clean_ok & (counts == 1)).sum())}
            for name, flags in attacks.items()}


def eps_label(eps: float) -> str:
    """8/255 for a whole number of 255ths, else the number itself (reports and stage names)."""
    scaled = float(eps) * 255
    return f"{round(scaled)}/255" if abs(scaled - round(scaled)) < 1e-6 and round(scaled) else f"{float(eps):.6g}"


def tramer_ceiling_note(eps: float, norm: str = "Linf", best_known_at_half: Optional[float] = None) -> str:
    """One sentence for a report: the bound of Tramèr (2022) on a DARA at `eps`.

    A detector robust at distance ε yields a (computationally inefficient) classifier robust at ε/2
    with the same robust accuracy, so a DARA at ε above the best robust accuracy any classifier is
    known to reach at ε/2 (`best_known_at_half`, a fraction, if given) signals a weak attack rather
    than a strong detector.
    """
    eps = float(eps)
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    note = (f"Tramèr (2022): a detector robust at {norm} ε = {eps_label(eps)} gives a (slow) classifier robust at "
            f"ε/2 = {eps_label(eps / 2)}, so detection-aware robust accuracy at {eps_label(eps)} cannot credibly "
            f"exceed the best robust accuracy known at {eps_label(eps / 2)}")
    if best_known_at_half is not None:
        note += f" ({100 * float(best_known_at_half):.1f}%)"
    return note + "; a higher number points to a weak attack, not a strong detector."


def detection_aware_report(clean_correct, clean_accepted, evaded: Flags, eps: float,
                           bare_adversarial_correct: Optional[Flags] = None,
                           bare_adversarial_rejected: Optional[Flags] = None, norm: str = "Linf",
                           best_known_at_half: Optional[float] = None,
                           bare_final_correct: Optional[Flags] = None) -> Dict[str, object]:
    """Every metric at once: clean accuracy with rejection, DARA, the per-attack breakdown, and, given the
    attacks' results on the bare model, its robust accuracy and the detection rate of each; Tramèr's note.

    `bare_adversarial_correct`: per attack, the model right at every point it tried (its robust accuracy);
    `bare_final_correct` and `bare_adversarial_rejected`: right and rejected at the point it ended on, where the
    detection rate is taken (default `bare_final_correct`: `bare_adversarial_correct`)."""
    report: Dict[str, object] = {
        "clean": clean_accuracy_with_rejection(clean_correct, clean_accepted),
        "dara": detection_aware_robust_accuracy(clean_correct, clean_accepted, evaded),
        "per_attack": per_attack_breakdown(clean_correct, clean_accepted, evaded),
        "eps": float(eps), "norm": norm, "tramer_ceiling": tramer_ceiling_note(eps, norm, best_known_at_half),
    }
    n = len(as_flags(clean_correct, "clean_correct"))
    if bare_adversarial_correct is not None:
        bare = _stack(bare_adversarial_correct, "bare_adversarial_correct", n)
        report["bare_robust_accuracy"] = bare_robust_accuracy(clean_correct, bare)
        if bare_adversarial_rejected is not None:
            rejected = _stack(bare_adversarial_rejected, "bare_adversarial_rejected", n)
            if set(rejected) != set(bare):
                raise ValueError(f"bare_adversarial_rejected names attacks {sorted(rejected)} but "
                                 f"bare_adversarial_correct names {sorted(bare)}: give both for the same attacks")
            final = bare if bare_final_correct is None else _stack(bare_final_correct, "bare_final_correct", n)
            if set(final) != set(bare):
                raise ValueError(f"bare_final_correct names attacks {sorted(final)} but bare_adversarial_correct "
                                 f"names {sorted(bare)}: give both for the same attacks")
            report["detection_rate"] = {name: detection_rate(clean_correct, final[name], rejected[name])
                                        for name in bare}
    return report
