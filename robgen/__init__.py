"""robgen: the generative model hidden inside an image classifier.

Energies from logits, attacks (PGD, HE-PGD, APGD, FGSM) with per-step traces,
the training-free energy detector of Beadini & Masi, "Exploring the Connection
between Robust and Generative Models" (Ital-IA 2023), and synthesis from
robust models (`synthesize`, `inpaint`, `translate`, `sgld_sample`).

    import robgen
    model = robgen.load_model("timm:resnet10_cifar", pretrained=False)
    x_adv = robgen.PGD(model, eps=8/255, step_size=1/255, steps=10)(x, y)
    e = robgen.energy(model(x_adv))
    images = robgen.synthesize(robgen.load_model("cifar10-resnet10-robust"), "dog", n=8)
"""

from . import attacks, data, metrics, synthesis
from .attacks import APGD, FGSM, HEPGD, PGD, Attack, HighEnergyPGD, make_attack
from .engine import Trace
from .detection import EnergyDetector
from .energy import class_energy, energy, log_prob_given_x
from .experiments.pipeline import ModelOutputs, model_outputs
from .images import load_image, save_image
from .models import Classifier, ModelSpec, list_models, load_checkpoint, load_model, save_checkpoint
from .synthesis import inpaint, sgld_sample, synthesize, translate

__version__ = "0.1.0"

__all__ = [
    "load_model", "list_models", "load_checkpoint", "save_checkpoint", "Classifier", "ModelSpec",
    "energy", "class_energy", "log_prob_given_x", "model_outputs", "ModelOutputs",
    "Attack", "FGSM", "PGD", "HighEnergyPGD", "HEPGD", "APGD", "Trace", "make_attack",
    "EnergyDetector", "load_image", "save_image", "synthesize", "inpaint", "translate", "sgld_sample",
    "attacks", "data", "metrics", "synthesis", "__version__",
]
