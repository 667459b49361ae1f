import json
import math

import pytest
import torch

from robgen import EnergyDetector, energy
from robgen.detection import TEMPERATURES
from robgen.metrics import auroc, choose_threshold, detection_metrics, roc_curve
from tests.conftest import tiny_model


def test_auroc_by_hand():
    # adversarial = lower energy. Pairs (a, c) with a < c count 1, ties 1/2.
    clean = [1.0, 2.0, 3.0]
    adv = [0.0, 2.0]
    # a=0: beats 1,2,3 -> 3; a=2: beats 3 -> 1, ties 2 -> 0.5. Total 4.5 / 6.
    assert auroc(clean, adv) == pytest.approx(4.5 / 6)
    assert auroc([1.0, 2.0], [-1.0, 0.0]) == 1.0
    assert auroc([-1.0, 0.0], [1.0, 2.0]) == 0.0
    assert auroc([5.0, 5.0], [5.0]) == 0.5


def test_roc_curve_by_hand():
    thresholds, tpr, fpr = roc_curve([1.0, 3.0], [0.0, 2.0])
    assert thresholds.tolist() == [-math.inf, 0.0, 1.0, 2.0, 3.0]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]


def test_threshold_rules_by_hand():
    clean = [1.0, 3.0, 4.0, 5.0]
    adv = [0.0, 2.0, 3.5, 6.0]
    # candidates t: (tpr, fpr): 0:(.25,0) 1:(.25,.25) 2:(.5,.25) 3:(.5,.5) 3.5:(.75,.5) 4:(.75,.75) 5:(.75,1) 6:(1,1)
    # gmean: 0 -> .5, 2 -> sqrt(.375)=.612, 3.5 -> .612 ; first maximum (lowest) is 2, returned halfway to 3
    assert choose_threshold(clean, adv, "gmean") == 2.5
    # youden: 0 -> .25, 2 -> .25, 3.5 -> .25 -> lowest is 0, halfway to 1
    assert choose_threshold(clean, adv, "youden") == 0.5
    # fpr <= 0.25: highest tpr is at t=2 (tpr .5)
    assert choose_threshold(clean, adv, "fpr", target_fpr=0.25) == 2.5
    assert choose_threshold(clean, adv, "fpr", target_fpr=0.0) == 0.5
    report = detection_metrics(clean, adv, 2.0)
    assert report["detection_rate"] == 0.5 and report["false_positive_rate"] == 0.25
    assert report["false_negative_rate"] == 0.5 and report["g_mean"] == pytest.approx(math.sqrt(0.375))


def test_threshold_is_right_on_known_distributions():
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(20000, generator=g)
    adv = torch.randn(20000, generator=g) - 3.0
    # equal-variance Gaussians 3 apart: both rules put the threshold half way, at -1.5
    for rule in ("gmean", "youden"):
        detector = EnergyDetector(rule=rule).fit(clean, adv)
        assert detector.threshold == pytest.approx(-1.5, abs=0.1)
    detector = EnergyDetector(rule="fpr", target_fpr=0.05).fit(clean, adv)
    assert detector.threshold == pytest.approx(-1.645, abs=0.05)  # the 5% quantile of N(0, 1)
    report = detector.evaluate(torch.randn(20000, generator=g), torch.randn(20000, generator=g) - 3.0)
    assert report["false_positive_rate"] == pytest.approx(0.05, abs=0.01)
    assert report["detection_rate"] == pytest.approx(0.9123, abs=0.01)  # P(N(-3,1) <= -1.645)
    assert report["auroc"] == pytest.approx(0.9831, abs=0.005)  # Phi(3 / sqrt 2)


def test_predict_flags_low_energy():
    detector = EnergyDetector().fit(torch.tensor([0.0, 1.0]), torch.tensor([-3.0, -2.0]))
    flagged = detector.predict(torch.tensor([-5.0, detector.threshold, 10.0]))
    assert flagged.dtype == torch.bool and flagged.tolist() == [True, True, False]


