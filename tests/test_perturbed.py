"""Attacked images the attack left unchanged (torchattacks' APGD, CW, FAB, Square, AutoAttack return the clean image
where they fail or the model was already wrong): recorded per image, left out of the detector's fit, and counted
apart in the reports (all attacked images, perturbed ones, successful ones)."""

import json

import pytest
import torch

from conftest import tiny_model
from robgen import EnergyDetector, energy
from robgen.attacks import FGSM, PGD
from robgen.experiments.pipeline import (
    DEFINITIONS, ModelOutputs, detection_splits, evaluate_detector, fit_detector, model_outputs, perturbed_images,
    successful, tensor_batches,
)
from robgen.experiments.stages import read_stage, write_stage


class FailsOnOddLabels:
    """A stand-in for a torchattacks attack: FGSM where the label is even, the clean image itself where it is odd."""

    def __init__(self, model, eps: float = 8 / 255) -> None:
        self.fgsm = FGSM(model, eps=eps)
        self.steps = self.fgsm.steps

    def __call__(self, images, labels, return_trace: bool = False):
        result = self.fgsm(images, labels, return_trace=return_trace)
        adversarial, trace = result if return_trace else (result, None)
        adversarial = torch.where((labels % 2 == 1).view(-1, 1, 1, 1), images, adversarial)
        return (adversarial, trace) if return_trace else adversarial


def test_perturbed_images_is_any_pixel_changed():
    x = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    x_adv = x.clone()
    x_adv[1, 2, 3, 3] += 1e-6  # one pixel of image 1
    x_adv[2] = (x[2] + 8 / 255).clamp(0, 1)
    assert perturbed_images(x, x_adv).tolist() == [False, True, True]


def test_model_outputs_record_which_attacked_images_the_attack_changed():
    model = tiny_model()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 32, 32, generator=g), torch.arange(8) % 10
    attacked = model_outputs(model, tensor_batches(x, y, 3), attack=FailsOnOddLabels(model), progress=False)
    assert attacked.perturbed.tolist() == [label % 2 == 0 for label in y.tolist()]
    assert model_outputs(model, tensor_batches(x, y, 3), progress=False).perturbed is None, "clean: nothing attacked"
    # an unperturbed image is its clean image: same logits
    clean = model_outputs(model, tensor_batches(x, y, 3), progress=False)
    assert torch.allclose(attacked.logits[~attacked.perturbed], clean.logits[~attacked.perturbed], atol=1e-6)


def _validation(n: int = 200):
    """Clean logits, and attacked ones where the clean images of highest energy are left unchanged.

    As APGD does: it leaves the images the model already gets wrong, its least confident ones, as they are.
    """
    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(n, dtype=torch.long)
    clean = torch.randn(n, 10, generator=g) * 2
    attacked = torch.randn(n, 10, generator=g) * 2 + 1
    clean_energy = energy(clean)
    perturbed = clean_energy < clean_energy.median()
    attacked[~perturbed] = clean[~perturbed]
    return ModelOutputs(clean, labels), ModelOutputs(attacked, labels, perturbed=perturbed)


@pytest.mark.parametrize("temperature", [1.0, "search"])
def test_fit_detector_leaves_the_unperturbed_examples_out(temperature):
    clean, adversarial = _validation()
    detector = fit_detector(clean, adversarial, rule="youden", temperature=temperature)
    alone = EnergyDetector("youden", temperature).fit(clean.logits, adversarial.logits[adversarial.perturbed])
    everything = EnergyDetector("youden", temperature).fit(clean.logits, adversarial.logits)
    assert detector.threshold == pytest.approx(alone.threshold)
    assert detector.temperature == alone.temperature
    assert detector.threshold != pytest.approx(everything.threshold), "the test must tell the two fits apart"


def test_fit_detector_refuses_an_attack_that_changed_nothing():
    clean, adversarial = _validation(10)
    adversarial.perturbed[:] = False
    with pytest.raises(ValueError, match="changed none of the 10 images"):
        fit_detector(clean, adversarial)


