"""The detection ablation: rows measured by the official protocol, kept and reused, the pixel factor paired on
the same images, the report refusing rows of other settings, and JPEG copies as the CIFAR-10 archive made them."""

import json
import math

import pytest
import torch

import robgen
from robgen import data
from robgen.experiments import ablation
from robgen.experiments.ablation import AblationSpec, ablation_rows, parse_spec
from robgen.experiments.ablation_report import write_report


@pytest.fixture
def four_class_checkpoint(tmp_path, monkeypatch):
    """A tiny 4-class model for the toy images; the official attack cut to 3 steps to keep the tests fast."""
    from conftest import tiny_model

    monkeypatch.setattr(ablation, "OFFICIAL_PGD", {"eps": 8 / 255, "step_size": 2 / 255, "steps": 3})

    return robgen.save_checkpoint(tiny_model(num_classes=4), tmp_path / "tiny")


def test_parse_spec_reads_factor_label_and_model():
    assert parse_spec("width/w32=cifar10-resnet10-standard") == AblationSpec("width", "w32", "cifar10-resnet10-standard")
    with pytest.raises(ValueError, match="FACTOR/LABEL=MODEL"):
        parse_spec("w32=cifar10-resnet10-standard")


def test_rows_are_measured_once_and_read_back(toy_data, four_class_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "ablation"
    specs = [AblationSpec("seed", "a", str(four_class_checkpoint)), AblationSpec("pixels", "tiny", str(four_class_checkpoint), True)]
    records = ablation_rows(specs, str(toy_data), out, limit=24, val_size=40, batch_size=12, progress=False)
    assert [len(record["rows"]) for record in records] == [2, 1]  # files sorted: pixels--tiny, seed--a
    row = records[1]["rows"][0]
    assert row["n_validation"] == row["n_test"] == 24
    assert 0 <= row["detection_rate_ci"][0] <= row["detection_rate"] <= row["detection_rate_ci"][1] <= 1
    at_fpr = row["at_paper_fpr"]  # the threshold that flags at most 1.67% of the 24 clean validation images: none
    assert at_fpr["target_fpr"] == ablation.PAPER_CIFAR10["false_positive_rate"]
    for key in ("detection_rate", "false_positive_rate"):
        low, high = at_fpr[f"{key}_ci"]
        assert 0 <= low <= at_fpr[key] <= high <= 1
    exact, jpeg = records[0]["rows"]
    assert exact["pixels"] == "exact PNG" and jpeg["pixels"] == "JPEG q75"
    assert jpeg["detection_rate_minus_exact"] == pytest.approx(jpeg["detection_rate"] - exact["detection_rate"])
    assert jpeg["false_positive_rate_minus_exact"] == pytest.approx(
        jpeg["false_positive_rate"] - exact["false_positive_rate"])

    def refuse(*args, **kwargs):
        raise AssertionError("a kept row was measured again")

    monkeypatch.setattr(ablation, "measure_model", refuse)
    monkeypatch.setattr(ablation, "measure_pixels", refuse)
    again = ablation_rows(specs, str(toy_data), out, limit=24, val_size=40, batch_size=12, progress=False)
    assert again == records
    row_file = out / "rows" / "seed--a.json"  # a row kept before robgen recorded a fact of the checkpoint
    kept = json.loads(row_file.read_text())
    row_file.write_text(json.dumps({key: value for key, value in kept.items() if key != "model"}))
    assert ablation_rows(specs[:1], str(toy_data), out, limit=24, val_size=40, batch_size=12,
                         progress=False) == records, "read back, its model facts filled in again, not measured"
    same_model = ablation_rows([AblationSpec("width", "w4", str(four_class_checkpoint))], str(toy_data), out, limit=24,
                               val_size=40, batch_size=12, progress=False)  # measured already as seed/a
    assert [record["spec"]["label"] for record in same_model] == ["tiny", "a", "w4"]
    assert same_model[2]["rows"] == records[1]["rows"]
    again = same_model[:2]
    paths = write_report(again, out)
    assert {path.name for path in paths} == {"results.json", "results.md", "ablation.png"}
    table = (out / "results.md").read_text()
    assert "| seed | a |" in table and "tiny (JPEG q75)" in table
    assert f"{100 * at_fpr['detection_rate']:.1f} [" in table.split("| seed | a |")[1].split("\n")[0]
    assert "n/a (pixel row" in table  # the pixel rows use one Youden detector: no paper-FPR reading
    assert len(json.loads((out / "results.json").read_text())["rows"]) == 3  # the first two files: 2 + 1 rows


def test_a_row_taken_from_another_row_of_the_same_weights_records_its_own_checkpoint(toy_data, four_class_checkpoint,
                                                                                       tmp_path, monkeypatch):
    """The copied record kept the other checkpoint's facts (its source) until the next run rewrote them: the same
    command wrote two different results.json (a run's final snapshot has its root checkpoint's weights)."""
    import shutil

    copy = tmp_path / "run" / "epochs" / "epoch-003"
    shutil.copytree(four_class_checkpoint, copy)
    out = tmp_path / "ablation"
    settings = dict(limit=24, val_size=40, batch_size=12, progress=False)
    ablation_rows([AblationSpec("seed", "a", str(four_class_checkpoint))], str(toy_data), out, **settings)
    monkeypatch.setattr(ablation, "measure_model", lambda *args, **kwargs: pytest.fail("measured again"))
    first = ablation_rows([AblationSpec("epochs", "3", str(copy))], str(toy_data), out, **settings)
    again = ablation_rows([AblationSpec("epochs", "3", str(copy))], str(toy_data), out, **settings)
    rows = {record["spec"]["factor"]: record for record in first}
    assert rows["epochs"]["model"]["source"] != rows["seed"]["model"]["source"]
    assert first == again


def test_a_row_is_measured_again_when_the_settings_change_and_the_report_refuses_to_mix(toy_data, four_class_checkpoint,
                                                                                       tmp_path, monkeypatch):
    out = tmp_path / "ablation"
    spec = AblationSpec("seed", "a", str(four_class_checkpoint))
    records = ablation_rows([spec], str(toy_data), out, limit=24, val_size=40, batch_size=12, progress=False)
    other = json.loads(json.dumps(records[0]))
    other["settings"]["limit"] = 12
    with pytest.raises(ValueError, match="limit differ"):
        write_report([records[0], other], out)
    # a row measured beside the kept one with other settings: the report would refuse them after the measuring
    # (hours, at the default --limit); refused before it now, saying which kept row differs, and nothing written
    with monkeypatch.context() as patch, pytest.raises(ValueError, match=r"seed--a.json \(limit, test_images\) differ"):
        patch.setattr("robgen.experiments.ablation.measure_model", lambda *a, **k: pytest.fail("measured first"))
        ablation_rows([AblationSpec("seed", "b", str(four_class_checkpoint))], str(toy_data), out, limit=12,
                      val_size=40, batch_size=12, progress=False)
    assert sorted(path.name for path in (out / "rows").iterdir()) == ["seed--a.json"]
    # row a, measured at limit 24, was replaced without a word by a run at limit 12: now only with overwrite
    kept = (out / "rows" / spec.file_name).read_bytes()
    with pytest.raises(ValueError, match=r"seed--a.json \(limit 24 -> 12, test_images .*pass --overwrite"):
        ablation_rows([spec], str(toy_data), out, limit=12, val_size=40, batch_size=12, progress=False)
    assert (out / "rows" / spec.file_name).read_bytes() == kept
    remeasured = ablation_rows([spec], str(toy_data), out, limit=12, val_size=40, batch_size=12, progress=False,
                               overwrite=True)
    assert {record["rows"][0]["n_test"] for record in remeasured} == {12}


def test_a_row_measured_on_another_copy_of_the_data_is_measured_again(toy_data, four_class_checkpoint, tmp_path):
    # the row's key held the data set's name, not its images: a row measured on exact PNGs under one --data-root was
    # read back for the JPEG copies under another
    import shutil

    copy = shutil.copytree(toy_data, tmp_path / "copy")
    out, spec = tmp_path / "ablation", AblationSpec("seed", "a", str(four_class_checkpoint))
    first = ablation_rows([spec], str(copy), out, limit=24, val_size=40, batch_size=12, progress=False)
    for path in copy.rglob("*.png"):  # the same name, other images: every one a little darker
        robgen.save_image(robgen.load_image(path) * 0.9, path)
    again = ablation_rows([spec], str(copy), out, limit=24, val_size=40, batch_size=12, progress=False,
                          overwrite=True)
    assert again[0]["settings"]["test_images"] != first[0]["settings"]["test_images"]
    assert again[0]["rows"][0]["auroc"] != first[0]["rows"][0]["auroc"] or \
        again[0]["rows"][0]["threshold"] != first[0]["rows"][0]["threshold"], "measured again, on the new images"


def test_a_bad_model_name_is_refused_before_any_row_is_measured(toy_data, four_class_checkpoint, tmp_path,
                                                                monkeypatch):
    monkeypatch.setattr(ablation, "measure_model", lambda *a, **k: pytest.fail("a row was measured first"))
    with pytest.raises(ValueError, match="no-such-model"):
        ablation_rows([AblationSpec("width", "a", str(four_class_checkpoint)), AblationSpec("width", "b", "no-such-model")],
                      str(toy_data), tmp_path / "ablation", limit=24, val_size=40, batch_size=12, progress=False)


def test_two_rows_of_one_row_file_are_refused_before_any_row_is_measured(toy_data, four_class_checkpoint, tmp_path,
                                                                         monkeypatch):
    """"w4, crop+flip" and "w4, crop flip" both became w4__crop_flip.json: the second overwrote the first."""
    monkeypatch.setattr(ablation, "measure_model", lambda *a, **k: pytest.fail("a row was measured first"))
    specs = [AblationSpec("augment", "w4, crop+flip", str(four_class_checkpoint)),
             AblationSpec("augment", "w4, crop flip", str(four_class_checkpoint))]
    with pytest.raises(ValueError, match="would share a row file"):
        ablation_rows(specs, str(toy_data), tmp_path / "ablation", limit=24, val_size=40, batch_size=12,
                      progress=False)


def test_the_command_does_not_write_over_another_commands_results(tmp_path, capsys):
    from robgen.cli import main

    (tmp_path / "zoo").mkdir()
    (tmp_path / "zoo" / "results.json").write_text(json.dumps({"rows": [{"attack": "FGSM"}], "n_test": 6}))
    assert main(["ablation", "--row", "width/a=cifar10-resnet10-standard", "--data", "cifar10",
                 "--out", str(tmp_path / "zoo")]) == 2
    assert "holds another command's results (results.json): choose another --out or pass --overwrite" in \
        capsys.readouterr().err
    notes = tmp_path / "notes"  # a report's names with no ablation beside them: a user's results.md was replaced
    notes.mkdir()
    (notes / "results.md").write_text("my notes")
    assert main(["ablation", "--row", "width/a=cifar10-resnet10-standard", "--data", "cifar10",
                 "--out", str(notes)]) == 2
    assert "holds another command's results (results.md)" in capsys.readouterr().err
    assert (notes / "results.md").read_text() == "my notes"


def test_jpeg_copies_are_the_archives_compression(toy_data):
    from PIL import Image

    from torchvision.datasets import ImageFolder
    from torchvision.transforms import ToTensor

    images = ImageFolder(str(toy_data), transform=ToTensor())
    copies = data.jpeg_copies(images, 75)
    x, y = images[0]
    x_jpeg, y_jpeg = copies[0]
    assert y_jpeg == y and x_jpeg.shape == x.shape
    assert (x_jpeg - x).abs().mean() > 0  # lossy
    path = images.samples[0][0]
    Image.open(path).convert("RGB").save(toy_data.parent / "reference.jpg", quality=75)  # PIL: 4:2:0 at 75
    reference = torch.tensor(__import__("numpy").array(Image.open(toy_data.parent / "reference.jpg"))).permute(2, 0, 1)
    assert torch.equal((x_jpeg * 255).round().byte(), reference)  # PIL's quality 75, as the archive
    with pytest.raises(ValueError, match="1..100"):
        data.jpeg_copies(images, 0)


def test_jpeg_copies_keep_grayscale_images_grayscale():
    class Gray(torch.utils.data.Dataset):
        classes = ["only"]

        def __len__(self):
            return 1

        def __getitem__(self, index):
            return torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(index)), 0

    x, _ = data.jpeg_copies(Gray(), 75)[0]
    assert x.shape == (1, 8, 8) and 0 <= x.min() and x.max() <= 1


