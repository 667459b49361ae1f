"""scripts/check_dara_independently.py: the plain-torch attack that cross-checks committed adaptive runs."""

import importlib.util

import torch

from robgen.detection.defended import DefendedClassifier
from robgen.detection.reject import make_reject_option
from tests.conftest import REPO, tiny_model

spec = importlib.util.spec_from_file_location("check_dara", REPO / "scripts" / "check_dara_independently.py")
check_dara = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_dara)


def defended_tiny_model(num_classes=10, n=24):
    model = tiny_model(num_classes=num_classes)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    g = torch.Generator().manual_seed(5)
    option = make_reject_option("energy-gap", target_fpr=0.2).calibrate(model, torch.rand(64, 3, 32, 32, generator=g))
    x = torch.rand(n, 3, 32, 32, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)  # every clean image classified correctly
    return DefendedClassifier(model, option), x, y


def test_it_attacks_only_clean_defended_images_and_a_large_ball_evades_most_of_them():
    defended, x, y = defended_tiny_model()
    clean, evaded = check_dara.check(defended, x, y, eps=0.5, steps=20, scale=1.0, batch=8,
                                     generator=torch.Generator().manual_seed(0))
    assert clean.sum() >= 12  # the option rejects about a fifth of clean images, never most
    assert not (evaded & ~clean).any()  # only clean-defended images are attacked
    assert evaded.sum() >= clean.sum() // 2  # an eps of 0.5 leaves a random tiny model little


def test_a_ball_too_small_to_move_the_model_leaves_every_defended_image_defended():
    defended, x, y = defended_tiny_model()
    with torch.no_grad():
        logits, score = defended.outputs(x)
    top2 = logits.topk(2, 1).values
    steady = (top2[:, 0] - top2[:, 1] > 1e-3) & (score < -1e-3)  # not at a boundary of either condition
    clean, evaded = check_dara.check(defended, x, y, eps=1e-7, steps=5, scale=1.0, batch=8,
                                     generator=torch.Generator().manual_seed(0))
    assert not (evaded & steady).any()


def test_a_found_evasion_is_a_point_in_the_ball_the_defended_model_misclassifies_and_accepts():
    defended, x, y = defended_tiny_model()
    eps = 0.5
    with torch.no_grad():
        target = defended.model(x).scatter(1, y[:, None], float("-inf")).argmax(1)  # the likeliest wrong class
    found, points = check_dara.targeted_max_min(defended, x, y, target, eps=eps, steps=20, scale=1.0,
                                                generator=torch.Generator().manual_seed(0))
    assert found.any()
    with torch.no_grad():
        logits, score = defended.outputs(points[found])
    assert (logits.argmax(1) != y[found]).all() and (score <= 0).all()
    assert ((points - x).abs().amax((1, 2, 3)) <= eps + 1e-6).all() and points.min() >= 0 and points.max() <= 1
    assert torch.equal(points[~found], x[~found])


def test_image_by_image_it_counts_robgens_defended_images_it_breaks_and_those_both_leave():
    clean = torch.tensor([True, True, True, False, True])
    evaded = torch.tensor([False, True, False, False, True])  # this attack leaves images 0 and 2 defended
    broken, both, unattacked = check_dara.compare_images([0, 1, 4], clean, evaded)  # robgen's suite left 0, 1, 4
    assert (broken, both, unattacked) == (2, 1, 0)  # it breaks 1 and 4; only 0 is defended against both
    # an image robgen calls defended whose clean image this script's pass rejects was never attacked: not a break
    assert check_dara.compare_images([0, 3], clean, evaded) == (0, 1, 1)


def test_from_counts_alone_every_image_robgen_claims_beyond_this_attacks_count_is_a_break():
    """For a run that does not name its images the verdict read robgen's rate against this attack's Wilson interval:
    on 500 images about 22 images of excess still printed "consistent"; on the same images each is a break, but for
    images the two clean passes judge apart."""
    assert check_dara.at_least_broken(202, 200, 382, 382) == 2  # robgen claims two more: two it broke at least
    assert check_dara.at_least_broken(202, 200, 383, 382) == 1  # one of them never attacked here
    assert check_dara.at_least_broken(200, 202, 382, 382) == 0  # this attack weaker: nothing to say


def test_on_two_classes_it_attacks_the_one_wrong_class_and_never_the_true_one():
    # the targets ranked the true class last: a third target on 3 classes was y itself, on 2 an IndexError
    defended, x, y = defended_tiny_model(num_classes=2, n=8)
    clean, evaded = check_dara.check(defended, x, y, eps=0.5, steps=5, scale=1.0, batch=8,
                                     generator=torch.Generator().manual_seed(0))
    assert not (evaded & ~clean).any()


def test_a_limit_beyond_the_runs_images_is_refused_before_any_work(tmp_path):
    """--limit above the run's images said that the run does not name its images (it does), after loading the
    model and attacking: now a clear error first."""
    import json

    import pytest

    (tmp_path / "results.json").write_text(json.dumps({"n_test": 500, "model": "no-such-model"}))
    for limit in ("600", "0"):
        with pytest.raises(SystemExit, match=r"judged its first 500 test images; check 1 to 500"):
            check_dara.main([str(tmp_path), "--limit", limit])


def test_robust_margin_is_scored_here_from_its_definition_and_agrees_with_robgen(tmp_path, capsys):
    """The script attacked robust-margin through robgen's own score (its engine loop, its Danskin gradient), so a
    fault there would have been shared; it now scores it itself and refuses to start where the two disagree on
    clean images, in value or in gradient. The images sit near the pixel range's ends, where the gradient is held."""
    import json

    import pytest

    model = tiny_model()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    g = torch.Generator().manual_seed(3)
    val = torch.rand(48, 3, 32, 32, generator=g) ** 4  # many pixels within the radius of 0
    option = make_reject_option("robust-margin", radius=4 / 255, target_fpr=0.2).calibrate(model, val)
    option.save(tmp_path / "detectors" / "reject-robust-margin.json")
    results = {"detectors": {"robust-margin": {"kind": "robust-margin", "file": "detectors/reject-robust-margin.json"}}}
    defended = DefendedClassifier(model, option)
    own = check_dara.scored_here(tmp_path, results, "robust-margin", model, defended, val)
    assert isinstance(own, check_dara.RobustMarginScore)
    assert "largest difference from robgen's score" in capsys.readouterr().out
    point = val[:8].clone().requires_grad_(True)
    mine, = torch.autograd.grad(own.outputs(point)[1].sum(), point)
    theirs, = torch.autograd.grad(defended.outputs(point)[1].sum(), point)
    assert float((mine - theirs).abs().max()) <= 1e-3 * float(theirs.abs().max())  # float rounding apart
    assert float(mine.abs().max()) > 0
    saved = json.loads((tmp_path / "detectors" / "reject-robust-margin.json").read_text())
    saved["settings"]["steps"] = 1  # another detector than robgen's: refused before any attack
    (tmp_path / "detectors" / "reject-robust-margin.json").write_text(json.dumps(saved))
    with pytest.raises(SystemExit, match="one of the two implementations is wrong"):
        check_dara.scored_here(tmp_path, results, "robust-margin", model, defended, val)