def test_temperature_search_picks_the_best_auroc():
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(400, 10, generator=g) * 3
    adv = torch.randn(400, 10, generator=g) * 3
    adv[:, 0] += 4.0  # a larger top logit: separable at low temperature, washed out at high T
    detector = EnergyDetector(temperature="search").fit(clean, adv)
    table = detector.validation["auroc_by_temperature"]
    assert len(table) == len(TEMPERATURES)
    assert detector.temperature == float(max(table, key=table.get))
    assert table[str(detector.temperature)] >= table["20.0"]
    assert torch.equal(detector.energies(adv), energy(adv.double(), detector.temperature))
    with pytest.raises(ValueError, match="logits"):
        EnergyDetector(temperature="search").fit(clean[:, 0], adv[:, 0])


def test_energies_are_refused_at_a_temperature_other_than_one():
    """1-D energies carry no temperature (robgen.energy gives T = 1): a T = 5 detector must not take them as its own."""
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(300, 10, generator=g) * 3
    adv = torch.randn(300, 10, generator=g) * 3
    adv[:, 0] += 4.0
    hot = EnergyDetector(temperature=5.0).fit(clean, adv)
    assert torch.equal(hot.energies(adv), energy(adv.double(), 5.0))
    cold_threshold = EnergyDetector().fit(energy(clean), energy(adv)).threshold
    assert hot.threshold != pytest.approx(cold_threshold, abs=0.5), "the temperatures really give different thresholds"
    for call in (lambda: EnergyDetector(temperature=5.0).fit(energy(clean), energy(adv)),
                 lambda: hot.predict(energy(clean)), lambda: hot.evaluate(energy(clean), energy(adv))):
        with pytest.raises(ValueError, match=r"temperature 5.*pass the logits \(N, K\)"):
            call()
    # at T = 1, fitting on energies and on logits is the same thing
    one = EnergyDetector().fit(clean, adv)
    assert one.threshold == pytest.approx(cold_threshold, abs=1e-5)
    fresh = torch.randn(300, 10, generator=g) * 3  # not the fitted points, one of which sits on the threshold
    assert torch.equal(one.predict(fresh), one.predict(energy(fresh)))


def test_save_and_load_round_trip(tmp_path):
    detector = EnergyDetector(rule="youden").fit(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([-1.0, 0.5]))
    path = detector.save(tmp_path / "det" / "detector.json")
    loaded = EnergyDetector.load(path)
    assert loaded.threshold == detector.threshold and loaded.rule == "youden" and loaded.temperature == 1.0
    scores = torch.linspace(-2, 3, 11)
    assert torch.equal(loaded.predict(scores), detector.predict(scores))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not a saved EnergyDetector"):
        EnergyDetector.load(tmp_path / "bad.json")


def test_a_save_that_fails_halfway_keeps_the_old_detector_whole(tmp_path, monkeypatch):
    """fit-detector --overwrite wrote detector.json in place: a full disk left half a file the app could not read."""
    from pathlib import Path

    old = EnergyDetector(rule="youden").fit(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([-1.0, 0.5]))
    path = old.save(tmp_path / "detector.json")
    new = EnergyDetector(rule="youden").fit(torch.tensor([5.0, 6.0]), torch.tensor([-5.0, 0.0]))
    write_text = Path.write_text

    def full_disk(self, text, *args, **kwargs):
        write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)
    with pytest.raises(OSError, match="No space left"):
        new.save(path)
    monkeypatch.undo()
    assert EnergyDetector.load(path).threshold == old.threshold
    assert sorted(p.name for p in tmp_path.iterdir()) == ["detector.json"]


def test_bad_use_is_explained():
    with pytest.raises(ValueError, match="gmean, youden, fpr"):
        EnergyDetector(rule="best")
    with pytest.raises(RuntimeError, match="fit"):
        EnergyDetector().predict(torch.zeros(3))
    with pytest.raises(ValueError, match="empty"):
        EnergyDetector().fit(torch.zeros(0), torch.zeros(3))
    with pytest.raises(ValueError, match="finite number > 0"):
        EnergyDetector(temperature=math.inf)
    with pytest.raises(ValueError, match="finite numbers > 0"):
        EnergyDetector(temperature="search", temperatures=(1.0, math.inf))