def test_a_kept_model_row_without_the_detection_at_the_papers_fpr_is_measured_again(toy_data, four_class_checkpoint,
                                                                                     tmp_path):
    out = tmp_path / "ablation"
    spec = AblationSpec("seed", "a", str(four_class_checkpoint))
    (record,) = ablation_rows([spec], str(toy_data), out, limit=24, val_size=40, batch_size=12, progress=False)
    path = out / "rows" / spec.file_name
    older = json.loads(path.read_text())
    del older["rows"][0]["at_paper_fpr"]  # as a row measured before robgen recorded it
    path.write_text(json.dumps(older))
    (again,) = ablation_rows([spec], str(toy_data), out, limit=24, val_size=40, batch_size=12, progress=False)
    assert again["rows"][0]["at_paper_fpr"] == record["rows"][0]["at_paper_fpr"]


def test_a_run_measured_at_several_epochs_becomes_a_curve(tmp_path):
    """Rows of one recipe (the epoch aside) make one curve, sorted by epoch; a recipe measured once, pixel rows and
    rows without a paper-FPR reading make none; the report draws the curves' figure beside the table."""
    from robgen.experiments.ablation_report import _recipe, training_curves

    def record(factor, label, width, epoch, lr, pixels=False):
        rate = {"detection_rate": 0.9, "detection_rate_ci": [0.85, 0.94], "false_positive_rate": 0.05,
                "false_positive_rate_ci": [0.03, 0.08], "auroc": 0.97, "temperature": 1.0, "clean_accuracy": 0.8,
                "clean_accuracy_ci": [0.75, 0.85], "n_test": 100}
        rows = [{**rate, "pixels": "exact PNG"}] if pixels else [{**rate, "at_paper_fpr": dict(rate)}]
        model = {"width": width, "epochs_done": epoch, "recipe": {"optimizer": "adam", "lr": lr, "epochs": 98}}
        return {"spec": {"factor": factor, "label": label}, "model": model, "rows": rows,
                "settings": {"limit": 100, "seed": 0}}

    records = [record("run", "e20", 32, 20, 1e-3), record("run", "e10", 32, 10, 1e-3), record("run", "w64", 64, 10, 1e-3),
               record("other", "lr", 32, 30, 1e-4), record("pixels", "p", 32, 30, 1e-3, pixels=True)]
    from robgen.experiments.ablation_report import flat_rows

    curves = training_curves(flat_rows(records))
    assert len(curves) == 1
    name, rows = curves[0]
    assert name.startswith("w32, adam lr 0.001") and "epoch" not in name
    assert [row["model"]["epochs_done"] for row in rows] == [10, 20]
    tuned = record("run", "tuned", 32, 5, 1e-4)
    tuned["model"]["recipe"]["init_from"] = "cifar10-resnet10-standard"
    assert _recipe(tuned["model"]).endswith(", from cifar10-resnet10-standard, epoch 5/98")
    paths = write_report(records, tmp_path)
    assert (tmp_path / "ablation_epochs.png") in paths and (tmp_path / "ablation_epochs.png").stat().st_size > 0
    assert training_curves(flat_rows(records[2:])) == []  # each recipe once: no curve
    # two runs of one recipe (snapshots of two run folders) are two lines, and a model measured twice counts once:
    # the committed w32 line had two points at epoch 10, from the GPU run and from a CPU run
    for item, source in zip(records[:2], ("runs/gpu/epochs/epoch-020", "runs/gpu/epochs/epoch-010")):
        item["model"]["source"] = source
    cpu = record("schedule", "cpu e10", 32, 10, 1e-3)
    cpu["model"]["source"] = "runs/cpu/epochs/epoch-010"
    twice = record("seed", "seed 0", 32, 20, 1e-3)
    twice["model"]["source"] = "runs/gpu/epochs/epoch-020"
    curves = training_curves(flat_rows(records[:2] + [cpu, twice]))
    assert [[row["model"]["epochs_done"] for row in rows] for _, rows in curves] == [[10, 20]]


