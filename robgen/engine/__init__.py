"""The optimisation engine: one projected-gradient loop, its constraints, traces and RNG helpers.

Attacks (`robgen.attacks`) and synthesis (`robgen.synthesis`) both run on it;
they differ only in the objective they ascend and the set they stay in.

- loop.py: `projected_gradient_ascent`
- constraints.py: `LinfBall`, `L2Ball`, `Unconstrained`, `Masked`, `make_constraint`
- trace.py: `Trace`, `TraceRecorder` (per-step energy, accuracy, loss)
- random.py: draws from a caller's `torch.Generator` on its own device
- fused.py: `inference_graph`, the batch-norm-folded, channels-last copy that attacks and synthesis run
- autograd.py: `outside_inference_mode`, `gradient_mode`: input gradients also inside the caller's no_grad or
  inference mode
"""

from .fused import clear_fusion_cache, fusion, inference_graph, set_fusion
from .constraints import L2Ball, LinfBall, Masked, Unconstrained, make_constraint
from .loop import Objective, projected_gradient_ascent
from .random import random_normal, random_seed, random_uniform
from .trace import Trace, TraceRecorder

__all__ = [
    "projected_gradient_ascent", "Objective", "LinfBall", "L2Ball", "Unconstrained", "Masked", "make_constraint",
    "Trace", "TraceRecorder", "random_uniform", "random_normal", "random_seed",
    "inference_graph", "fusion", "set_fusion", "clear_fusion_cache",
]
