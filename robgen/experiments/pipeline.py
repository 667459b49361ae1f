"""The detection experiment as one pipeline: split → attack → energies (+ features) → fit → evaluate.

Every entry point that measures the energy detector runs these steps: the
CLI's `detect`, the detector shipped next to a checkpoint (calibration.py),
the paper's reproduction (reproduce.py) and, through the shipped detector,
the app's Detect tab.

    splits = detection_splits(model, "cifar10", limit=1000)
    result = detection_experiment(model, splits, PGD(model, eps=8/255, step_size=1/255, steps=40))
    result.detector.threshold, result.report["detection_rate"]

The steps are also usable one by one (`model_outputs`, `fit_detector`,
`evaluate_detector`), as the reproduction does to share clean outputs
between several attacks.

Not every attacked image is an adversarial example: torchattacks' APGD,
APGD-T, CW, FAB, Square and AutoAttack hand back the clean image itself where
they fail or where the model was already wrong. `model_outputs` records which
images the attack changed (`ModelOutputs.perturbed`); the detector is fitted on
those alone, and the reports count all attacked, perturbed and successful
examples apart (DEFINITIONS).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

import torch
from torch.utils.data import Dataset

from .. import data as datasets
from .. import distributed
from ..detection.baselines import penultimate_features
from ..detection.detector import TEMPERATURES, EnergyDetector
from ..energy import energy
from ..engine import Trace
from ..models.state import eval_mode, model_device, pixels_for, widened
from ..progress import progress_bar

logger = logging.getLogger(__name__)

# What the reports count; results.json carries these words and results.md prints them.
DEFINITIONS = {
    "attacked": "every image the attack was run on; the detection rate is over all of them, unchanged ones included",
    "perturbed": "an attacked image that differs from its clean image in at least one pixel (max |x_adv - x| > 0); "
                 "torchattacks' APGD, APGD-T, CW, FAB, Square and AutoAttack return the clean image itself where they "
                 "fail or where the model was already wrong",
    "successful": "a perturbed image that the model classified correctly before the attack and wrongly after it",
    "fit": "the threshold, and the temperature search, are fitted on the clean validation images against the "
           "perturbed attacked validation images only",
}


def definitions_markdown(definitions: Dict[str, str] = DEFINITIONS) -> List[str]:
    """DEFINITIONS (or the ones a results.json recorded) as the lines of a Markdown list, for results.md."""
    return [f"- **{name}**: {text}." for name, text in definitions.items()]


@dataclass
class ModelOutputs:
    """What a model says about a set of images, in data order, on the CPU."""

    logits: torch.Tensor  # (N, K)
    labels: torch.Tensor  # (N,) the true labels
    features: Optional[torch.Tensor] = None  # (N, D) penultimate features, when asked for
    trace: Optional[Trace] = None  # per-step statistics of the attack, when asked for
    perturbed: Optional[torch.Tensor] = None  # (N,) bool: the attack changed the image (`perturbed_images`)

    def energy(self, temperature: float = 1.0) -> torch.Tensor:
        """E(x) at `temperature`, shape (N,)."""
        return energy(self.logits, temperature, check=False)

    @property
    def predictions(self) -> torch.Tensor:
        return self.logits.argmax(1)

    @property
    def correct(self) -> torch.Tensor:
        return self.predictions == self.labels

    @property
    def perturbed_mask(self) -> torch.Tensor:
        """`perturbed`, or every example where it is not recorded (clean outputs, logits given by hand)."""
        return self.perturbed if self.perturbed is not None else torch.ones(len(self), dtype=torch.bool)

    @property
    def accuracy(self) -> float:
        return float(self.correct.double().mean()) if len(self.labels) else float("nan")

    def __len__(self) -> int:
        return len(self.labels)


def model_outputs(
    model: torch.nn.Module,
    batches: Iterable,
    attack: Optional[Callable] = None,
    features: bool = False,
    trace: bool = False,
    progress=True,
    desc: str = "",
    parts=None,
) -> ModelOutputs:
    """Logits (and penultimate features, and the attack's trace) over (images, labels) batches.

    With `attack`, each batch is first replaced by `attack(images, labels)`;
    the adversarial images are not kept, so memory stays bounded by one batch,
    but which of them the attack changed is (`ModelOutputs.perturbed`).
    `batches` is a DataLoader or any iterable of (images, labels);
    `progress` is True (tqdm), False or a callback `fn(fraction, desc)`.

    An attack with a `generator` draws each batch's randomness (its random start)
    from a seed derived from that generator and the batch's index
    (`distributed.per_batch_seeds`), so that under torchrun, where each rank runs
    its share of the batches (`distributed.shard_batches`) and every rank gets
    all the outputs back in data order, the outputs are those of one process.
    The same seeding lets `parts` (`StageStore.parts(stage, write_stage, read_stage)`) keep each batch's
    outputs as it finishes and give them back to the same stage run again after an interruption.
    """
    device = model_device(model)
    share = distributed.shard_batches(batches)
    generator = getattr(attack, "generator", None) if attack is not None else None
    rows = []  # (batch index, the batch's ModelOutputs)

    def batch_outputs(images, targets) -> ModelOutputs:
        images, targets = pixels_for(model, images.to(device), name="images"), targets.to(device)
        batch_trace = batch_perturbed = None
        if attack is not None:
            clean_images = images
            if trace:
                images, batch_trace = attack(images, targets, return_trace=True)
            else:
                images = attack(images, targets)
            batch_perturbed = perturbed_images(clean_images, images).cpu()
        batch_features = None
        if features:
            batch_features, batch_logits = penultimate_features(model, images)
        else:
            with torch.no_grad():
                batch_logits = widened(model(images)).cpu()
        return ModelOutputs(batch_logits, targets.cpu(), batch_features, batch_trace, batch_perturbed)

    with eval_mode(model), distributed.per_batch_seeds(generator) as reseed:
        for index, (images, targets) in progress_bar(share, desc=desc,
                                                     progress=progress if distributed.is_main() else False):
            reseed(index)  # read back from `parts` or not: the next batch's draws are its own
            if parts is None:
                rows.append((index, batch_outputs(images, targets)))
            else:
                rows.append((index, parts.run(index, lambda images=images, targets=targets: batch_outputs(
                    images, targets))))
    rows = distributed.gather_in_order(rows)
    if not rows:
        raise ValueError("the data yielded no batches: is the data set empty?")
    logits, labels, feature_rows, traces, perturbed = zip(*((row.logits, row.labels, row.features, row.trace,
                                                             row.perturbed) for row in rows))
    traces = [batch_trace for batch_trace in traces if batch_trace is not None]
    return ModelOutputs(
        torch.cat(logits), torch.cat(labels), torch.cat(feature_rows) if features else None,
        Trace.combine(traces, [len(batch_labels) for batch_labels in labels]) if traces else None,
        torch.cat(perturbed) if attack is not None else None,
    )


def perturbed_images(images: torch.Tensor, adversarial_images: torch.Tensor) -> torch.Tensor:
    """(N,) bool: True where the attack changed the image, max |x_adv - x| > 0 over its pixels.

    The test is exact, not within a tolerance: an attack that gives up returns
    the clean tensor itself (or a copy), and a projection of it into the ball
    and [0, 1] leaves it bit for bit the same.
    """
    return (adversarial_images.detach() - images).flatten(1).abs().amax(1) > 0


def tensor_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> List[tuple]:
    """(images, labels) tensors cut into batches, for `model_outputs`."""
    return [(images[i:i + batch_size], labels[i:i + batch_size]) for i in range(0, len(images), batch_size)]


@dataclass
class DetectionSplits:
    """The images a detection experiment uses: validation (held out of train) and test."""

    data: str
    validation: Dataset
    test: Dataset
    train: Dataset  # the training split minus the validation images (reference statistics of baselines)
    classes: List[str]

    def loaders(self, batch_size: int = 250, workers: int = 0) -> Dict[str, torch.utils.data.DataLoader]:
        return {name: datasets.make_loader(subset, batch_size=batch_size, workers=workers)
                for name, subset in (("validation", self.validation), ("test", self.test))}


@datasets.reads_data_root
def detection_splits(model, data: Union[str, "object"], *, val_size: Optional[int] = None, limit: Optional[int] = None,
                     seed: int = 0, data_root=None, download: bool = False) -> DetectionSplits:
    """Validation images held out of train by a seeded split, and the test split, through the model's eval transform.

    `limit` keeps the first N images of each (class-balanced: the loaders
    interleave classes). An image folder with train/ and test/ (or val/) sub-folders gives its splits; a folder
    of class folders serves as both, and the images its validation split leaves out are then halved into the
    test images and the baselines' reference images (`train`), so that no image is in two of the three. `val_size` None: the split the model's training held out
    (`data.model_val_split`: its recorded size and seed; `seed` for a model not trained
    on `data`), so no validation image was trained on. A data set whose classes are not
    the model's is refused.
    """
    train = datasets.load_dataset(data, "train", root=data_root, download=download, spec=model.spec)
    test = datasets.load_dataset(data, "test", root=data_root, download=download, spec=model.spec)
    classes = datasets.class_names(test)
    datasets.check_model_matches(model.spec, data, classes)
    train_part, validation = datasets.model_val_split(train, model.spec, data, val_size, default_seed=seed)
    if datasets.recorded_val_size(model.spec, data) is None:  # (the adaptive study refuses such a model outright)
        logger.warning("%s records no validation split of %s: its validation images are %d of the training images "
                       "drawn with seed %d, which it may have been trained on (then its clean energies there are "
                       "lower, and the threshold fitted on them is off). A model robgen trained on this data set "
                       "records its split: give the data set as it was given to training", model.spec.source or
                       "this model", data, len(validation), seed)
    if datasets.one_folder(data):  # one folder for every split: the images outside the validation split, halved
        if len(train_part) < 2:
            raise ValueError(f"{data} has {len(train)} images and the validation split takes {len(validation)} of "
                             f"them, leaving {len(train_part)} to halve into test and reference images: use a "
                             "smaller --val-size")
        train_part, test = datasets.train_val_split(train_part, len(train_part) // 2, seed=seed)
        used = len(test) if limit is None else min(limit, len(test))
        logger.warning("%s has no train/ and test/ sub-folders: the threshold is fitted on its validation split, "
                       "tested on half the other images (%d of them, %d used) and the baselines' reference statistics "
                       "taken on the rest (if the model trained on them, its accuracy there is optimistic)", data,
                       len(test), used)
    return DetectionSplits(
        str(data), datasets.first(validation, limit, "validation split"), datasets.first(test, limit, "test split"),
        train_part, classes,
    )


def fit_detector(clean: ModelOutputs, adversarial: ModelOutputs, rule: str = "youden",
                 temperature: Union[float, str] = "search", temperatures: Sequence[float] = TEMPERATURES,
                 target_fpr: float = 0.05) -> EnergyDetector:
    """An `EnergyDetector` fitted on validation logits (so that the temperature can be searched).

    The adversarial side is the perturbed attacked images only (`perturbed_only`).
    """
    detector = EnergyDetector(rule=rule, temperature=temperature, target_fpr=target_fpr, temperatures=temperatures)
    return detector.fit(clean.logits, perturbed_only(adversarial).logits)


def perturbed_only(adversarial: ModelOutputs) -> ModelOutputs:
    """The attacked examples the attack changed (DEFINITIONS["perturbed"]): the adversarial side of every fit.

    An image the attack returned unchanged is a clean image; fitting on it as adversarial
    would pull a threshold (and the temperature search) towards the clean energies.
    The trace, a summary over all attacked images, is not carried over.
    """
    changed = adversarial.perturbed_mask
    if not changed.any():
        raise ValueError(f"the attack changed none of the {len(adversarial)} images, so there is nothing to fit a "
                         "detector on: use a stronger attack (more steps, a larger eps) or more images")
    return ModelOutputs(adversarial.logits[changed], adversarial.labels[changed],
                        adversarial.features[changed] if adversarial.features is not None else None,
                        perturbed=changed[changed])


def successful(clean: ModelOutputs, adversarial: ModelOutputs) -> torch.Tensor:
    """Successful adversarial examples (DEFINITIONS): perturbed, right before the attack and wrong after it."""
    return adversarial.perturbed_mask & clean.correct & ~adversarial.correct


def evaluate_detector(detector: EnergyDetector, clean: ModelOutputs, adversarial: ModelOutputs) -> dict:
    """The detector's rates on test outputs, plus what the attack did to the classifier.

    "detection_rate" is over every attacked image, "detection_rate_successful" over the
    successful ones; "n_attacked", "n_perturbed" and "n_successful" count them (DEFINITIONS).
    """
    report = detector.evaluate(clean.logits, adversarial.logits)
    success = successful(clean, adversarial)
    flagged = detector.predict(adversarial.logits)
    report.update(
        detection_rate_successful=float(flagged[success].double().mean()) if success.any() else float("nan"),
        n_attacked=len(adversarial), n_perturbed=int(adversarial.perturbed_mask.sum()), n_successful=int(success.sum()),
        attack_success_rate=float(success[clean.correct].double().mean()) if clean.correct.any() else float("nan"),
        clean_accuracy=clean.accuracy, adversarial_accuracy=adversarial.accuracy,
    )
    return report


@dataclass
class DetectionResult:
    detector: EnergyDetector
    report: dict  # test rates (see `evaluate_detector`)
    clean: Dict[str, ModelOutputs] = field(default_factory=dict)  # "validation", "test"
    adversarial: Dict[str, ModelOutputs] = field(default_factory=dict)


def detection_experiment(model, splits: DetectionSplits, attack, *, rule: str = "youden",
                         temperature: Union[float, str] = "search", temperatures: Sequence[float] = TEMPERATURES,
                         target_fpr: float = 0.05, batch_size: int = 250, workers: int = 0,
                         progress=True) -> DetectionResult:
    """The whole pipeline for one attack: outputs on clean and attacked splits, fit on validation, rates on test."""
    clean, adversarial = {}, {}
    for name, loader in splits.loaders(batch_size, workers).items():
        clean[name] = model_outputs(model, loader, progress=progress, desc=f"{name}: clean")
        adversarial[name] = model_outputs(model, loader, attack=attack, progress=progress, desc=f"{name}: attack")
    detector = fit_detector(clean["validation"], adversarial["validation"], rule, temperature, temperatures, target_fpr)
    report = evaluate_detector(detector, clean["test"], adversarial["test"])
    report.update(attack=repr(attack), data=splits.data, n_validation=len(clean["validation"]),
                  n_test=len(clean["test"]), n_validation_perturbed=int(adversarial["validation"].perturbed_mask.sum()),
                  definitions=DEFINITIONS)
    return DetectionResult(detector, report, clean, adversarial)