def test_the_error_rate_figure_shows_every_row_whatever_panel_it_is_in(tmp_path, monkeypatch):
    """The panels share one y axis: its top is set after every panel is drawn, so a large error rate in a later
    panel is not cut off at the height the first panels needed."""
    import matplotlib.pyplot as plt

    from robgen.experiments.ablation_report import figure

    def row(factor, fpr, fpr_high):
        return {"factor": factor, "label": factor, "detection_rate": 0.98, "detection_rate_ci": [0.97, 0.99],
                "false_positive_rate": fpr, "false_positive_rate_ci": [fpr / 2, fpr_high]}

    drawn = []
    monkeypatch.setattr(plt, "close", lambda fig: drawn.append(fig))
    figure([row("a small", 0.01, 0.02), row("b large", 0.30, 0.36)], tmp_path / "ablation.png")
    (fig,) = drawn
    assert all(axis.get_ylim()[1] >= 36 for axis in fig.axes if axis.get_visible())


def test_rows_read_back_in_the_order_of_their_numbers(tmp_path):
    """A training-length factor e5, e10, e20 read back as e10, e20, e5 (file-name order) in results.md and the figure."""
    rows = tmp_path / ablation.ROWS
    rows.mkdir()
    for label in ("e10", "e5", "e20"):
        (rows / f"epochs--{label}.json").write_text(json.dumps({"label": label}))
    assert [row["label"] for row in ablation.read_rows(tmp_path)] == ["e5", "e10", "e20"]


