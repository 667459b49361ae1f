import argparse
import dataclasses
import json

import pytest
import torch
import torch.nn as nn

import robgen
from robgen.attacks.zoo import (
    ZOO, ZOO_NAMES, RandomTarget, TorchAttacksAttack, ZooSettings, random_other_class, zoo_attack, zoo_entry,
)
from robgen.cli import zoo as zoo_cli
from robgen.cli.common import UsageError
from tests.conftest import REPO, tiny_model
from robgen.models import Classifier, ModelSpec
from robgen.models.checkpoint import build_network

BOUNDED = [name for name in ZOO_NAMES if ZOO[name].bounded]
MINIMUM_NORM = [name for name in ZOO_NAMES if not ZOO[name].bounded]
THREAT = ZooSettings(eps=16 / 255, l2_eps=1.0, square_queries=20)


def fragile_model(seed: int = 0) -> Classifier:
    """A random 4-class ResNet10 (width 4, 16x16 inputs) with large logit gaps that every attack can fool."""
    torch.manual_seed(seed)  # tests only
    spec = ModelSpec(architecture="resnet10_cifar", num_classes=4, class_labels=["a", "b", "c", "d"],
                     mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=(3, 16, 16), arch_kwargs={"width": 4})
    model = Classifier(build_network(spec), spec).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_var.copy_(0.05 + 0.1 * torch.rand(module.num_features, generator=g))
                module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=g))
        model.net.head.weight.mul_(10)
    return model


@pytest.fixture(scope="module")
def model():
    return fragile_model()


@pytest.fixture(scope="module")
def own_predictions(model):
    """Images and the model's own predictions as labels: every image starts correctly classified."""
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return x, model(x).argmax(1)


def sizes(x_adv, x):
    delta = (x_adv - x).flatten(1)
    return delta.abs().amax(1), delta.norm(dim=1)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "AutoAttack" else n for n in BOUNDED])
def test_bounded_zoo_attacks_stay_in_the_eps_ball_and_pixel_range(model, own_predictions, name):
    x, y = own_predictions
    x_adv = zoo_attack(name, model, THREAT, generator=torch.Generator().manual_seed(0))(x, y)
    assert x_adv.shape == x.shape and x_adv.min() >= 0 and x_adv.max() <= 1
    linf, l2 = sizes(x_adv, x)
    if ZOO[name].threat == "l2":
        assert (l2 <= THREAT.l2_eps + 1e-5).all()
    else:
        assert (linf <= THREAT.eps + 1e-6).all()
    with torch.no_grad():
        fooled = model(x_adv).argmax(1) != y
    assert fooled.any(), f"{name} fooled none of the images of a model built to be fooled"
    assert (linf[fooled] > 0).all()


@pytest.mark.parametrize("name", MINIMUM_NORM)
def test_minimum_norm_attacks_are_unbounded_but_stay_in_the_pixel_range(model, own_predictions, name):
    x, y = own_predictions
    attack = zoo_attack(name, model, THREAT)
    assert not attack.bounded and attack.norm == "none"
    x_adv = attack(x, y)
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        fooled = model(x_adv).argmax(1) != y
    assert fooled.any()
    _, l2 = sizes(x_adv, x)
    assert (l2[fooled] > 0).all()


def test_the_adapter_projects_what_torchattacks_returns_into_its_ball(model, own_predictions):
    x, y = own_predictions
    # DeepFool knows no budget and moves these images by about 2/255 in L-inf: robgen projects into 1/255
    x_adv = TorchAttacksAttack(model, "DeepFool", eps=1 / 255, norm="linf", steps=50)(x, y)
    linf, _ = sizes(x_adv, x)
    assert (linf <= 1 / 255 + 1e-6).all() and linf.max() > 0.99 / 255


def test_the_adapter_seeds_from_the_generator_and_leaves_global_state_alone(model, own_predictions):
    x, y = own_predictions
    model.train()
    state = torch.random.get_rng_state()
    runs = [TorchAttacksAttack(model, "Square", eps=16 / 255, n_queries=10,
                               generator=torch.Generator().manual_seed(5))(x, y) for _ in range(2)]
    assert torch.equal(torch.random.get_rng_state(), state), "the global RNG is untouched"
    assert model.training, "the caller's train mode is restored"
    model.eval()
    assert torch.equal(runs[0], runs[1]), "the same generator seed gives the same examples"