def test_evaluate_detector_reports_all_attacked_and_successful_with_their_counts():
    # 6 test images of class 0. Clean: 0-3 right, 4-5 wrong. The attack fools 0 and 1, changes 2 without fooling
    # it, fails on 3 (returns it unchanged) and leaves the already wrong 4 and 5 unchanged.
    labels = torch.zeros(6, dtype=torch.long)
    right, wrong = [5.0, 0.0], [0.0, 5.0]
    clean = ModelOutputs(torch.tensor([right, right, right, right, wrong, wrong]), labels)
    adversarial = ModelOutputs(torch.tensor([[0.0, 9.0], [0.0, 1.0], [3.0, 0.0], right, wrong, wrong]), labels,
                               perturbed=torch.tensor([True, True, True, False, False, False]))
    detector = EnergyDetector("youden")
    detector.threshold = -4.0  # flags E <= -4: adversarial energies about -9.0, -1.31, -3.05, -5.0, -5.0, -5.0
    report = evaluate_detector(detector, clean, adversarial)
    assert report["n_attacked"] == 6 and report["n_perturbed"] == 3 and report["n_successful"] == 2
    assert report["detection_rate"] == pytest.approx(4 / 6), "over every attacked image, unchanged ones included"
    assert report["detection_rate_successful"] == pytest.approx(1 / 2), "images 0 and 1: only 0 is flagged"
    assert successful(clean, adversarial).tolist() == [True, True, False, False, False, False]


def test_successful_needs_the_image_changed():
    # logits that disagree although the image was not changed (e.g. a non-deterministic kernel near a tie)
    labels = torch.zeros(2, dtype=torch.long)
    clean = ModelOutputs(torch.tensor([[1.0, 0.999], [1.0, 0.0]]), labels)
    adversarial = ModelOutputs(torch.tensor([[0.999, 1.0], [0.0, 1.0]]), labels, perturbed=torch.tensor([False, True]))
    assert successful(clean, adversarial).tolist() == [False, True]


def test_stage_files_keep_the_perturbed_mask(tmp_path):
    _, adversarial = _validation(6)
    write_stage(adversarial, 1.5, tmp_path / "stage.safetensors")
    loaded, seconds = read_stage(tmp_path / "stage.safetensors")
    assert torch.equal(loaded.perturbed, adversarial.perturbed) and seconds == 1.5
    clean, _ = _validation(6)
    write_stage(clean, 0.0, tmp_path / "clean.safetensors")
    assert read_stage(tmp_path / "clean.safetensors")[0].perturbed is None


def test_zoo_study_fits_on_perturbed_images_and_reports_both_rates(toy_data, tmp_path, monkeypatch):
    import dataclasses

    from robgen.attacks.zoo import ZOO
    from robgen.experiments.zoo import ZooStudySettings, zoo_study
    from robgen.experiments.zoo_report import write_report

    model = tiny_model(num_classes=4)
    monkeypatch.setitem(ZOO, "Square", dataclasses.replace(ZOO["Square"], build=lambda m, s, g, f: FailsOnOddLabels(m)))
    monkeypatch.setitem(ZOO, "PGD-40", dataclasses.replace(ZOO["PGD-40"], build=lambda m, s, g, f: PGD(  # fast
        m, eps=s.eps, step_size=s.eps / 2, steps=2, generator=g)))
    splits = detection_splits(model, toy_data, val_size=40, limit=12)
    settings = ZooStudySettings(attacks=("Square",), batch_size=5)
    results = zoo_study(model, splits, settings, progress=False)
    row = results["rows"][0]
    assert "error" not in row, row.get("error")

    loaders = splits.loaders(5)
    outputs = {split: (model_outputs(model, loader, progress=False),
                       model_outputs(model, loader, attack=FailsOnOddLabels(model), progress=False))
               for split, loader in loaders.items()}
    clean, attacked = outputs["validation"]
    expected_perturbed = attacked.labels % 2 == 0
    assert torch.equal(attacked.perturbed, expected_perturbed)
    alone = EnergyDetector(settings.rule, settings.temperature).fit(clean.logits, attacked.logits[expected_perturbed])
    assert row["refitted"]["threshold"] == pytest.approx(alone.threshold)
    assert row["refitted"]["temperature"] == alone.temperature

    clean_test, attacked_test = outputs["test"]
    n_perturbed = int((attacked_test.labels % 2 == 0).sum())
    assert row["n_perturbed"] == n_perturbed and row["n_attacked"] == 12 and 0 < n_perturbed < 12
    assert row["n_perturbed_validation"] == int(expected_perturbed.sum())
    success = clean_test.correct & ~attacked_test.correct & attacked_test.perturbed
    for key in ("fitted_on_pgd40", "refitted"):
        assert row[key]["detection_rate"]["n"] == 12
        assert row[key]["detection_rate_successful"]["n"] == int(success.sum())
    assert results["definitions"] == DEFINITIONS

    write_report(results, tmp_path)
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["rows"][0]["n_perturbed"] == n_perturbed and written["definitions"] == DEFINITIONS
    report = (tmp_path / "results.md").read_text()
    assert DEFINITIONS["perturbed"] in report and DEFINITIONS["successful"] in report
    assert f"| {n_perturbed} / 12 |" in report


