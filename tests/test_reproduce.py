"""`reproduce` with a tiny N on CIFAR-10 (shipped checkpoint) and Imagenette (a tiny model trained here):
structure and sanity of results.json and results.md, the paper's numbers per data set, the cost accounting,
and bad input refused through the CLI."""

import json
import math

import pytest
import torch

import robgen
from robgen.cli import main
from robgen.detection.detector import TEMPERATURES
from robgen.experiments.cost import attack_passes
from robgen.experiments.reproduce import PAPER_FACTS, ReproduceSettings, hepgd_name

NETTE_STEPS = 3  # the detector's attacks in the Imagenette run; HE-PGD also at the notebook's 10


@pytest.fixture(scope="module")
def results(cifar_root, tmp_path_factory):
    if "cifar10-resnet10-standard" not in robgen.list_models():
        pytest.fail("the shipped checkpoint cifar10-resnet10-standard is missing")
    out = tmp_path_factory.mktemp("repro") / "run"
    code = main(["reproduce", "--data", "cifar10", "--data-root", str(cifar_root), "--model", "cifar10-resnet10-standard",
                 "--limit", "60", "--steps", "10", "--val-size", "1000", "--out", str(out)])
    assert code == 0
    return out, json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def nette_model(imagenette_root, tmp_path_factory):
    """A barely trained width-4 Imagenette ResNet10 (1 epoch on 256 images), as `python -m robgen train` writes it."""
    from robgen.training import TrainConfig, train

    folder = tmp_path_factory.mktemp("nette") / "imagenette-resnet10-tiny"
    config = TrainConfig(data="imagenette", architecture="resnet10_imagenette", width=4, epochs=1, train_limit=256,
                         eval_subset=32, eval_steps=1, seed=0)
    train(config, folder, data_root=imagenette_root, device="cpu", progress=False)
    return folder


