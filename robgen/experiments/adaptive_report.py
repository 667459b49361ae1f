"""The adaptive evaluation's numbers, sanity checks, report (`results.md`), data (`results.json`) and figure.

`summarise` turns the per-image flags of every (detector, eps, attack) stage (adaptive.py) into
rows of `robgen.detection.dara.detection_aware_report` (DARA, clean accuracy with rejection,
the per-attack breakdown, detection rates, Tramèr's ceiling note, all with Wilson 95%
intervals), the bare model's robust accuracy under the same suite, and the sanity checks of
Carlini et al. (2019, "On evaluating adversarial robustness"), kept as data:

- the detector switched off gives the bare model's robust accuracy, image for image (the bare
  model's number comes from the model's logits at every attack's points, not through the detector: a check of
  the bookkeeping, which cannot catch a weak suite, hence the next one);
- with the detector off, the adaptive attacks alone find what the non-adaptive references (plain PGD and HE-PGD
  on the bare model) find: at most `noise_images(n)` images only the references broke (the two are judged on the
  same images, so the count is compared, not two intervals);
- a detector that reads only the logits, on a standard model, falls to about its FPR: DARA at most the bare
  model's robust accuracy (its upper bound) plus the detector's own target FPR;
- DARA (and the bare robust accuracy) does not rise with eps, each eps's suite alone (the DARA reported at an eps
  counts the evasions every smaller eps found, `with_smaller_eps`, and so cannot rise);
- at a large eps (LARGE_EPS or more) DARA is near 0 (at most NEAR_ZERO);
- the attacks have converged: their last restart breaks no more than `noise_images(n)` images. `dara_by_restarts`
  is exact, not a rerun: a run with r restarts is the first r restarts of this one (same draws, and later
  restarts only add evasions), so the DARA of one restart fewer minus the full run's is the count the last
  restart broke, not a sampling error (an interval over test images would let a 500-image run's last restart
  break 20 images and pass); with --skip-evaded the curve is an upper bound, and the check also reads a lower one
  ("not known" between them).

A failed check is flagged at the top of results.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ..detection.dara import (defended_images, detection_aware_report, detection_aware_robust_accuracy, eps_label,
                             gain_over_bare, rate)
from ..files import json_text, write_text_atomically
from .stages import read_back_words

OFF = "off"  # the detector switched off (adaptive.DetectorOff)
BARE = "bare model"
SMALLER = "found at a smaller eps"  # the evasions a smaller ball's suite found: its points lie in every larger ball
LARGE_EPS = 64 / 255  # at this radius (L-inf) every attack should break nearly every image
NEAR_ZERO = 0.02  # the largest DARA "near 0" allows at LARGE_EPS
NOISE_SHARE = 0.01  # the paired checks' tolerance, as a share of the test images (`noise_images`)
ATTACK_WORDS = {
    "k+1 pgd": "PGD on the margin of Carlini & Wagner's (K+1)-logit model (the detector as an extra class)",
    "k+1 apgd-ce": "APGD (Croce & Hein's step schedule) on the cross-entropy of the (K+1)-logit model",
    "k+1 apgd-dlr": "APGD on the DLR margin of the (K+1)-logit model (on 2 classes, the margin unscaled)",
    "orthogonal pgd": "Orthogonal PGD (Bryniarski et al. 2022): the classifier's and the detector's gradients in turn, "
                      "each orthogonal to the other",
    "penalty pgd": "PGD on the classification margin minus λ times the reject score, λ searched per image over the "
                   "restarts",
    "logit matching": "logit matching (Tramèr et al. 2020): toward the logits (or features) of an accepted, correctly "
                      "classified validation image of another class, one target per restart",
    "k+1 apgd-t": "APGD toward one target class per restart (the runner-up first, then the next likeliest) on the "
                  "targeted margin of the (K+1)-logit model: the target against the true class and the detector",
    "pgd (bare model)": "PGD on the bare model's cross-entropy (non-adaptive: it does not know the detector; every "
                        "point it passes through is judged)",
}


def indices(flags: torch.Tensor) -> List[int]:
    """The positions (in the run's test images, data order) where `flags` is True: results.json's per-image record
    (a row's "defended", the bare model's "robust"), so that another attack can be compared image by image."""
    return [int(i) for i in torch.nonzero(flags)[:, 0]]


def flags_at(images: Sequence[int], n: int) -> torch.Tensor:
    """(n,) bool, True at the test images `indices` listed (a row's "defended", the bare model's "robust")."""
    flags = torch.zeros(n, dtype=torch.bool)
    flags[torch.as_tensor(list(images), dtype=torch.long)] = True
    return flags


def add_gains(rows: List[dict], bare: List[dict], n: int) -> List[dict]:
    """Each detector's row (not the detector switched off) given "gain_over_bare": its DARA against the bare model's
    robust accuracy at the same eps, image by image, from the per-image records of results.json (a row's
    "defended", the bare row's "robust"); rows of a run that recorded neither are left without one."""
    robust = {row["eps"]: row.get("robust") for row in bare}
    for row in rows:
        if row["detector"] != OFF and row.get("defended") is not None and robust.get(row["eps"]) is not None:
            rejected = row.get("rejected_clean")  # recorded since 2026-12-06: older runs' split is unknown
            row["gain_over_bare"] = gain_over_bare(flags_at(robust[row["eps"]], n), flags_at(row["defended"], n),
                                                   None if rejected is None else flags_at(rejected, n))
    return rows


def _first_evader(stages: Mapping[str, Dict[str, torch.Tensor]], eligible: torch.Tensor) -> Dict[str, int]:
    """Per attack, on how many of the `eligible` images (those defended on clean inputs: classified correctly and
    accepted) it was the first, in the suite's order, to evade. The counts add up to the images the suite broke:
    eligible ones minus the DARA's count (an image the model gets wrong or rejects when clean is never defended,
    so no attack breaks it)."""
    taken = ~eligible.bool()
    counts = {}
    for name, flags in stages.items():
        new = flags["evaded"] & ~taken
        counts[name] = int(new.sum())
        taken |= new
    return counts


def with_smaller_eps(per_eps: Mapping[float, Mapping[str, Dict[str, torch.Tensor]]]
                     ) -> Dict[float, Dict[str, Dict[str, torch.Tensor]]]:
    """One detector's stages per eps, each eps's with a stage SMALLER in front where a smaller eps's suite found
    evasions: a point of the smaller ball lies in the larger one, so the DARA at an eps is the worst case over every
    eps up to it, image by image (each eps's suite alone could miss, at 8/255, an image it broke at 4/255). The
    stage holds those evasions, each at the earliest restart that found it ("first_run", so that
    `dara_by_restarts` stays exact), and "carried": the model's own verdict at their points is not stored here."""
    out: Dict[float, Dict[str, Dict[str, torch.Tensor]]] = {}
    before: Optional[torch.Tensor] = None  # per image, the earliest restart that evaded at a smaller eps, 0 if none
    for eps in sorted(per_eps):
        stages = dict(per_eps[eps])
        first = next(iter(stages.values()))
        if before is not None and bool((before > 0).any()):
            evaded = before > 0
            stages = {SMALLER: {"clean_correct": first["clean_correct"], "clean_accepted": first["clean_accepted"],
                                "evaded": evaded, "misclassified": evaded, "rejected": torch.zeros_like(evaded),
                                "attacked": torch.ones_like(evaded), "first_run": before.clone(), "carried": evaded},
                      **stages}
        here = torch.zeros_like(first["evaded"], dtype=torch.long)
        for flags in stages.values():
            run = flags["first_run"].long() if "first_run" in flags else flags["evaded"].long()
            run = torch.where(flags["evaded"], run.clamp_min(1), torch.zeros_like(run))
            here = torch.where((here == 0) | ((run > 0) & (run < here)), run, here)
        before, out[eps] = here, stages
    return out


def dara_by_restarts(stages: Mapping[str, Dict[str, torch.Tensor]], restarts: int) -> Optional[List[dict]]:
    """DARA had the adaptive attacks made only their first r restarts, r = 1..`restarts` (the references, one
    run each, count in full); None for stages that do not record each evasion's restart ("first_run")."""
    if any("first_run" not in flags for flags in stages.values()):
        return None
    first = next(iter(stages.values()))
    return [detection_aware_robust_accuracy(first["clean_correct"], first["clean_accepted"],
                                            {name: flags["evaded"] & (flags["first_run"] <= r)
                                             for name, flags in stages.items()})
            for r in range(1, int(restarts) + 1)]


def detector_row(detector: str, eps: float, stages: Mapping[str, Dict[str, torch.Tensor]],
                 references: Sequence[str] = (), restarts: int = 1) -> dict:
    """One (detector, eps): `detection_aware_report` of the suite's flags, and which attack evaded first.

    `references`: the attacks that do not know the detector (PGD and HE-PGD on the bare model). Their final
    points give "accuracy_at_final_points" (the model alone at those points) and "detection_rate_at_final_points"
    (the share of their successes the detector rejects: what it catches of an attacker who ignores it). The
    adaptive attacks' final points are left out: they stop on a batch once all of it evaded, so where they end
    depends on the batch, and the bare model's robust accuracy is `bare_row`'s, with the detector off. In a suite
    run with `skip_evaded` an attack that skipped images has its evasion rate among the images it ran on and no
    DARA alone (None), and no attack has an "only_this_attack" count (None): neither is known.
    """
    first = next(iter(stages.values()))
    judged = {name: s for name, s in stages.items() if name in set(references)}
    report = detection_aware_report(
        first["clean_correct"], first["clean_accepted"], {name: s["evaded"] for name, s in stages.items()}, eps,
        bare_adversarial_correct={name: ~s["misclassified"] for name, s in judged.items()} if judged else None,
        bare_adversarial_rejected={name: s["rejected"] for name, s in judged.items()} if judged else None)
    if judged:
        report["accuracy_at_final_points"] = report.pop("bare_robust_accuracy")
        report["detection_rate_at_final_points"] = report.pop("detection_rate")
    clean_ok = first["clean_correct"] & first["clean_accepted"]
    skipping = skipped_some(stages, clean_ok)
    for name in skipping:  # a suite run with skip_evaded: each rate among the images the attack ran on
        entry = report["per_attack"][name]
        entry["evasion_rate"] = rate(stages[name]["evaded"][clean_ok & stages[name]["attacked"]])
        entry["dara"] = None  # it never ran on the images an earlier attack evaded: its DARA alone is unknown
    if skipping:  # an image the first attack evaded was tried by no later one: "only this attack" is unknown
        for entry in report["per_attack"].values():
            entry["only_this_attack"] = None
    defended = defended_images(first["clean_correct"], first["clean_accepted"],
                               {name: s["evaded"] for name, s in stages.items()})
    by_restarts = dara_by_restarts(stages, restarts)
    floor = None
    if skipping and by_restarts is not None:  # the curve is an upper bound: the images some attack skipped after an
        # evasion at a later restart are unknown at fewer restarts, and this counts them broken
        tried_by_all = clean_ok.clone()
        for s in stages.values():
            if "attacked" in s:
                tried_by_all &= s["attacked"]
        floor = [rate(defended_images(first["clean_correct"], first["clean_accepted"],
                                      {name: s["evaded"] & (s["first_run"] <= r) for name, s in stages.items()})
                      & tried_by_all) for r in range(1, int(restarts) + 1)]
    return {"detector": detector, "eps_label": eps_label(eps), **report, "found_first": _first_evader(stages, clean_ok),
            "dara_by_restarts": by_restarts, "dara_by_restarts_floor": floor, "defended": indices(defended),
            "rejected_clean": indices(~first["clean_accepted"])}


def skipped_some(stages: Mapping[str, Dict[str, torch.Tensor]], eligible: torch.Tensor) -> List[str]:
    """The attacks of a suite that did not run on every `eligible` image (`AdaptiveSettings.skip_evaded`: an
    attack after the first skips the images an earlier one evaded), whose per-attack numbers then cover only
    the images they ran on."""
    return [name for name, s in stages.items() if "attacked" in s and not bool(s["attacked"][eligible].all())]


def bare_flags(clean_correct: torch.Tensor, off: Mapping[str, Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Per attack of the detector-off suite, (N,) bool: clean correct and the model still right at the attack's point
    (its first evasion, else its final point), read from the model's own logits there; "all": every attack at once."""
    flags = {name: clean_correct & (~s["carried"] if "carried" in s else s["point_logits"].argmax(1) == s["labels"])
             for name, s in off.items()}
    robust = clean_correct.clone()
    for still in flags.values():
        robust &= still
    return {**flags, "all": robust}


def adaptive_against_references(clean_correct: torch.Tensor, off: Mapping[str, Dict[str, torch.Tensor]],
                                references: Sequence[str]) -> Optional[dict]:
    """With the detector off (one eps's own suite): the bare model's robust accuracy under the adaptive attacks alone
    and under the non-adaptive references alone (plain PGD and HE-PGD on the bare model), and how many images only
    the references broke. Against no detector the (K+1) construction and the rest reduce to ordinary attacks, so
    they should find at least what plain PGD finds (Carlini et al. 2019); None without references."""
    judged = [name for name in off if name in set(references)]
    adaptive = [name for name in off if name not in set(references)]
    if not judged or not adaptive:
        return None
    flags = bare_flags(clean_correct, off)
    by_adaptive, by_references = clean_correct.clone(), clean_correct.clone()
    for name in adaptive:
        by_adaptive &= flags[name]
    for name in judged:
        by_references &= flags[name]
    return {"adaptive": rate(by_adaptive), "references": rate(by_references),
            "only_references": int((by_adaptive & ~by_references).sum())}


def bare_row(eps: float, clean_correct: torch.Tensor, off: Mapping[str, Dict[str, torch.Tensor]]) -> dict:
    """The bare model at `eps`: its robust accuracy under the detector-off suite `off` and per attack (None for an
    attack that skipped images an earlier one broke: its robust accuracy alone is unknown)."""
    flags = bare_flags(clean_correct, off)
    robust = flags.pop("all")
    skipping = set(skipped_some(off, clean_correct))
    return {"eps": float(eps), "eps_label": eps_label(eps), "clean_accuracy": rate(clean_correct),
            "robust_accuracy": rate(robust),
            "per_attack": {name: None if name in skipping else rate(f) for name, f in flags.items()},
            "robust": indices(robust)}


def noise_images(n: int) -> int:
    """How many of `n` test images a paired check lets go as noise: 1% of them, at least one. The checks that
    compare two attacks, or two restart counts, on the same images count the images one found and the other did
    not; a random start that lands by chance explains one or two such images, a weaker attack more."""
    return max(1, int(NOISE_SHARE * n))  # 0.01 is stored just above 0.01: 500 images give 5, not 4


def _pct(entry: Optional[dict]) -> str:
    if not entry or entry.get("rate") is None or entry.get("rate") != entry.get("rate"):  # null or NaN: no images
        return "n/a"
    low, high = entry["ci"]
    return f"{100 * entry['rate']:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


def sanity_checks(rows: List[dict], bare: List[dict], off_equal: Dict[float, Tuple[bool, int]],
                  off_against_references: Optional[Dict[float, Optional[dict]]] = None,
                  logit_only: Sequence[str] = (), standard: Optional[bool] = None,
                  target_fpr: Optional[Mapping[str, float]] = None) -> List[dict]:
    """The checks of Carlini et al. (2019) as data: {"check", "subject", "passed" (None: not run), "detail"}.

    `off_against_references` (per eps, `adaptive_against_references`): with the detector off, the adaptive attacks
    alone against the references alone. `logit_only`, `standard`, `target_fpr`: the detectors that read only the
    logits, whether the model is a standard one (its training mode), and each detector's own target FPR (a
    detector given calibrated may have another than the run's), for the check that such a detector on a standard
    model is driven to about its FPR."""
    checks = []
    for eps, found in (off_against_references or {}).items():
        if found is None:
            checks.append({"check": "with the detector off, the adaptive attacks find what plain attacks on the bare "
                                    "model find", "subject": f"eps {eps_label(eps)}", "passed": None,
                           "detail": "not run: the suite has no non-adaptive reference"})
            continue
        noise = noise_images(found["adaptive"]["n"])
        passed = found["only_references"] <= noise
        checks.append({"check": "with the detector off, the adaptive attacks find what plain attacks on the bare model "
                                "find", "subject": f"eps {eps_label(eps)}", "passed": passed,
                       "detail": f"robust accuracy under the adaptive attacks alone {_pct(found['adaptive'])}, under the "
                                 f"references alone {_pct(found['references'])}; {found['only_references']} image(s) "
                                 f"only the references broke (noise: at most {noise})"
                                 + ("" if passed else ": the adaptive attacks are weaker than plain PGD on the bare "
                                                      "model")})
    for row in rows:
        if row["detector"] not in logit_only:
            continue
        robust = next(entry["robust_accuracy"] for entry in bare if entry["eps"] == row["eps"])
        subject = f"{row['detector']} at {eps_label(row['eps'])}"
        fpr = (target_fpr or {}).get(row["detector"])
        if not standard or fpr is None:
            why = ("the model's training mode is not recorded" if standard is None else
                   "the model is not a standard one" if not standard else "no target FPR")
            checks.append({"check": "a detector of the logits alone on a standard model is driven to about its FPR",
                           "subject": subject, "passed": None, "detail": f"not run: {why}"})
            continue
        ceiling = robust["ci"][1] + fpr
        passed = row["dara"]["rate"] <= ceiling
        checks.append({"check": "a detector of the logits alone on a standard model is driven to about its FPR",
                       "subject": subject, "passed": passed,
                       "detail": f"DARA {_pct(row['dara'])}, at most the bare model's robust accuracy "
                                 f"{_pct(robust)} plus the {100 * fpr:g}% FPR allowed"
                                 + ("" if passed else ": the adaptive attacks miss what they should find")})
    for eps, (equal, differing) in off_equal.items():
        off = next(row for row in rows if row["detector"] == OFF and row["eps"] == eps)
        robust = next(row for row in bare if row["eps"] == eps)["robust_accuracy"]
        checks.append({"check": "the detector switched off gives the bare model's robust accuracy",
                       "subject": f"eps {eps_label(eps)}", "passed": equal,
                       "detail": f"detector off: DARA {_pct(off['dara'])}; bare model: robust accuracy {_pct(robust)}; "
                                 f"{differing} image(s) judged differently"})
    # each eps's own suite (the DARA reported carries a smaller eps's evasions, so it cannot rise): does a larger
    # ball's suite find at least as many images as a smaller one's?
    own = {BARE: [(row["eps"], row.get("robust_accuracy_own_suite", row["robust_accuracy"])) for row in bare]}
    curves = {BARE: [(row["eps"], row["robust_accuracy"]) for row in bare]}
    for row in rows:
        if row["detector"] != OFF:
            curves.setdefault(row["detector"], []).append((row["eps"], row["dara"]))
            own.setdefault(row["detector"], []).append((row["eps"], row.get("dara_own_suite", row["dara"])))
    for name, points in own.items():
        points.sort(key=lambda point: point[0])
        rises = [(a, b) for a, b in zip(points, points[1:]) if b[1]["count"] > a[1]["count"]]
        what = "robust accuracy" if name == BARE else "DARA"
        checks.append({"check": f"{what} does not rise with eps (each eps's suite alone)", "subject": name,
                       "passed": None if len(points) < 2 else not rises,
                       "detail": "not run: one eps only" if len(points) < 2 else ", ".join(
                           f"{what} {_pct(entry)} at {eps_label(eps)}" for eps, entry in points)})
    for points in curves.values():
        points.sort(key=lambda point: point[0])
    largest = max(row["eps"] for row in bare)
    for name, points in curves.items():
        entry = points[-1][1]
        if largest + 1e-9 < LARGE_EPS:
            passed, detail = None, (f"not run: the largest eps is {eps_label(largest)}; add {eps_label(LARGE_EPS)} to "
                                    "the eps list to run it")
        else:
            passed = entry["rate"] <= NEAR_ZERO
            detail = f"{_pct(entry)} at {eps_label(largest)} (near 0: at most {100 * NEAR_ZERO:.0f}%)"
        checks.append({"check": "near 0 at a large eps", "subject": name, "passed": passed, "detail": detail})
    return checks + convergence_checks(rows)


def convergence_checks(rows: List[dict]) -> List[dict]:
    """Per detector (the detector off included): did the last restart break more than `noise_images` images (lower
    DARA by more than noise), at any eps?"""
    checks = []
    for name in dict.fromkeys(row["detector"] for row in rows):
        curves = sorted(((row["eps"], row.get("dara_by_restarts")) for row in rows if row["detector"] == name),
                        key=lambda point: point[0])
        subject = "detector off" if name == OFF else name
        if any(curve is None for _, curve in curves) or len(curves[0][1]) < 2:
            why = "one restart only" if all(curve is not None for _, curve in curves) else \
                "the stages do not record each evasion's restart"
            checks.append({"check": "the last restart lowers DARA by no more than noise", "subject": subject,
                           "passed": None, "detail": f"not run: {why}"})
            continue
        # the images the last restart broke: the DARA of one restart fewer minus the full run's, both on the same
        # images. With --skip-evaded the curve is an upper bound and "dara_by_restarts_floor" a lower one: the last
        # restart surely broke more than noise when even the floor's count does, surely not when the upper bound's
        # does not; in between it is not known
        floors = {row["eps"]: row.get("dara_by_restarts_floor") for row in rows if row["detector"] == name}
        moved, unknown, parts = [], [], []
        for eps, curve in curves:
            most, least = _broken_last(curve, floors.get(eps))
            noise = noise_images(curve[-1]["n"])
            if most > noise:
                (unknown if least <= noise else moved).append(eps)
            broken = str(most) if least == most else f"at most {most} (at least {least})"
            parts.append(f"{_pct(curve[-2])} after {len(curve) - 1}, {_pct(curve[-1])} after {len(curve)} restarts at "
                         f"{eps_label(eps)} ({broken} image(s) broken by the last restart; noise: at most {noise})")
        detail = ", ".join(parts)
        if moved:
            detail += ": not converged, run more restarts or steps"
        elif unknown:
            detail += (" (with --skip-evaded an upper bound; at least " + ", ".join(
                f"{_pct(floors[eps][-2])} at {eps_label(eps)}" for eps in unknown) + " after one restart fewer): "
                "not known whether the last restart lowered DARA by more than noise; a run without --skip-evaded "
                "tells")
        checks.append({"check": "the last restart lowers DARA by no more than noise", "subject": subject,
                       "passed": False if moved else (None if unknown else True), "detail": detail})
    return checks


def _broken_last(curve: List[dict], floor: Optional[List[dict]]) -> Tuple[int, int]:
    """(at most, at least) the images the last restart broke: the DARA of one restart fewer minus the full run's;
    with --skip-evaded the curve is an upper bound and `floor` a lower one, else the two are equal."""
    most = curve[-2]["count"] - curve[-1]["count"]
    return most, most if floor is None else floor[-2]["count"] - curve[-1]["count"]


def recheck(flags, eps_list) -> dict:
    """Every evasion judged again: the point an attack is judged by, run once more through the defended classifier
    in the full test batch (`point_logits`, `point_score`), must still be misclassified and accepted. The attack
    judged it inside its own forward pass, on a sub-batch; a point just past a boundary could differ in the last
    bits (on a GPU), and then the report would count an evasion its stored point does not show."""
    differing, evasions = 0, 0
    for per_eps in flags.values():
        for eps in eps_list:
            for stage in per_eps[eps].values():
                again = (stage["point_logits"].argmax(1) != stage["labels"]) & (stage["point_score"] <= 0)
                differing += int((stage["evaded"] & ~again).sum())
                evasions += int(stage["evaded"].sum())
    return {"check": "every evasion holds when its point is run again", "subject": "all detectors and attacks",
            "passed": differing == 0, "detail": f"{differing} of {evasions} evasions did not hold on the second run"}


def describe(option) -> dict:
    """A reject option as results.json records it: `to_dict` without its bulky fitted state (the saved file has it)."""
    return {key: value for key, value in option.to_dict().items() if key != "state"}


def summarise(model, data, settings, reject: Mapping[str, object], clean_correct: torch.Tensor,
              flags: Mapping[str, Mapping[float, Mapping[str, Dict[str, torch.Tensor]]]],
              skipped: Mapping[str, str]) -> dict:
    """results.json's content (without cost and timing) from every stage's per-image flags."""
    rows, bare, off_equal = [], [], {}
    carried = {detector: with_smaller_eps(flags[detector]) for detector in reject}
    carried[OFF] = with_smaller_eps(flags[OFF])
    for eps in settings.eps_list:
        for detector in reject:
            row = detector_row(detector, eps, carried[detector][eps], settings.references, settings.most_runs)
            own = next(iter(flags[detector][eps].values()))
            rows.append({"eps": float(eps), **row, "dara_own_suite": detection_aware_robust_accuracy(
                own["clean_correct"], own["clean_accepted"],
                {name: s["evaded"] for name, s in flags[detector][eps].items()})})
        off = carried[OFF][eps]
        bare.append({**bare_row(eps, clean_correct, off),
                     "robust_accuracy_own_suite": rate(bare_flags(clean_correct, flags[OFF][eps])["all"])})
        first = next(iter(off.values()))
        defended = defended_images(first["clean_correct"], first["clean_accepted"],
                                   {name: s["evaded"] for name, s in off.items()})
        robust = bare_flags(clean_correct, off)["all"]
        off_equal[float(eps)] = (bool(torch.equal(defended, robust)), int((defended != robust).sum()))
    add_gains(rows, bare, len(clean_correct))
    logit_only = [name for name, option in reject.items() if name != OFF and not (
        option.needs_features or option.needs_inputs or option.needs_network)]
    training = model.spec.training or {}
    mode = training.get("mode") or (training.get("config") or {}).get("mode")
    against = {float(eps): adaptive_against_references(clean_correct, flags[OFF][eps], settings.references)
               for eps in settings.eps_list}
    sanity = sanity_checks(rows, bare, off_equal, against, logit_only, None if mode is None else mode == "standard",
                           {name: option.target_fpr for name, option in reject.items()}
                           ) + [recheck(flags, settings.eps_list)]
    spec = model.spec
    return {
        "model": spec.source, "architecture": spec.architecture, "arch_kwargs": spec.arch_kwargs,
        "input_size": list(spec.input_size), "data": str(data), "n_test": len(clean_correct),
        "settings": {**vars(settings), "attacks": list(settings.attacks)},
        "detectors": {name: describe(option) for name, option in reject.items()},
        "rows": rows, "bare": bare, "sanity": sanity,
        "logit_matching_skipped": dict(skipped),
        "attack_descriptions": {name: ATTACK_WORDS.get(name, "HE-PGD on the bare model: cross-entropy plus λ times "
                                                             "the energy (non-adaptive; every point it passes "
                                                             "through is judged)") for name in settings.attacks},
    }


def _thresholds(entry: dict) -> str:
    if entry["kind"] == OFF:
        return "none: accepts everything"
    parts = []
    for name, value in entry["thresholds"].items():
        if isinstance(value, list):
            parts.append(f"{name} = [{', '.join(f'{v:.4g}' for v in value)}]")
        elif isinstance(value, int):  # a count (multi-t's level): 10000 as written, not 1e+04
            parts.append(f"{name} = {value}")
        elif value is not None:
            parts.append(f"{name} = {value:.4g}")
    settings = ", ".join(f"{k} {eps_label(v) if k == 'radius' else v}" for k, v in entry.get("settings", {}).items())
    fpr = entry.get("validation", {})
    shown = "n/a"
    if fpr.get("false_positive_rate") is not None:
        shown = f"{100 * fpr['false_positive_rate']:.1f}%" + (f" of {fpr['n']}" if fpr.get("n") is not None else "")
    if fpr.get("fpr_among") == "correct" and fpr.get("rejection_rate_all") is not None:
        shown += (f" classified correctly ({100 * fpr['rejection_rate_all']:.1f}% of all {fpr['n_all']} "
                  "validation images rejected)")
    return f"{'; '.join(parts)}{' (' + settings + ')' if settings else ''}; validation FPR {shown}"


def fpr_among(results: dict) -> str:
    """The validation images the run's target FPR was counted among: "all" (also for runs made before the choice
    existed), or "correct" (the ones the model classifies correctly)."""
    return results["settings"].get("fpr_among", "all")


def calibrated_apart(results: dict) -> Dict[str, str]:
    """The detectors a caller gave calibrated at another target FPR or on other images than the run calibrates
    on (`--detector-file`): {name: how}, for the report to say so instead of the run's own FPR and split."""
    apart = {}
    for name, entry in results["detectors"].items():
        if name == OFF:
            continue
        fpr, n = entry.get("target_fpr"), (entry.get("calibration") or {}).get("n")
        among = (entry.get("validation") or {}).get("fpr_among", "all")
        if fpr != results["settings"]["target_fpr"] or n != results["n_validation"] or among != fpr_among(results):
            apart[name] = ((f"{name} was given calibrated, at {100 * fpr:g}% target FPR" if fpr is not None else
                            f"{name} was given calibrated") + (f" on {n} images" if n is not None else "")
                           + (" counted among those classified correctly" if among == "correct" else
                              " counted among all" if among != fpr_among(results) else ""))
    return apart


def unknown_first(rows: Mapping[str, dict]) -> str:
    """A sentence for the detectors whose "first to evade" counts are unknown (None in results.json)."""
    missing = [name for name, row in rows.items() if row.get("found_first") is None]
    if not missing:
        return ""
    return (f" No count for {', '.join('detector off' if name == OFF else name for name in missing)}: the run "
            "counted, before a fix of 2026-12-05, the images not defended on clean inputs as well, and its stages, "
            "which would give the right count, are gone (`scripts/fix_found_first.py`).")


def caught_section(results: dict, names: Sequence[str]) -> List[str]:
    """What each detector catches of an attacker who ignores it: the share of each reference attack's successes on
    the bare model (its final points, misclassified) that the detector rejects."""
    rows = [row for row in results["rows"] if row["detector"] in names and row.get("detection_rate_at_final_points")]
    if not rows:
        return []
    shown = [name for name in names if any(row["detector"] == name for row in rows)]
    lines = ["", "## What each detector catches of an attacker who ignores it", "",
             "Of each non-adaptive attack's successes on the bare model (its final point misclassified), the share "
             "the detector rejects; in brackets the 95% interval, then caught of successful.", "",
             "| attack | eps | " + " | ".join(shown) + " |", "|---|---|" + "---|" * len(shown)]
    for eps in sorted({row["eps"] for row in rows}):
        at_eps = sorted((row for row in rows if row["eps"] == eps), key=lambda row: shown.index(row["detector"]))
        for attack in at_eps[0]["detection_rate_at_final_points"]:
            cells = []
            for row in at_eps:
                entry = row["detection_rate_at_final_points"].get(attack)
                cells.append(_pct(entry) + (f" ({entry['count']} of {entry['n']})" if entry and "count" in entry
                                            else ""))
            lines.append(f"| {attack} | {eps_label(eps)} | " + " | ".join(cells) + " |")
    return lines


def points_text(gain: dict) -> str:
    """A paired difference in percentage points with its interval: "+2.6 points [+1.1, +4.0]"."""
    low, high = gain["ci"]
    return f"{100 * gain['difference']:+.1f} points [{100 * low:+.1f}, {100 * high:+.1f}]"


def gain_section(results: dict) -> List[str]:
    """results.md's comparison of each detector's DARA with the bare model's robust accuracy on the same images
    (none for a run made before the rows recorded it)."""
    rows = sorted((row for row in results["rows"] if row.get("gain_over_bare") is not None),
                  key=lambda row: (row["eps"], row["detector"]))
    if not rows:
        return []
    lines = ["", "## What each detector adds to the bare model, image by image", "",
             "DARA minus the bare model's robust accuracy on the same test images, with the 95% interval of the "
             "paired difference (Agresti & Min 2005): the two rates' intervals side by side ignore that both are "
             "measured on the same images. Then the images only one side holds. Defended only with the detector: "
             "the detector-off suite broke them and the detector's suite found no accepted mistake there (what it "
             "catches, and whatever the two suites' random draws differ by). Robust only without it: rejected on "
             "the clean image (the cost of its false positives), or evaded, where the detector's suite found an "
             "accepted mistake that the detector-off suite missed (the bare model is not robust there either: the "
             "attacks' variance, not a cost of the detector).", "",
             "| detector | eps | DARA − robust accuracy | defended only with the detector | robust only without it "
             "(rejected clean / evaded) |",
             "|---|---|---|---|---|"]
    for row in rows:
        gain = row["gain_over_bare"]
        split = ("" if gain.get("only_bare_rejected_clean") is None
                 else f" ({gain['only_bare_rejected_clean']} / {gain['only_bare_evaded']})")
        lines.append(f"| {row['detector']} | {row['eps_label']} | {points_text(gain)} | {gain['only_with_detector']} | "
                     f"{gain['only_bare']}{split} |")
    return lines


def markdown(results: dict) -> str:
    settings, eps_list = results["settings"], [row["eps"] for row in results["bare"]]
    apart = calibrated_apart(results)
    failed = [check for check in results["sanity"] if check["passed"] is False]
    names = [name for name in results["detectors"] if name != OFF]
    lines = [f"# Adaptive evaluation: {', '.join(names)} on {results['model']} ({results['data']})", ""]
    if failed:
        lines += ["**Sanity checks FAILED** (Carlini et al. 2019): read the numbers below with care.", ""]
        lines += [f"- FAILED: {check['check']} ({check['subject']}): {check['detail']}" for check in failed] + [""]
    lines += [
        "## What was measured", "",
        f"Each detector's threshold was fixed on the {results['n_validation']} clean validation images the "
        f"model's training held out, so that at most {100 * settings['target_fpr']:g}% of "
        + ("those the model classifies correctly are rejected (Chen et al. 2023's stratified convention: the "
           "misclassified ones, errors with or without the detector, may be rejected beyond that, so more of all clean "
           "images are; the thresholds column says how many)" if fpr_among(results) == "correct" else
           "them are rejected")
        + (f" (except: {'; '.join(apart.values())}; its thresholds column says what it rejects)" if apart else "")
        + ". Then, "
        f"on the first {results['n_test']} test images, every attack below knew the model and the detector exactly "
        "and searched the L-inf ball of each radius for a point the model misclassifies and the detector accepts; "
        "every iterate of every restart counted. An image is defended when its clean image is classified correctly "
        "and accepted and no attack found such a point: the detection-aware robust accuracy (DARA) is the fraction "
        "of defended test images. The bare model's robust accuracy is the fraction still classified correctly at "
        "every point the same suite found with the detector switched off. Brackets: 95% Wilson intervals.", "",
        f"Attacks ({settings['steps']} steps; the adaptive ones {settings['restarts']} restarts):", ""]
    lines += [f"- **{name}**: {text}" for name, text in results["attack_descriptions"].items()] + [""]
    header = "| detector | thresholds | clean accuracy with rejection | clean test images rejected | " + \
             " | ".join(f"DARA at {eps_label(eps)}" for eps in eps_list) + " |"
    lines += ["## Detection-aware robust accuracy", "", header, "|" + "---|" * (4 + len(eps_list))]
    bare, stratified = results["bare"], fpr_among(results) == "correct"
    lines.append(f"| {BARE} (no detector) | none | {_pct(bare[0]['clean_accuracy'])} | 0 | " +
                 " | ".join(f"{_pct(row['robust_accuracy'])} (robust accuracy)" for row in bare) + " |")
    for name in [OFF, *names]:
        rows = sorted((row for row in results["rows"] if row["detector"] == name), key=lambda row: row["eps"])
        label = "detector off" if name == OFF else name
        clean = rows[0]["clean"]
        of_correct = clean.get("rejection_rate_of_correct")
        rejected = _pct(clean["rejection_rate"]) + (f" ({_pct(of_correct)} of those classified correctly)" if
                                                     stratified and of_correct and name != OFF else "")
        lines.append(f"| {label} | {_thresholds(results['detectors'][name])} | {_pct(clean['accuracy'])} | "
                     f"{rejected} | " + " | ".join(_pct(row["dara"]) for row in rows) + " |")
    lines += gain_section(results)
    for eps in eps_list:
        rows = {row["detector"]: row for row in results["rows"] if row["eps"] == eps}
        among = (" This run skipped evaded images (--skip-evaded): each adaptive attack after the first ran only on "
                 "the images defended on clean inputs that no adaptive attack before it had evaded, and its fraction "
                 "is of those (n/a: none was left); the references ran on all." if settings.get("skip_evaded") else "")
        lines += ["", f"## Which attacks evaded at {eps_label(eps)}", "",
                  "Per attack: the fraction of the images defended on clean inputs that it evaded, and (after the "
                  "slash) on how many of them it was the first of the suite to evade." + among + unknown_first(rows)
                  + (f" \"{SMALLER}\": the images a smaller eps's suite broke (its points lie in this ball too)."
                     if any(SMALLER in row["per_attack"] for row in rows.values()) else ""),
                  "",
                  "| attack | " + " | ".join("detector off" if d == OFF else d for d in rows) + " |",
                  "|---|" + "---|" * len(rows)]
        carried = [SMALLER] if any(SMALLER in row["per_attack"] for row in rows.values()) else []
        for attack in [*carried, *settings["attacks"]]:
            cells = []
            for detector, row in rows.items():
                if attack not in row["per_attack"]:
                    cells.append("skipped")
                    continue
                first = row["found_first"][attack] if row.get("found_first") is not None else None
                cells.append(_pct(row["per_attack"][attack]["evasion_rate"]) + (f" / {first}" if first is not None
                                                                                 else ""))
            lines.append(f"| {attack} | " + " | ".join(cells) + " |")
    lines += caught_section(results, names)
    by_restarts = [row for row in results["rows"] if row.get("dara_by_restarts")]
    # as many columns as the curves have points: the restarts, or more target classes of the targeted attacks
    runs = max((len(row["dara_by_restarts"]) for row in by_restarts), default=0)
    if runs > 1:
        lines += ["", "## DARA after each restart", "",
                  "What the suite would have found with fewer restarts of its adaptive attacks (a targeted attack's "
                  "r-th target class counts as its r-th restart; " +
                  ("an upper bound: this run skipped an image once an attack evaded it, at whichever restart, so a "
                   "later attack never tried it; the check on the last restart also reads a lower bound"
                   if settings.get("skip_evaded") else "exact: the first r restarts of this run") +
                  "); a DARA still falling at the last restart means the attacks have not converged.", "",
                  "| detector | eps | " + " | ".join(f"after {r}" for r in range(1, runs + 1)) + " |",
                  "|---|---|" + "---|" * runs]
        for row in sorted(by_restarts, key=lambda row: row["eps"]):
            label = "detector off" if row["detector"] == OFF else row["detector"]
            lines.append(f"| {label} | {row['eps_label']} | " +
                         " | ".join(_pct(entry) for entry in row["dara_by_restarts"]) + " |")
    if results["logit_matching_skipped"]:
        lines += ["", "Logit matching was skipped against: " + "; ".join(
            f"{name} ({why})" for name, why in results["logit_matching_skipped"].items())]
    lines += ["", "## Sanity checks (Carlini et al. 2019)", ""]
    for check in results["sanity"]:
        verdict = {True: "passed", False: "**FAILED**", None: "not run"}[check["passed"]]
        lines.append(f"- {verdict}: {check['check']} ({check['subject']}): {check['detail']}")
    lines += ["", "## Tramèr's ceiling", ""]
    lines += [f"- {row['tramer_ceiling']}" for row in results["rows"] if row["detector"] == OFF]
    estimate, continued = results["estimate"], results["continued"]
    lines += ["", "## Cost", "",
              f"Estimated before the run: {estimate['forward_backward_passes']:,} forward+backward and "
              f"{estimate['forward_passes']:,} forward image-passes ({estimate['note']}). Wall time "
              f"{results['wall_seconds']:.0f} s on {results['hardware']}"
              + (f"; {read_back_words(continued)} came from an interrupted run"
                 if read_back_words(continued) else "") + "."]
    if results.get("report_written_again"):
        lines += ["", "This report was written again from the run's kept stages (`--report-only`), with the report "
                      "code of that day; the numbers are the run's."]
    return "\n".join(lines) + "\n"


def figure(results: dict, path: Path) -> Path:
    """DARA against eps for every detector, beside the bare model's robust accuracy; 95% intervals as error bars."""
    from ..plots import plt, save_figure  # matplotlib is imported (without a display) only when a figure is drawn

    fig, axis = plt.subplots(figsize=(5.8, 4.0), dpi=120)
    names = [name for name in results["detectors"] if name != OFF]
    radii = sorted(255 * row["eps"] for row in results["bare"])
    largest = radii[-1]

    def draw(points, label, series, **style):  # each series nudged sideways, so that equal values stay visible
        nudge = 0.006 * largest * (series - len(names) / 2)
        xs = [255 * eps + nudge for eps, _ in points]
        ys = [100 * entry["rate"] for _, entry in points]
        # Wilson's bounds at a rate of 0 or 1 sit a rounding error past it: no negative bar lengths
        low = [max(0.0, 100 * (entry["rate"] - entry["ci"][0])) for _, entry in points]
        high = [max(0.0, 100 * (entry["ci"][1] - entry["rate"])) for _, entry in points]
        axis.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=3, label=label, **style)

    draw([(row["eps"], row["robust_accuracy"]) for row in results["bare"]],
         "bare model: robust accuracy (= detector off)", 0, color="black", linestyle="--")
    for series, name in enumerate(names, start=1):
        draw(sorted(((row["eps"], row["dara"]) for row in results["rows"] if row["detector"] == name),
                    key=lambda point: point[0]), f"{name}: DARA", series)
    if len(radii) == 1:  # the nudges alone would span the axis: show the one eps in a window of its own size
        axis.set_xlim(0.5 * largest, 1.5 * largest)
    axis.set_xlabel("L-inf eps (x 1/255)")
    axis.set_ylabel("% of test images")
    axis.set_ylim(-2, 102)
    fpr = ("each detector's own validation FPR" if calibrated_apart(results) else
           f"{100 * results['settings']['target_fpr']:g}% validation FPR"
           + (" (of the correctly classified)" if fpr_among(results) == "correct" else ""))
    axis.set_title(f"Adaptive attacks on {results['n_test']} test images ({results['model']})\nthresholds at "
                   f"{fpr}; 95% intervals", fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def _recorded_detector_files(out_dir: Path) -> set:
    """The detector files (detectors/reject-<name>.json) the results.json in `out_dir` records, if any."""
    try:
        recorded = json.loads((out_dir / "results.json").read_text()).get("detectors", {})
        files = {entry.get("file") for entry in recorded.values() if isinstance(entry, dict)}
    except (OSError, ValueError, AttributeError):
        return set()
    return {name for name in files if isinstance(name, str) and name.startswith("detectors/reject-")
            and name.endswith(".json") and "/" not in name[len("detectors/"):] and ".." not in name}


def write_report(results: dict, reject: Mapping[str, object], out_dir: Path) -> List[Path]:
    """results.json, results.md, adaptive_dara.png, and each calibrated detector as detectors/reject-<name>.json
    (loadable with `RejectOption.load(path, model=model)`; the detector switched off is not saved)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    earlier = _recorded_detector_files(out_dir)  # an earlier run's, which this one replaces (--overwrite)
    paths = []
    for name, option in reject.items():
        if name != OFF:
            paths.append(option.save(out_dir / "detectors" / f"reject-{name}.json"))
            results["detectors"][name]["file"] = f"detectors/reject-{name}.json"
    for name in earlier - {f"detectors/reject-{name}.json" for name in reject}:  # not left to be read as this run's
        (out_dir / name).unlink(missing_ok=True)
    write_text_atomically(out_dir / "results.json", json_text(results, default=str))
    write_text_atomically(out_dir / "results.md", markdown(results))
    return [out_dir / "results.json", out_dir / "results.md", figure(results, out_dir / "adaptive_dara.png"), *paths]
