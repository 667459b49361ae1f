"""The shared machinery of reject options (robgen/detection/reject.py has the kinds and the whole story).

`RejectOption` is a detector as a calibrated, differentiable score (`score > 0` rejects): each kind defines its
statistic and how thresholds come from clean validation values; this module does the rest: the exact
order-statistic thresholds (at most floor(α n) clean validation images rejected, each threshold halfway
between the last accepted value and the next), calibration on a model's
outputs, the check that a reject option is used with the model it was calibrated on, and JSON.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Optional, Union

import torch

from ..files import write_text_atomically
from ..checks import check_logits
from ..metrics import accept_down_to, accept_up_to, rate_interval
from ..models.fingerprint import model_fingerprint
from ..models.state import eval_mode, model_device, model_dtype, pixels_for
from .baselines import penultimate_features

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .reject import CallableReject

FORMAT = "robgen-reject-option"
FORMAT_VERSION = 1
# the clean validation images the target FPR is counted among: all of them, or the ones the model classifies
# correctly (Chen et al. 2023's stratified convention; `RejectOption.fit_values`)
FPR_AMONG = ("all", "correct")


def allowed_rejections(n: int, target_fpr: float) -> int:
    """m = floor(target_fpr · n), at most n - 1: the most clean validation images a threshold may reject (a
    threshold is one of the n values, so it keeps at least one on its accepted side)."""
    m = int(math.floor(float(target_fpr) * n + 1e-9))  # 1e-9: 0.29 * 100 is 28.999999999999996
    return max(0, min(m, n - 1))


def upper_threshold(values: torch.Tensor, target_fpr: float) -> float:
    """t with #{v > t} <= floor(target_fpr · n), as few accepted as that allows: reject `v > t`. t lies halfway
    between the largest accepted value and the next (`accept_up_to`)."""
    ordered = torch.sort(values.detach().flatten()).values
    return accept_up_to(ordered, len(ordered) - 1 - allowed_rejections(len(ordered), target_fpr))


def lower_threshold(values: torch.Tensor, target_fpr: float) -> float:
    """tau with #{v < tau} <= floor(target_fpr · n), as few accepted as that allows: reject `v < tau`, halfway
    between the smallest accepted value and the one below (`accept_down_to`)."""
    ordered = torch.sort(values.detach().flatten()).values
    return accept_down_to(ordered, allowed_rejections(len(ordered), target_fpr))


def _check_fpr(target_fpr: float) -> float:
    target_fpr = float(target_fpr)
    if not 0 <= target_fpr < 1:
        raise ValueError(f"target_fpr must be in [0, 1) (e.g. 0.05 for 5% of clean images rejected), got {target_fpr}")
    return target_fpr


def check_fpr_among(fpr_among: str) -> str:
    """`fpr_among`, refused unless one of FPR_AMONG."""
    if fpr_among not in FPR_AMONG:
        raise ValueError(f"fpr_among must be one of {', '.join(FPR_AMONG)} (the clean validation images the target "
                         f"FPR is counted among), got {fpr_among!r}")
    return fpr_among


def _check_labels_for(fpr_among: str, labels) -> None:
    """`fpr_among` known, with the labels that "correct" needs (and that "all" would ignore)."""
    if (check_fpr_among(fpr_among) == "correct") != (labels is not None):
        raise ValueError("fpr_among='correct' counts the FPR among the images the model classifies correctly: pass "
                         "their labels= too" if labels is None else
                         "labels= are read only with fpr_among='correct' (the FPR counted among the images the "
                         "model classifies correctly); drop them, or say fpr_among='correct'")


def correctly_classified(logits: torch.Tensor, labels) -> torch.Tensor:
    """(N,) bool: the images whose logits put their true label on top (fpr_among="correct")."""
    if not isinstance(labels, torch.Tensor) or labels.shape != (logits.shape[0],) or labels.is_floating_point():
        raise ValueError(f"labels must be a tensor of {logits.shape[0]} whole-number class indices, one per "
                         f"validation image, got {tuple(labels.shape) if isinstance(labels, torch.Tensor) else labels!r}")
    labels = labels.to(logits.device)
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
        raise ValueError(f"labels must be class indices in [0, {logits.shape[1] - 1}] (the model's "
                         f"{logits.shape[1]} classes), got {int(labels.min())}..{int(labels.max())}")
    return (logits.argmax(1) == labels).cpu()  # none correct: fit_values refuses it


def _check_values(values: torch.Tensor) -> torch.Tensor:
    if values.shape[0] == 0:
        raise ValueError("no clean validation images to calibrate on: pass at least one")
    if not torch.isfinite(values).all():
        raise ValueError("the detector's statistic is NaN or infinite on some clean validation images; "
                         "check the model's outputs (or your detector function) on them")
    return values


class RejectOption:
    """A detector as a calibrated score: `score_from(logits, features, inputs) > 0` means rejected.

    Subclasses define `values` (the detector's statistic, differentiable), `_fit_values` (thresholds
    from clean validation statistics) and `_score_from_values`; the rest (calibration, the model
    check, JSON) is shared. Attributes:

    - `kind`: the registry name ("energy", "band", "class-energy", "multi-t", "mahalanobis", "energy-gap",
      "robust-margin", "custom");
    - `target_fpr`: the clean false-positive rate the thresholds were set for;
    - `needs_features`: `score_from` needs the penultimate features (the input of the last nn.Linear);
    - `needs_inputs`: `score_from` needs the input images (a user's detector of x);
    - `needs_network`: `score_from` needs the network that made the logits, to run it again near the input
      ("robust-margin" attacks it inside a small ball); `passes_per_score` says how many forward+backward
      passes one score costs on top of the classifier's own (0 for a score read off one forward pass);
    - `reads_energy`: its statistic is an energy of the logits, so probabilities or log-probabilities given as
      logits (which make it constant) are refused;
    - `scores_the_prediction`: the score is a property of the predicted class that jumps where the prediction
      flips ("robust-margin": that class's margin within a small ball), so while the model still predicts the
      true class, lowering the score makes the true class surer: the (K+1) margin attacks leave the detector out
      of their guard until the class is won (`robgen.attacks.adaptive.kplusone_margin`);
    - `validation`: the clean validation FPR achieved, its Wilson 95% interval and n, and which images it was
      counted among ("fpr_among": "all", or "correct": see `fit_values`);
    - `model_fingerprint`: the SHA-256 of the weights it was calibrated on;
    - `calibration`: free-form provenance for the caller to fill (data, split, seed).
    """

    kind = ""
    needs_features = False
    needs_inputs = False
    needs_network = False
    passes_per_score = 0
    scores_the_prediction = False
    reads_energy = True  # its statistic reads the energy, which softmax or log-softmax outputs make constant

    def __init__(self, target_fpr: float = 0.05) -> None:
        self.target_fpr = _check_fpr(target_fpr)
        self.model_fingerprint: Optional[str] = None
        self.validation: Dict[str, object] = {}
        self.calibration: Dict[str, object] = {}

    # ---- what a kind defines -------------------------------------------------------------------
    def values(self, logits: torch.Tensor, features: Optional[torch.Tensor] = None,
               inputs: Optional[torch.Tensor] = None, network: Optional[torch.nn.Module] = None) -> torch.Tensor:
        """The detector's raw statistic (N,) or (N, M), differentiable in the outputs it reads."""
        raise NotImplementedError

    def _fit_values(self, values: torch.Tensor) -> None:
        raise NotImplementedError

    def _score_from_values(self, values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def thresholds(self) -> Dict[str, object]:
        """The fitted thresholds by name (None before calibration)."""
        raise NotImplementedError

    def _set_thresholds(self, thresholds: Dict[str, object]) -> None:
        raise NotImplementedError

    def settings(self) -> Dict[str, object]:
        """The constructor's settings besides target_fpr (temperature, temperatures, ...)."""
        return {}

    def _state(self) -> Dict[str, object]:
        """Fitted state besides thresholds (Mahalanobis: class means and precision)."""
        return {}

    def _set_state(self, state: Dict[str, object]) -> None:
        pass

    def _check_loaded(self) -> None:
        """Refuse thresholds read from a file that no calibration gives (NaN or infinite: every point rejected, or
        none), as `from_dict` reads them; a kind adds what its own thresholds and state must satisfy."""
        for name, value in self.thresholds().items():
            numbers = value if isinstance(value, (list, tuple)) else [value]
            if any(number is not None and not math.isfinite(number) for number in numbers):
                raise ValueError(f"threshold {name} = {value!r}: a calibration gives finite thresholds, so this file "
                                 "was damaged or edited; calibrate the detector again")

    # ---- scores --------------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return all(value is not None for value in self.thresholds().values())

    def _require_fit(self) -> None:
        if not self.fitted:
            raise RuntimeError(f"this {self.kind!r} reject option has no threshold yet: call calibrate(model, images) "
                               "or fit(clean validation outputs) first, or load a saved one")

    def score_from(self, logits: torch.Tensor, features: Optional[torch.Tensor] = None,
                   inputs: Optional[torch.Tensor] = None, network: Optional[torch.nn.Module] = None) -> torch.Tensor:
        """(N,) score of one forward pass's outputs; > 0 means rejected. Differentiable. A NaN score (a user's
        function undefined at a point), and any point whose logits are not all finite (NaN, or infinite: all
        -inf gave an energy of +inf, accepted), score +inf: such a point is rejected, by every part of robgen
        that asks (`rejects`, the attacks' evasion check, the (K+1)-logit model), never half accepted.

        `features` (the penultimate features) are needed when `needs_features`, `inputs` (the
        images) when `needs_inputs`, `network` (what made the logits, in eval mode) when `needs_network`.
        """
        self._require_fit()
        self._require_outputs(logits, features, inputs, network)
        finite = torch.isfinite(logits).all(dim=1)
        # a row with an infinite or NaN logit (a float16 model's overflow) is scored +inf below whatever its value;
        # its statistic is read from a finite stand-in cut from the graph, so that its gradient is 0, not NaN
        # (logsumexp's backward at +inf is 0 * NaN), which would make the attack's iterate NaN for good
        readable = torch.where(finite[:, None], logits, logits.detach().nan_to_num(0.0, 0.0, 0.0))
        score = self._score_from_values(self.values(readable, features, inputs, network))
        finite = finite.to(score.device)
        undefined = None if getattr(self, "_said_undefined", False) else (  # said once per detector: an attack
            torch.isnan(score) & finite)  # asks at every step
        if undefined is not None and bool(undefined.any()):
            self._said_undefined = True
            logger.warning("the %r detector's score is NaN at %d of %d points (finite logits): they are rejected, and "
                           "its gradient there is no direction, so an attack that reaches such a point cannot move "
                           "on from it: a DARA measured so can overstate the detector. Define the score at every "
                           "point of [0, 1] (e.g. clamp what a square root or a log reads)",
                           getattr(self, "name", self.kind), int(undefined.sum()), len(score))
        broken = torch.isnan(score) | ~finite
        return torch.where(broken, torch.full_like(score, math.inf), score)  # fail closed

    def rejects(self, logits: torch.Tensor, features: Optional[torch.Tensor] = None,
                inputs: Optional[torch.Tensor] = None, network: Optional[torch.nn.Module] = None) -> torch.Tensor:
        """(N,) bool, True where rejected: `score_from(...) > 0`."""
        return self.score_from(logits, features, inputs, network) > 0

    def _require_outputs(self, logits, features, inputs, network=None) -> None:
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            raise ValueError(f"logits must be a tensor of shape (N, num_classes), got "
                             f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")
        if self.needs_features and features is None:
            raise ValueError(f"the {self.kind!r} reject option reads the penultimate features: pass features= "
                             "(robgen.detection.penultimate_features gives them) or use DefendedClassifier.outputs")
        if self.needs_inputs and inputs is None:
            raise ValueError(f"the {self.kind!r} reject option reads the input images: pass inputs=")
        if self.needs_network and network is None:
            raise ValueError(f"the {self.kind!r} reject option runs the model again near each input: pass "
                             "network= (the model, in eval mode), or use DefendedClassifier.outputs")

    # ---- calibration ---------------------------------------------------------------------------
    def fit(self, logits: torch.Tensor, features: Optional[torch.Tensor] = None,
            inputs: Optional[torch.Tensor] = None, model: Optional[torch.nn.Module] = None,
            fpr_among: str = "all", labels: Optional[torch.Tensor] = None) -> "RejectOption":
        """Set the thresholds on one batch of clean validation outputs (`model`: record its fingerprint; a
        kind that `needs_network` runs it, so it needs `model` and the `inputs` its logits came from).
        `fpr_among="correct"` with the images' `labels`: count the target FPR among the images the logits
        classify correctly (`fit_values`)."""
        if isinstance(logits, torch.Tensor) and logits.ndim == 2 and logits.shape[0]:
            check_logits(logits, energy=self.reads_energy)
        if model is not None:
            self._check_model_first(model)
        if self.needs_network and model is None:
            raise ValueError(f"the {self.kind!r} reject option runs the model again near each input: pass model= "
                             "(and the inputs= its logits came from), or use calibrate(model, images)")
        self._require_outputs(logits, features, inputs, model if self.needs_network else None)
        _check_labels_for(fpr_among, labels)
        correct = None if labels is None else correctly_classified(logits.detach(), labels)
        with torch.no_grad(), (eval_mode(model) if self.needs_network else contextlib.nullcontext()):
            values = self.values(logits.detach(), None if features is None else features.detach(),
                                 None if inputs is None else inputs.detach(), model if self.needs_network else None)
        self.fit_values(values, correct)
        if model is not None:
            self.bind(model)
        return self

    def fit_values(self, values: torch.Tensor, correct: Optional[torch.Tensor] = None) -> "RejectOption":
        """Set the thresholds on the statistic `values(...)` of clean validation images; record the FPR reached.
        Forgets the model it was bound to: new thresholds belong to the model whose outputs gave `values`, which
        `fit(..., model=)`, `calibrate` or `bind` records.

        `correct`: None (the target FPR counted among all the images), or an (N,) bool mask of the images the
        model classifies correctly (what `fit` and `calibrate` pass with fpr_among="correct"): the thresholds then
        reject at most target_fpr of *those*, Chen et al. (2023)'s stratified convention. A misclassified clean image
        costs a defended classifier nothing when rejected (it is an error either way), so the budget goes to the
        correct ones; but such thresholds reject more than target_fpr of all clean images wherever the
        misclassified ones score high, and `validation` records that share too ("rejected_all", "n_all",
        "rejection_rate_all" and its interval)."""
        values = _check_values(values.detach())
        if correct is not None:
            if (not isinstance(correct, torch.Tensor) or correct.dtype != torch.bool
                    or correct.shape != (values.shape[0],)):
                raise ValueError(f"correct must be a ({values.shape[0]},) bool tensor, one flag per validation value "
                                 "(True where the model classifies the image correctly)")
            correct = correct.detach().cpu()
            if not bool(correct.any()):
                raise ValueError("no validation image is marked correctly classified (the model classifies none of "
                                 "the validation images correctly): there is nothing to count the false-positive rate "
                                 "among; count it among all (fpr_among='all'), or check the labels")
        self.model_fingerprint = None
        self._fit_values(values if correct is None else values[correct])
        rejected_all = (self._score_from_values(values) > 0).cpu()
        rejected = rejected_all if correct is None else rejected_all[correct]
        self.validation = {
            "n": int(rejected.shape[0]), "rejected": int(rejected.sum()),
            "false_positive_rate": float(rejected.double().mean()),
            "false_positive_rate_ci": list(rate_interval(rejected)), "confidence": 0.95,
            "fpr_among": "all" if correct is None else "correct",
        }
        if correct is not None:
            self.validation.update(n_all=int(values.shape[0]), rejected_all=int(rejected_all.sum()),
                                   rejection_rate_all=float(rejected_all.double().mean()),
                                   rejection_rate_all_ci=list(rate_interval(rejected_all)))
        return self

    @torch.no_grad()
    def calibrate(self, model: torch.nn.Module, images: torch.Tensor, batch_size: int = 256,
                  fpr_among: str = "all", labels: Optional[torch.Tensor] = None) -> "RejectOption":
        """Run `model` (in eval mode) over clean validation `images` once and fit the thresholds on its outputs.

        The images must be held out of the model's training (robgen.data.model_val_split gives the
        split a robgen model's training held out). Records the model's fingerprint. `fpr_among="correct"` with
        the images' true `labels`: count the target FPR among the images the model classifies correctly
        (`fit_values`).
        """
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or len(images) == 0:
            raise ValueError("images must be a non-empty (N, C, H, W) batch of clean validation images in [0, 1]")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a whole number >= 1 (images per model pass), got {batch_size!r}")
        _check_labels_for(fpr_among, labels)
        self._check_ready()
        self._check_model_first(model)
        images = pixels_for(model, images, name="images", model_size=True)  # 0-255 pixels fitted a threshold on nonsense
        dtype = model_dtype(model)  # float64 images for a float32 model (or the other way round) are cast
        if self.needs_features:
            features, logits = penultimate_features(model, images, batch_size)
        else:
            device, chunks = model_device(model), []
            with eval_mode(model):
                for start in range(0, len(images), batch_size):
                    chunks.append(model(images[start:start + batch_size].to(device, dtype)).detach())
            logits, features = torch.cat(chunks), None
        check_logits(logits, energy=self.reads_energy)
        correct = None if labels is None else correctly_classified(logits, labels)
        values = []
        with eval_mode(model):
            for start in range(0, len(images), batch_size):
                part = slice(start, start + batch_size)
                inputs = images[part].to(model_device(model), dtype) if self.needs_inputs else None
                values.append(self.values(logits[part], None if features is None else features[part], inputs,
                                          model if self.needs_network else None).detach().cpu())
        self.fit_values(torch.cat(values), correct)
        return self.bind(model)

    def _check_ready(self) -> None:
        """Refuse to calibrate before the model's passes when something the kind needs is missing (Mahalanobis:
        its class statistics)."""

    # ---- the model it belongs to ---------------------------------------------------------------
    def _check_model_first(self, model: torch.nn.Module) -> None:
        """Refuse `model` before fitting on it, leaving the option as it was (a kind whose statistics belong to
        one model says so here)."""

    def bind(self, model: torch.nn.Module) -> "RejectOption":
        """Record that the thresholds belong to `model` (its weights' fingerprint)."""
        self.model_fingerprint = model_fingerprint(model)
        return self

    def check_model(self, model: torch.nn.Module) -> None:
        """Refuse a model other than the one the thresholds were calibrated on, saying what to do."""
        if self.model_fingerprint is None:
            raise ValueError(f"this {self.kind!r} reject option does not record which model it was calibrated on: "
                             "calibrate(model, val_images), or fit(..., model=model) on that model's outputs")
        found = model_fingerprint(model)
        if found != self.model_fingerprint:
            raise ValueError(f"this {self.kind!r} reject option was calibrated for another model (weights "
                             f"{self.model_fingerprint[:12]}…, this model's are {found[:12]}…): calibrate it again "
                             "on this model's clean validation images (a file saved by robgen before the fingerprint "
                             "changed on 2026-12-05 records an older kind of it: scripts/refingerprint.py rewrites it)")

    # ---- saving --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        state = self._state()
        return {"format": FORMAT, "version": FORMAT_VERSION, "kind": self.kind, "target_fpr": self.target_fpr,
                "settings": self.settings(), "thresholds": self.thresholds(), "validation": self.validation,
                "model_fingerprint": self.model_fingerprint, "calibration": self.calibration,
                **({"state": state} if state else {})}

    def save(self, path: Union[str, Path]) -> Path:
        """Write the reject option as JSON (next to the checkpoint, like detector.json)."""
        self._require_fit()
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(path, json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: dict, fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                  modules=()) -> "RejectOption":
        """Rebuild a reject option from `to_dict` data (a "custom" one needs its function back: `fn`, and the
        networks it runs that robgen cannot find from it: `modules`)."""
        from .reject import CallableReject, make_reject_option  # the kinds live above this module

        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a saved reject option (no \"format\": \"{FORMAT}\")")
        version = data.get("version", 1)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ValueError(f"this reject option was saved in format version {version!r}, by a newer robgen; this one "
                             f"reads versions up to {FORMAT_VERSION}: upgrade robgen")
        kind = data.get("kind")
        if kind == CallableReject.kind:
            if fn is None:
                raise ValueError(f"this reject option is a user's detector ({data.get('settings', {}).get('name')!r}): "
                                 "pass its function again, RejectOption.load(path, fn=my_detector)")
            option = CallableReject(fn, target_fpr=data["target_fpr"], modules=modules, **data.get("settings", {}))
        else:
            option = make_reject_option(kind, target_fpr=data["target_fpr"], **data.get("settings", {}))
        option._set_state(data.get("state", {}))
        option._set_thresholds(data["thresholds"])
        option._check_loaded()
        option.validation = data.get("validation", {})
        option.model_fingerprint = data.get("model_fingerprint")
        option.calibration = data.get("calibration", {})
        return option

    @classmethod
    def load(cls, path: Union[str, Path], model: Optional[torch.nn.Module] = None,
             fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, modules=()) -> "RejectOption":
        """Read a saved reject option; with `model`, refuse it unless it was calibrated on that model (a user's
        detector: its function `fn`, refused unless its networks have the weights it was calibrated with)."""
        try:
            data = json.loads(Path(path).expanduser().read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not a saved reject option ({type(error).__name__}: {error})") from None
        try:
            option = cls.from_dict(data, fn=fn, modules=modules)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{path} is not a saved reject option ({type(error).__name__}: {error})") from None
        if model is not None:
            option.check_model(model)
        return option

    @staticmethod
    def from_callable(fn: Callable[[torch.Tensor], torch.Tensor], on: str = "input", name: str = "custom",
                      target_fpr: float = 0.05, modules=()) -> "CallableReject":
        """A user's differentiable detector `fn` -> (N,) score, higher = more adversarial; see `CallableReject`
        (`modules`: networks `fn` runs that robgen cannot find from it, to run in eval mode and fingerprint)."""
        from .reject import CallableReject

        return CallableReject(fn, on=on, name=name, target_fpr=target_fpr, modules=modules)

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        state = "fitted" if self.fitted else "unfitted"
        return f"{type(self).__name__}({settings + ', ' if settings else ''}target_fpr={self.target_fpr:g}, {state})"