@pytest.fixture(scope="module")
def nette_results(nette_model, imagenette_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("repro-nette") / "run"
    code = main(["reproduce", "--data", "imagenette", "--data-root", str(imagenette_root), "--model", str(nette_model),
                 "--limit", "20", "--steps", str(NETTE_STEPS), "--reference-size", "200", "--out", str(out)])
    assert code == 0
    return out, json.loads((out / "results.json").read_text())


def test_results_have_every_table_and_figure(results):
    out, r = results
    assert {row["attack"] for row in r["table1"]} == {"pgd-8", "pgd-16", "apgd-8", "hepgd-8-lam1.2"}
    assert len(r["table1"]) == 4 * 2 * 2  # attacks x rules x temperature on/off
    assert {row["detector"].split()[0] for row in r["baselines"]} == {"Mahalanobis", "LID", "KD+BU"}
    assert [row["lam"] for row in r["adaptive"]["rows"]] == [0.0, 0.3, 0.6, 1.2, 2.0, 4.0]
    for name in ("fig2a_energy_hist_pgd.png", "fig2b_energy_vs_steps_pgd.png", "fig3a_energy_hist_hepgd.png",
                 "fig3b_energy_vs_steps_hepgd.png", "adaptive_lambda.png", "results.md"):
        assert (out / name).stat().st_size > 1000, name
    assert r["settings"]["hepgd_steps"] == [10] and [run["steps"] for run in r["hepgd_runs"]] == [10]


def test_cifar10_rows_carry_the_papers_cifar10_numbers(results):
    out, r = results
    official = {row["attack"]: row for row in r["table1"] if row["official_protocol"]}
    assert official["pgd-8"]["paper"] == {"detection_rate": 0.9838, "printed_fpr_column": 0.0162}
    assert official["apgd-8"]["paper"] == {"detection_rate": 0.8545, "printed_fpr_column": 0.0119}
    assert official["pgd-16"]["paper"] == {} and official["hepgd-8-lam1.2"]["paper"] == {}
    assert all(row["paper"] == {} for row in r["table1"] if not row["official_protocol"])
    cited = {row["detector"].split()[0]: row["paper_cited"] for row in r["baselines"] if row["attack"] == "pgd-8"}
    assert cited == {"Mahalanobis": {}, "LID": {"detection_rate": 0.9439, "printed_fpr_column": 0.0181},
                     "KD+BU": {"detection_rate": 0.9227, "printed_fpr_column": 0.0096}}
    report = (out / "results.md").read_text()
    for text in ("98.38", "1.62", "85.45", "92.27 / 0.96", "94.39 / 1.81", "equals 100 − 98.38", "## Cost"):
        assert text in report, text
    assert "98.24" not in report, "no Imagenette numbers in a CIFAR-10 report"


def test_results_are_sane(results):
    _, r = results
    n = r["n_test"]
    for row in r["table1"] + r["baselines"]:
        assert row["n_clean"] == row["n_adversarial"] == n, "every detector is evaluated on the whole test split"
    for row in r["table1"]:
        name = row["attack"]
        if row["search_temperature"]:
            assert row["temperature"] in TEMPERATURES
        else:  # at T = 1 the row's energies are the test energies reported beside it: the rates are of the test split
            assert row["temperature"] == 1.0
            assert row["clean_energy_mean"] == pytest.approx(r["energy_means"]["clean"], abs=1e-4)
            assert row["adversarial_energy_mean"] == pytest.approx(r["energy_means"][name], abs=1e-4)
        assert row["adversarial_accuracy"] < row["clean_accuracy"], f"{name} fools the standard model"
    pgd = [row for row in r["table1"] if row["attack"] == "pgd-8" and row["official_protocol"]][0]
    assert pgd["auroc"] > 0.5
    means = r["energy_means"]
    assert means["pgd-8"] < means["clean"], "PGD examples have lower energy than clean ones"
    assert abs(means["hepgd-8-lam1.2"] - means["clean"]) < abs(means["pgd-8"] - means["clean"]), \
        "HE-PGD energies are closer to clean than PGD's"
    curve = r["curves"]["pgd-8"]
    assert curve["steps"] == [0, 2, 5, 10] and curve["accuracy"][-1] < curve["accuracy"][0]
    # step 0 is the random start (as in the official figures), not the clean images, which stand apart
    assert curve["energy_mean"][0] != pytest.approx(curve["clean"]["energy_mean"], abs=1e-6)
    assert curve["clean"]["accuracy"] == pytest.approx(pgd["clean_accuracy"])


def test_bad_input_is_refused(cifar_root, tmp_path, capsys):
    args = ["reproduce", "--data", "cifar10", "--data-root", str(cifar_root), "--model", "cifar10-resnet10-standard"]
    assert main(args + ["--attacks", "pgd-8,cw", "--out", str(tmp_path / "a")]) == 2
    assert "unknown attack 'cw'" in capsys.readouterr().err
    assert main(args + ["--limit", "20000", "--val-size", "1000", "--out", str(tmp_path / "b")]) == 2
    assert "larger than the validation split" in capsys.readouterr().err
    assert not (tmp_path / "b").exists(), "a refused run leaves no output folder behind"
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "results.json").write_text("{}")
    assert main(args + ["--limit", "5", "--out", str(tmp_path / "c")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    (tmp_path / "figures").mkdir()  # a folder's own figures of the reproduction's names were drawn over
    for name in ("adaptive_lambda.png", "fig3a_energy_hist_hepgd_7steps.png"):
        (tmp_path / "figures" / name).write_bytes(b"mine")
    assert main(args + ["--limit", "5", "--out", str(tmp_path / "figures")]) == 2
    assert "already holds adaptive_lambda.png, fig3a_energy_hist_hepgd_7steps.png" in capsys.readouterr().err
    refused = {  # out folder: (arguments, what the message says); g-i were refused after every attack had run
        "d": (["--hepgd-steps", "10,x"], "--hepgd-steps takes whole numbers"),
        "e": (["--lambdas", "0,-1"], "each a finite number >= 0"),
        "f": (["--lambdas", "0,x"], "--lambdas takes numbers separated by commas"),
        "g": (["--reference-size", "20"], "reference_size and lid_reference must exceed 20"),
        "i": (["--limit", "0"], "--limit must be >= 1 (the first N test images), got 0"),
    }
    for name, (arguments, says) in refused.items():
        assert main(args + arguments + ["--out", str(tmp_path / name)]) == 2, name
        assert says in capsys.readouterr().err, name
    with pytest.raises(SystemExit):  # refused as it is read (it was refused after every attack had run)
        main(args + ["--lam", "inf", "--out", str(tmp_path / "h")])
    assert "not a finite number: 'inf'" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "ghi")


def test_the_baselines_reference_images_are_checked_before_any_attack():
    """A reference missing a class (or with no more images than LID's 20 neighbours) failed after every attack."""
    from torch.utils.data import Subset, TensorDataset

    from robgen.experiments.reproduce import check_reference

    images = TensorDataset(torch.zeros(30, 1), torch.tensor([0, 1] * 15))
    check_reference(images, 2)
    with pytest.raises(ValueError, match=r"hold no image of classes \[2\]: raise --reference-size"):
        check_reference(images, 3)
    with pytest.raises(ValueError, match="gives only 20"):
        check_reference(Subset(images, range(20)), 2)


# ---- Imagenette ----


def test_imagenette_results_have_every_table_figure_and_step_count(nette_results):
    out, r = nette_results
    main_he, official_he = hepgd_name(_settings(r), NETTE_STEPS), hepgd_name(_settings(r), 10)
    assert (main_he, official_he) == ("hepgd-8-lam1.2", "hepgd-8-lam1.2-10steps")
    assert r["data"] == "imagenette" and r["n_validation"] == r["n_test"] == 20 and r["n_reference"] == 200
    s = r["settings"]
    assert s["val_size"] == 500, "the validation split is the one the model's training held out"
    assert s["lam"] == 1.2 and s["hepgd_steps"] == [NETTE_STEPS, 10], "HE-PGD at --steps and the notebook's 10 steps"
    assert r["hepgd_runs"] == [{"name": main_he, "steps": NETTE_STEPS, "lam": 1.2, "main": True},
                               {"name": official_he, "steps": 10, "lam": 1.2, "main": False}]
    fitted = {row["attack"] for row in r["table1"]}
    assert len(r["table1"]) == len(fitted) * 2 * 2 and len(fitted) + len(r["unfitted"]) == 5
    assert {"pgd-8", main_he, official_he} <= fitted  # PGD and HE-PGD always change the images
    for row in r["unfitted"]:  # an attack that changed no validation image (APGD on this barely trained model)
        assert "changed none of the 20 validation images" in row["reason"]
        assert f"Not in the table: {row['attack']}" in (out / "results.md").read_text()
        assert f"No baseline rows for {row['attack']}, because" in (out / "results.md").read_text()
    steps = {(row["attack"], row["steps"]) for row in r["table1"]}
    assert steps == {row for row in {("pgd-8", NETTE_STEPS), ("pgd-16", NETTE_STEPS), ("apgd-8", NETTE_STEPS),
                                     (main_he, NETTE_STEPS), (official_he, 10)} if row[0] in fitted}
    assert {row["detector"].split()[0] for row in r["baselines"]} == {"Mahalanobis", "LID", "KD+BU"}
    assert all(row["paper_cited"] == {} for row in r["baselines"]), "the paper cites no Imagenette baselines"
    assert [row["lam"] for row in r["adaptive"]["rows"]] == [0.0, 0.3, 0.6, 1.2, 2.0, 4.0]
    assert r["curves"][official_he]["steps"] == [0, 2, 5, 10] and r["curves"][main_he]["steps"] == [0, 2, 3]  # its last
    for name in ("fig2a_energy_hist_pgd.png", "fig2b_energy_vs_steps_pgd.png", "fig3a_energy_hist_hepgd.png",
                 "fig3a_energy_hist_hepgd_10steps.png", "fig3b_energy_vs_steps_hepgd.png", "adaptive_lambda.png"):
        assert (out / name).stat().st_size > 1000, name


def test_imagenette_rows_carry_the_papers_imagenette_numbers(nette_results):
    out, r = nette_results
    official = {row["attack"]: row for row in r["table1"] if row["official_protocol"]}
    assert official["pgd-8"]["paper"] == {"detection_rate": 0.9824, "printed_fpr_column": 0.0137}
    assert official["pgd-16"]["paper"] == {"detection_rate": 0.996, "printed_fpr_column": 0.0}
    assert all(official[name]["paper"] == {} for name in ("apgd-8", "hepgd-8-lam1.2", "hepgd-8-lam1.2-10steps")
               if name in official)
    assert all(row["paper"] == {} for row in r["table1"] if not row["official_protocol"])
    assert r["paper_facts"] == json.loads(json.dumps(_asdict(PAPER_FACTS["imagenette"])))
    report = (out / "results.md").read_text()
    assert report.startswith("# Reproduction on Imagenette")
    for text in ("| 98.24 | 1.37 |", "| 99.60 | 0.00 |", "is not 100 − 98.24 (= 1.76), so it is not the miss rate",
                 "leaves 1 of 3,925 test images correctly classified", "fig3a_energy_hist_hepgd_10steps.png"):
        assert text in report, text
    assert "98.38" not in report, "no CIFAR-10 numbers in an Imagenette report"


def test_imagenette_results_are_sane_for_any_model(nette_results):
    """True of a barely trained model too: shapes, counts, finite energies, intervals around their rates."""
    _, r = nette_results
    n = r["n_test"]
    for row in r["table1"] + r["baselines"]:
        assert row["n_clean"] == row["n_adversarial"] == n
    for row in r["table1"]:
        assert row["temperature"] in TEMPERATURES if row["search_temperature"] else row["temperature"] == 1.0
        assert row["clean_accuracy"] == pytest.approx(r["clean_accuracy"])
        assert row["false_negative_rate"] == pytest.approx(1 - row["detection_rate"])
        assert 0 <= row["n_successful"] <= round(r["clean_accuracy"] * n)
    assert all(math.isfinite(value) for value in r["energy_means"].values())
    assert set(r["energy_means"]) == {"clean", "pgd-8", "pgd-16", "apgd-8", "hepgd-8-lam1.2", "hepgd-8-lam1.2-10steps"}
    for curve in r["curves"].values():
        assert len(curve["steps"]) == len(curve["energy_mean"]) == len(curve["accuracy"])
        assert all(0 <= a <= 1 for a in curve["accuracy"])


def test_every_rate_and_auroc_has_its_95_interval(nette_results):
    out, r = nette_results
    table = ("detection_rate", "false_positive_rate", "false_negative_rate", "detection_rate_successful",
             "attack_success_rate", "adversarial_accuracy", "auroc")
    rows = [(row, table) for row in r["table1"]]
    rows += [(row, ("detection_rate", "false_positive_rate", "auroc")) for row in r["baselines"]]
    rows += [(row, ("attack_success_rate", "adversarial_accuracy", "detection_rate_one_sided", "detection_rate_band",
                    "detection_rate_class_energy")) for row in r["adaptive"]["rows"]]
    fpr = r["adaptive"]["false_positive_rate_on_clean_test"]
    rows += [({"rate": fpr[name], "rate_ci": r["adaptive"]["false_positive_rate_on_clean_test_ci"][name]}, ("rate",))
             for name in fpr]
    rows += [(r, ("clean_accuracy",))]
    for row, keys in rows:
        for key in keys:
            low, high = row[f"{key}_ci"]
            value = row[key]
            if value is not None:  # null: a rate over no examples (e.g. detection on successful attacks that did not
                # succeed), which results.json writes as null (strict JSON), its interval too
                assert low - 1e-9 <= value <= high + 1e-9, (key, low, value, high)
    report = (out / "results.md").read_text()
    assert "Wilson's score interval for proportions" in report and "score interval of Hanley & McNeil's variance" in report
    section = report.split("## Table 1")[1].split("\n## ")[0]
    table = [line for line in section.splitlines() if line.startswith(("| pgd-", "| apgd-", "| hepgd-"))]
    assert len(table) == len(r["table1"])
    for line in table:  # detection, FPR, FNR, AUROC, det. (succ.), attack success: each with its interval, or "—"
        cells = [cell.strip() for cell in line.strip("|").split("|")][4:10]
        assert all("[" in cell or cell == "—" for cell in cells), line


def test_imagenette_cost_is_counted_and_consistent(nette_results):
    out, r = nette_results
    cost = r["cost"]
    runs = cost["runs"]
    assert cost["forward_backward_passes"] == sum(run["forward_backward"] for run in runs) > 0
    assert cost["forward_passes"] == sum(run["forward"] for run in runs) > 0
    for run in runs:
        if run["run"].startswith("clean"):
            assert run["forward_backward"] == 0 and run["forward"] == run["images"]
        elif run["run"] == "apgd-8":  # (steps + 1) gradient passes on the correctly classified images only
            assert run["forward_backward"] % (NETTE_STEPS + 1) == 0
            assert run["forward_backward"] <= (NETTE_STEPS + 1) * run["images"] and run["forward"] == 4 * run["images"]
        else:
            assert run["forward_backward"] == run["steps"] * run["images"] and run["forward"] == 2 * run["images"]
    n = r["n_test"]  # = n_validation
    pgd_like = (2 * 2 * NETTE_STEPS * n  # PGD 8 and 16 on val + test
                + 2 * NETTE_STEPS * n + 2 * 10 * n  # HE-PGD at 3 and 10 steps on val + test
                + 4 * NETTE_STEPS * n)  # the adaptive study's four other λ, on test
    apgd = sum(run["forward_backward"] for run in runs if run["run"] == "apgd-8")
    assert cost["forward_backward_passes"] == pgd_like + apgd
    assert {(run["run"], run["split"]) for run in runs if run["run"].endswith("(adaptive)")} == \
        {(f"hepgd-8-lam{lam:g} (adaptive)", "test") for lam in (0.3, 0.6, 2.0, 4.0)}
    size = cost["batch_size"]
    assert size == min(250, n) and cost["seconds_per_forward_backward_batch"] > 0 and cost["seconds_per_forward_batch"] > 0
    floor = (cost["forward_backward_passes"] * cost["seconds_per_forward_backward_batch"]
             + cost["forward_passes"] * cost["seconds_per_forward_batch"]) / size
    assert cost["floor_seconds"] == pytest.approx(floor)
    assert cost["wall_seconds"] == r["wall_seconds"] > cost["timing_seconds"] > 0
    assert 0 < cost["floor_fraction_of_wall"] == pytest.approx(floor / r["wall_seconds"])
    # No bound on the fraction itself: the time of one pass is measured at one moment, and on a shared
    # machine (CI beside another job) it can exceed that pass's average during the run (measured: 1.18)
    report = (out / "results.md").read_text()
    assert "## Cost" in report and f"| forward + backward | {cost['forward_backward_passes']:,} |" in report


def test_a_model_of_another_data_set_is_refused(imagenette_root, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["reproduce", "--data", "imagenette", "--data-root", str(imagenette_root),
                 "--model", "cifar10-resnet10-standard", "--limit", "5", "--out", str(out)])
    assert code == 2
    assert "this model was trained on cifar10, not imagenette" in capsys.readouterr().err
    assert not out.exists(), "nothing is written"


def test_missing_imagenette_data_says_where_it_looked_and_how_to_get_it(tmp_path, capsys):
    model = _untrained_imagenette_checkpoint(tmp_path / "model")
    empty = tmp_path / "no-data"
    empty.mkdir()
    out = tmp_path / "out"
    code = main(["reproduce", "--data", "imagenette", "--data-root", str(empty), "--model", str(model),
                 "--limit", "5", "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    for text in (f"imagenette (train) not found under {empty}", "--download", "imagenette2-160/", "tar xzf"):
        assert text in err, text
    assert not out.exists(), "nothing is written"


def test_attack_passes_follow_the_loops():
    """The counting rule itself, on attacks as `reproduce` builds them."""
    from robgen.attacks import APGD, PGD, HighEnergyPGD
    from conftest import tiny_model

    model = tiny_model()
    assert attack_passes(None, 7, 0) == (0, 7)
    assert attack_passes(PGD(model, steps=5), 7, 3) == (35, 14)
    assert attack_passes(HighEnergyPGD(model, steps=10), 7, 3) == (70, 14)
    assert attack_passes(APGD(model, steps=5), 7, 3) == (18, 28)


def test_per_data_set_defaults_resolve_from_the_one_table():
    from conftest import tiny_model

    model = tiny_model()
    nette = ReproduceSettings(steps=40).resolved(model, "imagenette")
    assert (nette.lam, nette.hepgd_steps, nette.val_size) == (1.2, (10, 40), 500)
    cifar = ReproduceSettings(steps=40).resolved(model, "cifar10")
    assert (cifar.lam, cifar.hepgd_steps, cifar.val_size) == (1.2, (40,), 5000)
    mine = ReproduceSettings(steps=40, lam=1.5, hepgd_steps=(20,)).resolved(model, "cifar10")
    assert (mine.lam, mine.hepgd_steps) == (1.5, (20, 40))
    assert ReproduceSettings().resolved(model, "cifar100").hepgd_steps == (40,), "no paper facts: HE-PGD at --steps"
    with pytest.raises(ValueError, match="hepgd_steps must be >= 1"):
        ReproduceSettings(hepgd_steps=(0,))
    # --attacks pgd-8,pgd-8: Table 1 and the baselines had each of its rows twice
    assert ReproduceSettings(attacks=("pgd-8", "apgd-8", "pgd-8")).attacks == ("pgd-8", "apgd-8")
    # two λ of one 6-digit name shared a stage ("hepgd-8-lam0.6"), in one run or (λ is not in the stage key) across
    # two: each is named by all its digits where 6 would make them one; the same λ twice is kept once
    from robgen.experiments.reproduce import hepgd_name, lam_label

    assert ReproduceSettings(lambdas=(0.6, 0.6000001)).lambdas == (0.6, 0.6000001)
    assert [lam_label(lam) for lam in (0.6, 1.2, 2.0, 3, 0.6000001)] == ["0.6", "1.2", "2", "3", "0.6000001"]
    assert hepgd_name(ReproduceSettings(lam=1.5000004, steps=40), 40) != hepgd_name(ReproduceSettings(lam=1.5,
                                                                                                      steps=40), 40)
    assert hepgd_name(ReproduceSettings(lam=1.2, steps=40), 10) == "hepgd-8-lam1.2-10steps", "the names kept"
    assert ReproduceSettings(lambdas=(0.6, 1.2, 0.6)).lambdas == (0.6, 1.2)


def _settings(r):
    s = dict(r["settings"])
    s = {key: tuple(value) if isinstance(value, list) else value for key, value in s.items()}
    return ReproduceSettings(**s)


def _asdict(facts):
    from dataclasses import asdict

    return asdict(facts)


def _untrained_imagenette_checkpoint(folder):
    """A random width-4 Imagenette ResNet10 whose spec says it was trained on Imagenette (no data needed)."""
    from robgen.data import IMAGENETTE_CLASSES
    from robgen.models import Classifier, ModelSpec
    from robgen.models.checkpoint import build_network, save_checkpoint

    spec = ModelSpec(architecture="resnet10_imagenette", num_classes=10, class_labels=list(IMAGENETTE_CLASSES.values()),
                     mean=(0.46, 0.45, 0.42), std=(0.27, 0.27, 0.29), input_size=(3, 128, 128), arch_kwargs={"width": 4},
                     training={"data": {"name": "imagenette", "val_size": 500}}, crop_pct=0.875)
    save_checkpoint(Classifier(build_network(spec), spec).eval(), folder)
    return folder


# ---- continuing an interrupted run ----


def test_an_interrupted_run_continues_where_it_stopped_with_the_same_results(cifar_root, tmp_path, monkeypatch):
    import robgen.experiments.reproduce as reproduce_module
    from robgen.experiments.reproduce import STAGES, reproduce

    model = robgen.load_model("cifar10-resnet10-standard")
    settings = dict(attacks=("pgd-8",), steps=3, limit=20, val_size=1000, reference_size=200, lambdas=(0.0, 1.2, 3.0))

    def run(out):
        return reproduce(model, "cifar10", out, data_root=cifar_root, settings=ReproduceSettings(**settings),
                         progress=False)

    def comparable(results):
        return {key: value for key, value in results.items() if key not in ("cost", "wall_seconds", "continued")}

    uninterrupted = run(tmp_path / "whole")
    assert not (tmp_path / "whole" / STAGES).exists(), "the stages are removed once the results are written"

    real, calls = reproduce_module.model_outputs, []

    def dies_on_the_sixth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:  # clean val, clean test, the reference, PGD val, PGD test: then it dies
            raise KeyboardInterrupt  # the session ends mid-run
        return real(*args, **kwargs)

    monkeypatch.setattr(reproduce_module, "model_outputs", dies_on_the_sixth)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut")
    assert len(list((tmp_path / "cut" / STAGES).glob("*.safetensors"))) == 4, "four stages finished and were kept"
    calls.clear()
    continued = run(tmp_path / "cut")
    assert continued["continued"]["stages_read_back"] == 4
    assert len(calls) == sum(1 for _ in uninterrupted["cost"]["runs"]) - 4, "only the unfinished stages ran"
    assert json.dumps(comparable(continued), sort_keys=True) == json.dumps(comparable(uninterrupted), sort_keys=True)
    assert not (tmp_path / "cut" / STAGES).exists()
    assert "continued an interrupted one" in (tmp_path / "cut" / "results.md").read_text()
    assert "APGD-CE (torchattacks) with" not in (tmp_path / "cut" / "results.md").read_text(), "no APGD row was run"


def test_a_run_cut_in_its_lambda_sweep_finishes_with_a_shorter_sweep_without_attacking_again(cifar_root, tmp_path,
                                                                                             monkeypatch):
    """The sweep's λ values are not part of the stages' key: a run cut in its sweep (λ = 3 left) is finished by the
    same run with --lambdas 0,1.2, whose attacks (PGD and the Table 1 HE-PGD) are all read back."""
    import robgen.experiments.reproduce as reproduce_module
    from robgen.experiments.reproduce import reproduce

    model = robgen.load_model("cifar10-resnet10-standard")
    base = dict(attacks=("pgd-8",), steps=3, limit=20, val_size=1000, reference_size=200, lam=1.2)
    real_hepgd = reproduce_module._make_hepgd

    def cut_at_lambda_3(model, settings, lam, steps=None):
        if lam == 3.0:
            raise KeyboardInterrupt  # the session ends in the sweep
        return real_hepgd(model, settings, lam, steps)

    monkeypatch.setattr(reproduce_module, "_make_hepgd", cut_at_lambda_3)
    with pytest.raises(KeyboardInterrupt):
        reproduce(model, "cifar10", tmp_path / "run", data_root=cifar_root,
                  settings=ReproduceSettings(**base, lambdas=(0.0, 1.2, 3.0)), progress=False)
    monkeypatch.setattr(reproduce_module, "_make_hepgd", real_hepgd)
    real_outputs, calls = reproduce_module.model_outputs, []

    def counted(*args, **kwargs):
        calls.append(kwargs.get("attack"))
        return real_outputs(*args, **kwargs)

    monkeypatch.setattr(reproduce_module, "model_outputs", counted)
    # settings used only after the attacks may change too (more reference images for the baselines)
    after = {**base, "reference_size": 300, "timing_repeats": 2}
    results = reproduce(model, "cifar10", tmp_path / "run", data_root=cifar_root,
                        settings=ReproduceSettings(**after, lambdas=(0.0, 1.2)), progress=False)
    assert calls == [None], "no attack ran again (the one pass is the clean reference images, never staged)"
    assert [row["lam"] for row in results["adaptive"]["rows"]] == [0.0, 1.2]
    assert list(results["settings"]["lambdas"]) == [0.0, 1.2]


def test_stages_of_another_run_are_not_mixed_in(cifar_root, tmp_path, capsys):
    args = ["reproduce", "--data", "cifar10", "--data-root", str(cifar_root), "--model", "cifar10-resnet10-standard",
            "--attacks", "pgd-8", "--val-size", "1000", "--reference-size", "200", "--out", str(tmp_path / "run")]
    stages = tmp_path / "run" / ".stages"
    stages.mkdir(parents=True)
    (stages / "key.json").write_text(json.dumps({"settings": {}, "data": "cifar10", "model": "another"}))
    (stages / "clean-val.safetensors").write_bytes(b"")  # a stage that other run finished (a key alone is taken over)
    assert main(args + ["--limit", "10", "--steps", "2"]) == 2
    assert "holds the finished stages of another run" in capsys.readouterr().err
    assert main(args + ["--limit", "10", "--steps", "2", "--overwrite"]) == 0, "--overwrite starts again"
    assert (tmp_path / "run" / "results.json").exists() and not stages.exists()


def test_a_rerun_over_earlier_results_with_overwrite_continues_when_cut_and_run_again(cifar_root, tmp_path,
                                                                                      monkeypatch, capsys):
    """Redoing committed results takes --overwrite; when that run is cut, the same command (--overwrite included)
    reads its finished stages back instead of starting again, and still replaces the results."""
    import robgen.experiments.reproduce as reproduce_module

    args = ["reproduce", "--data", "cifar10", "--data-root", str(cifar_root), "--model", "cifar10-resnet10-standard",
            "--attacks", "pgd-8", "--val-size", "1000", "--reference-size", "200", "--limit", "10", "--steps", "2",
            "--out", str(tmp_path / "run")]
    assert main(args) == 0
    earlier = (tmp_path / "run" / "results.json").read_text()
    real, calls = reproduce_module.model_outputs, []

    def dies_on_the_fourth(*arguments, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*arguments, **kwargs)

    monkeypatch.setattr(reproduce_module, "model_outputs", dies_on_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        main(args + ["--overwrite", "--lam", "1.0"])  # a changed setting: the results must be redone
    kept = sorted((tmp_path / "run" / ".stages").glob("*.safetensors"))
    assert len(kept) >= 2, "stages finished before the cut"
    monkeypatch.setattr(reproduce_module, "model_outputs", real)
    capsys.readouterr()
    assert main(args + ["--overwrite", "--lam", "1.0"]) == 0
    assert "are read back" in capsys.readouterr().out
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["continued"]["stages_read_back"] == len(kept) and results["settings"]["lam"] == 1.0
    assert (tmp_path / "run" / "results.json").read_text() != earlier


def test_table1_from_the_stages_of_a_stopped_run_is_the_reports_table1(cifar_root, tmp_path, monkeypatch):
    """scripts/table1_from_stages.py on a run stopped after its attacks gives the official row the finished run's
    report gives, and the official detector's rate on the HE-PGD examples."""
    import importlib.util

    import robgen.experiments.reproduce as reproduce_module
    from robgen.experiments.reproduce import reproduce
    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("table1_from_stages", REPO / "scripts" / "table1_from_stages.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    model = robgen.load_model("cifar10-resnet10-standard")
    settings = ReproduceSettings(attacks=("pgd-8",), steps=3, limit=20, val_size=1000, reference_size=200,
                                 lambdas=(0.0, 1.2))
    whole = reproduce(model, "cifar10", tmp_path / "whole", data_root=cifar_root, settings=settings, progress=False)

    class StopsHere:  # the baselines come right after Table 1's attacks: the run is cut there
        def fit(self, *args, **kwargs):
            raise KeyboardInterrupt

    monkeypatch.setattr(reproduce_module, "MahalanobisScorer", StopsHere)
    with pytest.raises(KeyboardInterrupt):
        reproduce(model, "cifar10", tmp_path / "cut", data_root=cifar_root, settings=settings, progress=False)
    rows = script.table1(tmp_path / "cut")["rows"]
    assert set(rows) == {"pgd-8"}
    official = next(row for row in whole["table1"] if row["attack"] == "pgd-8" and row["official_protocol"])
    for key in ("detection_rate", "false_positive_rate", "auroc", "temperature", "clean_accuracy",
                "detection_rate_successful"):
        assert rows["pgd-8"][key] == pytest.approx(official[key]), key
    he = next(row for row in whole["table1"] if row["attack"].startswith("hepgd") and row["official_protocol"])
    assert list(rows["pgd-8"]["hepgd_detection_rate"]) == [he["attack"]]
    fpr = rows["pgd-8"]["at_paper_fpr"]
    assert 0 <= fpr["false_positive_rate_ci"][0] <= fpr["false_positive_rate"] <= fpr["false_positive_rate_ci"][1] <= 1
    with pytest.raises(SystemExit, match="no clean-val stage"):
        script.table1(tmp_path / "whole")  # a finished run keeps no stages


def test_a_replaced_runs_figures_of_other_hepgd_step_counts_are_removed(tmp_path):
    """--overwrite of a run with --hepgd-steps 2 by one without left its fig3a_..._2steps.png beside a report that
    names no such run."""
    from robgen.experiments.reproduce_report import remove_other_step_figures

    for name in ("fig3a_energy_hist_hepgd.png", "fig3a_energy_hist_hepgd_2steps.png",
                 "fig3a_energy_hist_hepgd_10steps.png", "notes.png"):
        (tmp_path / name).write_bytes(b"png")
    remove_other_step_figures(tmp_path, [{"main": True, "steps": 40}, {"main": False, "steps": 10}])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig3a_energy_hist_hepgd.png",
                                                           "fig3a_energy_hist_hepgd_10steps.png", "notes.png"]