def test_a_data_folder_with_a_trailing_slash_reads_the_rows_back(toy_data, four_class_checkpoint, tmp_path,
                                                                  monkeypatch):
    """`toy` and `toy/` are one folder: the second spelling measured every row again, and the report then refused
    to mix the two ("data differ")."""
    out = tmp_path / "ablation"
    spec = AblationSpec("seed", "a", str(four_class_checkpoint))
    first = ablation_rows([spec], str(toy_data), out, limit=24, val_size=40, batch_size=12, progress=False)
    monkeypatch.setattr(ablation, "measure_model", lambda *a, **k: pytest.fail("measured again"))
    again = ablation_rows([spec], str(toy_data) + "/", out, limit=24, val_size=40, batch_size=12, progress=False)
    assert again[0]["rows"] == first[0]["rows"]


def test_the_pixel_factor_on_data_without_image_files_is_refused_before_any_attack(monkeypatch):
    from types import SimpleNamespace

    from torch.utils.data import TensorDataset

    monkeypatch.setattr(ablation, "model_outputs", lambda *a, **k: pytest.fail("an attack ran before the refusal"))
    tensors = TensorDataset(torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="only image-file data sets"):
        ablation.measure_pixels(torch.nn.Identity(), SimpleNamespace(validation=tensors, test=tensors))