def test_non_finite_energies_are_refused_not_called_natural():
    """NaN <= t is False: a NaN energy passed as (N,) energies came out 'not adversarial'."""
    detector = EnergyDetector("youden").fit(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([-3.0, -2.0, -1.0]))
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="NaN or infinite"):
            detector.predict(torch.tensor([bad, -5.0]))
    assert detector.predict(torch.tensor([-5.0, 5.0])).tolist() == [True, False]


def test_a_nan_threshold_is_refused_where_it_would_flag_nothing(tmp_path):
    """A detector.json whose threshold is NaN loaded, then flagged nothing; detection_metrics at a NaN threshold gave
    TPR = FPR = 0 without a word (a review, 2026-12-07)."""
    from robgen.metrics import detection_metrics

    detector = EnergyDetector("youden").fit(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([-3.0, -2.0, -1.0]))
    path = detector.save(tmp_path / "detector.json")
    saved = json.loads(path.read_text())
    saved["threshold"] = math.nan
    path.write_text(json.dumps(saved))  # Python writes NaN, which its own reader takes
    with pytest.raises(ValueError, match="records a NaN threshold: fit the detector again"):
        EnergyDetector.load(path)
    with pytest.raises(ValueError, match="threshold is NaN"):
        detection_metrics(torch.tensor([0.0, 1.0]), torch.tensor([-1.0]), math.nan)
    assert detection_metrics(torch.tensor([0.0, 1.0]), torch.tensor([-1.0]), -math.inf)["detection_rate"] == 0.0


def test_energies_given_as_lists_keep_float64_precision_in_the_detector():
    clean, adversarial = [-10.000001, -10.000002, -10.000003], [-10.0000015, -10.0000025, -10.0000035]
    as_list = EnergyDetector("youden").fit(clean, adversarial)
    as_tensor = EnergyDetector("youden").fit(torch.tensor(clean, dtype=torch.float64),
                                             torch.tensor(adversarial, dtype=torch.float64))
    assert as_list.threshold == as_tensor.threshold == choose_threshold(clean, adversarial, "youden")
    assert as_list.validation["auroc"] == auroc(clean, adversarial)
    assert as_list.predict(adversarial).tolist() == as_tensor.predict(torch.tensor(adversarial, dtype=torch.float64)).tolist()


def test_a_detector_fitted_for_other_weights_is_refused_where_a_model_uses_it(tmp_path):
    """A detector.json copied or written (`detect --out`, `fit-detector --out`) next to another model was used
    silently, its threshold on that model's energy scale. Now it records the weights it was fitted for; the
    checkpoint folder's detector and `EnergyReject.from_detector` refuse others. A file without the record (older
    robgen) is taken as it is."""
    import robgen
    from robgen.detection.reject import EnergyReject
    from robgen.experiments.calibration import load_shipped_detector
    from tests.conftest import tiny_model

    model, other = tiny_model(seed=0), tiny_model(seed=1)
    folder = robgen.save_checkpoint(other, tmp_path / "other")
    detector = EnergyDetector(rule="youden").fit(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([-1.0, 0.5])).bind(model)
    assert EnergyDetector.load(detector.save(tmp_path / "d.json")).model_fingerprint == detector.model_fingerprint
    detector.save(folder / "detector.json")
    loaded_other = robgen.load_model(folder)
    with pytest.raises(ValueError, match="fitted for another model .* fit-detector --model"):
        load_shipped_detector(loaded_other)
    with pytest.raises(ValueError, match="fitted for another model"):
        EnergyReject.from_detector(detector, loaded_other)
    assert EnergyReject.from_detector(detector, model).tau > detector.threshold
    # the same weights held otherwise are the same model: a float64 copy, a torch.compile'd one; a float16 copy is
    # another (rounded) set of weights, refused with the advice that applies
    import copy

    detector.save(folder / "detector.json")
    assert EnergyReject.from_detector(detector, copy.deepcopy(model).double()).tau > detector.threshold
    assert EnergyReject.from_detector(detector, torch.compile(model)).tau > detector.threshold
    with pytest.raises(ValueError, match="at a lower precision, use a float32 copy"):
        EnergyReject.from_detector(detector, copy.deepcopy(model).half())
    detector.model_fingerprint = None  # an older file
    detector.save(folder / "detector.json")
    assert load_shipped_detector(loaded_other).threshold == detector.threshold


