import math

import pytest
import torch

from robgen.detection.dara import (
    bare_robust_accuracy, clean_accuracy_with_rejection, defended_images, detection_aware_report,
    detection_aware_robust_accuracy, detection_rate, gain_over_bare, per_attack_breakdown, tramer_ceiling_note,
)
from robgen.metrics import wilson_interval

# Six test images, counted by hand:
#   image             0  1  2  3  4  5
#   clean correct     1  1  1  1  0  1
#   clean accepted    1  1  0  1  1  1      -> correct and accepted: 0, 1, 3, 5
#   pgd evaded        0  1  0  0  0  0      -> breaks 1
#   he-pgd evaded     0  0  0  1  0  0      -> breaks 3
#   apgd evaded       0  1  0  0  1  0      -> breaks 1 (and 4, already wrong)
CORRECT = torch.tensor([1, 1, 1, 1, 0, 1], dtype=torch.bool)
ACCEPTED = torch.tensor([1, 1, 0, 1, 1, 1], dtype=torch.bool)
EVADED = {"pgd": torch.tensor([0, 1, 0, 0, 0, 0]), "he-pgd": torch.tensor([0, 0, 0, 1, 0, 0]),
          "apgd": torch.tensor([0, 1, 0, 0, 1, 0])}


def test_clean_accuracy_with_rejection_by_hand():
    report = clean_accuracy_with_rejection(CORRECT, ACCEPTED)
    assert report["accuracy"]["count"] == 4 and report["accuracy"]["n"] == 6
    assert report["accuracy"]["ci"] == wilson_interval(4, 6)
    assert report["rejection_rate"]["rate"] == pytest.approx(1 / 6)  # the test FPR
    # counted among the 5 correct ones (Chen et al. 2023): image 2 is rejected of 0, 1, 2, 3, 5
    assert report["rejection_rate_of_correct"]["count"] == 1 and report["rejection_rate_of_correct"]["n"] == 5
    assert report["accuracy_without_detector"]["rate"] == pytest.approx(5 / 6)
    assert report["accuracy_among_accepted"]["count"] == 4 and report["accuracy_among_accepted"]["n"] == 5


def test_dara_by_hand():
    assert defended_images(CORRECT, ACCEPTED, EVADED).tolist() == [True, False, False, False, False, True]
    dara = detection_aware_robust_accuracy(CORRECT, ACCEPTED, EVADED)
    assert (dara["count"], dara["n"]) == (2, 6) and dara["ci"] == wilson_interval(2, 6)
    stacked = torch.stack(list(EVADED.values()))  # the (attacks, N) form counts the same
    assert detection_aware_robust_accuracy(CORRECT, ACCEPTED, stacked)["count"] == 2
    no_attack_wins = torch.zeros(6, dtype=torch.bool)  # then DARA is the clean accuracy with rejection
    assert detection_aware_robust_accuracy(CORRECT, ACCEPTED, no_attack_wins)["count"] == 4


def test_per_attack_breakdown_by_hand():
    table = per_attack_breakdown(CORRECT, ACCEPTED, EVADED)
    assert table["pgd"]["dara"]["count"] == 3 and table["he-pgd"]["dara"]["count"] == 3
    assert table["pgd"]["evasion_rate"]["count"] == 1 and table["pgd"]["evasion_rate"]["n"] == 4
    assert table["apgd"]["evasion_rate"]["count"] == 1  # image 4 was wrong already: not an evasion that counts
    assert {name: row["only_this_attack"] for name, row in table.items()} == {"pgd": 0, "he-pgd": 1, "apgd": 0}


def test_detection_rate_counts_only_attacks_that_succeed_on_the_bare_model():
    adversarial_correct = torch.tensor([0, 0, 1, 0, 0, 0])  # succeeds on 0, 1, 3, 5 (4 was wrong when clean)
    rejected = torch.tensor([1, 0, 1, 1, 1, 0])  # of those, 0 and 3 are flagged
    result = detection_rate(CORRECT, adversarial_correct, rejected)
    assert (result["count"], result["n"]) == (2, 4) and result["ci"] == wilson_interval(2, 4)
    nothing = detection_rate(CORRECT, torch.ones(6, dtype=torch.bool), rejected)
    assert nothing["n"] == 0 and math.isnan(nothing["rate"])


