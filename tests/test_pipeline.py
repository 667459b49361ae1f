"""The detection pipeline (split → attack → energies → fit → evaluate) and the single-image attack flow."""

import pytest
import torch

from robgen import PGD, EnergyDetector, energy
from robgen.detection import penultimate_features
from robgen.experiments.pipeline import (
    ModelOutputs, detection_experiment, detection_splits, evaluate_detector, fit_detector, model_outputs, tensor_batches,
)
from robgen.experiments.single_image import attack_own_predictions, combine_outcomes, quantise
from robgen.metrics import choose_threshold


def test_model_outputs_with_an_attack_are_the_outputs_on_the_attacked_images(model, batch):
    x, y = batch
    attack = PGD(model, eps=8 / 255, step_size=2 / 255, steps=3, random_start=False)
    outputs = model_outputs(model, tensor_batches(x, y, 4), attack=attack, features=True, trace=True, progress=False)
    x_adv = attack(x, y)
    features, logits = penultimate_features(model, x_adv)
    assert torch.allclose(outputs.logits, logits, atol=1e-5)
    assert torch.allclose(outputs.features, features, atol=1e-5)
    assert torch.equal(outputs.labels, y)
    assert outputs.trace.step == [0, 1, 2, 3]
    assert outputs.trace.accuracy[-1] == pytest.approx(outputs.accuracy)


def test_evaluate_detector_counts_by_hand():
    # 4 test images, class 0 is right; the attack fools images 0-2; image 3 stays correct.
    labels = torch.zeros(4, dtype=torch.long)
    clean = ModelOutputs(torch.tensor([[5.0, 0.0], [5.0, 0.0], [5.0, 0.0], [0.0, 5.0]]), labels)
    adversarial = ModelOutputs(torch.tensor([[0.0, 1.0], [0.0, 9.0], [0.0, 1.0], [0.0, 1.0]]), labels)
    detector = EnergyDetector(rule="youden")
    detector.threshold = -2.0  # flags E(x) <= -2: the energies are about -1.31, -9.0, -1.31, -1.31
    report = evaluate_detector(detector, clean, adversarial)
    assert report["detection_rate"] == pytest.approx(1 / 4)  # only image 1 (E = -9) is flagged
    assert report["false_positive_rate"] == pytest.approx(1.0)  # every clean E is about -5
    assert report["n_successful"] == 3  # image 3 was wrong before the attack
    assert report["attack_success_rate"] == pytest.approx(1.0)  # all 3 correct images were fooled
    assert report["detection_rate_successful"] == pytest.approx(1 / 3)
    assert report["clean_accuracy"] == pytest.approx(3 / 4)
    assert report["adversarial_accuracy"] == 0.0


def test_fit_detector_is_the_threshold_rule_on_validation_energies():
    g = torch.Generator().manual_seed(0)
    clean = ModelOutputs(torch.randn(200, 10, generator=g) * 2, torch.zeros(200, dtype=torch.long))
    adversarial = ModelOutputs(torch.randn(200, 10, generator=g) * 2 + 3, torch.zeros(200, dtype=torch.long))
    detector = fit_detector(clean, adversarial, rule="gmean", temperature=1.0)
    assert detector.threshold == pytest.approx(choose_threshold(energy(clean.logits.double()),
                                                                energy(adversarial.logits.double()), "gmean"))


def test_detection_splits_refuse_a_model_of_another_data_set(model, toy_data):
    with pytest.raises(ValueError, match="the model has 10 classes but .* has 4"):
        detection_splits(model, toy_data, val_size=40)


def test_the_one_folder_warning_counts_the_test_images_a_limit_keeps(toy_data, caplog):
    """It gave the images before --limit (60 with --limit 20)."""
    from conftest import tiny_model

    with caplog.at_level("WARNING", logger="robgen.experiments.pipeline"):
        splits = detection_splits(tiny_model(num_classes=4), toy_data, val_size=40, limit=24)
    assert len(splits.test) == 24 and "of them, 24 used)" in caplog.text, caplog.text