def test_every_shipped_detector_records_the_weights_it_was_fitted_for():
    import robgen
    from robgen.experiments.calibration import load_shipped_detector
    from robgen.models.fingerprint import model_fingerprint

    for name in robgen.list_models():
        model = robgen.load_model(name)
        assert load_shipped_detector(model).model_fingerprint == model_fingerprint(model), name


def test_a_refitted_detector_forgets_the_model_it_was_bound_to():
    """Refitted on model B's outputs, a detector bound to model A stayed A's: check_model(A) passed with a
    threshold on B's energy scale, check_model(B) refused the model it was fitted on, and the old calibration
    record (the app's histogram) stayed beside the new threshold."""
    first, second = tiny_model(seed=0), tiny_model(seed=1)
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits_a, logits_b = first(x), second(x)
    detector = EnergyDetector().fit(logits_a, logits_a - 5).bind(first)
    detector.calibration = {"clean_energy": [1.0]}
    detector.fit(logits_b, logits_b - 5)
    assert detector.model_fingerprint is None and detector.calibration == {}
    detector.bind(second).check_model(second)
    with pytest.raises(ValueError, match="fitted for another model"):
        detector.check_model(first)
    # a refit that fails leaves it as it was: bound, with its threshold (it had forgotten the model and kept the
    # threshold, so that any model passed its check)
    threshold = detector.threshold
    with pytest.raises(ValueError, match="energies contain NaN"):
        detector.fit(torch.tensor([float("nan"), 1.0]), torch.tensor([0.0, 1.0]))
    assert detector.threshold == threshold and detector.model_fingerprint is not None
    with pytest.raises(ValueError, match="fitted for another model"):
        detector.check_model(first)


def test_a_column_of_energies_is_read_as_energies_not_as_logits_of_one_class():
    """(N, 1) energies, which the metrics take, were read as logits: "logits must have at least 2 classes"."""
    clean, adversarial = torch.linspace(-10, -5, 40), torch.linspace(-14, -9, 40)
    column = EnergyDetector().fit(clean[:, None], adversarial[:, None])
    flat = EnergyDetector().fit(clean, adversarial)
    assert column.threshold == flat.threshold
    assert torch.equal(column.predict(adversarial[:, None]), flat.predict(adversarial))


def test_the_detector_flags_the_same_images_from_logits_and_from_their_float32_energies():
    """The threshold was the energy of one validation image, computed in float64 from logits: that image's float32
    energy (`robgen.energy`, as the README computes energies) fell on either side of it by rounding, so the
    detector flagged differently from logits and from energies (21 of these 40 seeds)."""
    from robgen import energy

    disagreements = 0
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        clean, adversarial = torch.randn(50, 10, generator=g) * 3, torch.randn(50, 10, generator=g) * 3 - 1
        detector = EnergyDetector(rule="gmean").fit(clean, adversarial)
        for logits in (clean, adversarial):
            disagreements += int((detector.predict(logits) != detector.predict(energy(logits))).sum())
    assert disagreements == 0


def test_a_detector_at_a_numpy_temperature_saves_and_loads(tmp_path):
    """`temperature == "search"` was numpy's np.False_ for a numpy number, which json refused to save."""
    import numpy as np

    g = torch.Generator().manual_seed(0)
    clean, adversarial = torch.randn(20, 10, generator=g) * 3, torch.randn(20, 10, generator=g) * 3 - 1
    detector = EnergyDetector(temperature=np.float64(2.0)).fit(clean, adversarial)
    loaded = EnergyDetector.load(detector.save(tmp_path / "detector.json"))
    assert loaded.temperature == 2.0 and loaded.threshold == detector.threshold
    assert torch.equal(loaded.predict(adversarial), detector.predict(adversarial))