def test_targets(model, own_predictions):
    x, y = own_predictions
    with pytest.raises(ValueError, match="targeted"):
        TorchAttacksAttack(model, "PGD", eps=8 / 255, targeted=True)(x, y)
    labels = torch.arange(4).repeat(50)
    targets = random_other_class(labels, 4, torch.Generator().manual_seed(0))
    assert (targets != labels).all() and set(targets.tolist()) == {0, 1, 2, 3}
    assert torch.equal(targets, random_other_class(labels, 4, torch.Generator().manual_seed(0)))
    seen = []

    class Recording:
        def __call__(self, x, y, target=None):
            seen.append(target)
            return x

    RandomTarget(Recording(), 4, torch.Generator().manual_seed(0))(x, y)
    assert seen[0] is not None and (seen[0] != y).all()
    x_adv = zoo_attack("PGD-T", model, THREAT, generator=torch.Generator().manual_seed(0))(x, y)
    assert (sizes(x_adv, x)[0] <= THREAT.eps + 1e-6).all()


def test_unknown_names_list_the_known_ones(model):
    with pytest.raises(ValueError, match="choose from FGSM, PGD-10"):
        zoo_attack("BIM", model)
    with pytest.raises(ValueError, match="torchattacks has no attack 'NoSuch'"):
        TorchAttacksAttack(model, "NoSuch")
    assert zoo_entry("pgd 40").name == "PGD-40" and zoo_entry("cw").name == "CW-L2"


def test_two_spellings_of_one_attack_run_it_once():
    from robgen.experiments.zoo import ZooStudySettings

    settings = ZooStudySettings(attacks=("PGD-40", "pgd", "pgd 40", "CW", "cw-l2", "FGSM"))
    assert settings.attacks == ("PGD-40", "CW-L2", "FGSM")  # the order of first mention


def test_registry_covers_the_issue_list():
    wanted = {"FGSM", "PGD-10", "PGD-40", "PGD-L2", "PGD-T", "CW-L2", "DeepFool", "APGD-CE", "APGD-DLR", "APGD-T",
              "FAB-L2", "Square", "AutoAttack", "HE-PGD"}
    assert wanted <= set(ZOO_NAMES)
    assert ZOO["Square"].access == "black-box" and not ZOO["CW-L2"].bounded and ZOO["PGD-T"].targeted


def broken_entry(entry):
    def build(*args):
        def attack(images, labels, **kwargs):
            raise RuntimeError("this attack does not work on this model")
        return attack
    return dataclasses.replace(entry, build=build)


def idle_entry(entry):
    """`entry` as an attack that fools nothing: every image comes back as given (torchattacks' APGD, CW and Square
    on a model they cannot fool)."""
    def build(*args):
        return lambda images, labels, **kwargs: images.clone()
    return dataclasses.replace(entry, build=build)


def test_an_attack_that_changes_no_image_is_measured_not_reported_as_failed(toy_data, tmp_path, monkeypatch):
    """An attack that changed no validation image had nothing to refit the detector on, and that refusal threw away
    its measured effect: it was listed as failed, with no success rate (0 of n, a valid result)."""
    folder = robgen.save_checkpoint(fragile_model(), tmp_path / "fragile")
    monkeypatch.setitem(ZOO, "Square", idle_entry(ZOO["Square"]))
    parser = argparse.ArgumentParser()
    zoo_cli.add_parsers(parser.add_subparsers())
    out = tmp_path / "zoo"
    args = parser.parse_args(["zoo", "--model", str(folder), "--data", str(toy_data), "--limit", "6",
                              "--val-size", "40", "--attacks", "Square", "--device", "cpu", "--out", str(out)])
    assert args.run(args) == 0
    row, = json.loads((out / "results.json").read_text())["rows"]
    assert "error" not in row and row["n_perturbed"] == 0 and row["success_rate"]["value"] == 0
    assert row["fitted_on_pgd40"]["detection_rate"]["n"] == 6
    assert "changed none of the 6 images" in row["refitted"]["error"]
    table = (out / "results.md").read_text()
    assert "| Square |" in table.split("## What the attacks do")[1].split("##")[0]
    assert "not fitted: the attack changed none" in table and "Attacks that failed" not in table


