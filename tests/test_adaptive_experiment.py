"""The adaptive evaluation as an experiment and a command (robgen/experiments/adaptive.py, adaptive_report.py,
robgen/cli/adaptive.py): it runs end to end, the detector switched off gives the bare model's robust accuracy
image for image, an interrupted run continues to the same numbers, and bad input is refused before any work.

A width-4 ResNet10 trained for two epochs on the toy colour images (16 x 16, 4 classes), its training record
naming the validation split it held out; 8 test images, 2 steps, 1 restart.
"""

import inspect
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import robgen
import robgen.experiments.adaptive as adaptive_module
import robgen.experiments.adaptive_suite as suite_module
import robgen.experiments.stages as stages_module
from robgen.cli import main
from robgen.cli.adaptive import DETECTORS
from robgen.detection.reject import KINDS, make_reject_option
from robgen.experiments.adaptive import CALIBRATION, STAGES, AdaptiveSettings, estimate_passes
from robgen.experiments.adaptive_suite import DetectorOff
from robgen.experiments.adaptive_report import (convergence_checks, dara_by_restarts, detector_row, markdown,
                                               points_text, sanity_checks)
from robgen.experiments.stages import StageStore, read_tensors
from robgen.training import TrainConfig, train
from tests.conftest import REPO, tiny_model

EPS = "8/255,64/255"


