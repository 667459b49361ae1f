"""Real data, end to end: a small CNN trained for about a minute on CIFAR-10.

The paper's claims, measured on held-out images: PGD drops accuracy, PGD
examples have lower energy than clean ones, HE-PGD examples have higher
energy than PGD's at the same eps, and the energy detector fitted on a
validation split detects PGD on the test split more often than it flags
clean images.
"""

import torch

import robgen
from robgen import data


def test_paper_claims_on_a_small_cifar10_model(trained_checkpoint, cifar_root):
    model = robgen.load_model(trained_checkpoint)
    train = data.load_dataset("cifar10", "train", root=cifar_root)
    _, val = data.train_val_split(train, 5000, seed=0)
    test = data.load_dataset("cifar10", "test", root=cifar_root)
    x_val, y_val = data.load_tensors(val, 300)
    x_test, y_test = data.load_tensors(test, 300)

    settings = dict(eps=8 / 255, step_size=1 / 255, steps=10)
    pgd = robgen.PGD(model, generator=torch.Generator().manual_seed(0), **settings)
    hepgd = robgen.HEPGD(model, lam=1.2, generator=torch.Generator().manual_seed(0), **settings)

    def logits(x):
        with torch.no_grad():
            return model(x)

    clean_val, clean_test = logits(x_val), logits(x_test)
    pgd_val, pgd_test = logits(pgd(x_val, y_val)), logits(pgd(x_test, y_test))
    he_test = logits(hepgd(x_test, y_test))

    clean_accuracy = (clean_test.argmax(1) == y_test).float().mean()
    pgd_accuracy = (pgd_test.argmax(1) == y_test).float().mean()
    assert clean_accuracy > 0.35, f"the small CNN learned something ({clean_accuracy:.2f})"
    assert pgd_accuracy < clean_accuracy / 2

    e_clean, e_pgd, e_he = robgen.energy(clean_test), robgen.energy(pgd_test), robgen.energy(he_test)
    assert e_pgd.mean() < e_clean.mean(), "PGD examples have lower energy than natural images"
    assert e_he.mean() > e_pgd.mean(), "HE-PGD keeps the energy higher than PGD"

    detector = robgen.EnergyDetector(rule="gmean").fit(clean_val, pgd_val)
    report = detector.evaluate(clean_test, pgd_test)
    assert report["detection_rate"] > report["false_positive_rate"]
    assert report["auroc"] > 0.6