def test_zoo_command_writes_a_well_formed_table(toy_data, tmp_path, monkeypatch):
    folder = robgen.save_checkpoint(fragile_model(), tmp_path / "fragile")
    monkeypatch.setitem(ZOO, "Square", broken_entry(ZOO["Square"]))
    parser = argparse.ArgumentParser()
    zoo_cli.add_parsers(parser.add_subparsers())
    out = tmp_path / "zoo"
    attacks = ["FGSM", "DeepFool", "Square"]
    args = parser.parse_args(["zoo", "--model", str(folder), "--data", str(toy_data), "--limit", "6",
                              "--val-size", "40", "--attacks", ",".join(attacks), "--device", "cpu",
                              "--out", str(out)])
    assert args.run(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert [row["attack"] for row in results["rows"]] == attacks
    assert results["n_test"] == 6 and results["fit_attack"] == "PGD-40"
    ran = [row for row in results["rows"] if "error" not in row]
    assert [row["attack"] for row in ran] == ["FGSM", "DeepFool"]
    assert "does not work" in results["rows"][-1]["error"], "the failing attack is reported, the study went on"
    for row in ran:
        rates = [row[fit][key] for fit in ("fitted_on_pgd40", "refitted")
                 for key in ("detection_rate", "false_positive_rate", "auroc", "detection_rate_successful")]
        cells = [row["success_rate"], row["delta_energy"], *rates]
        for cell in (cell for cell in cells if cell["value"] is not None):  # None: a rate over no images
            low, high = cell["ci"]
            assert low - 1e-9 <= cell["value"] <= high + 1e-9
        assert row["success_rate"]["n"] == round(results["clean_accuracy"]["value"] * 6)
        deltas = torch.tensor(results["delta_energy"][row["attack"]])
        assert len(deltas) == 6 and row["delta_energy"]["value"] == pytest.approx(float(deltas.mean()))
        assert row["linf"]["value"] <= 8 / 255 + 1e-6 or row["threat"] == "min-l2"  # the default --eps
    table = (out / "results.md").read_text()
    for name in ("FGSM", "DeepFool"):
        assert table.count(f"| {name} |") == 3, "one line in each of the three tables"
    assert "| Square | RuntimeError" in table
    assert (out / "delta_energy.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(UsageError, match="choose from FGSM"):
        args = parser.parse_args(["zoo", "--model", str(folder), "--data", str(toy_data), "--attacks", "BIM",
                                  "--out", str(tmp_path / "other")])
        args.run(args)



def test_a_norm_a_torchattacks_class_cannot_attack_in_is_refused_not_ignored(model):
    with pytest.raises(ValueError, match="PGD attacks in the linf norm only, not l2: pass norm='linf', or use PGDL2"):
        TorchAttacksAttack(model, "PGD", eps=0.5, norm="l2")
    with pytest.raises(ValueError, match="PGDL2 attacks in the l2 norm only"):
        TorchAttacksAttack(model, "PGDL2", eps=0.5)
    for linf_only in ("Jitter", "PGDRS", "SPSA"):  # eps but no norm, not in any list: L-inf like PGD
        with pytest.raises(ValueError, match=f"{linf_only} attacks in the linf norm only, not l2"):
            TorchAttacksAttack(model, linf_only, eps=0.5, norm="l2")
    TorchAttacksAttack(model, "DeepFool", eps=1 / 255, norm="linf")  # minimum-norm: projected into any ball


def test_attacks_that_call_backward_leave_the_callers_gradients_as_they_were(model, own_predictions):
    x, y = own_predictions
    head = next(iter(model.parameters()))
    head.grad = torch.full_like(head, 0.5)  # the caller's own gradient, mid-way through a training step
    for name in ("CW", "FAB"):
        TorchAttacksAttack(model, name, eps=None, norm="l2", steps=2, fused=False)(x[:4], y[:4])
        assert torch.equal(head.grad, torch.full_like(head, 0.5)), name
        assert all(p.grad is None for p in list(model.parameters())[1:]), name
    head.grad = None


def test_apgd_with_the_dlr_loss_on_two_classes_says_to_use_cross_entropy():
    from robgen.attacks import APGD

    two = tiny_model(num_classes=2)
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="DLR loss needs at least 3 classes.*use loss='ce'"):
        APGD(two, eps=8 / 255, steps=2, loss="dlr")(x, y)


def test_torchattacks_targeted_dlr_on_fewer_than_four_classes_is_refused_with_the_reason():
    # torchattacks reads the fourth-largest logit there and fails deep inside with an IndexError
    three = tiny_model(num_classes=3)
    for name in ("APGDT", "AutoAttack"):
        with pytest.raises(ValueError, match=f"torchattacks.{name} needs at least 4 classes .* this model has 3"):
            TorchAttacksAttack(three, name, eps=8 / 255)
    TorchAttacksAttack(three, "AutoAttack", eps=8 / 255, version="rand")  # APGD-CE and APGD-DLR: 3 suffice
    TorchAttacksAttack(tiny_model(num_classes=4), "APGDT", eps=8 / 255)


def test_a_zoo_attacks_test_numbers_do_not_depend_on_how_many_validation_images_came_first(toy_data):
    # the recorder hid the attack's generator from the per-batch seeding, so the random starts ran on in one stream
    from robgen.experiments.pipeline import detection_splits
    from robgen.experiments.zoo import ZooStudySettings, zoo_study

    model = tiny_model(num_classes=4)
    model.spec.class_labels = [f"class{i}" for i in range(4)]  # the toy folder's classes
    settings = ZooStudySettings(attacks=("PGD-10",), batch_size=4)

    def test_energy_changes(val_size):
        splits = detection_splits(model, str(toy_data), val_size=40, seed=0)
        splits.validation = robgen.data.first(splits.validation, val_size)
        splits.test = robgen.data.first(splits.test, 4)  # the same 4 test images
        return zoo_study(model, splits, settings, progress=False)["delta_energy"]["PGD-10"]

    assert test_energy_changes(4) == test_energy_changes(8)


@pytest.mark.parametrize("flags, says", [
    (["--temperature", "0"], "temperature must be > 0 or 'search'"),
    (["--temperature", "nan"], "temperature must be > 0 or 'search'"),
    (["--l2-eps", "0"], "l2_eps must be > 0"),
    (["--square-queries", "0"], "square_queries must be >= 1"),
    (["--eps", "8"], "eps is an L-inf radius in"),
])
def test_zoo_settings_are_refused_before_any_attack_runs(toy_data, tmp_path, monkeypatch, flags, says):
    # they were refused after PGD-40 ran on both splits, or reported as that attack's failure
    from robgen.experiments import zoo as zoo_module

    monkeypatch.setattr(zoo_module, "model_outputs", lambda *args, **kwargs: pytest.fail("work started"))
    parser = argparse.ArgumentParser()
    zoo_cli.add_parsers(parser.add_subparsers())
    args = parser.parse_args(["zoo", "--model", "cifar10-resnet10-standard", "--data", str(toy_data),
                              "--out", str(tmp_path / "zoo"), *flags])
    with pytest.raises(UsageError, match=says):
        args.run(args)
    assert not (tmp_path / "zoo").exists()


def test_cw_leaves_an_image_it_did_not_attack_exactly_as_it_was(model):
    """On images the model already gets wrong, torchattacks' CW returned tanh(atanh(2x - 1)), 6e-8 off: counted as
    perturbed, they reached the adversarial side of the refitted detector."""
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        wrong = (model(x).argmax(1) + 1) % 4
    adversarial = zoo_attack("CW-L2", model, THREAT, torch.Generator().manual_seed(0))(x, wrong)
    assert torch.equal(adversarial, x)


def test_cw_fools_a_model_whatever_constant_its_logits_carry(own_predictions):
    """torchattacks' CW read the logits through a 0/1 mask: on a model whose logits were all negative its loss was
    flat and it fooled nothing. The zoo's CW (Carlini & Wagner's f6) depends on logit differences only: the same
    model with every logit 200 lower (all negative) is attacked exactly as before."""
    x, y = own_predictions
    plain, lowered = fragile_model(), fragile_model()
    with torch.no_grad():
        lowered.net.head.bias.sub_(200.0)
        assert bool((lowered(x) < 0).all()) and torch.equal(lowered(x).argmax(1), y)
    attacked = [zoo_attack("CW-L2", m, THREAT, torch.Generator().manual_seed(0))(x, y) for m in (plain, lowered)]
    assert torch.allclose(attacked[0], attacked[1], atol=1e-5)
    with torch.no_grad():
        assert bool((lowered(attacked[1]).argmax(1) != y).any()), "it fools the lowered model as it fools the plain one"


def test_fab_on_a_float64_model_is_refused_with_the_reason_and_the_others_attack_it(own_predictions):
    double = fragile_model().double()
    x, y = own_predictions
    for name in ("FAB-L2", "AutoAttack"):
        with pytest.raises(ValueError, match="builds float32 tensors inside .* attack a float32 copy"):
            zoo_attack(name, double, THREAT, torch.Generator().manual_seed(0))
    adversarial = zoo_attack("DeepFool", double, THREAT, torch.Generator().manual_seed(0))(x, y)
    with torch.no_grad():
        assert bool((double(adversarial.double()).argmax(1) != y).any())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fab_and_autoattack_attack_a_half_precision_model(dtype, own_predictions):
    """They were refused for every model not in float32, float16 and bfloat16 ones too, whose graph hands
    torchattacks float32 pixels and gradients (`CastInputs`): only a float64 model's gradients break FAB."""
    x, _ = own_predictions
    half = fragile_model().to(dtype)
    with torch.no_grad():
        y = half(x.to(dtype)).argmax(1)
    for name in ("FAB-L2", "AutoAttack"):
        adversarial = zoo_attack(name, half, THREAT, torch.Generator().manual_seed(0))(x, y)
        assert adversarial.dtype == torch.float32
        with torch.no_grad():
            assert bool((half(adversarial.to(dtype)).argmax(1) != y).any()), name


def test_the_zoo_study_refuses_to_run_split_across_processes(monkeypatch):
    """Each rank would record the perturbation sizes of its own batches only, beside every rank's outputs."""
    from robgen import distributed
    from robgen.experiments.zoo import zoo_study

    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    with pytest.raises(ValueError, match="one process: start it without torchrun"):
        zoo_study(torch.nn.Identity(), None)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchattacks' SparseFool and numpy 2's __array__
def test_torchattacks_l2_attacks_run_on_the_fused_graph():
    """The fused copy's input gradients are channels-last; torchattacks' PGDL2 (the L2 attack the PGD error names)
    and SparseFool `.view` them, and failed on every call unless fused=False."""
    model = tiny_model().eval()
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    fused = TorchAttacksAttack(model, "PGDL2", eps=0.5, norm="l2", steps=5, generator=torch.Generator().manual_seed(1))
    plain = TorchAttacksAttack(model, "PGDL2", eps=0.5, norm="l2", steps=5, generator=torch.Generator().manual_seed(1),
                               fused=False)
    moved, reference = fused(x, y), plain(x, y)
    assert ((moved - x).flatten(1).norm(dim=1) <= 0.5 + 1e-5).all()
    assert torch.allclose(moved, reference, atol=1e-4), "the same attack as on the model itself"
    TorchAttacksAttack(model, "SparseFool", eps=None, norm="l2", steps=2)(x, y)


def test_deepfool_overshoots_the_summed_perturbation_and_fools_every_image_it_can(cifar_root):
    """torchattacks 3.5.1 overshoots each step from the last point: near the boundary the steps shrink and the point
    stays on it, top two logits tied (5 of the 88 images the shipped standard model classifies right among the first
    100 test images). Moosavi-Dezfooli et al. overshoot x₀ + r_tot: every image is fooled, by a minimal step."""
    import robgen
    from robgen.data import load_dataset, load_tensors

    model = robgen.load_model("cifar10-resnet10-standard")
    x, y = load_tensors(load_dataset("cifar10", "test", root=cifar_root, spec=model.spec), 100)
    points = TorchAttacksAttack(model, "DeepFool", eps=None, norm="l2", steps=50, overshoot=0.02)(x, y)
    with torch.no_grad():
        right, fooled = model(x).argmax(1) == y, model(points).argmax(1) != y
    assert right.sum() > 80 and bool(fooled[right].all())
    assert points.min() >= 0 and points.max() <= 1
    assert float((points - x)[right].flatten(1).norm(dim=1).median()) < 0.5  # minimal: a fraction of a pixel level each


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_torchattacks_steps_a_half_precision_model_with_float32_pixels(dtype):
    """The zoo handed torchattacks the images in the model's type, so its iterates lay on that grid (bfloat16:
    1/256 apart in [0.5, 1), which rounds a step under half of that away): every returned pixel sat on it. robgen's
    own attacks keep float32 iterates for such a model; now torchattacks gets them too (the graph casts for the
    model)."""
    from robgen.attacks.zoo import TorchAttacksAttack

    model = tiny_model().to(dtype)
    x = 0.9 + 0.05 * torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x.to(dtype)).argmax(1)
    points = TorchAttacksAttack(model, "PGD", eps=8 / 255, alpha=0.5 / 255, steps=4, random_start=False)(x, y)
    assert points.dtype == torch.float32 and float((points - x).abs().max()) <= 8 / 255 + 1e-6
    assert float((points != x).float().mean()) > 0.5  # it moved (an untouched image comes back as x exactly)
    on_grid = points.to(dtype).float() == points
    assert float(on_grid.float().mean()) < 0.5  # float32 steps, not the model type's grid (there: every pixel)


