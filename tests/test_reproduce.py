"""`reproduce` on a shipped checkpoint with a tiny N: structure and sanity of results.json."""

import json

import pytest

import robgen
from robgen.cli import main
from robgen.detection.detector import TEMPERATURES


@pytest.fixture(scope="module")
def results(cifar_root, tmp_path_factory):
    if "cifar10-resnet10-standard" not in robgen.list_models():
        pytest.fail("the shipped checkpoint cifar10-resnet10-standard is missing")
    out = tmp_path_factory.mktemp("repro") / "run"
    code = main(["reproduce", "--data", "cifar10", "--data-root", str(cifar_root), "--model", "cifar10-resnet10-standard",
                 "--limit", "60", "--steps", "10", "--val-size", "1000", "--out", str(out)])
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
    assert "98.4" in (out / "results.md").read_text()


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
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "results.json").write_text("{}")
    assert main(args + ["--limit", "5", "--out", str(tmp_path / "c")]) == 2
    assert "--overwrite" in capsys.readouterr().err
