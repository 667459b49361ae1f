"""`EnergyDetector`: flag inputs whose energy E(x) is at or below a threshold.

Beadini & Masi (2023): PGD adversarial examples have lower energy than natural
images, so a threshold on E(x) fitted on a validation set detects them without
training anything. The threshold rule ("gmean", "youden" or "fpr") and,
optionally, the temperature T of E(x) = -T logsumexp(f(x)/T) are chosen on
validation data; the temperature by AUROC over {0.1, ..., 20}.

    detector = EnergyDetector(rule="gmean").fit(clean_val_energy, adv_val_energy)
    flagged = detector.predict(test_energy)              # bool, True = adversarial
    report = detector.evaluate(clean_test_energy, adv_test_energy)

Inputs are 2-D logits, or 1-D energies E(x) at T = 1. Energies carry no
temperature, so a detector at any other temperature (given, or chosen by the
search) refuses them and asks for logits rather than threshold T = 1 energies
as if they were T energies.

`bind(model)` records the fingerprint of the weights the detector was fitted for (`fit-detector` and `detect`
do it; the shipped detector.json files carry it), and `check_model` refuses other weights where a model uses
it: its threshold is on one model's energy scale.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import torch

from ..energy import energy as free_energy
from ..files import write_text_atomically
from ..metrics import RULES, auroc, choose_threshold, detection_metrics
from ..models.fingerprint import weights_fingerprint

# The official notebooks' grid (no 5), searched in this order; a temperature replaces the current
# choice only with a strictly larger validation AUROC.
TEMPERATURES = (0.1, 0.2, 0.5, 1.0, 2.0, 10.0, 20.0)


class EnergyDetector:
    """Threshold detector on E(x); adversarial = `energy <= threshold`.

    Args:
        rule: "gmean" (max sqrt(TPR (1 - FPR)), the paper's text), "youden"
            (max TPR - FPR, the official code's rule) or "fpr" (highest
            threshold with FPR <= target_fpr).
        temperature: a number, or "search": T picked by validation AUROC from
            `temperatures`, the first strictly larger AUROC winning (fit and
            predict then need logits). The official protocol is
            `EnergyDetector("youden", "search")`, the default of the pipeline,
            `reproduce`, `detect` and `fit-detector`.
        target_fpr: the false-positive budget of the "fpr" rule.
    """

    def __init__(
        self,
        rule: str = "gmean",
        temperature: Union[float, str] = 1.0,
        target_fpr: float = 0.05,
        temperatures: Sequence[float] = TEMPERATURES,
    ) -> None:
        if rule not in RULES:
            raise ValueError(f"unknown threshold rule {rule!r}: choose from {', '.join(RULES)}")
        self.search_temperature = isinstance(temperature, str) and temperature == "search"  # numpy's == is np.bool_
        if not self.search_temperature:
            temperature = float(temperature)
            if not 0 < temperature < math.inf:
                raise ValueError(f"temperature must be a finite number > 0 or 'search', got {temperature}")
        self.rule = rule
        self.temperature = 1.0 if self.search_temperature else temperature
        self.target_fpr = float(target_fpr)
        if not 0 <= self.target_fpr < 1:
            raise ValueError(f"target_fpr must be in [0, 1), got {target_fpr}")
        self.temperatures = tuple(float(t) for t in temperatures)
        if not self.temperatures or any(not 0 < t < math.inf for t in self.temperatures):
            raise ValueError(f"the temperature grid must hold finite numbers > 0, got {list(temperatures)}")
        self.threshold: Optional[float] = None
        self.validation: Dict[str, object] = {}
        # Optional record of how it was fitted (see robgen.experiments.calibration): the attack, the data and the
        # clean and adversarial validation energies, which the app draws as a histogram.
        self.calibration: Dict[str, object] = {}
        # the SHA-256 of the weights whose outputs it was fitted on (`bind`), checked by `check_model`
        self.model_fingerprint: Optional[str] = None

    def bind(self, model: torch.nn.Module) -> "EnergyDetector":
        """Record that the threshold was fitted on `model`'s outputs (its weights' fingerprint, read as float32
        and without torch.compile's or DDP's wrapper: `weights_fingerprint`)."""
        self.model_fingerprint = weights_fingerprint(model)
        return self

    def check_model(self, model: torch.nn.Module) -> None:
        """Refuse a model other than the one the detector was fitted for (a detector that records none, saved by
        robgen before the record was added on 2026-12-05, or fitted without `bind`, is taken as it is)."""
        if self.model_fingerprint is None:
            return
        found = weights_fingerprint(model)
        if found != self.model_fingerprint:
            source = getattr(getattr(model, "spec", None), "source", "") or "this model"
            dtypes = sorted({str(p.dtype) for p in model.parameters() if p.is_floating_point()} - {"torch.float32"})
            precision = (f" (its weights are {', '.join(dtypes)}: if they are the fitted model's at a lower "
                         "precision, use a float32 copy, model.float(), whose energies the threshold was set on)"
                         if dtypes else "")
            raise ValueError(f"this energy detector was fitted for another model (weights {self.model_fingerprint[:12]}…, "
                             f"{source}'s are {found[:12]}…){precision}: its threshold is on that model's energy "
                             f"scale. Fit one for this model: python -m robgen fit-detector --model {source} --data "
                             "DATASET")

    def energies(self, scores: torch.Tensor) -> torch.Tensor:
        """E(x) at the detector's temperature: `scores` are logits (N, K), or energies at T = 1 ((N,) or (N, 1))."""
        scores = _as_tensor(scores)
        if scores.ndim == 2 and scores.shape[1] == 1:  # a column of energies (N, 1), as metrics take them
            scores = scores[:, 0]
        if scores.ndim == 2:
            return free_energy(scores.double(), self.temperature)
        if scores.ndim == 1:
            if self.temperature != 1.0:
                raise ValueError(
                    f"this detector uses temperature {self.temperature:g}, but it was given energies (N,), which "
                    f"robgen.energy computes at T = 1 unless told otherwise: pass the logits (N, K) instead, so that "
                    f"it computes E(x) at T = {self.temperature:g} itself"
                )
            if not bool(torch.isfinite(scores).all()):
                raise ValueError("energies contain NaN or infinite values")
            return scores.double()
        raise ValueError(f"expected energies (N,) or logits (N, K), got shape {tuple(scores.shape)}")

    def fit(self, clean: torch.Tensor, adversarial: torch.Tensor) -> "EnergyDetector":
        """Choose the temperature (if searching) and the threshold on validation data. Forgets the model it was
        bound to and how it was fitted before (`calibration`, `validation`): the new threshold is on the energy
        scale of whichever model gave these outputs, which `bind` records (`RejectOption.fit_values` does the same).
        A fit that fails leaves the detector as it was."""
        previous = (self.temperature, self.threshold, self.validation)
        self.validation = {}
        try:
            if self.search_temperature:
                clean, adversarial = _as_tensor(clean), _as_tensor(adversarial)
                if clean.ndim != 2 or adversarial.ndim != 2:
                    raise ValueError("temperature='search' needs logits of shape (N, K) for fit, not energies")
                table = {t: auroc(free_energy(clean.double(), t), free_energy(adversarial.double(), t))
                         for t in self.temperatures}
                best = self.temperatures[0]
                for t in self.temperatures[1:]:
                    if table[t] > table[best]:
                        best = t
                self.temperature = best
                self.validation["auroc_by_temperature"] = {str(t): a for t, a in table.items()}
            clean_energy, adv_energy = self.energies(clean), self.energies(adversarial)
            self.threshold = choose_threshold(clean_energy, adv_energy, self.rule, self.target_fpr)
            self.validation.update(detection_metrics(clean_energy, adv_energy, self.threshold))
        except BaseException:
            self.temperature, self.threshold, self.validation = previous
            raise
        self.model_fingerprint, self.calibration = None, {}
        return self

    def _require_fit(self) -> float:
        if self.threshold is None:
            raise RuntimeError("the detector has no threshold yet: call fit(clean, adversarial) or load(path) first")
        return self.threshold

    def predict(self, scores: torch.Tensor) -> torch.Tensor:
        """True where the input is flagged adversarial (energy <= threshold)."""
        return self.energies(scores) <= self._require_fit()

    def evaluate(self, clean: torch.Tensor, adversarial: torch.Tensor) -> Dict[str, float]:
        """Detection rate, FPR, FNR, AUROC, ... of the fitted threshold on (test) data."""
        report = detection_metrics(self.energies(clean), self.energies(adversarial), self._require_fit())
        report.update(rule=self.rule, temperature=self.temperature)
        return report

    def to_dict(self) -> dict:
        return {
            "rule": self.rule, "temperature": self.temperature, "search_temperature": self.search_temperature,
            "target_fpr": self.target_fpr, "temperatures": list(self.temperatures), "threshold": self.threshold,
            "validation": self.validation, **({"calibration": self.calibration} if self.calibration else {}),
            **({"model_fingerprint": self.model_fingerprint} if self.model_fingerprint else {}),
        }

    def save(self, path: Union[str, Path]) -> Path:
        path = Path(path).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Union[str, Path]) -> "EnergyDetector":
        try:
            data = json.loads(Path(path).expanduser().read_text())
            detector = cls(rule=data["rule"], temperature=data["temperature"], target_fpr=data.get("target_fpr", 0.05),
                           temperatures=data.get("temperatures", TEMPERATURES))
            detector.search_temperature = bool(data.get("search_temperature", False))
            detector.threshold = None if data["threshold"] is None else float(data["threshold"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path} is not a saved EnergyDetector ({type(error).__name__}: {error})") from None
        if detector.threshold is not None and math.isnan(detector.threshold):  # would flag nothing, unsaid
            raise ValueError(f"{path} records a NaN threshold: fit the detector again (python -m robgen fit-detector)")
        detector.validation = data.get("validation", {})
        detector.calibration = data.get("calibration", {})
        detector.model_fingerprint = data.get("model_fingerprint")
        return detector

    def __repr__(self) -> str:
        threshold = "unfitted" if self.threshold is None else f"{self.threshold:.4f}"
        return f"EnergyDetector(rule={self.rule!r}, temperature={self.temperature:g}, threshold={threshold})"


def _as_tensor(scores) -> torch.Tensor:
    """A tensor as it is; a list or array read as float64 (torch would round a list to float32, merging energies
    closer than its precision, as robgen.metrics does not)."""
    return scores if isinstance(scores, torch.Tensor) else torch.as_tensor(scores, dtype=torch.float64)
