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

The names below are imported on first use (PEP 562), not by `import robgen`: `python -m robgen`
always runs this file first, and its `--help` should not wait seconds for torch.
"""

import importlib
import importlib.util
import sys
import types

__version__ = "0.1.0"

# Each public name and the module that defines it; robgen.<name> imports that module on first use.
_DEFINED_IN = {
    "load_model": "models", "list_models": "models", "load_checkpoint": "models", "save_checkpoint": "models",
    "Classifier": "models", "ModelSpec": "models",
    "energy": "energy", "class_energy": "energy", "log_prob_given_x": "energy",
    "model_outputs": "experiments.pipeline", "ModelOutputs": "experiments.pipeline",
    "Attack": "attacks", "FGSM": "attacks", "PGD": "attacks", "HighEnergyPGD": "attacks", "HEPGD": "attacks",
    "APGD": "attacks", "Trace": "engine", "make_attack": "attacks",
    "EnergyDetector": "detection",
    "load_image": "images", "save_image": "images",
    "synthesize": "synthesis", "inpaint": "synthesis", "translate": "synthesis", "sgld_sample": "synthesis",
}
# Subpackages reached as robgen.<name>: the public ones, and those the public names live in (an eager
# `import robgen` used to bind them all, so `robgen.models.load_model` keeps working).
_PUBLIC_MODULES = ("attacks", "data", "metrics", "synthesis")
_REACHABLE_MODULES = _PUBLIC_MODULES + ("detection", "engine", "experiments", "images", "models")

__all__ = [*_DEFINED_IN, *_PUBLIC_MODULES, "__version__"]


def __getattr__(name: str):
    if name in _DEFINED_IN:
        value = getattr(importlib.import_module(f".{_DEFINED_IN[name]}", __name__), name)
    elif name in _REACHABLE_MODULES or importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f".{name}", __name__)  # any submodule, as an eager import bound them
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later look-ups find it without coming here
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """The import system binds each submodule on its package (`robgen.energy = <robgen/energy.py>`) when it
    is first imported, by any module. Where a public name shares a submodule's name, the public name wins,
    as it did when this file imported everything: `robgen.energy` stays the function."""

    def __setattr__(self, name: str, value) -> None:
        if name in _DEFINED_IN and isinstance(value, types.ModuleType):
            return  # the function is bound by __getattr__ on first use
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