def test_a_model_that_records_no_split_of_the_data_is_warned_of_its_validation_images(toy_data, caplog, tmp_path):
    """An imported model (no training record) got a validation split drawn from the training images without a word,
    images it may have trained on (a review, 2026-12-07); one robgen trained on the data set records its split."""
    from conftest import tiny_model

    from robgen.training import TrainConfig, train

    with caplog.at_level("WARNING", logger="robgen.experiments.pipeline"):
        detection_splits(tiny_model(num_classes=4), toy_data, val_size=40, limit=8)
    assert "records no validation split of" in caplog.text and "40 of the training images" in caplog.text
    trained = train(TrainConfig(data=str(toy_data), width=4, epochs=1, batch_size=16, val_size=40, eval_subset=8,
                                eval_steps=1), tmp_path / "run", progress=False)
    caplog.clear()
    with caplog.at_level("WARNING", logger="robgen.experiments.pipeline"):
        detection_splits(trained, toy_data, limit=8)
    assert "records no validation split" not in caplog.text


def test_detection_experiment_fits_on_validation_and_reports_on_test(toy_data):
    from conftest import tiny_model

    four_class = tiny_model(num_classes=4)
    splits = detection_splits(four_class, toy_data, val_size=40, limit=24)
    attack = PGD(four_class, eps=8 / 255, step_size=2 / 255, steps=2, generator=torch.Generator().manual_seed(0))
    result = detection_experiment(four_class, splits, attack, rule="gmean", temperature=1.0, batch_size=10,
                                  progress=False)
    assert result.report["n_validation"] == result.report["n_test"] == 24
    refit = EnergyDetector(rule="gmean").fit(result.clean["validation"].logits, result.adversarial["validation"].logits)
    assert result.detector.threshold == pytest.approx(refit.threshold)
    expected = refit.evaluate(result.clean["test"].logits, result.adversarial["test"].logits)
    assert result.report["detection_rate"] == pytest.approx(expected["detection_rate"])


def test_attack_own_predictions_attacks_the_prediction_and_keeps_8_bit_pixels_in_the_ball(model, batch):
    x = (batch[0] * 255).round() / 255  # pixels of an image file
    attack = PGD(model, eps=8 / 255, step_size=2 / 255, steps=5, generator=torch.Generator().manual_seed(0))
    outcome = attack_own_predictions(model, x, attack)
    assert outcome.trace.accuracy[0] == 1.0  # the labels attacked are the model's own predictions
    levels = outcome.adversarial * 255
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert (outcome.adversarial - x).abs().max() <= 8 / 255 + 1e-6
    with torch.no_grad():
        assert torch.allclose(outcome.adversarial_logits, model(outcome.adversarial), atol=1e-5)
    assert outcome.change(0)["linf"] <= 8 / 255 + 1e-6
    both = combine_outcomes([outcome, outcome])
    assert len(both.clean) == 2 * len(x) and both.trace.step == outcome.trace.step


def test_attack_own_predictions_on_a_model_in_train_mode_reads_and_leaves_it_as_in_eval_mode(model, batch):
    """Its two forward passes ran in the caller's mode: a train-mode model reported batch-statistics predictions
    and had its running statistics overwritten."""
    x = batch[0]
    before = {name: value.clone() for name, value in model.state_dict().items()}
    in_eval = attack_own_predictions(model, x, PGD(model, eps=8 / 255, steps=2, generator=torch.Generator().manual_seed(0)))
    model.train()
    try:
        in_train = attack_own_predictions(model, x, PGD(model, eps=8 / 255, steps=2,
                                                        generator=torch.Generator().manual_seed(0)))
        assert model.training
    finally:
        model.eval()
    assert torch.equal(in_train.clean_logits, in_eval.clean_logits)
    assert torch.equal(in_train.adversarial_logits, in_eval.adversarial_logits)
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())