def test_bare_robust_accuracy_by_hand():
    still_correct = {"pgd": torch.tensor([1, 0, 1, 1, 1, 1]), "he-pgd": torch.tensor([1, 1, 0, 1, 1, 0])}
    result = bare_robust_accuracy(CORRECT, still_correct)  # correct under both: 0 and 3 (4 was wrong when clean)
    assert (result["count"], result["n"]) == (2, 6)


def test_report_assembles_every_metric():
    still_correct = {"pgd": torch.tensor([0, 0, 1, 0, 0, 0])}
    rejected = {"pgd": torch.tensor([1, 0, 1, 1, 1, 0])}
    report = detection_aware_report(CORRECT, ACCEPTED, EVADED, 8 / 255, still_correct, rejected, best_known_at_half=0.5)
    assert report["dara"]["count"] == 2 and report["clean"]["accuracy"]["count"] == 4
    assert report["bare_robust_accuracy"]["count"] == 1 and report["detection_rate"]["pgd"]["count"] == 2
    assert set(report["per_attack"]) == set(EVADED) and "4/255" in report["tramer_ceiling"]
    with pytest.raises(ValueError, match="same attacks"):
        detection_aware_report(CORRECT, ACCEPTED, EVADED, 8 / 255, still_correct, {"apgd": rejected["pgd"]})


def test_bad_inputs_say_what_to_fix():
    with pytest.raises(ValueError, match="has 5 entries but the clean results have 6"):
        detection_aware_robust_accuracy(CORRECT, ACCEPTED[:5], EVADED)
    with pytest.raises(ValueError, match="not the scores themselves"):
        clean_accuracy_with_rejection(CORRECT, torch.tensor([0.3, -1.0, 2.0, 0.1, 0.0, 1.0]))
    with pytest.raises(ValueError, match="names no attack"):
        detection_aware_robust_accuracy(CORRECT, ACCEPTED, {})
    # an empty (0, N) stack read as "no attack broke anything": the DARA was the clean accuracy with rejection
    with pytest.raises(ValueError, match="empty stack of attacks"):
        detection_aware_robust_accuracy(CORRECT, ACCEPTED, torch.zeros(0, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="empty stack of attacks"):
        bare_robust_accuracy(CORRECT, torch.zeros(0, 6, dtype=torch.bool))


def test_gain_over_the_bare_model_is_paired_by_hand():
    """Bare robust: images 0, 1, 2; defended with the detector: 0, 3, 4, 5. +1 image net (3 gained, 2 lost), and
    the interval is the paired one: Agresti & Min's, from the 2 and 3 discordant images (+ 1/2 each) of n + 2."""
    robust = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, 0, 0], dtype=torch.bool)
    defended = torch.tensor([1, 0, 0, 1, 1, 1, 0, 0, 0, 0], dtype=torch.bool)
    gain = gain_over_bare(robust, defended)
    assert gain["difference"] == pytest.approx(0.1) and (gain["only_with_detector"], gain["only_bare"]) == (3, 2)
    half = 1.959964 * math.sqrt((6 - 1 / 12) / 144)  # cells 12, discordant 2.5 and 3.5
    assert gain["ci"] == pytest.approx([1 / 12 - half, 1 / 12 + half], abs=1e-6) and gain["n"] == 10
    assert gain["only_bare_rejected_clean"] is None and gain["only_bare_evaded"] is None  # not known without them
    rejected = torch.tensor([0, 1, 0, 0, 0, 0, 0, 1, 0, 0], dtype=torch.bool)  # 1 lost to a false positive; 7 was
    split = gain_over_bare(robust, defended, rejected)  # never robust: it does not count
    assert (split["only_bare_rejected_clean"], split["only_bare_evaded"]) == (1, 1)  # 2: evaded, attack variance
    with pytest.raises(ValueError, match="pass the same test images"):
        gain_over_bare(robust, defended[:9])


def test_tramer_ceiling_note_halves_the_radius():
    note = tramer_ceiling_note(8 / 255, best_known_at_half=0.737)
    assert "ε = 8/255" in note and "ε/2 = 4/255" in note and "73.7%" in note and "Tramèr (2022)" in note
    assert "0.5" in tramer_ceiling_note(1.0, norm="L2") and "0.25" in tramer_ceiling_note(0.5, norm="L2")
    with pytest.raises(ValueError):
        tramer_ceiling_note(0)
