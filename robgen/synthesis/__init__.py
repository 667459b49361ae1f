"""The generative side of a classifier: synthesis, SGLD sampling, gradient maps, translation.

- ascent.py: `synthesize` (class-conditional gradient ascent under an L2 budget),
  `inpaint` (masked synthesis), `translate` (image-to-class counterfactuals)
- sgld.py: `sgld_sample`, Langevin sampling of E(x) or E(x, y)
- seeds.py: `SeedDistribution`, the class-conditional Gaussian seeds stored next to a checkpoint
- gradmaps.py: `input_gradient`, `magnitude_map`, `signed_map`
- quality.py: how convincing samples are to other models, and how diverse
"""

from .ascent import Translation, default_budget, inpaint, synthesize, translate
from .gradmaps import input_gradient, magnitude_map, signed_map
from .seeds import SEEDS_FILE, SeedDistribution, load_seeds
from .sgld import sgld_sample

__all__ = [
    "synthesize", "inpaint", "translate", "Translation", "default_budget", "sgld_sample",
    "input_gradient", "magnitude_map", "signed_map", "SeedDistribution", "load_seeds", "SEEDS_FILE",
]
