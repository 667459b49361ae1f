"""`DefendedClassifier`: a model plus a calibrated reject option, attacked and measured as one system.

    defended = DefendedClassifier(model, reject)      # refuses a reject option calibrated for another model
    logits, score = defended.outputs(x)                # one model pass; score > 0 = rejected
    defended.predict(x)                                # class, or -1 where rejected
    defended.combined_logits(x)                        # (N, K + 1): class K means "rejected"

An adaptive attacker needs the classifier and the detector as differentiable functions of the input
(Carlini & Wagner 2017, "Adversarial examples are not easily detected"; Tramèr, Carlini, Brendel &
Madry 2020, "On adaptive attacks to adversarial example defenses"). `outputs` gives both from one
forward pass: the logits, and the score of the reject option computed from them (and from the
penultimate features, caught on their way into the last linear layer, when the detector reads them).

The (K + 1)-logit construction of Carlini & Wagner (2017) lets any attack on an ordinary classifier
attack the defended one: a point is misclassified by the combined model exactly when it is
misclassified by the model and accepted. Their extra logit (d(x) + 1) · max_k f_k(x) is above every
class only when max_k f_k(x) > 0: with a negative top logit a rejected point (d > 0) scores below
it, and d < -1 flips the sign, so "argmax = K + 1 iff rejected" fails. robgen uses
G_{K+1}(x) = max_k f_k(x) + d(x) instead, which is above every class exactly when d > 0, for any
logits; it is computed as G = [f(x) - max_k f_k(x), d(x)] (the same logits shifted by a common
constant, so the softmax, cross-entropy, margins and argmax are unchanged), because then the class
side's maximum is exactly 0 and the comparison with d has no rounding: argmax G = K (counted from 0)
if and only if d(x) > 0, exactly, also in float32. Ties (d = 0) go to the class, as `score > 0` does.
"""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn as nn

from ..models.state import CastInputs, eval_mode, model_dtype, pixels_for
from .baselines import last_linear
from .reject import RejectOption