def test_a_threat_setting_no_chosen_attack_takes_is_refused_not_recorded():
    """--lam with FGSM alone (or --l2-eps, --square-queries without their attacks) ran, and results.json recorded
    the setting as if it had been used."""
    from robgen.attacks.zoo import ZooSettings
    from robgen.experiments.zoo import ZooStudySettings

    with pytest.raises(ValueError, match=r"none of the attacks FGSM takes lam \(used by HE-PGD only\)"):
        ZooStudySettings(attacks=("FGSM",), threat=ZooSettings(lam=2.0))
    with pytest.raises(ValueError, match=r"l2-eps \(used by PGD-L2 only\), square-queries \(used by Square only\)"):
        ZooStudySettings(attacks=("FGSM", "HE-PGD"), threat=ZooSettings(l2_eps=3.0, square_queries=7))
    assert ZooStudySettings(attacks=("FGSM", "HE-PGD"), threat=ZooSettings(lam=2.0)).threat.lam == 2.0


def test_a_bounded_torchattacks_attack_keeps_a_perturbation_smaller_than_a_millionth():
    """Outputs within 1e-6 of the input were taken for CW's tanh round trip and reset to the clean image, also for
    bounded attacks, whose every perturbation is that small at eps = 5e-7: it fooled the model and was thrown away."""
    from robgen.attacks.zoo import TorchAttacksAttack

    class Knife(nn.Module):  # logit 0 = 1e8 (x_000 - 0.5), logit 1 = 0: a boundary 1.2e-7 from the image
        def forward(self, x):
            z = 1e8 * (x[:, 0, 0, 0] - 0.5)
            return torch.stack([z, torch.zeros_like(z)], 1)

    model = Knife().eval()
    x = torch.full((1, 1, 4, 4), 0.5)
    x[0, 0, 0, 0] = 0.5 + 1.2e-7
    assert int(model(x).argmax(1)) == 0
    found = TorchAttacksAttack(model, "PGD", eps=5e-7, alpha=5e-7, steps=2, random_start=False)(x, torch.tensor([0]))
    assert int(model(found).argmax(1)) == 1 and (found - x).abs().max() <= 5e-7 + 6e-8  # float32 spacing at 0.5


def test_the_report_states_the_fpr_rules_target_and_what_its_seconds_cover():
    """With --rule fpr results.md named the rule but not its target (results.json had it); its "s" column, the
    seconds of both splits, was headed as the test split's."""
    from robgen.experiments.zoo_report import markdown_report

    results = json.loads((REPO / "results" / "attack-zoo" / "cifar10" / "results.json").read_text())
    assert "of the clean validation images flagged" not in markdown_report(results)  # rule youden
    results["settings"]["rule"] = "fpr"
    text = markdown_report(results)
    assert "rule fpr (at most 5% of the clean validation images flagged)" in text
    assert "s: the seconds the attack took on both splits" in text
