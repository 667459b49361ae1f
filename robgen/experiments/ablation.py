"""The detection ablation: which difference from the paper's model moves the energy detector, and by how much.

Every row is one model measured by the official protocol (PAPER.md): PGD 8/255, 40 steps of 1/255 from a
random start, on the first `limit` images of the validation split the model's training held out and of the
test split; threshold by Youden's J, temperature searched by validation AUROC. Rows are grouped by the factor
they vary (augmentation, schedule and length, width, ...); a row's model is any checkpoint, e.g. the epoch
snapshots of one run (`train --snapshot-every 10`) give that run's curve.

The pixel factor needs no model of its own: `pixel_rows` fits the detector on the validation split as usual
and evaluates it twice on the same test images, the exact PNG pixels of the CIFAR-10 archive and the same
images JPEG-compressed as the archive compressed the rest (quality 75), with the paired difference
(Agresti & Min's interval for matched proportions; rows made before 2026-12-05: a normal interval over the
per-image differences).

    rows = ablation_rows([AblationSpec("width", "w32", "cifar10-resnet10-standard")], "cifar10", out_dir)

Each row's result is written to `<out>/rows/<factor>--<label>.json` as soon as it is measured, with the model's
fingerprint and the settings; a later run with the same settings reads it back instead of measuring again (and a
row of a model already measured under another factor copies those numbers), so rows can be added one run at a time (`ablation_report.py` writes the table and the figure from all of them).
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from .. import data as datasets
from ..files import json_text, write_text_atomically
from ..attacks import PGD
from ..metrics import PAIRED_INTERVAL, paired_difference_interval, rate_interval
from ..models.state import model_device
from .ablation_report import PAPER_CIFAR10, settings_differ
from .pipeline import (DetectionSplits, detection_experiment, detection_splits, evaluate_detector, fit_detector,
                       model_outputs)
from .stages import model_fingerprint

logger = logging.getLogger(__name__)

OFFICIAL_PGD = {"eps": 8 / 255, "step_size": 1 / 255, "steps": 40}  # the official notebooks' detector attack
ARCHIVE_JPEG_QUALITY = 75  # the CIFAR-10 archive's JPEG copies (PIL quality 75, 4:2:0; data.jpeg_copies)
ROWS = "rows"


@dataclass(frozen=True)
class AblationSpec:
    """One row to measure: `model` (a name, folder or hf-hub: id) as the value `label` of `factor`.

    `pixels` True measures the pixel factor on that model instead (two rows: exact and JPEG test pixels).
    """

    factor: str
    label: str
    model: str
    pixels: bool = False

    @property
    def file_name(self) -> str:
        safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in f"{self.factor}--{self.label}")
        return f"{safe}.json"


def parse_spec(text: str, pixels: bool = False) -> AblationSpec:
    """'factor/label=MODEL' -> AblationSpec (the command line's --row and --pixels)."""
    head, sep, model = text.partition("=")
    factor, slash, label = head.partition("/")
    if not (sep and slash and factor and label and model):
        raise ValueError(f"a row is FACTOR/LABEL=MODEL, e.g. width/w32=cifar10-resnet10-standard; got {text!r}")
    return AblationSpec(factor.strip(), label.strip(), model.strip(), pixels)


def official_attack(model, seed: int = 0) -> PGD:
    """The official protocol's PGD, seeded."""
    generator = torch.Generator(device=model_device(model)).manual_seed(seed)
    return PGD(model, random_start=True, generator=generator, **OFFICIAL_PGD)


def _rates(report: dict) -> dict:
    """The numbers a row keeps from a detection report (rates with their 95% intervals)."""
    keep = ("detection_rate", "detection_rate_ci", "false_positive_rate", "false_positive_rate_ci", "auroc", "auroc_ci",
            "threshold", "temperature", "detection_rate_successful", "n_successful", "n_perturbed",
            "clean_accuracy", "adversarial_accuracy")
    return {name: report[name] for name in keep if name in report}


def _model_facts(model) -> dict:
    """What a row says about its model's recipe (from the checkpoint's spec)."""
    training = model.spec.training or {}
    recipe = training.get("config", {})
    return {
        "source": model.spec.source, "architecture": model.spec.architecture,
        "width": model.spec.arch_kwargs.get("width"), "epochs_done": training.get("epochs_done"),
        "recipe": {name: recipe.get(name) for name in ("epochs", "optimizer", "lr", "weight_decay", "schedule",
                                                         "milestones", "augment", "batch_size", "label_smoothing",
                                                         "seed", "init_from") if name in recipe},
    }


def at_false_positive_rate(result, target_fpr: float = PAPER_CIFAR10["false_positive_rate"]) -> dict:
    """The same attacked images judged at a fixed false-positive budget instead of Youden's J: the highest
    threshold whose clean *validation* FPR is at most `target_fpr` (rule "fpr", at the temperature the official
    protocol picked), then its test detection rate and FPR with their Wilson intervals.

    Youden's J lets every model pick its own FPR (4.1% for one seed, 6.7% for another), so two rows can differ
    in detection only because they sit at different FPRs; at the paper's FPR they are read at one operating point.
    """
    return detection_at_fpr(result.clean["validation"], result.adversarial["validation"], result.clean["test"],
                            result.adversarial["test"], result.detector.temperature, target_fpr)


def detection_at_fpr(clean_val, attacked_val, clean_test, attacked_test, temperature: float,
                     target_fpr: float = PAPER_CIFAR10["false_positive_rate"]) -> dict:
    """`at_false_positive_rate` from the four model outputs (ModelOutputs) themselves, e.g. a stopped run's stages."""
    detector = fit_detector(clean_val, attacked_val, rule="fpr", temperature=temperature, target_fpr=target_fpr)
    report = detector.evaluate(clean_test.logits, attacked_test.logits)
    return {"target_fpr": float(target_fpr), "threshold": float(detector.threshold),
            **{name: report[name] for name in ("detection_rate", "detection_rate_ci", "false_positive_rate",
                                               "false_positive_rate_ci")}}


def measure_model(model, splits: DetectionSplits, seed: int = 0, batch_size: int = 250, progress=True) -> dict:
    """The official protocol on `splits`: the detector's test rates, the model's clean test accuracy, and the
    detection at the paper's false-positive rate (`at_false_positive_rate`)."""
    result = detection_experiment(model, splits, official_attack(model, seed), batch_size=batch_size, progress=progress)
    clean = result.clean["test"]
    row = _rates(result.report)
    row.update(n_validation=len(result.clean["validation"]), n_test=len(clean),
               clean_accuracy_ci=list(rate_interval(clean.correct)), at_paper_fpr=at_false_positive_rate(result))
    return row


def measure_pixels(model, splits: DetectionSplits, quality: int = ARCHIVE_JPEG_QUALITY, seed: int = 0,
                   batch_size: int = 250, progress=True) -> List[dict]:
    """The pixel factor: one detector (fitted on `splits.validation`), evaluated on the exact PNG test images and
    on the same images JPEG-compressed at `quality`. Returns the two rows; the second carries the paired
    difference in detection rate and FPR (JPEG minus exact) with its 95% interval."""
    from .pipeline import fit_detector

    loader = lambda dataset: datasets.make_loader(dataset, batch_size=batch_size)  # noqa: E731
    exact = datasets.lossless_only(splits.test)  # refused here, before any attack, for data that cannot say which
    # images are exact (neither image files nor torchvision's pickled CIFAR, all of whose images are)
    attack = official_attack(model, seed)
    clean_val = model_outputs(model, loader(splits.validation), progress=progress, desc="validation: clean")
    adv_val = model_outputs(model, loader(splits.validation), attack=attack, progress=progress, desc="validation: attack")
    detector = fit_detector(clean_val, adv_val)
    rows, flags = [], []
    for name, images in (("exact PNG", exact), (f"JPEG q{quality}", datasets.jpeg_copies(exact, quality))):
        clean = model_outputs(model, loader(images), progress=progress, desc=f"{name}: clean")
        adversarial = model_outputs(model, loader(images), attack=official_attack(model, seed + 1), progress=progress,
                                    desc=f"{name}: attack")
        report = evaluate_detector(detector, clean, adversarial)
        row = _rates(report)
        row.update(pixels=name, n_validation=len(clean_val), n_test=len(clean),
                   clean_accuracy_ci=list(rate_interval(clean.correct)))
        rows.append(row)
        flags.append((detector.predict(adversarial.logits).double(), detector.predict(clean.logits).double()))
    (adv_exact, clean_exact), (adv_jpeg, clean_jpeg) = flags
    for rate, exact_flags, jpeg_flags in (("detection_rate", adv_exact, adv_jpeg),
                                          ("false_positive_rate", clean_exact, clean_jpeg)):
        paired = jpeg_flags - exact_flags  # per image: +1 flagged only as JPEG, -1 only as exact
        rows[1][f"{rate}_minus_exact"] = float(paired.mean())
        rows[1][f"{rate}_minus_exact_ci"] = list(paired_difference_interval(exact_flags, jpeg_flags))
    rows[1]["minus_exact_interval"] = PAIRED_INTERVAL
    return rows


def _settings(spec: AblationSpec, data: str, limit: Optional[int], seed: int, val_size: Optional[int],
              batch_size: int, test_images: str) -> dict:
    # batch_size: each batch's random start is seeded from its index, so it changes the draws
    # data in one spelling ("cifar10" also when given as its folder under the data root; `test_images` tells copies
    # apart)
    return {"data": datasets.canonical_data(data), "limit": limit, "seed": seed, "val_size": val_size, "batch_size": batch_size,
            "attack": OFFICIAL_PGD, "pixels": spec.pixels, "protocol": "youden, temperature searched",
            "test_images": test_images}


def images_fingerprint(dataset) -> str:
    """A hash of a split's pixels and labels, the same on every machine with the same images: a row measured on
    another copy of the data (the JPEG copies, a fresh download, another --data-root) is measured again, not read
    back (a row is committed with the results and read back on other machines, so no local path can say this)."""
    return datasets.pixels_fingerprint(dataset)


@datasets.reads_data_root
def ablation_rows(specs: Sequence[AblationSpec], data: str, out_dir: Path, *, limit: Optional[int] = 2000,
                  seed: int = 0, batch_size: int = 250, val_size: Optional[int] = None, data_root=None,
                  download: bool = False, device=None, progress=True, overwrite: bool = False) -> List[dict]:
    """Measure every spec (or read back the ones an earlier run with the same settings measured) into
    `<out_dir>/rows/`; returns every row there, the earlier runs' too, in file order. A row measured before with
    other settings or weights is measured again only with `overwrite` (a quick check run into the folder would
    replace rows that took hours): otherwise the differences are named before anything is measured."""
    from ..models import load_model

    files = [spec.file_name for spec in specs]
    clashes = sorted({f"{spec.factor}/{spec.label}" for spec in specs if files.count(spec.file_name) > 1})
    if clashes:  # one row file each: two specs of one file name would overwrite each other, run after run
        raise ValueError(f"the rows {', '.join(clashes)} would share a row file ({', '.join(sorted(set(files)))}): "
                         "give them labels that differ in a letter or digit")
    models = [load_model(spec.model, device=device) for spec in specs]  # every name loads before any measuring
    folder = Path(out_dir) / ROWS
    planned = []
    for spec, model in zip(specs, models):
        splits = detection_splits(model, data, val_size=val_size, limit=limit, seed=seed, data_root=data_root,
                                  download=download)
        settings = _settings(spec, data, limit, seed, val_size, batch_size, images_fingerprint(splits.test))
        planned.append((spec, model, splits, settings, model_fingerprint(model)))
    # the rows of one report need every row's settings alike: refused now, not after hours of measuring, when the
    # report would be; first the rows planned here (models that read the test images at other sizes or crops, such
    # as Imagenette's 160-px standard model and its 128-px robust one, see other pixels), then the rows this run
    # leaves as they are (none planned: the report written again from the kept rows)
    apart = [f"{spec.factor}/{spec.label} ({', '.join(differ)})" for spec, _, _, settings, _ in planned[1:]
             for differ in [settings_differ(planned[0][3], settings)] if differ]
    if apart:
        raise ValueError(f"the rows {', '.join(apart)} differ from {specs[0].factor}/{specs[0].label}: an ablation "
                         "compares models on the same pixels and settings (test_images differ where models read "
                         "the images at other input sizes, crops or interpolations): ablate models of one input "
                         "transform, or measure them into separate --out folders")
    planned_files = {spec.file_name for spec in specs}
    kept_apart = [f"{path.name} ({', '.join(differ)})" for path in sorted(folder.glob("*.json"), key=natural_key)
                  if planned and path.name not in planned_files
                  for differ in [settings_differ(json.loads(path.read_text()).get("settings") or {},
                                                 json.loads(json.dumps(planned[0][3])))] if differ]
    if kept_apart:
        raise ValueError(f"{folder} holds rows measured with other settings, which cannot share a report with these: "
                         f"{'; '.join(kept_apart)} differ. Measure with their settings, measure those rows again "
                         "with these (name them, with --overwrite), or measure into another --out")
    if not overwrite:
        replaced = [_replaced(folder / spec.file_name, settings, fingerprint)
                    for spec, _, _, settings, fingerprint in planned]
        replaced = [text for text in replaced if text]
        if replaced:
            raise ValueError(f"{folder} holds rows measured otherwise: {'; '.join(replaced)}. Measure into another "
                             "--out, or pass --overwrite to measure them again")
    folder.mkdir(parents=True, exist_ok=True)
    for spec, model, splits, settings, fingerprint in planned:
        path = folder / spec.file_name
        if path.exists():
            kept = json.loads(path.read_text())
            if (kept.get("settings") == json.loads(json.dumps(settings)) and kept.get("fingerprint") == fingerprint
                    and _complete(kept)):
                logger.info("%s: measured already, read back", path)
                facts = _model_facts(model)  # the checkpoint's facts as robgen records them now (no measurement)
                if kept.get("model") != facts:
                    _write(path, {**kept, "model": facts})
                continue
        same = _measured_elsewhere(folder, settings, fingerprint)
        if same is not None:  # the same model measured as another row: its numbers, under this row's name
            record = {**same, "spec": asdict(spec), "model": _model_facts(model)}  # this checkpoint's facts
            _write(path, record)
            continue
        started = time.perf_counter()
        if spec.pixels:
            measured = measure_pixels(model, splits, seed=seed, batch_size=batch_size, progress=progress)
        else:
            measured = [measure_model(model, splits, seed=seed, batch_size=batch_size, progress=progress)]
        record = {"spec": asdict(spec), "settings": settings, "fingerprint": fingerprint, "model": _model_facts(model),
                  "rows": measured, "seconds": time.perf_counter() - started}
        _write(path, record)
    return read_rows(out_dir)


def _replaced(path: Path, settings: dict, fingerprint: str) -> str:
    """What differs between the row kept in `path` and the one these settings and weights would measure ("" when
    nothing is kept, or nothing differs but the row's completeness)."""
    if not path.exists():
        return ""
    kept = json.loads(path.read_text())
    old, new = kept.get("settings") or {}, json.loads(json.dumps(settings))
    differ = [f"{name} {old.get(name)!r} -> {new.get(name)!r}" for name in sorted(set(old) | set(new))
              if old.get(name) != new.get(name)]
    if kept.get("fingerprint") != fingerprint:
        differ.append("other weights")
    return f"{path.name} ({', '.join(differ)})" if differ else ""


def _complete(record: dict) -> bool:
    """Whether a kept row holds everything `measure_model` records now: a model row measured before robgen read
    the detection at the paper's FPR (`at_paper_fpr`) is measured again; pixel rows do not read it."""
    return bool(record.get("settings", {}).get("pixels")) or all("at_paper_fpr" in row for row in record.get("rows", []))


def _measured_elsewhere(folder: Path, settings: dict, fingerprint: str) -> Optional[dict]:
    """A complete kept row of the same model (fingerprint) measured with the same settings, if any."""
    settings = json.loads(json.dumps(settings))
    for path in sorted(folder.glob("*.json")):
        kept = json.loads(path.read_text())
        if kept.get("settings") == settings and kept.get("fingerprint") == fingerprint and _complete(kept):
            return kept
    return None


def _write(path: Path, record: dict) -> None:
    write_text_atomically(path, json_text(record))  # strict JSON: a rate over no images (NaN) is null


def read_rows(out_dir: Path) -> List[dict]:
    """Every row file under `<out_dir>/rows/`, sorted by name, numbers by value (e5 before e10 and e20)."""
    return [json.loads(path.read_text()) for path in sorted((Path(out_dir) / ROWS).glob("*.json"), key=natural_key)]


def natural_key(path: Path) -> list:
    """A file name as text and numbers, so that "e5" sorts before "e10"."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", path.name)]