@pytest.fixture(scope="module")
def checkpoint(toy_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("adaptive") / "toy-model"
    config = TrainConfig(data=str(toy_data), width=4, epochs=2, batch_size=16, lr=0.05, val_size=40, eval_subset=8,
                         eval_steps=1, seed=0)
    train(config, folder, device="cpu", progress=False)
    return folder


def command(checkpoint, toy_data, out, *more):
    return ["adaptive", "--model", str(checkpoint), "--data", str(toy_data), "--detector", "energy,mahalanobis",
            "--eps", EPS, "--limit", "8", "--steps", "2", "--restarts", "1", "--lambdas", "1.2", "--batch-size", "4",
            "--device", "cpu", "--out", str(out), *more]


@pytest.fixture(scope="module")
def same_code():
    """The code fingerprints pinned (other work on this checkout while the tests run would change them)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stages_module, "code_fingerprint", lambda *args, **kwargs: "this checkout")
        yield


@pytest.fixture(scope="module")
def finished(checkpoint, toy_data, tmp_path_factory, same_code):
    """One run through the command, its stages kept: (output folder, results)."""
    out = tmp_path_factory.mktemp("run") / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StageStore, "clear", lambda self: None)
        assert main(command(checkpoint, toy_data, out)) == 0
    return out, json.loads((out / "results.json").read_text())


def load_script(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def numbers(results):
    """results.json without what depends on the clock or on how much came from disk."""
    return json.dumps({k: v for k, v in results.items() if k not in ("wall_seconds", "continued")}, sort_keys=True)


def test_the_command_writes_results_report_figure_and_detectors(finished):
    out, results = finished
    for name in ("results.json", "results.md", "adaptive_dara.png", "detectors/reject-energy.json",
                 "detectors/reject-mahalanobis.json"):
        assert (out / name).is_file(), name
    settings = results["settings"]
    assert settings["eps_list"] == [8 / 255, 64 / 255] and settings["steps"] == 2
    assert {(row["detector"], row["eps_label"]) for row in results["rows"]} == {
        (d, e) for d in ("energy", "mahalanobis", "off") for e in ("8/255", "64/255")}
    energy = results["detectors"]["energy"]
    assert energy["kind"] == "energy" and energy["settings"] == {"temperature": 1.0}
    assert math.isfinite(energy["thresholds"]["tau"]) and energy["validation"]["n"] == 40
    assert energy["validation"]["rejected"] <= math.floor(0.05 * 40)  # the calibration's promise
    assert results["detectors"]["off"]["validation"]["rejected"] == 0
    assert results["estimate"]["forward_backward_passes"] > 0 and results["estimate"]["suites"] == 6
    text = (out / "results.md").read_text()
    assert "DARA at 8/255" in text and "Sanity checks" in text and "Tramèr" in text
    # what each detector catches of the references, as results.json has it, with its counts
    caught = next(row for row in results["rows"] if row["detector"] == "energy" and row["eps_label"] == "8/255")
    entry = caught["detection_rate_at_final_points"]["pgd (bare model)"]
    assert f"| pgd (bare model) | 8/255 | {100 * entry['rate']:.1f}% [" in text
    assert f"({entry['count']} of {entry['n']}) |" in text.split("What each detector catches")[1]
    for row in results["rows"]:  # one restart: the curve has one point, the suite's own DARA
        assert row["dara_by_restarts"] == [row["dara"]]
    again = next(check for check in results["sanity"] if check["check"].startswith("every evasion holds"))
    assert again["passed"] is True and again["detail"].startswith("0 of ")
    assert int(again["detail"].split(" of ")[1].split()[0]) > 0, "the toy run has evasions to check"


def test_every_dara_has_an_interval_that_contains_it(finished):
    _, results = finished
    for row in results["rows"]:
        for entry in [row["dara"], *(attack["dara"] for attack in row["per_attack"].values())]:
            low, high = entry["ci"]
            assert low <= entry["rate"] <= high and entry["n"] == 8
    for row in results["bare"]:
        low, high = row["robust_accuracy"]["ci"]
        assert low <= row["robust_accuracy"]["rate"] <= high


def test_the_detector_switched_off_equals_the_bare_model_exactly(finished):
    _, results = finished
    for bare in results["bare"]:
        off = next(r for r in results["rows"] if r["detector"] == "off" and r["eps"] == bare["eps"])
        assert off["dara"] == bare["robust_accuracy"]
        assert off["clean"]["rejection_rate"]["count"] == 0
    checks = [c for c in results["sanity"] if c["check"].startswith("the detector switched off")]
    assert len(checks) == 2 and all(c["passed"] for c in checks)
    # the test is not vacuous: at 64/255 the suite breaks images the bare model classified correctly
    large = next(b for b in results["bare"] if b["eps_label"] == "64/255")
    assert large["robust_accuracy"]["count"] < large["clean_accuracy"]["count"]


def test_results_json_names_the_defended_images_so_another_attack_can_be_compared_image_by_image(finished):
    _, results = finished
    for row in results["rows"]:
        assert len(row["defended"]) == row["dara"]["count"] and len(set(row["defended"])) == len(row["defended"])
        assert all(0 <= i < results["n_test"] for i in row["defended"])
    for bare in results["bare"]:
        off = next(r for r in results["rows"] if r["detector"] == "off" and r["eps"] == bare["eps"])
        assert off["defended"] == bare["robust"] and len(bare["robust"]) == bare["robust_accuracy"]["count"]


def test_each_detector_is_compared_with_the_bare_model_image_by_image(finished):
    """DARA minus the bare model's robust accuracy, paired on the same images, with the images only one side holds,
    in results.json and in results.md."""
    out, results = finished
    text = (out / "results.md").read_text()
    bare = {row["eps"]: row for row in results["bare"]}
    compared = [row for row in results["rows"] if row["detector"] != "off"]
    assert compared and all(row["detector"] != "off" or "gain_over_bare" not in row for row in results["rows"])
    for row in compared:
        gain, robust, defended = row["gain_over_bare"], set(bare[row["eps"]]["robust"]), set(row["defended"])
        assert gain["difference"] == pytest.approx(row["dara"]["rate"] - bare[row["eps"]]["robust_accuracy"]["rate"])
        assert (gain["only_with_detector"], gain["only_bare"]) == (len(defended - robust), len(robust - defended))
        rejected = set(row["rejected_clean"])  # robust but rejected when clean: its false positives' cost
        assert gain["only_bare_rejected_clean"] == len(robust & rejected) and not defended & rejected
        assert gain["only_bare_evaded"] == gain["only_bare"] - len(robust & rejected)
        low, high = gain["ci"]
        assert low <= gain["difference"] <= high and gain["n"] == results["n_test"]
        assert (f"| {row['detector']} | {row['eps_label']} | {100 * gain['difference']:+.1f} points "
                f"[{100 * low:+.1f}, {100 * high:+.1f}] | {gain['only_with_detector']} | {gain['only_bare']} "
                f"({gain['only_bare_rejected_clean']} / {gain['only_bare_evaded']}) |") in text
    rejections = [len(row["rejected_clean"]) for row in results["rows"] if row["detector"] != "off"]
    assert sum(rejections) > 0, "the toy run's detectors reject some clean images: the split is exercised"


def test_the_gain_script_prints_for_a_finished_run_what_its_report_says(finished, capsys):
    """scripts/gain_over_bare.py computes the comparison from results.json alone (for runs made before the report
    had it): the same lines as results.md, and a clear error for a file that is not there."""
    import importlib.util

    out, results = finished
    spec = importlib.util.spec_from_file_location("gain_over_bare", REPO / "scripts" / "gain_over_bare.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    older = out.parent / "older.json"  # the run as an older results.json had it: no comparison recorded
    older.write_text(json.dumps({**results, "rows": [{k: v for k, v in row.items() if k != "gain_over_bare"}
                                                     for row in results["rows"]]}))
    assert script.main([str(older)]) == 0
    printed = capsys.readouterr().out
    table = [line for line in printed.splitlines() if line.startswith("| ") and "points" in line]
    assert len(table) == len([row for row in results["rows"] if row["detector"] != "off"])
    assert all(line in (out / "results.md").read_text() for line in table)
    with pytest.raises(SystemExit):
        script.main([str(out / "nowhere.json")])
    assert "no such file" in capsys.readouterr().err
    assert script.main([str(out / "results.md")]) == 0  # another file: said so, and the others still printed
    assert "not the results.json of a `python -m robgen adaptive` run" in capsys.readouterr().out
    # an older run did not record its clean rejections either: --rescore finds them again, the run's own
    unrecorded = json.loads(older.read_text())
    for row in unrecorded["rows"]:
        del row["rejected_clean"]
    script.rescore_rejections(out, unrecorded)
    assert [row.get("rejected_clean") for row in unrecorded["rows"] if row["detector"] != "off"] == \
        [row["rejected_clean"] for row in results["rows"] if row["detector"] != "off"]
    mended = next(row for row in unrecorded["rows"] if row["detector"] != "off")
    mended["clean"]["rejection_rate"]["count"] += 1  # not the run's detector or images: refused, not guessed
    del mended["rejected_clean"]
    with pytest.raises(SystemExit, match="not the run's images or detector"):
        script.rescore_rejections(out, unrecorded)


def test_a_resumed_run_gives_the_same_numbers(finished, checkpoint, toy_data, tmp_path, same_code):
    out, results = finished
    again = tmp_path / "again"
    shutil.copytree(out / STAGES, again / STAGES)
    stage_files = sorted((again / STAGES).glob("*.safetensors"))
    removed = stage_files[::3]  # every third stage: among them stages of every detector
    for path in removed:
        path.unlink()
    assert main(command(checkpoint, toy_data, again)) == 0
    continued = json.loads((again / "results.json").read_text())
    assert continued["continued"]["stages_read_back"] == len(stage_files) - len(removed)
    assert numbers(continued) == numbers(results)
    assert not (again / STAGES).exists()  # cleared once the results are written


class Interrupted(BaseException):
    """A stop in the middle of a stage, as a killed process makes one (no handler of robgen's catches it)."""


def test_a_run_stopped_inside_a_stage_continues_from_its_finished_batches_with_the_same_numbers(
        finished, checkpoint, toy_data, tmp_path, same_code, monkeypatch):
    """A stage keeps each batch as it finishes (`<stage>.parts/`): stopped in the second batch of a reference
    stage, then in the second batch of an adaptive one, the run reads back the first batch of each (not attacked
    again) and ends with the uninterrupted run's numbers; the parts go once their stage is written."""
    suite = suite_module
    out, results = finished
    again = tmp_path / "again"
    real_attack, real_finish = suite._attack_batch, suite._EveryPoint.finish
    calls = {"adaptive": 0, "reference": 0}

    def stop_at_second(kind, real):
        def wrapped(*args, **kwargs):
            calls[kind] += 1
            if calls[kind] == 2:
                raise Interrupted
            return real(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(suite._EveryPoint, "finish", stop_at_second("reference", real_finish))
    with pytest.raises(Interrupted):
        main(command(checkpoint, toy_data, again))
    kept = sorted((again / STAGES).glob("*.parts/batch-*.safetensors"))
    assert [path.name for path in kept] == ["batch-000000.safetensors"], "the first batch of the stopped stage"
    assert not list((again / STAGES).glob("*.safetensors")), "no stage finished before the first reference's"

    monkeypatch.setattr(suite._EveryPoint, "finish", real_finish)
    monkeypatch.setattr(suite, "_attack_batch", stop_at_second("adaptive", real_attack))
    with pytest.raises(Interrupted):
        main(command(checkpoint, toy_data, again))
    parts = sorted(path.parent.name for path in (again / STAGES).glob("*.parts/batch-*.safetensors"))
    assert len(parts) == 1 and "pgd" in parts[0] and "reference" not in parts[0], parts  # the adaptive stage's
    assert len(list((again / STAGES).glob("reference-*.safetensors"))) == 4, "the references, both eps, finished"
    shown = subprocess.run([sys.executable, str(REPO / "scripts" / "adaptive_progress.py"), str(again)],
                           capture_output=True, text=True, check=True).stdout
    assert "under way: energy-eps8/255-k+1 pgd, 1 of its 2 batches of 4 images finished and kept" in shown

    monkeypatch.setattr(suite, "_attack_batch", real_attack)
    monkeypatch.setattr(StageStore, "clear", lambda self: None)  # keep the stages, to compare them with `finished`'s
    assert main(command(checkpoint, toy_data, again)) == 0
    continued = json.loads((again / "results.json").read_text())
    assert continued["continued"]["batches_read_back"] == 1  # the references' was read back by the second run
    assert "1 batch of an unfinished one came from an interrupted run" in (again / "results.md").read_text()
    assert numbers(continued) == numbers(results)
    # every stage bit for bit the uninterrupted run's: per-image flags, the points' logits and scores
    written = sorted(path.name for path in (again / STAGES).glob("*.safetensors"))
    assert written == sorted(path.name for path in (out / STAGES).glob("*.safetensors")) and len(written) > 10
    for name in written:
        mine, theirs = read_tensors(again / STAGES / name)[0], read_tensors(out / STAGES / name)[0]
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine), name
    assert not list((again / STAGES).glob("*.parts")), "every stage's parts removed once it was written"


def test_a_run_with_keep_stages_keeps_them_and_report_only_writes_its_report_again_from_them(
        finished, checkpoint, toy_data, tmp_path, same_code, monkeypatch, capsys):
    """A finished run removed its stages, so its report could not be written again with newer report code without
    attacking again (and an --overwrite on code whose stages had gone stale removed them). --keep-stages keeps them;
    --report-only reads every one back, attacks nothing, and refuses a run whose stages are missing, removing none."""
    out, results = finished
    kept = tmp_path / "kept"
    shutil.copytree(out / STAGES, kept / STAGES)
    stage_files = sorted((kept / STAGES).glob("*.safetensors"))
    assert main(command(checkpoint, toy_data, kept, "--keep-stages")) == 0
    assert sorted((kept / STAGES).glob("*.safetensors")) == stage_files  # kept after the results are written
    kept_run = json.loads((kept / "results.json").read_text())
    calibration = {path.name: path.read_bytes() for path in (kept / STAGES / CALIBRATION).glob("*.json")}
    assert calibration  # the detectors it calibrated, kept beside the stages
    (kept / "results.md").write_text("an older report")
    monkeypatch.setattr(suite_module, "run_suite", lambda *args, **kwargs: pytest.fail("attacked"))
    assert main(command(checkpoint, toy_data, kept, "--report-only")) == 0
    printed = capsys.readouterr().out  # each detector's DARA, and what it adds to the bare model's robust accuracy
    assert "energy at   8/255: DARA" in printed and "; against the bare model " in printed
    again = json.loads((kept / "results.json").read_text())
    made = json.loads(json.dumps(results))  # the run's own record of how it was made stays
    made["report_written_again"] = True
    assert numbers(again) == numbers(made)
    assert (again["wall_seconds"], again["continued"]) == (kept_run["wall_seconds"], kept_run["continued"])
    assert (kept / "results.md").read_text() == markdown(again) and "written again" in markdown(again)
    assert sorted((kept / STAGES).glob("*.safetensors")) == stage_files
    assert {path.name: path.read_bytes() for path in (kept / STAGES / CALIBRATION).glob("*.json")} == calibration
    capsys.readouterr()
    cut = kept / "cut"  # the stages of a run cut short (no results.json): refused, told to continue the run
    shutil.copytree(kept / STAGES, cut / STAGES)
    assert main(command(checkpoint, toy_data, cut, "--report-only")) == 2
    assert "holds no results.json: the run that kept these stages has not finished" in capsys.readouterr().err
    lost = kept / "lost"  # a kept detector gone: refused before anything is calibrated again
    shutil.copytree(kept / STAGES, lost / STAGES)
    shutil.copy(kept / "results.json", lost / "results.json")
    next((lost / STAGES / CALIBRATION).glob("*.json")).unlink()
    assert main(command(checkpoint, toy_data, lost, "--report-only")) == 2
    assert f"that its {CALIBRATION}/ folder does not hold" in capsys.readouterr().err
    other = command(checkpoint, toy_data, kept, "--report-only")
    other[other.index("--steps") + 1] = "3"  # another run's settings: refused, its stages left as they are
    assert main(other) == 2
    assert "holds the stages of another run (its settings differ" in capsys.readouterr().err
    whole = stage_files[0].read_bytes()
    stage_files[0].write_bytes(whole[:len(whole) // 2])  # cut short: there, but not readable, and said so
    assert main(command(checkpoint, toy_data, kept, "--report-only")) == 2
    assert f"{stage_files[0].name} is there but cannot be read" in capsys.readouterr().err
    assert stage_files[0].stat().st_size == len(whole) // 2  # left as it was, for the user to look at
    stage_files[0].unlink()
    assert main(command(checkpoint, toy_data, kept, "--report-only")) == 2
    assert "has no stage" in capsys.readouterr().err
    assert sorted((kept / STAGES).glob("*.safetensors")) == stage_files[1:]  # nothing else lost
    parts = stages_module.parts_folder(kept / STAGES, stage_files[0].stem)  # stopped inside that stage instead
    parts.mkdir()
    (parts / "batch-000000.safetensors").write_bytes(b"")
    assert main(command(checkpoint, toy_data, kept, "--report-only")) == 2
    assert "under way, not finished (1 of its batches kept)" in capsys.readouterr().err
    assert (parts / "batch-000000.safetensors").exists()  # left for the run that continues it


def test_under_torchrun_only_rank_0_calibrates_a_detector_that_reads_the_images(checkpoint, toy_data, monkeypatch):
    """The other ranks take rank 0's detectors (`shared_calibration`, tested under torchrun in test_distributed.py),
    so they skip robust-margin's calibration passes (not collective): it comes back unfitted there, fitted on rank
    0; the logit detectors and the detector switched off are fitted on every rank (their passes are collective)."""
    model = robgen.load_model(checkpoint)
    splits = adaptive_module.detection_splits(model, str(toy_data))
    settings = AdaptiveSettings(detectors=("energy", "robust-margin"), limit=8, steps=1, restarts=1, batch_size=4)
    main_rank = adaptive_module.calibrate_detectors(model, str(toy_data), splits, settings, {})
    monkeypatch.setattr(adaptive_module.distributed, "is_main", lambda: False)
    other_rank = adaptive_module.calibrate_detectors(model, str(toy_data), splits, settings, {})
    for name in ("energy", "robust-margin", adaptive_module.OFF):
        main_rank[name]._require_fit()
    for name in ("energy", adaptive_module.OFF):
        other_rank[name]._require_fit()
    with pytest.raises(RuntimeError, match="no threshold yet"):
        other_rank["robust-margin"]._require_fit()


def calibrate_a_hair_apart(monkeypatch):
    """Every fresh calibration from now on lands a hair away from the last (thresholds × (1 + 1e-12)), as with
    another thread count."""
    calibrate = adaptive_module.calibrate_detectors

    def drifting(model, data, splits, settings, given):
        options = calibrate(model, data, splits, settings, given)
        for name, option in options.items():
            if name not in given and name != adaptive_module.OFF:
                option._set_thresholds({k: v * (1 + 1e-12) for k, v in option.thresholds().items()})
        return options

    monkeypatch.setattr(adaptive_module, "calibrate_detectors", drifting)


def test_a_resumed_run_attacks_the_detectors_it_calibrated_first_though_calibrating_again_would_differ(
        finished, checkpoint, toy_data, tmp_path, same_code, monkeypatch):
    """Calibration is not bit-reproducible (a Mahalanobis threshold moves in its 15th digit with the thread
    count); the interrupted attempt's detectors, kept in the stage folder, are read back instead, so its finished
    stages stay this run's."""
    out, results = finished
    again = tmp_path / "again"
    shutil.copytree(out / STAGES, again / STAGES)
    assert sorted(p.name for p in (again / STAGES / adaptive_module.CALIBRATION).iterdir()) == \
        ["energy.json", "mahalanobis.json"]
    calibrate_a_hair_apart(monkeypatch)
    assert main(command(checkpoint, toy_data, again)) == 0
    continued = json.loads((again / "results.json").read_text())
    assert continued["continued"]["stages_read_back"] == len(list((out / STAGES).glob("*.safetensors")))
    assert numbers(continued) == numbers(results)

    other = tmp_path / "other"  # another run's kept detectors are not taken: calibrated afresh (and drifted)
    shutil.copytree(out / STAGES, other / STAGES)
    args = command(checkpoint, toy_data, other, "--overwrite")
    args[args.index("--steps") + 1] = "3"
    assert main(args) == 0
    fresh = json.loads((other / "results.json").read_text())["detectors"]["energy"]["thresholds"]["tau"]
    assert fresh == results["detectors"]["energy"]["thresholds"]["tau"] * (1 + 1e-12)
    # the run it replaced had two detectors: its Mahalanobis file is not left beside the new results (a review,
    # 2026-12-07); a file of one's own in detectors/ is kept
    shutil.copytree(out / "detectors", other / "detectors", dirs_exist_ok=True)
    shutil.copy(out / "results.json", other / "results.json")
    (other / "detectors" / "mine.json").write_text("{}")
    args = command(checkpoint, toy_data, other, "--overwrite")
    args[args.index("energy,mahalanobis")] = "energy"
    assert main(args) == 0
    assert sorted(p.name for p in (other / "detectors").iterdir()) == ["mine.json", "reject-energy.json"]


def test_a_run_cut_before_keeping_its_detectors_continues_though_it_calibrates_apart(
        finished, checkpoint, toy_data, tmp_path, same_code, monkeypatch, capsys):
    """An attempt cut after writing its key and before keeping its detectors or finishing a stage left a key whose
    detectors a fresh calibration misses by a hair: the same command continues (nothing of it to lose), while the
    key of another run (other settings) is refused as before, stages or not."""
    out, _ = finished
    calibrate_a_hair_apart(monkeypatch)
    cut = tmp_path / "cut"
    (cut / STAGES).mkdir(parents=True)
    shutil.copy(out / STAGES / "key.json", cut / STAGES / "key.json")
    assert main(command(checkpoint, toy_data, cut)) == 0
    assert (cut / "results.json").exists()
    other = tmp_path / "other"
    (other / STAGES).mkdir(parents=True)
    shutil.copy(out / STAGES / "key.json", other / STAGES / "key.json")
    args = command(checkpoint, toy_data, other)
    args[args.index("--steps") + 1] = "3"
    from robgen.experiments import adaptive

    calibrated = []  # refused before the detectors are calibrated (passes over the validation split), not after
    real = adaptive.calibrate_detectors
    monkeypatch.setattr(adaptive, "calibrate_detectors", lambda *a, **k: calibrated.append(1) or real(*a, **k))
    assert main(args) == 2
    assert "holds the finished stages of another run (its settings differ: settings.steps: 2 → 3)" in \
        capsys.readouterr().err
    assert calibrated == []


def test_the_progress_of_a_run_read_from_its_stages_gives_its_dara(finished, checkpoint, toy_data, tmp_path,
                                                                    same_code):
    """scripts/adaptive_progress.py on a run's stages (kept here: a finished run removes them) prints, per
    detector and eps, the DARA after its last stage: the DARA results.json gives."""
    import subprocess
    import sys

    from tests.conftest import REPO

    out = tmp_path / "kept"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StageStore, "clear", lambda self: None)
        assert main(command(checkpoint, toy_data, out)) == 0
    results = json.loads((out / "results.json").read_text())
    shown = subprocess.run([sys.executable, str(REPO / "scripts" / "adaptive_progress.py"), str(out)],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    blocks = shown.stdout.split("\n\n")
    for row in results["rows"]:  # the detector switched off too: it is judged on the shared references as well
        block = next(b for b in blocks if b.strip().startswith(f"{row['detector']} at {row['eps_label']}:"))
        last = [line for line in block.splitlines() if "DARA after" in line][-1]
        assert f"({row['dara']['count']}/{row['dara']['n']})" in last.split(";")[0], (last, row["dara"])
        assert "complete" in block
    smallest = min(row["eps"] for row in results["rows"])  # no smaller eps's evasions carried into its rows
    for row in results["rows"]:  # each detector against the bare model, image by image, as results.json has it
        if row["eps"] == smallest and row["detector"] != "off":
            line = (f"{row['detector']} at {row['eps_label']} against the detector switched off, paired: "
                    f"{points_text(row['gain_over_bare'])}")
            assert line + "\n" in shown.stdout, (line, shown.stdout)


def test_the_progress_of_the_detector_switched_off_counts_the_bare_model_references(checkpoint, toy_data, tmp_path,
                                                                                    same_code):
    # one weak step: here bare PGD fools images the adaptive attacks missed, and the progress script left the
    # references out of the detector-off DARA (8/8 "complete" against results.json's 6/8)
    import subprocess
    import sys

    from tests.conftest import REPO

    out = tmp_path / "kept"
    args = command(checkpoint, toy_data, out)
    args[args.index(EPS)], args[args.index("energy,mahalanobis")] = "0.08", "energy"
    args[args.index("--steps") + 1] = "1"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StageStore, "clear", lambda self: None)
        assert main(args) == 0
    off = next(row for row in json.loads((out / "results.json").read_text())["rows"] if row["detector"] == "off")
    shown = subprocess.run([sys.executable, str(REPO / "scripts" / "adaptive_progress.py"), str(out)],
                           capture_output=True, text=True, timeout=120)
    block = next(b for b in shown.stdout.split("\n\n") if b.strip().startswith("off at "))
    last = [line for line in block.splitlines() if "DARA after" in line][-1]
    assert f"({off['dara']['count']}/{off['dara']['n']})" in last.split(";")[0], (last, off["dara"])


def test_a_saved_detector_is_evaluated_as_it_is(finished, checkpoint, toy_data, tmp_path, same_code):
    out, results = finished
    again = tmp_path / "file"
    args = command(checkpoint, toy_data, again, "--detector-file", str(out / "detectors" / "reject-energy.json"))
    args[args.index("energy,mahalanobis")] = "mahalanobis"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StageStore, "clear", lambda self: None)
        assert main(args) == 0
    # only what the run calibrated is kept for a resume: a later run naming the kind must calibrate its own
    assert sorted(p.name for p in (again / STAGES / adaptive_module.CALIBRATION).iterdir()) == ["mahalanobis.json"]
    loaded = json.loads((again / "results.json").read_text())
    assert loaded["detectors"]["energy"]["thresholds"] == results["detectors"]["energy"]["thresholds"]
    assert "except" not in (again / "results.md").read_text(), "calibrated as the run calibrates: nothing to say"
    assert [r["dara"] for r in loaded["rows"] if r["detector"] == "energy"] == \
        [r["dara"] for r in results["rows"] if r["detector"] == "energy"]


@pytest.fixture
def no_work(monkeypatch):
    """Any step of the experiment proper fails the test: bad input must be refused before."""
    def work(*args, **kwargs):
        raise AssertionError("work started before the input was checked")

    monkeypatch.setattr(suite_module, "run_suite", work)
    for name in ("detection_splits", "calibrate_detectors"):
        monkeypatch.setattr(adaptive_module, name, work)


@pytest.fixture(scope="module")
def unrecorded(tmp_path_factory):
    """A model with no training record (no validation split held out of any data set)."""
    return robgen.save_checkpoint(tiny_model(num_classes=4), tmp_path_factory.mktemp("bare") / "unrecorded")


@pytest.fixture(scope="module")
def foreign_detector(unrecorded, tmp_path_factory):
    """An energy reject option calibrated for another model than the checkpoint."""
    other = robgen.load_model(unrecorded)
    option = make_reject_option("energy").calibrate(other, torch.rand(20, 3, 32, 32, generator=torch.Generator()
                                                                                     .manual_seed(0)))
    return option.save(tmp_path_factory.mktemp("foreign") / "reject-energy.json")


@pytest.fixture(scope="module")
def unfitted_detector(checkpoint, tmp_path_factory):
    """A reject option for the checkpoint whose saved thresholds were edited to null (made once for the module)."""
    model = robgen.load_model(checkpoint)
    option = make_reject_option("band").calibrate(model, torch.rand(
        20, *model.spec.input_size, generator=torch.Generator().manual_seed(0)))
    path = option.save(tmp_path_factory.mktemp("unfitted") / "reject-band.json")
    data = json.loads(path.read_text())
    data["thresholds"] = {"lo": None, "hi": None}
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("change, says", [
    ({"--detector": "energy,lid"}, "unknown detector 'lid': choose from energy, band, class-energy, multi-t, "
                                   "mahalanobis"),
    ({"--eps": "0"}, "--eps must be in (0, 1]"),
    ({"--eps": "8"}, "write 8/255, not 8"),
    ({"--eps": "8/255,1.5"}, "--eps must be in (0, 1]"),
    ({"--restarts": "0"}, "--restarts must be >= 1"),
    ({"--target-classes": "0"}, "--target-classes must be >= 1"),
    ({"--eps": "8/255,0.03137255"}, "eps 0.03137254901960784 and 0.03137255 are one radius to 6 digits (both 8/255)"),
    ({"--lambdas": "0.6,0.6000001"}, "lambdas 0.6 and 0.6000001 are one to 6 digits"),
    ({"--lambdas": "0.6,-1"}, "lambdas must be finite numbers >= 0"),  # (was accepted; reproduce refused it)
    ({"--target-fpr": "1"}, "--target-fpr must be in (0, 1)"),
    ({"--model": "UNRECORDED"}, "records no validation split held out of"),
    ({"--detector-file": "FOREIGN"}, "calibrated for another model"),
    ({"--detector-file": "UNFITTED"}, "is not a saved reject option"),  # null thresholds, hand-edited
    ({"--radius": "1/255"}, "--radius sets robust-margin, which this run does not name (--detector "
                            "energy,mahalanobis)"),
    ({"--temperature": "2", "--detector": "mahalanobis"}, "--temperature sets energy, band or energy-gap, which"),
    ({"--detector": "robust-margin", "--radius": "8"}, "robust-margin's radius: L-inf eps=8 is larger than"),
    ({"--detector": "robust-margin", "--inner-steps": "0"}, "robust-margin's inner steps: steps must be"),
    ({"--temperature": "0"}, "temperature must be"),
    ({"--detector": "multi-t", "--temperatures": "1,hot"}, "--temperatures takes numbers separated by commas"),
    ({"--limit": "100000"}, "limit 100000 is larger than the test split"),
    ({"--limit": "100000", "--estimate-only": None}, "limit 100000 is larger than the test split"),  # no estimate
    ({"--limit": "0"}, "--limit must be >= 1"),
    ({"--report-only": None}, "writes a report again from the stages a run kept (--keep-stages);"),
    ({"--report-only": None, "--overwrite": None}, "never removes them: drop --overwrite"),
    ({"--report-only": None, "--estimate-only": None}, "give one of them"),
    ({"--target-classes": "4"}, "--target-classes 4: a 4-class model has 3 classes to aim an image at"),
    ({"--eps": "8/255,,16/255"}, "--eps '8/255,,16/255' has an empty entry"),
    ({"--detector": "multi-t", "--temperatures": "0,1"}, "--temperatures must be finite numbers > 0"),
    ({"--detector": "multi-t", "--temperatures": "1,2,1"}, "--temperatures names 1 twice"),
])
def test_bad_input_is_refused_before_any_work(checkpoint, toy_data, tmp_path, capsys, no_work, unrecorded,
                                              foreign_detector, unfitted_detector, change, says):
    args = command(checkpoint, toy_data, tmp_path / "out")
    for flag, value in change.items():
        value = {"UNRECORDED": str(unrecorded), "FOREIGN": str(foreign_detector),
                 "UNFITTED": str(unfitted_detector)}.get(value, value)
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag] if value is None else [flag, value]
    assert main(args) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_library_refuses_a_model_without_a_validation_split(unrecorded, toy_data, no_work):
    with pytest.raises(ValueError, match="records no validation split held out of"):
        adaptive_module.adaptive_evaluation(robgen.load_model(unrecorded), str(toy_data), limit=4, steps=1)


def test_the_validation_split_is_found_however_the_data_folder_is_spelled(tmp_path, monkeypatch):
    """A trailing slash (tab completion), a relative path: the same data as the recorded folder, as `detect` reads
    it; the adaptive command compared the strings and refused them."""
    from robgen.models import ModelSpec

    folder = tmp_path / "images"
    folder.mkdir()
    spec = ModelSpec(architecture="tiny", num_classes=2, class_labels=["a", "b"], input_size=(3, 4, 4),
                     training={"data": {"name": str(folder), "val_size": 8}})
    monkeypatch.chdir(tmp_path)
    for spelling in (str(folder), str(folder) + "/", "images", "./images/"):
        adaptive_module.require_validation_split(spec, spelling)
    with pytest.raises(ValueError, match="records no validation split"):
        adaptive_module.require_validation_split(spec, str(tmp_path / "other"))


def test_the_cli_knows_the_librarys_detectors_and_fpr_counts():
    from robgen.cli.adaptive import FPR_AMONG as CLI_FPR_AMONG
    from robgen.detection.reject import FPR_AMONG

    assert DETECTORS == KINDS and CLI_FPR_AMONG == FPR_AMONG


def test_each_settings_flag_sets_every_kind_that_takes_that_setting():
    from robgen.cli.adaptive import SETTING_FLAGS
    from robgen.detection.reject import REJECT_OPTIONS

    for flag, (name, kinds) in SETTING_FLAGS.items():
        takers = tuple(kind for kind in KINDS
                       if name in inspect.signature(REJECT_OPTIONS[kind].__init__).parameters)
        assert kinds == takers, flag


def test_the_command_calibrates_each_detector_with_the_settings_given(checkpoint, toy_data, tmp_path, same_code):
    out = tmp_path / "out"
    args = ["adaptive", "--model", str(checkpoint), "--data", str(toy_data), "--detector", "robust-margin,energy",
            "--radius", "1/255", "--inner-steps", "2", "--temperature", "2", "--eps", "8/255", "--limit", "4",
            "--steps", "1", "--restarts", "1", "--lambdas", "1.2", "--batch-size", "4", "--device", "cpu",
            "--out", str(out)]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    given = {"robust-margin": {"radius": 1 / 255, "steps": 2}, "energy": {"temperature": 2.0}}
    assert results["settings"]["detector_settings"] == given
    assert {kind: results["detectors"][kind]["settings"] for kind in given} == given
    assert "(radius 1/255, steps 2)" in (out / "results.md").read_text()


def test_the_fpr_counted_among_the_correctly_classified_sets_the_thresholds_on_those_and_the_report_says_so(
        checkpoint, toy_data, tmp_path, same_code):
    from robgen import data as datasets
    from robgen.experiments.adaptive_report import _pct
    from robgen.experiments.pipeline import detection_splits, model_outputs

    out = tmp_path / "out"
    args = ["adaptive", "--model", str(checkpoint), "--data", str(toy_data), "--detector", "energy,robust-margin",
            "--fpr-among", "correct", "--target-fpr", "0.1", "--eps", "8/255", "--limit", "4", "--steps", "1",
            "--restarts", "1", "--lambdas", "1.2", "--batch-size", "4", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["fpr_among"] == "correct"
    model = robgen.load_model(checkpoint).eval()
    validation = model_outputs(model, datasets.make_loader(detection_splits(model, str(toy_data)).validation, 4),
                               progress=False)
    correct = validation.logits.argmax(1) == validation.labels
    assert 0 < int(correct.sum()) < len(correct)  # both kinds of image, or the test would show nothing
    energy = results["detectors"]["energy"]
    alone = make_reject_option("energy", target_fpr=0.1).fit(validation.logits[correct])
    assert energy["thresholds"] == alone.thresholds()
    for name in ("energy", "robust-margin"):
        fit = results["detectors"][name]["validation"]
        assert fit["fpr_among"] == "correct" and fit["n"] == int(correct.sum()) and fit["n_all"] == len(correct)
    text = (out / "results.md").read_text()
    assert "at most 10% of those the model classifies correctly are rejected (Chen et al. 2023" in text
    assert f"classified correctly ({100 * energy['validation']['rejection_rate_all']:.1f}% of all {len(correct)}" in text
    clean = next(row["clean"] for row in results["rows"] if row["detector"] == "energy")
    assert f"({_pct(clean['rejection_rate_of_correct'])} of those classified correctly)" in text
    with pytest.raises(SystemExit):  # argparse: "invalid choice: 'some' (choose from 'all', 'correct')"
        main(args[:-2] + ["--fpr-among", "some", "--out", str(tmp_path / "bad")])
    with pytest.raises(ValueError, match="fpr_among must be one of all, correct"):
        AdaptiveSettings(detectors=("energy",), fpr_among="correctly")


def test_the_library_refuses_settings_for_a_detector_not_named_or_given_calibrated(checkpoint, toy_data, no_work):
    model = robgen.load_model(checkpoint)
    with pytest.raises(ValueError, match="which this run does not name"):
        adaptive_module.adaptive_evaluation(model, str(toy_data), detectors=("energy",), limit=4, steps=1,
                                            detector_settings={"band": {"temperature": 2.0}})
    with pytest.raises(ValueError, match="takes no setting radius"):
        AdaptiveSettings(detectors=("energy",), detector_settings={"energy": {"radius": 0.1}})
    with pytest.raises(ValueError, match="maps each kind to its settings"):
        AdaptiveSettings(detectors=("energy",), detector_settings={"energy": 2.0})
    calibrated = make_reject_option("energy").calibrate(model, torch.rand(20, *model.spec.input_size))
    with pytest.raises(ValueError, match="given calibrated, with its own settings"):
        adaptive_module.adaptive_evaluation(model, str(toy_data), detectors=(calibrated,), limit=4, steps=1,
                                            detector_settings={"energy": {"temperature": 2.0}})


def test_the_detector_switched_off_accepts_everything_and_leaves_the_attack_a_plain_one():
    model = tiny_model()
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    off = DetectorOff(target_fpr=0.0).fit(model(x).detach(), model=model)
    defended = robgen.detection.defended.DefendedClassifier(model, off)
    x = x.requires_grad_(True)
    logits, score = defended.outputs(x)
    assert (score <= 0).all() and off.validation["rejected"] == 0
    combined = defended.combined_logits(x)
    assert torch.allclose(torch.log_softmax(combined, 1)[:, :-1], torch.log_softmax(logits, 1), atol=1e-6)
    (grad,) = torch.autograd.grad(score.sum(), x)  # in the graph, with no pull: Orthogonal PGD can differentiate it
    assert torch.equal(grad, torch.zeros_like(grad))


def test_the_estimate_counts_every_attack_restart_and_suite():
    settings = AdaptiveSettings(detectors=("energy", "band"), eps_list=(8 / 255,), steps=10, restarts=2,
                                lambdas=(1.2,), batch_size=5, match_targets=3)
    estimate = estimate_passes(settings, n_test=10, n_validation=7, n_reference=0, shared_references=False)
    # per image and suite: 4 attacks at r*s (pgd, penalty, matching, orthogonal twice) + 3 APGD at r*(s+1) + 2 at s
    per_suite = 2 * 10 * 3 + 2 * 10 * 2 + 3 * 2 * 11 + 10 + 10
    checked = 3 * 5  # each suite's defended classifier checks its gradient once, on its first batch of 5
    assert estimate["suites"] == 3 and estimate["forward_backward_passes"] == 3 * 10 * per_suite + checked
    # restarts (adaptive) or 1, plus the clean and the stored point per attack, plus a confirmation and the check of
    # the final point per adaptive one, plus the clean pass that orders the targets of logit matching and APGD-T,
    # plus the references' s judged iterates; logit matching's 3 targets per batch (2) and once to check them
    forwards = 7 * 2 + 2 * 1 + 9 * 2 + 7 + 7 + 2 + 2 * 10
    assert estimate["forward_passes"] == 3 * (10 * forwards + (2 + 1) * 3) + 7 + 10
    # the references (PGD, one HE-PGD) computed once per eps for all three suites: s passes each, and s + 1 forwards
    # (each iterate judged, and the final point)
    shared = estimate_passes(settings, n_test=10, n_validation=7, n_reference=0)
    assert shared["forward_backward_passes"] == 3 * 10 * (per_suite - 2 * 10) + 10 * 2 * 10 + checked
    assert shared["forward_passes"] == 3 * (10 * (7 * 6 + 2) + (2 + 1) * 3) + 10 * 2 * 11 + 7 + 10


def test_the_targeted_attacks_take_their_own_number_of_target_classes():
    """APGD-T and logit matching made one run per restart, one target class each: 3 classes at the default, where
    AutoAttack's APGD-T takes 9. `target_classes` (--target-classes) sets them apart from the restarts; the
    estimate counts them, and the convergence curve runs to the most runs any attack makes."""
    from robgen.detection.defended import DefendedClassifier
    from robgen.experiments.adaptive_suite import make_suite_attack

    base = dict(detectors=("energy",), eps_list=(8 / 255,), steps=10, restarts=2, lambdas=(1.2,), batch_size=5,
                match_targets=3)
    plain, nine = AdaptiveSettings(**base), AdaptiveSettings(**base, target_classes=9)
    assert (plain.target_runs, plain.most_runs, nine.target_runs, nine.most_runs) == (2, 2, 9, 9)
    before, after = (estimate_passes(s, n_test=10, n_validation=7)["per_image_per_suite"] for s in (plain, nine))
    assert after["k+1 apgd-t"]["forward_backward"] == 9 * 11 and after["logit matching"]["forward_backward"] == 90
    assert after["k+1 apgd-t"]["forward"] == before["k+1 apgd-t"]["forward"] + 7
    assert after["k+1 pgd"] == before["k+1 pgd"]  # the other attacks keep their restarts
    model = tiny_model()
    defended = DefendedClassifier(model, DetectorOff(target_fpr=0.0).fit(torch.zeros(2, 10), model=model))
    x = torch.rand(2, 3, 32, 32)
    for name, runs in (("k+1 apgd-t", 9), ("logit matching", 9), ("k+1 apgd-ce", 2)):
        attack = make_suite_attack(name, defended, 8 / 255, nine, torch.Generator(), (x, torch.tensor([0, 1])))
        assert attack.restarts == runs, name
    with pytest.raises(ValueError, match="target_classes must be >= 1"):
        AdaptiveSettings(**base, target_classes=0)


def _entry(count, n=10):
    from robgen.detection.dara import rate

    return rate(torch.arange(n) < count)


def test_a_dara_that_rises_with_eps_or_stays_high_at_a_large_eps_is_flagged():
    rows = [{"detector": d, "eps": e, "dara": _entry(c)}
            for d, e, c in (("energy", 8 / 255, 2), ("energy", 64 / 255, 5), ("off", 8 / 255, 1), ("off", 64 / 255, 0))]
    bare = [{"eps": 8 / 255, "robust_accuracy": _entry(1)}, {"eps": 64 / 255, "robust_accuracy": _entry(0)}]
    checks = sanity_checks(rows, bare, {8 / 255: (True, 0), 64 / 255: (False, 1)})
    verdicts = {(c["check"], c["subject"]): c["passed"] for c in checks}
    assert verdicts[("DARA does not rise with eps (each eps's suite alone)", "energy")] is False
    assert verdicts[("near 0 at a large eps", "energy")] is False
    assert verdicts[("robust accuracy does not rise with eps (each eps's suite alone)", "bare model")] is True
    assert verdicts[("near 0 at a large eps", "bare model")] is True
    assert verdicts[("the detector switched off gives the bare model's robust accuracy", "eps 64/255")] is False
    one_eps = sanity_checks(rows[:1] + rows[2:3], bare[:1], {8 / 255: (True, 0)})
    assert {c["passed"] for c in one_eps if c["check"] == "near 0 at a large eps"} == {None}  # not run below 64/255


def test_adaptive_attacks_weaker_than_plain_pgd_with_the_detector_off_and_a_logit_detector_that_survives_are_flagged():
    """Two checks of Carlini et al. (2019) the report lacked: against no detector the adaptive attacks must find what
    plain PGD on the bare model finds; a detector of the logits alone on a standard model must fall to about its FPR.
    (The check "detector off = bare model" reads both from the same points, so it cannot catch a weak suite.)"""
    from robgen.experiments.adaptive_report import adaptive_against_references

    ok = torch.ones(10, dtype=torch.bool)

    def stage(evaded):
        evaded = torch.tensor(evaded, dtype=torch.bool)
        return {"evaded": evaded, "point_logits": torch.stack([evaded.float(), (~evaded).float()], 1),
                "labels": torch.ones(10).long()}

    off = {"k+1 pgd": stage([1] * 3 + [0] * 7), "pgd (bare model)": stage([1] * 9 + [0])}
    found = adaptive_against_references(ok, off, ["pgd (bare model)"])
    assert found["adaptive"]["count"] == 7 and found["references"]["count"] == 1 and found["only_references"] == 6
    assert adaptive_against_references(ok, off, []) is None
    rows = [{"detector": "energy", "eps": 8 / 255, "dara": _entry(6)}, {"detector": "off", "eps": 8 / 255,
                                                                         "dara": _entry(0)}]
    bare = [{"eps": 8 / 255, "robust_accuracy": _entry(0)}]
    checks = sanity_checks(rows, bare, {8 / 255: (True, 0)}, {8 / 255: found}, ["energy"], True, {"energy": 0.05})
    verdicts = {c["check"]: c["passed"] for c in checks}
    assert verdicts["with the detector off, the adaptive attacks find what plain attacks on the bare model find"] \
        is False
    assert verdicts["a detector of the logits alone on a standard model is driven to about its FPR"] is False
    rows[0]["dara"] = _entry(0)
    again = sanity_checks(rows, bare, {8 / 255: (True, 0)}, {8 / 255: adaptive_against_references(
        ok, {**off, "k+1 pgd": stage([1] * 9 + [0])}, ["pgd (bare model)"])}, ["energy"], True, {"energy": 0.05})
    assert all(c["passed"] is not False for c in again)
    robust = sanity_checks(rows, bare, {8 / 255: (True, 0)}, None, ["energy"], False, {"energy": 0.05})
    assert [c["passed"] for c in robust if "standard model" in c["check"]] == [None]


def test_an_evasion_found_at_a_smaller_eps_counts_at_every_larger_one():
    """4 images, all defended on clean inputs: the 4/255 suite breaks 0 and 1, the 8/255 suite 0 and 2. A point of
    the 4/255 ball lies in the 8/255 one, so only image 3 is defended at 8/255; each eps alone said 2 of 4 at both,
    and the check on counts passed."""
    from robgen.experiments.adaptive_report import SMALLER, bare_flags, with_smaller_eps

    ok = torch.ones(4, dtype=torch.bool)

    def stage(evaded, run):
        evaded = torch.tensor(evaded, dtype=torch.bool)
        return {"evaded": evaded, "clean_correct": ok, "clean_accepted": ok, "first_run": evaded.long() * run,
                "point_logits": torch.stack([evaded.float(), (~evaded).float()], 1), "labels": torch.ones(4).long()}

    per_eps = {8 / 255: {"k+1 pgd": stage([1, 0, 1, 0], 1)}, 4 / 255: {"k+1 pgd": stage([1, 1, 0, 0], 2)}}
    carried = with_smaller_eps(per_eps)
    assert SMALLER not in carried[4 / 255] and list(carried[8 / 255])[0] == SMALLER
    small, large = (detector_row("energy", eps, carried[eps], restarts=2) for eps in (4 / 255, 8 / 255))
    assert small["dara"]["count"] == 2 and large["dara"]["count"] == 1 and large["defended"] == [3]
    assert large["found_first"] == {SMALLER: 2, "k+1 pgd": 1}
    # image 1 fell at the smaller eps's second restart: one restart of the larger eps's suite leaves it standing
    assert [entry["count"] for entry in large["dara_by_restarts"]] == [2, 1]
    assert torch.equal(bare_flags(ok, carried[8 / 255])["all"], torch.tensor([False, False, False, True]))


def test_the_restart_check_of_a_skip_evaded_run_is_not_a_false_alarm():
    """With --skip-evaded, an image the first attack broke only at the last restart was tried by no later attack,
    so the DARA of one restart fewer counted it defended: the check failed on a run that had converged. It now
    reads the lower bound too, and says "not known" where the two bounds disagree."""
    n = 100
    ok = torch.ones(n, dtype=torch.bool)
    first = torch.arange(n) < 60  # attack A breaks 0-59, ten of them (50-59) only at its second restart
    first_run = torch.where(first, torch.where(torch.arange(n) >= 50, 2, 1), 0)
    attacked = ~first  # B skips every image A broke
    second = (torch.arange(n) >= 60) & (torch.arange(n) < 70)  # B breaks 60-69
    stages = {"a": {"evaded": first, "clean_correct": ok, "clean_accepted": ok, "first_run": first_run,
                    "attacked": ok.clone()},
              "b": {"evaded": second, "clean_correct": ok, "clean_accepted": ok, "first_run": second.long(),
                    "attacked": attacked}}
    row = {"eps": 8 / 255, **detector_row("energy", 8 / 255, stages, restarts=2)}
    assert [e["count"] for e in row["dara_by_restarts"]] == [40, 30]
    assert [e["count"] for e in row["dara_by_restarts_floor"]] == [30, 30]
    check = convergence_checks([row])[0]
    assert check["passed"] is None and "not known" in check["detail"]
    assert "at most 10 (at least 0) image(s) broken by the last restart" in check["detail"]
    row["dara_by_restarts_floor"] = [row["dara_by_restarts_floor"][0] | {"rate": 0.4, "count": 40},
                                     row["dara_by_restarts"][1]]
    # even the floor's count is 10 above the full run's (more than 1): the last restart mattered
    assert convergence_checks([row])[0]["passed"] is False


def test_the_paired_checks_count_the_images_one_side_broke_not_two_intervals():
    """The restart curve and the detector-off comparison are on the same images, so the images the last restart
    (or only the references) broke are counted, not sampling noise: 1% of the test images, at least one, may go. An
    interval over test images let a 500-image run's last restart break 20 images (170 -> 150 defended) and pass,
    and 9 of 100 images broken by the references alone pass."""
    from robgen.experiments.adaptive_report import adaptive_against_references, noise_images

    def curve(*counts, n=500):
        return [_entry(count, n) for count in counts]

    assert (noise_images(500), noise_images(100), noise_images(20)) == (5, 1, 1)
    rows = [{"detector": "energy", "eps": 8 / 255, "dara_by_restarts": curve(180, 170, 150)},
            {"detector": "band", "eps": 8 / 255, "dara_by_restarts": curve(180, 155, 150)},
            {"detector": "off", "eps": 8 / 255, "dara_by_restarts": curve(180, 156, 150)}]
    checks = {check["subject"]: check for check in convergence_checks(rows)}
    assert rows[0]["dara_by_restarts"][1]["rate"] <= rows[0]["dara_by_restarts"][2]["ci"][1]  # the old rule passed
    assert checks["energy"]["passed"] is False
    assert "20 image(s) broken by the last restart" in checks["energy"]["detail"]
    assert checks["band"]["passed"] is True and checks["detector off"]["passed"] is False  # 5 may go, 6 may not

    ok = torch.ones(100, dtype=torch.bool)

    def stage(broken):
        evaded = torch.arange(100) < broken
        return {"evaded": evaded, "point_logits": torch.stack([evaded.float(), (~evaded).float()], 1),
                "labels": torch.ones(100).long()}

    bare = [{"eps": 8 / 255, "robust_accuracy": _entry(36, 100)}]
    off_rows = [{"detector": "off", "eps": 8 / 255, "dara": _entry(36, 100)}]
    for references_broke, passed in ((64, False), (56, True), (57, False)):  # the adaptive attacks broke 55
        found = adaptive_against_references(ok, {"k+1 pgd": stage(55), "pgd (bare model)": stage(references_broke)},
                                            ["pgd (bare model)"])
        assert found["only_references"] == references_broke - 55
        check = next(c for c in sanity_checks(off_rows, bare, {8 / 255: (True, 0)}, {8 / 255: found})
                     if c["check"].startswith("with the detector off"))
        assert check["passed"] is passed, (references_broke, check)
    assert found["adaptive"]["rate"] <= found["references"]["ci"][1]  # 45% inside 43%'s interval: the old rule passed


def test_a_logit_detector_on_a_standard_model_is_held_to_its_own_target_fpr():
    """A detector given calibrated at 1% FPR may leave at most the bare robust accuracy plus 1%, not the run's 5%."""
    rows = [{"detector": "energy", "eps": 8 / 255, "dara": _entry(5, 100)},  # 5% > 3.7% + 1%, < 3.7% + 5%
            {"detector": "off", "eps": 8 / 255, "dara": _entry(0, 100)}]
    bare = [{"eps": 8 / 255, "robust_accuracy": _entry(0, 100)}]  # upper bound 3.7%

    def verdict(fpr):
        return next(c["passed"] for c in sanity_checks(rows, bare, {8 / 255: (True, 0)}, None, ["energy"], True,
                                                       {"energy": fpr}) if "standard model" in c["check"])

    assert verdict(0.01) is False and verdict(0.05) is True


def test_first_to_evade_counts_only_images_defended_on_clean_inputs_and_adds_up_to_what_the_suite_broke():
    """10 images: 2 misclassified and 1 rejected on clean inputs (never defended: an attack "evades" on them at
    once); of the 7 defended ones the first attack breaks 3, the second 2 more (and one the first broke), 2 stand.
    The counts were 6 and 2 (the 3 never-defended images credited to the first attack)."""
    correct = torch.tensor([1, 1, 1, 1, 1, 1, 1, 0, 0, 1], dtype=torch.bool)
    accepted = torch.tensor([1, 1, 1, 1, 1, 1, 1, 1, 1, 0], dtype=torch.bool)
    first = torch.tensor([1, 1, 1, 0, 0, 0, 0, 1, 1, 1], dtype=torch.bool)
    second = torch.tensor([1, 0, 0, 1, 1, 0, 0, 1, 1, 1], dtype=torch.bool)
    stages = {name: {"evaded": evaded, "clean_correct": correct, "clean_accepted": accepted}
              for name, evaded in (("k+1 pgd", first), ("penalty pgd", second))}
    row = detector_row("energy", 8 / 255, stages)
    assert row["found_first"] == {"k+1 pgd": 3, "penalty pgd": 2}
    assert row["dara"]["count"] == 2 and sum(row["found_first"].values()) == 7 - row["dara"]["count"]


@pytest.mark.parametrize("run", sorted((REPO / "results" / "adaptive").glob("*/results.json")), ids=lambda p: p.parent.name)
def test_the_committed_runs_first_to_evade_counts_add_up_or_are_marked_unknown(run):
    """scripts/fix_found_first.py mended the committed runs made before the fix: each row's counts add up to the
    images the suite broke, or are None (unknown) and results.md says so."""
    results = json.loads(run.read_text())
    for row in results["rows"]:
        if row["found_first"] is None:
            assert "No count for" in (run.parent / "results.md").read_text()
            continue
        broken = row["clean"]["accuracy"]["count"] - row["dara"]["count"]
        assert sum(row["found_first"].values()) == broken, (row["detector"], row["eps_label"])


def test_the_mending_script_fixes_old_counts_where_exact_and_keeps_right_ones():
    import importlib.util

    spec = importlib.util.spec_from_file_location("fix_found_first", REPO / "scripts" / "fix_found_first.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    def row(first, later, clean_ok=414, dara=0):
        return {"clean": {"accuracy": {"count": clean_ok}}, "dara": {"count": dara},
                "found_first": {"k+1 pgd": first, "penalty pgd": later}}

    old = row(500, 0)  # every image credited to the first attack, 86 of them never defended
    assert script.mend_row(old) == "k+1 pgd: 500 -> 414" and old["found_first"] == {"k+1 pgd": 414, "penalty pgd": 0}
    unknown = row(480, 7, clean_ok=352, dara=175)  # 487 > 177 broken, with a later attack credited
    assert script.mend_row(unknown).startswith("unknown") and unknown["found_first"] is None
    new = row(170, 7, clean_ok=352, dara=175)  # a run after the fix: 177 = the images broken
    assert script.mend_row(new) == "right already" and new["found_first"] == {"k+1 pgd": 170, "penalty pgd": 7}


def test_dara_by_restarts_counts_each_evasion_from_its_restart_and_flags_a_suite_still_falling():
    clean = torch.ones(20, dtype=torch.bool)
    first_run = torch.tensor([1] * 4 + [2] * 2 + [3] * 6 + [0] * 8)  # 12 images evaded: 4, 2 and 6 per restart
    stages = {"k+1 pgd": {"evaded": first_run > 0, "first_run": first_run, "clean_correct": clean,
                          "clean_accepted": clean},
              "pgd (bare model)": {"evaded": torch.arange(20) == 19, "first_run": (torch.arange(20) == 19).long(),
                                   "clean_correct": clean, "clean_accepted": clean}}
    curve = dara_by_restarts(stages, 3)
    assert [entry["count"] for entry in curve] == [15, 13, 7]  # 20 - evaded so far - the reference's 1
    rows = [{"detector": "energy", "eps": 8 / 255, "dara_by_restarts": curve},
            {"detector": "off", "eps": 8 / 255, "dara_by_restarts": curve[:2] + [curve[1]]}]
    verdicts = {check["subject"]: check["passed"] for check in convergence_checks(rows)}
    assert verdicts == {"energy": False, "detector off": True}  # the last restart broke 6 > 1 image(s), and 0
    assert dara_by_restarts({"k+1 pgd": {"evaded": clean}}, 3) is None  # stages that do not record the restart
    one = convergence_checks([{"detector": "energy", "eps": 8 / 255, "dara_by_restarts": curve[:1]}])
    assert one[0]["passed"] is None and "one restart" in one[0]["detail"]


def test_a_failed_sanity_check_is_flagged_at_the_top_of_the_report(finished):
    _, results = finished
    broken = json.loads(json.dumps(results))
    broken["sanity"][0]["passed"] = False
    text = markdown(broken)
    assert "Sanity checks FAILED" in text.split("## What was measured")[0]
    if not any(c["passed"] is False for c in results["sanity"]):
        assert "FAILED" not in markdown(results)


def test_the_restart_table_has_a_column_for_every_point_of_the_curves(finished):
    """With more target classes than restarts the curves have a point per target class, but the table had a column
    per restart: with 2 restarts and 3 target classes the last point (the suite's DARA) fell off the table, and with
    1 restart the section was left out although results.json held a 3-point curve."""
    _, results = finished
    for restarts in (1, 2):
        longer = json.loads(json.dumps(results))
        longer["settings"]["restarts"] = restarts
        for row in longer["rows"]:
            row["dara_by_restarts"] = [dict(row["dara"], rate=rate) for rate in (0.75, 0.5, 0.25)]
        section = markdown(longer).split("## DARA after each restart")[1].split("##")[0]
        header, _, first = [line for line in section.splitlines() if line.startswith("|")][:3]
        assert header.endswith("| after 1 | after 2 | after 3 |")
        cells = [cell.strip() for cell in first.strip(" |").split("|")]
        assert len(cells) == 5 and cells[-1].startswith("25.0% [")  # detector, eps and the three points


def one_pixel_png(target) -> None:
    """What a stubbed savefig writes, to a path or a buffer (save_figure draws a PNG into memory first)."""
    from PIL import Image

    Image.new("RGB", (1, 1)).save(target, format="PNG")


def test_a_detector_given_calibrated_at_another_fpr_is_described_as_it_was_calibrated(finished, tmp_path,
                                                                                       monkeypatch):
    from robgen.experiments.adaptive_report import figure

    _, results = finished
    given = json.loads(json.dumps(results))
    given["detectors"]["energy"]["target_fpr"] = 0.01
    text = markdown(given).split("## Detection-aware")[0]
    assert "at most 5% of them are rejected (except: energy was given calibrated, at 1% target FPR on" in text
    stratified = json.loads(json.dumps(results))
    stratified["detectors"]["energy"]["validation"]["fpr_among"] = "correct"
    text = markdown(stratified).split("## Detection-aware")[0]
    assert "energy was given calibrated, at 5% target FPR on" in text and "counted among those classified correctly" in text
    titles = []
    monkeypatch.setattr("matplotlib.figure.Figure.savefig",
                        lambda fig, target, **options: (titles.append(fig.axes[0].get_title()), one_pixel_png(target)))
    figure(given, tmp_path / "given.png")
    figure(results, tmp_path / "own.png")
    assert "each detector's own validation FPR" in titles[0] and "at 5% validation FPR" in titles[1]


def test_the_figure_of_one_eps_shows_it_in_a_window_of_its_size_not_the_nudges_width(finished, tmp_path,
                                                                                        monkeypatch):
    from robgen.experiments.adaptive_report import figure

    _, results = finished
    one = json.loads(json.dumps(results))
    one["bare"] = [row for row in one["bare"] if row["eps_label"] == "8/255"]
    one["rows"] = [row for row in one["rows"] if row["eps_label"] == "8/255"]
    limits = []
    monkeypatch.setattr("matplotlib.figure.Figure.savefig",
                        lambda fig, target, **options: (limits.append(fig.axes[0].get_xlim()), one_pixel_png(target)))
    figure(one, tmp_path / "one.png")
    figure(results, tmp_path / "two.png")
    assert limits[0] == pytest.approx((4.0, 12.0))
    assert limits[1][0] < 8 and limits[1][1] > 64


@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), ("--skip-evaded",)], ids=["every image", "skipping evaded"])
def test_two_ranks_give_the_numbers_of_one_process(checkpoint, toy_data, tmp_path, extra):
    """12 test images in batches of 4 (rank 0: batches 0 and 2, rank 1: batch 1), every attack with random starts:
    every number of results.json is the single process's; rank 0 alone prints and writes, and calibrates
    robust-margin (the others take its detectors). With --skip-evaded each rank picks its batches' standing images from the flags every rank got back."""
    from tests.test_distributed import alone, differing_keys, torchrun

    arguments = ["-m", "robgen", *command(checkpoint, toy_data, "OUT")[:-2], *extra]
    arguments[arguments.index("--limit") + 1] = "12"
    arguments[arguments.index("--eps") + 1] = "8/255"
    arguments[arguments.index("--detector") + 1] = "energy,mahalanobis,robust-margin"  # rank 0 alone calibrates it
    result = alone(*arguments, "--out", str(tmp_path / "one"))
    assert result.returncode == 0, result.stderr[-3000:]
    result = torchrun(2, *arguments, "--out", str(tmp_path / "two"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote results.json") == 1, "rank 0 alone prints"
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["hardware"].startswith("2 x CPU") and two["n_test"] == 12
    assert differing_keys(one, two, ignore=("wall_seconds", "hardware", "continued")) == []
    assert any(row["dara"]["count"] < row["clean"]["accuracy"]["count"] for row in one["rows"]), "attacks that bite"
    if extra:  # and images skipped: some later attack ran on fewer images than the first
        assert any(attack["evasion_rate"]["n"] < row["per_attack"]["k+1 pgd"]["evasion_rate"]["n"]
                   for row in one["rows"] for attack in row["per_attack"].values())


def test_an_error_while_attacking_is_not_reported_as_bad_input(checkpoint, toy_data, tmp_path, monkeypatch):
    """Bad input gets a one-line message before any work; a failure hours into the attacks keeps its traceback."""
    from robgen.experiments import adaptive as experiment

    def broken(*args, **kwargs):
        raise ValueError("a bug inside the suite")

    monkeypatch.setattr(experiment, "run_suites", broken)
    with pytest.raises(RuntimeError, match="failed while attacking.*a bug inside the suite"):
        main(command(checkpoint, toy_data, tmp_path / "out"))


def test_a_reference_computed_once_and_judged_by_each_detector_equals_running_it_per_detector(checkpoint, toy_data):
    """The shared references (`reference_stage` + `judge_reference`) give, detector by detector, the flags that
    `suite_stage` gives the same attack from the same seed: evasions (every iterate judged), final-point verdicts,
    clean flags, scores."""
    from robgen import data as datasets
    from robgen.detection.defended import DefendedClassifier
    from robgen.experiments.adaptive_suite import judge_reference, make_suite_attack, reference_stage, suite_stage
    from robgen.experiments.pipeline import detection_splits, model_outputs, tensor_batches

    model = robgen.load_model(checkpoint).eval()
    splits = detection_splits(model, str(toy_data))
    x, y = datasets.load_tensors(datasets.first(splits.test, 12, "test"))
    validation, _ = datasets.load_tensors(splits.validation)
    train_x, train_y = datasets.load_tensors(datasets.first(splits.train, 40, "train"))
    energy = make_reject_option("energy").calibrate(model, validation)
    mahalanobis = make_reject_option("mahalanobis").fit_reference_on(model, train_x, train_y)
    mahalanobis.calibrate(model, validation)
    settings = AdaptiveSettings(detectors=("energy", "mahalanobis"), steps=3, lambdas=(1.2,))
    clean = model_outputs(model, tensor_batches(x, y, 5), features=True, progress=False)
    for name in ("pgd (bare model)", "hepgd lam=1.2 (bare model)"):
        seed = torch.Generator().manual_seed(7)
        attack = make_suite_attack(name, DefendedClassifier(model, energy), 16 / 255, settings, seed, (x, y))
        points = reference_stage(model, attack, x, y, 5, {"energy": energy, "mahalanobis": mahalanobis},
                                 lambda fraction: None)
        for option in (energy, mahalanobis):
            defended = DefendedClassifier(model, option)
            judged = judge_reference(option.kind, option, points, clean.logits, clean.features)
            seed = torch.Generator().manual_seed(7)
            direct = suite_stage(defended, make_suite_attack(name, defended, 16 / 255, settings, seed, (x, y)), name,
                                 x, y, 16 / 255, 5, seed, lambda fraction: None)
            for key in ("evaded", "misclassified", "rejected", "clean_correct", "clean_accepted", "labels"):
                assert torch.equal(judged[key], direct[key]), (name, option.kind, key)
            assert torch.allclose(judged["point_score"], direct["point_score"], rtol=1e-5, atol=1e-5)
            assert torch.allclose(judged["point_logits"], direct["point_logits"], rtol=1e-5, atol=1e-5)
            assert judged["misclassified"].any(), "the toy attack succeeds somewhere: the comparison is not vacuous"


def test_every_point_a_reference_passes_through_counts_not_only_its_last(checkpoint, toy_data):
    """PGD on the bare model may pass through a point that is misclassified and accepted and end where the detector
    rejects it: that point is an evasion (the suite's DARA counts any point in the ball). Judged at its final point
    only, the references left such images defended. Both ways of running a reference (per detector, and once for
    all detectors) must find exactly the images where some iterate evades, as a replay of the same attack that
    judges every iterate itself finds them."""
    from robgen import data as datasets
    from robgen import distributed
    from robgen.detection.defended import DefendedClassifier
    from robgen.experiments.adaptive_suite import judge_reference, make_suite_attack, reference_stage, suite_stage
    from robgen.experiments.pipeline import detection_splits, model_outputs, tensor_batches

    model = robgen.load_model(checkpoint).eval()
    splits = detection_splits(model, str(toy_data))
    x, y = datasets.load_tensors(datasets.first(splits.test, 40, "test"))
    validation, _ = datasets.load_tensors(splits.validation)
    band = make_reject_option("band").calibrate(model, validation)
    defended = DefendedClassifier(model, band)
    settings = AdaptiveSettings(detectors=("band",), steps=20, lambdas=(1.2,))
    eps = 64 / 255
    # the replay: the suite's batches of 10 and per-batch seeds, every iterate and the end judged here
    seen = torch.zeros(len(x), dtype=torch.bool)
    ends = []
    generator = torch.Generator().manual_seed(3)
    with distributed.per_batch_seeds(generator) as reseed:
        attack = make_suite_attack("pgd (bare model)", defended, eps, settings, generator, (x, y))
        for index, start in enumerate(range(0, 40, 10)):
            reseed(index)
            rows = slice(start, start + 10)

            def judge(step, points, outputs, rows=rows):
                with torch.no_grad():
                    logits, score = defended.outputs(points)
                seen[rows] |= (logits.argmax(1) != y[rows]) & (score <= 0)

            ends.append(attack(x[rows], y[rows], watch=judge))
            judge(None, ends[-1], None)
    with torch.no_grad():
        logits, score = defended.outputs(torch.cat(ends))
    at_the_end = (logits.argmax(1) != y) & (score <= 0)
    assert (seen & ~at_the_end).any(), "some image evades on the way and not at the end: the test can fail"
    generator = torch.Generator().manual_seed(3)
    direct = suite_stage(defended, make_suite_attack("pgd (bare model)", defended, eps, settings, generator, (x, y)),
                         "pgd (bare model)", x, y, eps, 10, generator, lambda fraction: None)
    assert torch.equal(direct["evaded"], seen)
    assert torch.equal(direct["misclassified"] & ~direct["rejected"], at_the_end), "final-point verdicts unchanged"
    clean = model_outputs(model, tensor_batches(x, y, 10), progress=False)
    generator = torch.Generator().manual_seed(3)
    shared = reference_stage(model, make_suite_attack("pgd (bare model)", defended, eps, settings, generator, (x, y)),
                             x, y, 10, {"band": band}, lambda fraction: None)
    judged = judge_reference("band", band, shared, clean.logits, None)
    assert torch.equal(judged["evaded"], seen)
    assert torch.equal(judged["misclassified"] & ~judged["rejected"], at_the_end)
    again = (judged["point_logits"].argmax(1) != y) & (judged["point_score"] <= 0)
    assert torch.equal(again, seen), "the stored point of each evasion is one that evades"
    # with the detector switched off the DARA is the bare model's robust accuracy, both counted at every point
    # (the suite's report read the bare model at the final points: 14 against a DARA of 13 on a toy run)
    from robgen.attacks.suite import run_suite
    from robgen.experiments.adaptive_suite import DetectorOff

    off = DefendedClassifier(model, DetectorOff(target_fpr=0.0).fit(clean.logits[:2], model=model))
    attack = make_suite_attack("pgd (bare model)", off, eps, AdaptiveSettings(detectors=("band",), steps=10),
                               torch.Generator().manual_seed(0), (x, y))
    result = run_suite(off, x, y, {"pgd": attack}, eps=eps)
    outcome, report = result.attacks["pgd"], result.report(eps)
    assert (outcome.ever_misclassified & ~outcome.misclassified).any(), "some image is right again at the end"
    assert report["dara"]["count"] == report["bare_robust_accuracy"]["count"]


def test_references_run_once_per_eps_unless_a_detector_reads_the_images(checkpoint, toy_data, monkeypatch, same_code):
    from robgen.detection.reject import RejectOption
    from robgen.experiments.adaptive import adaptive_evaluation
    from robgen.experiments.adaptive_suite import SuiteStageStore

    model = robgen.load_model(checkpoint).eval()
    stages = []
    real_run = SuiteStageStore.run
    monkeypatch.setattr(SuiteStageStore, "run", lambda self, name, compute: stages.append(name) or real_run(
        self, name, compute))
    settings = dict(eps_list=(8 / 255,), limit=4, steps=1, restarts=1, lambdas=(1.2,), batch_size=4, progress=False)
    adaptive_evaluation(model, str(toy_data), detectors=("energy", "band"), **settings)
    references = [name for name in stages if "bare model" in name]
    assert sorted(references) == ["reference-eps8/255-hepgd lam=1.2 (bare model)", "reference-eps8/255-pgd (bare model)"]
    stages.clear()
    brightness = RejectOption.from_callable(lambda x: x.mean((1, 2, 3)), on="input", name="brightness")
    brightness.calibrate(model, torch.rand(20, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    adaptive_evaluation(model, str(toy_data), detectors=(brightness, "energy"), **settings)
    references = [name for name in stages if "bare model" in name]
    assert len(references) == 3 * 2 and not any(name.startswith("reference") for name in references)


def test_references_run_per_detector_judge_the_same_points_of_the_bare_model(checkpoint, toy_data, same_code):
    """Run per detector (one reads the images), PGD and HE-PGD on the bare model draw the same random starts for
    every detector, so each detector's detection rate is over the same successes and the bare model's accuracy
    at those points is one number (seeded by the detector's stage name, it was 12, 11 and 11 images of 16 here)."""
    from robgen.detection.reject import RejectOption
    from robgen.experiments.adaptive import adaptive_evaluation

    model = robgen.load_model(checkpoint).eval()
    brightness = RejectOption.from_callable(lambda x: x.mean((1, 2, 3)), on="input", name="brightness")
    brightness.calibrate(model, torch.rand(20, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    results = adaptive_evaluation(model, str(toy_data), detectors=(brightness, "energy"), eps_list=(20 / 255,),
                                  limit=16, steps=1, restarts=1, lambdas=(1.2,), batch_size=4, progress=False)
    rows = results["rows"]
    assert len(rows) == 3  # custom, energy, and the detector switched off
    assert len({row["accuracy_at_final_points"]["count"] for row in rows}) == 1
    for name in ("pgd (bare model)", "hepgd lam=1.2 (bare model)"):
        successes = {row["detector"]: row["detection_rate_at_final_points"][name]["n"] for row in rows}
        assert len(set(successes.values())) == 1, (name, successes)
    assert rows[0]["detection_rate_at_final_points"]["pgd (bare model)"]["n"] > 0, "successes to compare"


def test_references_run_per_detector_attack_every_image_though_the_run_skips_evaded_ones(checkpoint, toy_data,
                                                                                         monkeypatch, same_code):
    """With a detector that reads the images the references run once per detector, after its adaptive attacks;
    --skip-evaded must not narrow them: their final points measure the bare model on every image."""
    from robgen.detection.reject import RejectOption
    from robgen.experiments.adaptive import adaptive_evaluation
    from robgen.experiments.adaptive_suite import ADAPTIVE, SuiteStageStore

    model = robgen.load_model(checkpoint).eval()
    stages = {}
    real_run = SuiteStageStore.run
    monkeypatch.setattr(SuiteStageStore, "run", lambda self, name, compute: stages.setdefault(
        name, real_run(self, name, compute)))
    brightness = RejectOption.from_callable(lambda x: x.mean((1, 2, 3)), on="input", name="brightness")
    brightness.calibrate(model, torch.rand(20, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    results = adaptive_evaluation(model, str(toy_data), detectors=(brightness,), eps_list=(64 / 255,), limit=8,
                                  steps=2, restarts=1, lambdas=(1.2,), batch_size=4, skip_evaded=True, progress=False)
    adaptive = [flags for name, flags in stages.items() if name.split("-eps")[1].split("-", 1)[1] in ADAPTIVE]
    assert any(not flags["attacked"].all() for flags in adaptive), "some adaptive attack skipped: not vacuous"
    references = {name: flags for name, flags in stages.items() if "bare model" in name}
    assert len(references) == 2 * 2  # PGD and HE-PGD, for brightness and the detector switched off
    for name, flags in references.items():
        assert flags["attacked"].all(), name
    row = next(row for row in results["rows"] if row["detector"] == "custom")
    assert row["per_attack"]["pgd (bare model)"]["evasion_rate"]["n"] == row["clean"]["accuracy"]["count"]


def test_a_stage_given_the_standing_images_attacks_only_those_and_finds_on_them_what_a_full_stage_finds(
        checkpoint, toy_data):
    """`suite_stage(..., standing)` (--skip-evaded): a deterministic attack sees exactly the standing images and
    gives them the flags and points of a stage over all images; the others keep their clean image as their point."""
    from robgen import data as datasets
    from robgen.detection.defended import DefendedClassifier
    from robgen.experiments.adaptive_suite import suite_stage
    from robgen.experiments.pipeline import detection_splits, model_outputs, tensor_batches

    model = robgen.load_model(checkpoint).eval()
    splits = detection_splits(model, str(toy_data))
    x, y = datasets.load_tensors(datasets.first(splits.test, 12, "test"))
    validation, _ = datasets.load_tensors(splits.validation)
    defended = DefendedClassifier(model, make_reject_option("energy").calibrate(model, validation))
    eps, seen = 96 / 255, []

    def push(images, labels):  # a fixed signed step per pixel: the same point for an image in any batch
        seen.append(len(images))
        return (images + eps * torch.sign(0.5 - images)).clamp(0, 1)

    def stage(standing=None):
        seen.clear()
        flags = suite_stage(defended, push, "push", x, y, eps, 5, torch.Generator().manual_seed(0),
                            lambda fraction: None, standing)
        return flags, sum(seen)

    full, attacked_all = stage()
    standing = torch.tensor([i % 3 != 0 for i in range(len(x))])
    part, attacked_some = stage(standing)
    assert attacked_all == len(x) and attacked_some == int(standing.sum())
    assert full["attacked"].all() and torch.equal(part["attacked"], standing)
    for key in ("clean_correct", "clean_accepted", "labels"):
        assert torch.equal(part[key], full[key]), key
    for key in ("evaded", "misclassified", "rejected", "first_run"):
        assert torch.equal(part[key][standing], full[key][standing]), key
    assert torch.allclose(part["point_logits"][standing], full["point_logits"][standing], atol=1e-5)
    assert not part["evaded"][~standing].any() and full["evaded"].any(), "the push evades somewhere: not vacuous"
    clean = model_outputs(model, tensor_batches(x, y, 5), progress=False)
    assert torch.allclose(part["point_logits"][~standing], clean.logits[~standing].float(), atol=1e-5)
    assert torch.equal(part["misclassified"][~standing], ~full["clean_correct"][~standing])


def test_a_run_that_skips_evaded_images_attacks_only_the_standing_ones_and_keeps_every_sanity_check(
        finished, checkpoint, toy_data, tmp_path, monkeypatch, same_code):
    from robgen.experiments.adaptive_suite import ADAPTIVE, SuiteStageStore

    stages = {}
    real_run = SuiteStageStore.run
    monkeypatch.setattr(SuiteStageStore, "run", lambda self, name, compute: stages.setdefault(
        name, real_run(self, name, compute)))
    out = tmp_path / "skipping"
    assert main(command(checkpoint, toy_data, out, "--skip-evaded")) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["skip_evaded"] is True
    skipped_some = False
    for detector in ("energy", "mahalanobis", "off"):
        for eps in ("8/255", "64/255"):
            order = [stages[f"{detector}-eps{eps}-{name}"] for name in ADAPTIVE if f"{detector}-eps{eps}-{name}" in stages]
            assert order[0]["attacked"].all()  # the first adaptive attack runs on every image
            standing = order[0]["clean_correct"] & order[0]["clean_accepted"] & ~order[0]["evaded"]
            for flags in order[1:]:
                assert torch.equal(flags["attacked"], standing), (detector, eps)
                skipped_some |= bool((~flags["attacked"]).any())
                standing &= ~flags["evaded"]
    assert skipped_some, "some image was skipped: the test is not vacuous"
    # an attack that skipped images has no DARA alone and no suite has "only this attack" counts: neither is known
    ran_on_fewer = {}
    for row in results["rows"]:
        fewer = {name for name, attack in row["per_attack"].items()
                 if attack["evasion_rate"]["n"] < row["clean"]["accuracy"]["count"]}
        ran_on_fewer[row["detector"], row["eps"]] = fewer
        for name, attack in row["per_attack"].items():
            assert (attack["dara"] is None) == (name in fewer), (row["detector"], name)
            assert (attack["only_this_attack"] is None) == bool(fewer)
    assert any(ran_on_fewer.values())
    for bare in results["bare"]:  # the bare model per attack, likewise, from the detector-off suite
        fewer = ran_on_fewer["off", bare["eps"]]
        assert {name for name, entry in bare["per_attack"].items() if entry is None} == fewer
    # the same seed and all images for the first attack: its flags are the full run's
    _, full = finished
    for row in results["rows"]:
        twin = next(r for r in full["rows"] if r["detector"] == row["detector"] and r["eps"] == row["eps"])
        assert row["per_attack"][ADAPTIVE[0]]["evasion_rate"] == twin["per_attack"][ADAPTIVE[0]]["evasion_rate"]
        assert row["clean"] == twin["clean"]
    for check in results["sanity"]:
        if check["check"].startswith("the detector switched off"):
            assert check["passed"], check
    assert "--skip-evaded" in (out / "results.md").read_text()


def test_probing_a_finished_run_with_one_attack_only_lowers_its_dara_by_the_images_it_breaks(finished):
    """scripts/probe_attack_on_defended.py: the attack runs on each row's defended images, with the run's model and
    calibrated detectors; the DARA with it is the run's less exactly the images it broke."""
    module = load_script("probe_attack_on_defended")
    out, results = finished
    rows = module.probe(out, "k+1 apgd-t", eps=8 / 255, steps=2, restarts=1)
    assert sorted(row["detector"] for row in rows) == sorted(r["detector"] for r in results["rows"]
                                                            if r["eps_label"] == "8/255")
    assert any(row["defended"] for row in rows), "some row has defended images: the attack ran"
    for row in rows:
        assert 0 <= row["broken"] <= row["defended"] == row["dara"]["count"]
        assert row["dara_with_it"]["count"] == row["dara"]["count"] - row["broken"]
    only = module.probe(out, "k+1 apgd-t", eps=8 / 255, steps=2, restarts=1, detectors=["energy"])
    assert [row["detector"] for row in only] == ["energy"]
    assert only[0] == next(row for row in rows if row["detector"] == "energy"), "the same seed, the same images"
    reference = module.probe(out, "pgd (bare model)", eps=8 / 255, steps=2, restarts=1, detectors=["energy"])
    assert reference[0]["dara_with_it"]["count"] == reference[0]["dara"]["count"] - reference[0]["broken"]
    with pytest.raises(SystemExit, match="has rows for"):
        module.probe(out, "k+1 apgd-t", eps=8 / 255, steps=2, restarts=1, detectors=["no-such-detector"])


def test_the_flip_probe_prints_the_thresholds_the_library_calibrates(checkpoint, toy_data, monkeypatch, capsys):
    """scripts/probe_robust_margin_flips.py: its two thresholds (5% of all validation images, 5% of the correctly
    classified) and the share of all that the second rejects are what RejectOption.calibrate sets and records on the
    same images; its per-class thresholds keep each predicted class within 5% of its own images."""
    import re

    from robgen import data as datasets
    from robgen.experiments.pipeline import detection_splits

    probe = load_script("probe_robust_margin_flips")
    monkeypatch.setattr(sys, "argv", ["probe", "--model", str(checkpoint), "--data", str(toy_data), "--val", "40",
                                      "--radii", "1/255,2/255", "--test", "8", "--eps", "8/255", "--batch-size", "16",
                                      "--per-class", "--skip-guarantee"])
    probe.main()
    printed = capsys.readouterr().out
    model = robgen.load_model(checkpoint).eval()
    x, y = datasets.load_tensors(datasets.first(detection_splits(model, str(toy_data)).validation, 40, "validation"))
    for text, radius in (("1/255", 1 / 255), ("2/255", 2 / 255)):
        line = next(line for line in printed.splitlines() if line.startswith(f"rho = {text}:"))
        at_all, at_correct = (float(v) for v in re.findall(r"at 5% of (?:all|the correctly classified) (-?[0-9.]+)",
                                                             line))
        everyone = make_reject_option("robust-margin", radius=radius).calibrate(model, x)
        stratified = make_reject_option("robust-margin", radius=radius).calibrate(model, x, fpr_among="correct",
                                                                                  labels=y)
        (library_all,) = everyone.thresholds().values()
        (library_correct,) = stratified.thresholds().values()
        assert at_all == pytest.approx(library_all, abs=5e-4) and at_correct == pytest.approx(library_correct,
                                                                                              abs=5e-4)
        rejected = float(re.search(r"rejecting ([0-9.]+)% \[", line).group(1))
        assert rejected == pytest.approx(100 * stratified.validation["rejected_all"] / 40, abs=0.051), line
    assert printed.count("per predicted class") == 2 and "PGD's successes" in printed

    generator = torch.Generator().manual_seed(0)
    values = torch.randn(120, generator=generator)  # distinct: exactly floor(5%) of a class can be rejected
    predicted = torch.randint(0, 2, (120,), generator=generator)
    thresholds = probe.per_class_thresholds(values, predicted, num_classes=3)
    for k in (0, 1):
        mine = values[predicted == k]
        assert int((mine > thresholds[k]).sum()) == int(0.05 * len(mine)), "each class: 5% of its own images"
    assert thresholds[2] == float("inf"), "a class the model never predicts rejects nothing"


class _Counted(torch.autograd.Function):
    """The identity, counting the images its backward pass carries."""
    counts = None

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        _Counted.counts["backward"] += grad.shape[0]
        return grad


def test_robust_margin_by_name_calibrates_on_the_validation_images_and_its_inner_passes_are_estimated(
        checkpoint, toy_data, same_code):
    from robgen.experiments.adaptive import adaptive_evaluation

    model = robgen.load_model(checkpoint).eval()
    results = adaptive_evaluation(model, str(toy_data), detectors=("robust-margin", "energy"), eps_list=(8 / 255,),
                                  limit=4, steps=1, restarts=1, lambdas=(1.2,), batch_size=4, progress=False)
    detector = results["detectors"]["robust-margin"]
    assert detector["settings"] == {"radius": 2 / 255, "steps": 3}
    assert detector["validation"]["n"] == 40 and detector["validation"]["rejected"] <= 2  # floor(5% of 40)
    rows = {row["detector"]: row for row in results["rows"]}
    assert rows["robust-margin"]["dara"]["n"] == 4
    settings = AdaptiveSettings(detectors=("robust-margin", "energy"), steps=1, restarts=1, lambdas=(1.2,),
                                batch_size=4, limit=4)
    plain = estimate_passes(settings, 4, 40, shared_references=False)
    assert results["estimate"]["forward_backward_passes"] > plain["forward_backward_passes"] + 40 * 4


def test_the_estimate_bounds_the_passes_a_run_makes_each_total(checkpoint, toy_data, same_code, monkeypatch):
    """A review counted more backward passes than the estimate printed (each suite's one gradient check of its first
    batch was left out: 192 against 184 at 2 steps) and more forwards (robust-margin's scores taken without a
    gradient, its calibration's above all, pay a forward alone: 3 per validation image against 2). Counted at the
    model itself, fusion off."""
    from robgen.engine import fused
    from robgen.experiments.adaptive import adaptive_evaluation, calibrate_detectors
    from robgen.experiments.pipeline import detection_splits

    monkeypatch.setattr(fused, "_enabled", False)  # every pass through the model itself, where the hook counts it
    model = robgen.load_model(checkpoint).eval()
    counts = _Counted.counts = dict.fromkeys(("forward_backward_passes", "forward_passes", "backward"), 0)

    def count(module, inputs):
        (x,) = inputs
        if torch.is_grad_enabled() and x.requires_grad:
            counts["forward_backward_passes"] += x.shape[0]
            return (_Counted.apply(x),)
        counts["forward_passes"] += x.shape[0]
        return None

    handle = model.register_forward_pre_hook(count)
    try:
        results = adaptive_evaluation(model, str(toy_data), detectors=("energy",), eps_list=(8 / 255,), limit=4,
                                      steps=2, restarts=1, lambdas=(1.2,), batch_size=4, progress=False)
        ran = dict(counts)
        counts.update(dict.fromkeys(counts, 0))
        settings = AdaptiveSettings(detectors=("robust-margin",), steps=2, restarts=1, lambdas=(1.2,), batch_size=4)
        splits = detection_splits(model, str(toy_data))
        costs = {name: option.passes_per_score
                 for name, option in calibrate_detectors(model, str(toy_data), splits, settings, {}).items()}
    finally:
        handle.remove()
    estimate = results["estimate"]
    assert 0 < ran["backward"] <= estimate["forward_backward_passes"]
    for total in ("forward_backward_passes", "forward_passes"):
        assert ran[total] <= estimate[total], total
        # the estimate's share of the calibration: what one more validation image adds to it, in each total
        n = len(splits.validation)
        share = (estimate_passes(settings, 4, n, score_passes=costs)[total]
                 - estimate_passes(settings, 4, 0, score_passes=costs)[total])
        assert counts[total] <= share, total


def test_images_replaced_in_place_are_not_read_back_as_this_runs(finished, checkpoint, toy_data, tmp_path, capsys):
    """The key named the data folder and the image counts: images replaced under the same names kept both, and the
    run read back stages (and detectors) of the old pixels."""
    out, _ = finished
    again = tmp_path / "again"
    shutil.copytree(out / STAGES, again / STAGES)
    from PIL import Image
    backup = tmp_path / "backup"
    shutil.copytree(toy_data, backup)
    try:
        for path in (path for path in toy_data.rglob("*") if path.is_file()):
            with Image.open(path) as image:
                mirrored = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            mirrored.save(path)
        assert main(command(checkpoint, toy_data, again)) == 2
    finally:  # the toy data set is shared by the other tests
        shutil.rmtree(toy_data)
        shutil.copytree(backup, toy_data)
    assert "holds the finished stages of another run" in capsys.readouterr().err


def _threshold_on_image(option, values, i):
    """Move `option`'s threshold(s) onto image i's own statistic (score exactly 0, accepted): calibration sets
    them halfway between two images, so a tie has to be made."""
    if option.kind in ("energy", "class-energy"):
        option.tau = float(values[i])
    elif option.kind == "energy-gap":
        option.threshold = float(values[i])
    elif option.kind == "band":
        option.lo, option.hi = float(values[i]), float(values[i]) + 1
    elif option.kind == "multi-t":
        option.taus = [float(v) for v in values[i]]
    return option


def test_the_references_judge_a_float64_models_points_as_the_defended_classifier_does():
    """The references' judge rounded a float64 model's logits to float32 before scoring them, while the
    calibration and every adaptive attack's verdict read them whole: at an image a threshold sits on (score
    exactly 0, accepted) it rejected a mistake the defended classifier accepts."""
    from robgen.detection.defended import DefendedClassifier
    from robgen.experiments.adaptive_suite import _EveryPoint
    from robgen.experiments.pipeline import model_outputs, tensor_batches

    model = tiny_model().double()
    g = torch.Generator().manual_seed(5)
    x, y = torch.rand(200, 3, 32, 32, generator=g).double(), torch.randint(0, 10, (200,), generator=g)
    validation = model_outputs(model, tensor_batches(x, y, 50), progress=False)
    for kind in ("energy", "band", "class-energy", "multi-t", "energy-gap"):
        option = make_reject_option(kind, target_fpr=0.05).fit(validation.logits, model=model)
        for i in range(0, 200, 7):  # 29 images, one tie each
            with torch.no_grad():  # the statistic from a batch of one, as the two judges below read it
                _threshold_on_image(option, option.values(model(x[i:i + 1])), 0)
            with torch.no_grad():  # the same batch both ways (another batch moves float64 logits by 1e-16)
                logits, at_edge = DefendedClassifier(model, option).outputs(x[i:i + 1])
            assert float(at_edge) == 0, kind  # the tie is there, so the comparison below tests it
            wrong = (logits.argmax(1) + 1) % 10  # a label that makes the point a mistake
            _, scores = _EveryPoint(model, {kind: option}, wrong)(x[i:i + 1])
            assert torch.equal(scores[kind] <= 0, at_edge <= 0), kind


def test_an_adaptive_attack_makes_no_more_model_passes_than_the_estimate_allows():
    """The estimate, called an upper bound, left out the check of each attack's final point: one image that
    evades at once and one that never moves made 9 forward passes against "at most 8"."""
    from robgen.detection.defended import DefendedClassifier
    from robgen.engine.fused import inference_graph
    from robgen.experiments.adaptive_suite import make_suite_attack, suite_stage
    from robgen.models import Classifier

    model = tiny_model(num_classes=4)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[0] = (y[0] + 1) % 4  # image 0 is a mistake from the start (evades at once); image 1 barely moves at eps 1e-4
    defended = DefendedClassifier(model, DetectorOff(target_fpr=0.0).fit(model(x).detach(), model=model))
    settings = AdaptiveSettings(detectors=("energy",), eps_list=(1e-4,), steps=3, restarts=1, batch_size=2,
                                lambdas=(1.2,))
    inference_graph(model, example=x)  # the fused copy the attacks step on, built before counting
    counts = {True: 0, False: 0}
    real_forward = Classifier.forward

    def counting(self, images):
        counts[torch.is_grad_enabled()] += images.shape[0]
        return real_forward(self, images)

    for name in ("k+1 pgd", "penalty pgd"):
        counts.update({True: 0, False: 0})
        generator = torch.Generator().manual_seed(0)
        attack = make_suite_attack(name, defended, 1e-4, settings, generator, (x, y))
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Classifier, "forward", counting)
            flags = suite_stage(defended, attack, name, x, y, 1e-4, 2, generator, lambda fraction: None)
        assert flags["evaded"].tolist() == [True, False]
        bound = estimate_passes(settings, 2, 0)["per_image_per_suite"][name]
        assert counts[False] <= 2 * bound["forward"] and counts[True] <= 2 * bound["forward_backward"], name


def test_a_run_read_again_refuses_a_model_whose_weights_changed_since(tmp_path):
    """The scripts that attack a finished run's images again (the independent check, the reference probes) loaded
    the model by name, whatever its weights now, and the data under the default root whatever the run used."""
    import robgen
    from robgen.experiments.adaptive import load_run
    from robgen.models.fingerprint import model_fingerprint
    from tests.conftest import tiny_model

    folder = robgen.save_checkpoint(tiny_model(), tmp_path / "model")
    with pytest.raises(ValueError, match="now has other weights than the run attacked"):
        load_run({"model": str(folder), "data": "cifar10", "model_fingerprint": "0" * 64})
    model = robgen.load_model(folder)
    assert model_fingerprint(model) != "0" * 64


def test_a_run_made_on_another_machine_is_read_under_this_machines_data_root(tmp_path, monkeypatch):
    """A lent GPU's run records its checkout's data root, which is not here: the scripts read the named data set
    under the default root then (its recorded split still checks the images)."""
    import robgen
    from robgen.experiments import adaptive as experiment
    from tests.conftest import tiny_model

    folder = robgen.save_checkpoint(tiny_model(), tmp_path / "model")
    asked = []
    monkeypatch.setattr(experiment, "detection_splits", lambda model, data, data_root=None: asked.append(data_root))
    experiment.load_run({"model": str(folder), "data": "cifar10", "data_root": str(tmp_path / "elsewhere")})
    experiment.load_run({"model": str(folder), "data": "cifar10", "data_root": str(tmp_path)})
    assert asked == [None, str(tmp_path)]


def test_the_mending_script_leaves_a_file_with_nothing_to_mend_as_it_is(tmp_path, monkeypatch, capsys):
    """It marked every file mended and wrote its results.md again from today's report code, rows right already
    or not: 4 of the 6 committed files that needed nothing then differed from the committed ones."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fix_found_first", REPO / "scripts" / "fix_found_first.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    rows = [{"detector": "energy", "eps_label": "8/255", "clean": {"accuracy": {"count": 352}},
             "dara": {"count": 175}, "found_first": {"k+1 pgd": 170, "penalty pgd": 7}},
            {"detector": "band", "eps_label": "8/255", "clean": {"accuracy": {"count": 352}},
             "dara": {"count": 175}, "found_first": None}]
    path = tmp_path / "run" / "results.json"
    path.parent.mkdir()
    text = json.dumps({"rows": rows}, indent=1)
    path.write_text(text)
    (path.parent / "results.md").write_text("the committed report\n")
    monkeypatch.setattr(sys, "argv", ["fix_found_first.py", str(path)])
    assert script.main() == 0
    assert path.read_text() == text and (path.parent / "results.md").read_text() == "the committed report\n"
    assert "nothing to mend, left as it is" in capsys.readouterr().out


def test_stages_another_command_made_are_refused_naming_it(checkpoint, toy_data, tmp_path, same_code, capsys):
    """reproduce and adaptive both keep their stages in <out>/.stages: adaptive said "finished stages of another run
    ... pass --overwrite to start again", advice that deletes reproduce's resumable work."""
    out = tmp_path / "out"
    (out / STAGES).mkdir(parents=True)
    (out / STAGES / "key.json").write_text(json.dumps({"command": "reproduce", "settings": {}}))
    (out / STAGES / "table1-pgd.safetensors").write_bytes(b"reproduce's finished stage")
    assert main(command(checkpoint, toy_data, out)) == 2
    captured = capsys.readouterr()
    assert "another run's are refused, left as they are" in captured.out
    assert "holds the stages of a `python -m robgen reproduce` run, not of `python -m robgen adaptive`" in captured.err
    assert (out / STAGES / "table1-pgd.safetensors").read_bytes() == b"reproduce's finished stage"