def test_reproduce_fits_table1_on_perturbed_images_and_reports_both_rates(toy_data, tmp_path, monkeypatch):
    import robgen.experiments.reproduce as reproduce_module
    from robgen.experiments.reproduce import ReproduceSettings, reproduce

    model = tiny_model(num_classes=4)
    real_make_attack = reproduce_module._make_attack
    monkeypatch.setattr(reproduce_module, "_make_attack", lambda name, model, settings: (
        FailsOnOddLabels(model) if name == "apgd-8" else real_make_attack(name, model, settings)))
    settings = ReproduceSettings(attacks=("pgd-8", "apgd-8"), steps=2, lambdas=(0.0, 1.2), val_size=40, limit=8,
                                 batch_size=4, reference_size=32, lid_reference=24, timing_repeats=1)
    results = reproduce(model, str(toy_data), tmp_path / "run", settings=settings, progress=False)

    splits = detection_splits(model, toy_data, val_size=40, limit=8)
    loaders = splits.loaders(4)
    clean = model_outputs(model, loaders["validation"], progress=False)
    attacked = model_outputs(model, loaders["validation"], attack=FailsOnOddLabels(model), progress=False)
    test_labels = model_outputs(model, loaders["test"], progress=False).labels
    n_perturbed = int((test_labels % 2 == 0).sum())
    assert 0 < n_perturbed < 8
    rows = [row for row in results["table1"] if row["attack"] == "apgd-8"]
    assert len(rows) == 4
    for row in rows:
        perturbed = attacked.labels % 2 == 0
        alone = EnergyDetector(row["rule"], "search" if row["search_temperature"] else 1.0).fit(
            clean.logits, attacked.logits[perturbed])
        assert row["threshold"] == pytest.approx(alone.threshold) and row["temperature"] == alone.temperature
        assert row["n_validation_perturbed"] == int(perturbed.sum())
        assert row["n_attacked"] == 8 and row["n_perturbed"] == n_perturbed
        assert row["n_successful"] <= n_perturbed
    pgd_rows = [row for row in results["table1"] if row["attack"] == "pgd-8"]
    assert all(row["n_perturbed"] == row["n_attacked"] == 8 for row in pgd_rows), "PGD's random start moves every image"
    assert results["definitions"] == DEFINITIONS

    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert written["definitions"] == DEFINITIONS
    report = (tmp_path / "run" / "results.md").read_text()
    assert DEFINITIONS["perturbed"] in report and DEFINITIONS["successful"] in report
    table = report.split("## Table 1")[1].split("\n## ")[0]
    apgd_lines = [line for line in table.splitlines() if line.startswith("| apgd-8 |")]
    assert len(apgd_lines) == 4
    for row, line in zip(rows, apgd_lines):
        assert f"| {row['n_successful']} / {n_perturbed} / 8 |" in line