def test_a_bar_in_a_factor_or_label_stays_inside_its_table_cell():
    """The report wrote factors and labels as they were named: "lr|schedule" split its row into two more cells than
    the header, every later cell under the wrong column."""
    import json

    from robgen.experiments.ablation_report import markdown
    from tests.conftest import REPO

    committed = json.loads((REPO / "results" / "cifar10" / "ablation" / "results.json").read_text())
    row = dict(committed["rows"][0], factor="lr|schedule", label="0.1 | cosine")
    table = [line for line in markdown([row], committed["settings"]).splitlines() if line.startswith("| ")]
    header, body = table[0], table[1]
    cells = lambda line: len(line.replace("\\|", "").split("|"))
    assert cells(body) == cells(header) and "lr\\|schedule" in body and "0.1 \\| cosine" in body


def test_paired_rows_of_both_interval_methods_are_told_apart():
    """The report named Agresti & Min's interval for every paired row as soon as one had it: the committed rows,
    made with the normal interval, were relabelled by a new one."""
    import json

    from robgen.experiments.ablation_report import markdown
    from tests.conftest import REPO

    committed = json.loads((REPO / "results" / "cifar10" / "ablation" / "results.json").read_text())
    old = [row for row in committed["rows"] if "detection_rate_minus_exact" in row]
    new = dict(old[0], label="new", minus_exact_interval="agresti-min")
    lines = markdown(committed["rows"] + [new], committed["settings"]).splitlines()
    listed = [line for line in lines if line.startswith("- ")]
    assert all(line.endswith("(normal interval)") for line in listed[:-1]) and "(normal interval)" not in listed[-1]
    assert "normal interval" not in markdown(committed["rows"], committed["settings"]).split("Pixels, paired")[1]