def test_quantise_stays_inside_an_l2_ball():
    from robgen.attacks import FGSM
    from conftest import tiny_model

    attack = FGSM(tiny_model(), eps=0.3, norm="l2")
    x = torch.full((1, 3, 32, 32), 0.5)
    x_adv = x + 0.3 * torch.ones_like(x) / (3 * 32 * 32) ** 0.5  # on the sphere; rounding may push it out
    assert (quantise(x_adv, x, attack) - x).flatten().norm() <= 0.3 + 1e-5


@pytest.mark.parametrize("eps, norm", [(8 / 255, "linf"), (8.5 / 255, "linf"), (0.5, "l2"), (1.0, "l2")])
def test_quantise_gives_8_bit_pixels_inside_a_ball_of_any_radius(eps, norm):
    # a half-step L-inf eps or an L2 ball: rounding then projecting left the pixels off the 8-bit levels, so the
    # PNG written (rounded again) was another image, outside the ball
    from conftest import tiny_model

    model = tiny_model()
    x = (torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255).round() / 255  # a file's pixels
    attack = PGD(model, eps=eps, step_size=eps / 2, steps=3, norm=norm, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x_adv = attack(x, model(x).argmax(1))
    quantised = quantise(x_adv, x, attack)
    # exactly the float32 of a level (in float32 a pixel 8 levels away is 8.0000007/255 away: the 8/255 ball's
    # projection moved 121 of 12,288 pixels 1e-6 levels off, so the PNG was not the image measured)
    levels = (quantised.double() * 255).round()
    assert torch.equal(quantised, (levels / 255).float())
    change = (levels - (x.double() * 255).round()).flatten(1) / 255
    size = change.abs().amax(1) if norm == "linf" else change.norm(dim=1)
    assert (size <= eps + 1e-12).all() and (size > 0).all()


def test_the_stored_calibration_energies_are_the_ones_the_threshold_was_fitted_on(toy_data):
    # an attack that gives up on half of each batch (as APGD may): the images it returns unchanged are clean, the fit
    # leaves them out, and so must the energies stored for the Detect tab's histogram behind the threshold
    from conftest import tiny_model

    from robgen.experiments.calibration import calibrate_detector, calibration_energies

    four_class = tiny_model(num_classes=4)
    four_class.spec.class_labels = [f"class{i}" for i in range(4)]  # the toy folder's classes

    def half_attack(x, y):
        out = x.clone()
        out[: len(x) // 2] = (out[: len(x) // 2] + 0.3).clamp(0, 1)
        return out

    detector = calibrate_detector(four_class, str(toy_data), half_attack, n=24, val_size=40, rule="youden",
                                  temperature=1.0, batch_size=8, progress=False)
    clean, adversarial = calibration_energies(detector)
    assert len(clean) == detector.calibration["n_validation"] == 24
    assert len(adversarial) == detector.calibration["n_validation_perturbed"] == 12
    assert detector.threshold == pytest.approx(choose_threshold(clean, adversarial, "youden"), abs=1e-3)


def test_the_change_recorded_for_a_files_pixels_is_counted_in_whole_levels():
    """results.json recorded linf·255 = 8.00000712 for a change of exactly 8 levels (float32's k/255 differences)."""
    from robgen.experiments.single_image import AttackOutcome

    clean = torch.arange(3 * 4 * 4, dtype=torch.float32).view(1, 3, 4, 4) * 3 / 255
    adversarial = clean + torch.where(torch.arange(48).view(1, 3, 4, 4) % 2 == 0, 8.0, -8.0) / 255
    outcome = AttackOutcome(clean, adversarial, torch.zeros(1, 2), torch.zeros(1, 2), ["a", "b"], None)
    change = outcome.change(0)
    assert change["linf"] * 255 == pytest.approx(8, abs=1e-12) and change["linf"] <= 8 / 255
    assert change["l2"] == pytest.approx((48 * 64) ** 0.5 / 255, abs=1e-12)