def combine_logits(logits: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """(N, K + 1) logits whose argmax is K (the extra class) exactly where `score > 0`, else the top class.

    G = [f - max_k f_k, d]: Carlini & Wagner (2017)'s extra "rejected" logit in the form
    max_k f_k + d, shifted by -max_k f_k so that the comparison is exact in floating point.
    Computed in the wider of the two dtypes.
    """
    if logits.ndim != 2 or score.shape != (logits.shape[0],):
        raise ValueError(f"need logits (N, K) and a score (N,), got {tuple(logits.shape)} and {tuple(score.shape)}")
    dtype = torch.promote_types(logits.dtype, score.dtype)
    logits, score = logits.to(dtype), score.to(dtype)
    top = logits.max(dim=1, keepdim=True).values
    # a row with NaN or +inf logits makes NaN here (inf - inf), which argmax would take for the top class: -inf
    # instead, so the extra class wins where the score rejects such a point (it scores +inf, `score_from`)
    shifted = logits - top
    shifted = torch.where(torch.isnan(shifted), torch.full_like(shifted, -math.inf), shifted)
    return torch.cat([shifted, score[:, None]], dim=1)


class DefendedClassifier(nn.Module):
    """A classifier with a reject option: `forward` gives the model's logits, `outputs` adds the score.

    Args:
        model: the classifier (a robgen `Classifier`, or any module mapping [0, 1] pixels to logits).
        reject: a calibrated `RejectOption` for this model; one calibrated for another model (its
            weights' fingerprint differs) or not calibrated is refused before any work starts.

    The defended classifier is in the model's mode (train or eval) when built, and has its `spec`
    and device; it holds no parameters of its own.
    """

    def __init__(self, model: nn.Module, reject: RejectOption) -> None:
        super().__init__()
        if not isinstance(reject, RejectOption):
            raise TypeError(f"reject must be a RejectOption (make_reject_option(kind) or RejectOption.from_callable"
                            f"(fn), then calibrate it), got {type(reject).__name__}")
        reject._require_fit()
        reject.check_model(model)
        if reject.needs_features:
            last_linear(model)  # a model without a linear head cannot give penultimate features: say so now
        self.model = model
        self.reject = reject
        self.training = model.training  # its own flag only: model.train() would reset the model's submodules' modes
        self._gradient_checked = False  # `_check_gradient` has passed

    @property
    def spec(self):
        """The wrapped model's spec (architecture, classes, normalisation)."""
        return self.model.spec

    @property
    def num_classes(self) -> int:
        """The model's number of classes, from its spec (a ValueError for a module without one, where torch would
        say the defended classifier has no attribute `num_classes`)."""
        spec = getattr(self.model, "spec", None)
        if spec is None:
            raise ValueError("the defended model has no robgen spec, so its number of classes is not known here: "
                             "wrap it as robgen.models.Classifier(net, ModelSpec(...)) to name its classes")
        return spec.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits (N, K), as if undefended."""
        return self.model(x)

    def outputs(self, x: torch.Tensor, network: Optional[nn.Module] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(logits (N, K), score (N,)) from one forward pass of the model; score > 0 means rejected.

        `x`: [0, 1] pixels in the model's floating-point type, unchecked here (an attack calls this at every step;
        `predict`, `accepts` and `score` check what a caller gives them).
        `network`: what runs the pass instead of the model, the model's fused copy during an attack
        (robgen.engine.fused: the same function up to float rounding, which is why an attack's
        evasions are confirmed by the model itself, `EvasionTracker.observe(verify=True)`).
        """
        network = self.model if network is None else network
        with eval_mode(network):  # a model left in train mode: batch norm on its running statistics, not updated
            return self._outputs(x, network)

    def _outputs(self, x: torch.Tensor, network: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
        features: Optional[torch.Tensor] = None
        caught: List[torch.Tensor] = []
        hook = None
        if self.reject.needs_features:  # catch the last linear layer's input, inside the autograd graph
            hook = last_linear(network).register_forward_hook(
                lambda module, inputs, output: caught.append(inputs[0].flatten(1)))
        dtype = model_dtype(self.model)  # an attack's float32 iterates, for a float16 or bfloat16 model
        if isinstance(network, CastInputs):  # it casts them itself (and scales a float16 model's gradient on the way)
            dtype = x.dtype
        cast = x if x.dtype == dtype or not x.is_floating_point() else x.to(dtype)
        try:
            logits = network(cast)
        finally:
            if hook is not None:
                hook.remove()
        if hook is not None:
            if len(caught) != 1:
                raise RuntimeError(f"the model's last linear layer ran {len(caught)} times in one forward pass, so its "
                                   "input is not one set of penultimate features")
            features = caught[0]
        # the images in the model's type, as calibration gave them (`RejectOption.calibrate`): a float32 iterate
        # reached robust-margin's network, or a user's detector, of a bfloat16 model as float32 (a float64 one of
        # a float32 model as float64); only CastInputs, the network robust-margin is then given, casts them itself
        in_model_type = x.to(model_dtype(self.model)) if x.is_floating_point() else x
        inputs = None if not self.reject.needs_inputs else (
            cast if isinstance(network, CastInputs) and self.reject.needs_network else in_model_type)
        score = self.reject.score_from(logits, features, inputs, network if self.reject.needs_network else None)
        if torch.is_grad_enabled() and x.requires_grad and not self._gradient_checked:
            self._check_gradient(x, score)
        return logits, score

    def _check_gradient(self, x: torch.Tensor, score: torch.Tensor) -> None:
        """Refuse a score that does not depend on the images through autograd, once per defended classifier (on
        the first pass an attack differentiates): every adaptive attack would be blind to the detector, and a
        DARA measured so would credit it with what the attacker never saw. `score.requires_grad` alone is not
        enough: a user's detector network with its own weights gives a score that requires a gradient (for
        those weights) even when it read the images detached or through numpy."""
        reaches = score.requires_grad and torch.autograd.grad(
            score.sum(), x, retain_graph=True, allow_unused=True)[0] is not None
        if not reaches:
            name = getattr(self.reject, "name", self.reject.kind)
            raise ValueError(f"the detector {name!r} returned a score with no gradient with respect to the images "
                             "(computed under torch.no_grad, from detached images, or outside torch, e.g. with "
                             "numpy): the adaptive attacks could not see it, and its DARA would overstate it; return "
                             "a differentiable score (for a step function, a smooth surrogate of it)")
        self._gradient_checked = True

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) reject score of the inputs; > 0 means rejected."""
        return self.outputs(pixels_for(self.model, x, model_size=True))[1]

    def combined_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, K + 1): Carlini & Wagner (2017)'s construction; argmax K (from 0) iff rejected. See `combine_logits`."""
        return combine_logits(*self.outputs(x))

    @torch.no_grad()
    def accepts(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) bool, True where the reject option accepts the input (score <= 0)."""
        return self.score(x) <= 0

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) long: the predicted class where accepted, -1 where rejected."""
        logits, score = self.outputs(pixels_for(self.model, x, model_size=True))
        return torch.where(score > 0, torch.full_like(score, -1, dtype=torch.long), logits.argmax(1))

    def extra_repr(self) -> str:
        return f"reject={self.reject!r}"