def test_row_files_are_strict_json_when_a_rate_is_over_no_images(tmp_path):
    """A row whose attack succeeded on no test image kept its detection rate over the successes as a bare NaN in
    rows/*.json, which strict readers (JavaScript's JSON.parse) refuse; results.json already wrote null."""
    from robgen.experiments.ablation import _write

    def strict(constant):
        raise ValueError(f"non-strict constant {constant}")

    _write(tmp_path / "row.json", {"rows": [{"detection_rate_successful": math.nan, "factor": "m"}]})
    record = json.loads((tmp_path / "row.json").read_text(), parse_constant=strict)
    assert record["rows"][0]["detection_rate_successful"] is None


def test_the_report_is_written_again_from_kept_rows_and_rows_of_other_input_sizes_are_refused_first(
        toy_data, four_class_checkpoint, tmp_path, monkeypatch):
    """With no row named, the command is to write the report again from the kept rows: IndexError (the kept rows
    were compared with the first planned row, of none). Models that read the test images at other sizes (the
    Imagenette models: 160 px and 128 px) were measured, every one, and then refused by the report, which blamed
    --limit and --seed."""
    from conftest import tiny_model

    out = tmp_path / "ablation"
    measured = ablation_rows([AblationSpec("seed", "a", str(four_class_checkpoint))], str(toy_data), out, limit=12,
                             val_size=40, batch_size=12, progress=False)
    monkeypatch.setattr(ablation, "measure_model", lambda *a, **k: pytest.fail("a row was measured"))
    assert ablation_rows([], str(toy_data), out, limit=12, val_size=40, batch_size=12, progress=False) == measured
    larger = tiny_model(num_classes=4)
    larger.spec.input_size = (3, 24, 24)
    larger = robgen.save_checkpoint(larger, tmp_path / "larger")
    with pytest.raises(ValueError, match=r"rows size/24px \(test_images\) differ from size/16px.*same pixels"):
        ablation_rows([AblationSpec("size", "16px", str(four_class_checkpoint)), AblationSpec("size", "24px", str(larger))],
                      str(toy_data), tmp_path / "other", limit=12, val_size=40, batch_size=12, progress=False)
