"""The official detector protocol (Youden's J, temperature searched over the notebooks' grid) as the default."""

import pytest
import torch

from robgen import EnergyDetector
from robgen.cli import build_parser, main
from robgen.detection import TEMPERATURES
from robgen.experiments.calibration import calibrate_detector
from robgen.experiments.pipeline import detection_experiment


def test_the_grid_is_the_official_one():
    assert TEMPERATURES == (0.1, 0.2, 0.5, 1.0, 2.0, 10.0, 20.0)


def test_ties_keep_the_first_temperature_of_the_grid():
    # two classes, logits (a, 0): E_T(x) is decreasing in a at every T, so every T ranks alike (equal AUROC)
    g = torch.Generator().manual_seed(0)
    clean = torch.stack([torch.rand(50, generator=g), torch.zeros(50)], 1)
    adv = torch.stack([torch.rand(50, generator=g) + 0.5, torch.zeros(50)], 1)
    detector = EnergyDetector("youden", "search").fit(clean, adv)
    assert len(set(detector.validation["auroc_by_temperature"].values())) == 1
    assert detector.temperature == 0.1
    shuffled = EnergyDetector("youden", "search", temperatures=(2.0, 0.1, 20.0)).fit(clean, adv)
    assert shuffled.temperature == 2.0


@pytest.mark.parametrize("grid", [(), (0.1, 0.0), (1.0, -2.0)])
def test_a_grid_with_a_non_positive_temperature_is_refused(grid):
    with pytest.raises(ValueError, match="temperature grid must hold finite numbers > 0"):
        EnergyDetector(temperature="search", temperatures=grid)


def test_detect_and_fit_detector_default_to_the_official_protocol():
    parser = build_parser()
    for command in ("detect", "fit-detector"):
        args = parser.parse_args([command, "--model", "m", "--data", "cifar10"] + (["--out", "o"] if command == "detect" else []))
        assert (args.rule, args.temperature, args.temperatures) == ("youden", "search", TEMPERATURES)
    import inspect

    for function in (detection_experiment, calibrate_detector):
        defaults = inspect.signature(function).parameters
        assert (defaults["rule"].default, defaults["temperature"].default) == ("youden", "search")


def test_the_cli_refuses_a_non_positive_grid_before_loading_anything(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["detect", "--model", "nope", "--data", "cifar10", "--temperatures", "0.5,0", "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert "argument --temperatures: must be finite numbers > 0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
