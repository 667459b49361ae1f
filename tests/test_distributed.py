"""Under torchrun (two or four CPU processes, gloo): training agrees across ranks and resumes exactly; `eval`,
`reproduce` and `model_outputs` give exactly the numbers of one process; more ranks than images is refused."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from tests.conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}  # one thread alone too: the same kernels


def torchrun(processes: int, *arguments: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node processes ARGUMENTS` (a script, or -m module ...) on this machine."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *arguments]
    return subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


def alone(*arguments: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`python ARGUMENTS` in one process, with the environment the torchrun ranks get."""
    return subprocess.run([sys.executable, *arguments], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def differing_keys(one: dict, many: dict, ignore=()) -> list:
    """Keys whose values differ between two results.json-like dicts (NaN equals NaN: compared as JSON text)."""
    def text(value) -> str:
        return json.dumps(value, sort_keys=True)

    keys = (set(one) | set(many)) - set(ignore)
    return sorted(key for key in keys if text(one.get(key)) != text(many.get(key)))


def test_two_ranks_agree(toy_data, tmp_path):
    result = torchrun(2, str(REPO / "tests" / "ddp_worker.py"), str(toy_data), str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], abs=1e-9), "DDP kept the replicas equal"
    assert ranks[0]["eval"]["n"] == ranks[1]["eval"]["n"] == 40, "counts were reduced across ranks"
    assert ranks[0]["eval"]["clean_accuracy"] == ranks[1]["eval"]["clean_accuracy"]
    assert ranks[0]["eval"]["pgd_accuracy"] == ranks[1]["eval"]["pgd_accuracy"]
    saved = json.loads((tmp_path / "checkpoint" / "config.json").read_text())
    assert saved["training"]["world_size"] == 2 and saved["training"]["epochs_done"] == 2
    # each rank augments with its own random stream (they drew the same crops and flips, image for image)
    assert ranks[0]["streams"] != ranks[1]["streams"] and len(ranks[0]["streams"]) == 2
    # a run of two processes resumed by one would go on at the wrong step of its schedule: refused
    from robgen.training import TrainConfig, train
    with pytest.raises(ValueError, match="trained by 2 process"):
        train(TrainConfig(data=str(toy_data), width=4, epochs=2, batch_size=8, val_size=32, eval_subset=16,
                          eval_steps=1), tmp_path / "checkpoint", device="cpu", progress=False, resume=True)


RESUME_WORKER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    from robgen import distributed
    from robgen.training import TrainConfig, train

    root, out = sys.argv[1], Path(sys.argv[2])
    config = lambda: TrainConfig(data=root, width=4, epochs=2, batch_size=8, val_size=32, eval_subset=16, eval_steps=1,
                                 mode="pgd", attack_steps=2)
    straight = train(config(), out / "straight", device="cpu", progress=False)

    def die_after_the_first_epoch(row):
        raise KeyboardInterrupt

    try:
        train(config(), out / "resumed", device="cpu", progress=False, on_epoch=die_after_the_first_epoch)
    except KeyboardInterrupt:
        pass
    distributed.barrier()
    resumed = train(config(), out / "resumed", device="cpu", progress=False, resume=True)
    differ = [name for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items())
              if not torch.equal(a, b)]
    (out / f"resume{distributed.rank()}.json").write_text(json.dumps(differ))
    distributed.teardown()
""")


def test_two_ranks_resume_adversarial_training_exactly(toy_data, tmp_path):
    """Each rank's attack generator is its own, and each rank attacks with its batch-norm statistics: a resumed
    run must give every rank back what it had."""
    worker = tmp_path / "resume_worker.py"
    worker.write_text(RESUME_WORKER)
    result = torchrun(2, str(worker), str(toy_data), str(tmp_path), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        assert json.loads((tmp_path / f"resume{rank}.json").read_text()) == [], f"rank {rank}: weights differ"


OUTPUTS_WORKER = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch
    from torch.utils.data import TensorDataset
    from robgen import PGD, distributed
    from robgen.data import make_loader
    from robgen.evaluation import evaluate_robustness
    from robgen.experiments.pipeline import model_outputs, tensor_batches
    from tests.conftest import tiny_model

    distributed.setup(torch.device("cpu"))
    model = tiny_model()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(19, 3, 32, 32, generator=g), torch.randint(0, 10, (19,), generator=g)
    attack = PGD(model, eps=8 / 255, step_size=2 / 255, steps=2, generator=torch.Generator().manual_seed(0))
    listed = model_outputs(model, tensor_batches(x, y, 4), attack=attack, features=True, trace=True, progress=False)
    loaded = model_outputs(model, make_loader(TensorDataset(x, y), batch_size=4), attack=attack, trace=True,
                           progress=False)
    robustness = evaluate_robustness(model, TensorDataset(x, y), steps=2, apgd=True, batch_size=4, progress=False)
    try:
        model_outputs(model, tensor_batches(x[:1], y[:1], 1), progress=False)
        refusal = None
    except ValueError as error:
        refusal = str(error)
    robustness.pop("seconds")
    torch.save({"listed": listed, "loaded": loaded, "robustness": robustness, "refusal": refusal,
                "generator": attack.generator.get_state()},
               Path(sys.argv[1]) / f"world{distributed.world_size()}-rank{distributed.rank()}.pt")
    distributed.teardown()
""")


def test_model_outputs_and_robustness_on_two_ranks_equal_one_process(tmp_path):
    """5 batches (4, 4, 4, 4, 3 images) attacked with random starts: rank 0 runs batches 0, 2, 4 and rank 1 runs
    1, 3; every rank gets back exactly the single process's outputs, trace and counts."""
    worker = tmp_path / "outputs_worker.py"
    worker.write_text(OUTPUTS_WORKER)
    result = alone(str(worker), str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    result = torchrun(2, str(worker), str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    one = torch.load(tmp_path / "world1-rank0.pt", weights_only=False)
    assert one["refusal"] is None
    for rank in (0, 1):
        many = torch.load(tmp_path / f"world2-rank{rank}.pt", weights_only=False)
        for name in ("listed", "loaded"):
            assert torch.equal(many[name].logits, one[name].logits), f"rank {rank}: {name} logits"
            assert torch.equal(many[name].labels, one[name].labels)
            assert many[name].trace == one[name].trace, "per-step statistics combined from the same batches"
        assert torch.equal(many["listed"].features, one["listed"].features)
        assert many["robustness"] == one["robustness"] and many["robustness"]["n"] == 19
        assert torch.equal(many["generator"], one["generator"]), "the caller's generator moves on alike"
        assert "1 image(s) cannot be shared among the 2 processes" in many["refusal"]
    # the second call drew a new base seed from the attack's generator: its random starts are not the first's
    assert one["listed"].trace.energy_mean[0] != one["loaded"].trace.energy_mean[0]


def test_reproduce_on_two_ranks_equals_one_process(cifar_root, tmp_path):
    """Every number of results.json, from 20 validation and 20 test images in batches of 8 (rank 0: batches 0 and 2,
    rank 1: batch 1), attacked by PGD, APGD and HE-PGD with random starts."""
    arguments = ["-m", "robgen", "reproduce", "--model", "cifar10-resnet10-standard", "--data", "cifar10",
                 "--data-root", str(cifar_root), "--limit", "20", "--val-size", "1000", "--steps", "2",
                 "--batch-size", "8", "--attacks", "pgd-8,apgd-8"]
    result = alone(*arguments, "--out", str(tmp_path / "one"))
    assert result.returncode == 0, result.stderr[-3000:]
    result = torchrun(2, *arguments, "--out", str(tmp_path / "two"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote results.json") == 1, "rank 0 alone prints"
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["hardware"].startswith("2 x CPU") and two["n_test"] == two["n_validation"] == 20
    assert differing_keys(one, two, ignore=("wall_seconds", "hardware", "cost")) == [], "cost: this run's timings"
    assert (tmp_path / "two" / "fig2a_energy_hist_pgd.png").is_file()


def test_eval_on_two_ranks_equals_one_process(cifar_root, tmp_path):
    """Counts summed over ranks (20 images in batches of 6: rank 0 runs 12, rank 1 runs 8) and Wilson intervals
    computed on the sums: exactly the single process's result."""
    from robgen.metrics import wilson_interval

    arguments = ["-m", "robgen", "eval", "--model", "cifar10-resnet10-standard", "--data", "cifar10",
                 "--data-root", str(cifar_root), "--limit", "20", "--steps", "2", "--apgd", "--batch-size", "6"]
    result = alone(*arguments, "--out", str(tmp_path / "one.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    result = torchrun(2, *arguments, "--out", str(tmp_path / "two.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("clean accuracy") == 1, "rank 0 alone prints"
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert differing_keys(one, two, ignore=("seconds", "command")) == []
    assert two["n"] == 20
    for name in ("clean", "pgd", "apgd"):
        hits = round(two[f"{name}_accuracy"] * 20)
        assert two[f"{name}_accuracy_ci"] == pytest.approx(list(wilson_interval(hits, 20)))


@pytest.mark.parametrize("command", ["eval", "reproduce"])
def test_more_ranks_than_images_is_refused_on_every_rank(command, tmp_path):
    """4 ranks for 3 images: every rank says what to fix and exits before any work (no model, no data, no hang:
    the timeout). The monitor interval gives every rank time to print before torchrun stops the others."""
    result = torchrun(4, "--monitor-interval", "5", "-m", "robgen", command, "--model", "cifar10-resnet10-standard",
                      "--data", "cifar10", "--data-root", str(tmp_path / "no-data"), "--limit", "3",
                      "--out", str(tmp_path / "out"), timeout=300)
    assert result.returncode != 0
    message = "3 image(s) cannot be shared among the 4 processes torchrun started: start at most 3 " \
              "(torchrun --nproc_per_node 3) or raise --limit"
    assert result.stderr.count(message) == 4, result.stderr[-3000:]
    assert not (tmp_path / "out").exists()


CALIBRATION_WORKER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    from robgen import distributed
    from robgen.detection.reject import make_reject_option
    from robgen.experiments.adaptive import shared_calibration
    from robgen.experiments.adaptive_report import OFF
    from robgen.experiments.adaptive_suite import DetectorOff
    from tests.conftest import tiny_model

    distributed.setup(torch.device("cpu"))
    model = tiny_model()
    x = torch.rand(40, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, features = model(x), torch.rand(40, 8, generator=torch.Generator().manual_seed(1))
    # rank 1 calibrates a hair apart (another thread count, another machine)
    apart = 1 + 1e-6 * distributed.rank()
    mine = make_reject_option("mahalanobis").fit_reference(features * apart, torch.arange(40) % 10, 10)
    mine.fit(logits, features * apart, model=model)
    energy = make_reject_option("energy").fit(logits * apart, model=model)
    given = make_reject_option("band").fit(logits * apart, model=model)
    reject = {"mahalanobis": mine, "energy": energy, "band": given, OFF: DetectorOff(target_fpr=0.0).fit(logits)}
    shared = shared_calibration(reject, {"band": given})
    report = {name: option.thresholds() for name, option in shared.items() if name != OFF}
    report["same objects"] = [name for name in (OFF, "band") if shared[name] is reject[name]]
    report["mahalanobis scores"] = shared["mahalanobis"].score_from(logits, features).tolist()
    Path(sys.argv[1], f"rank{distributed.rank()}.json").write_text(json.dumps(report))
    distributed.teardown()
""")


def test_every_rank_attacks_the_detectors_rank_0_calibrated(tmp_path):
    """`shared_calibration`: rank 1's own calibration, a hair apart from rank 0's, is replaced by rank 0's for every
    detector the run calibrated (Mahalanobis with its class statistics too), while a given detector and the detector
    switched off stay each rank's own object."""
    worker = tmp_path / "calibration_worker.py"
    worker.write_text(CALIBRATION_WORKER)
    result = torchrun(2, str(worker), str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    zero, one = (json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1))
    for name in ("mahalanobis", "energy"):
        assert one[name] == zero[name], name
    assert one["mahalanobis scores"] == zero["mahalanobis scores"]
    assert one["band"] != zero["band"], "a given detector is left as the caller gave it"
    assert one["same objects"] == zero["same objects"] == ["off", "band"]


STAGE_READ_WORKER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    from robgen import distributed
    from robgen.experiments import stages
    from robgen.experiments.pipeline import ModelOutputs

    distributed.setup(torch.device("cpu"))
    folder, out = Path(sys.argv[1]), Path(sys.argv[2])
    computed = []

    def compute():  # a stage made together, as every stage of a run is (each rank's share gathered)
        computed.append(1)
        rows = distributed.gather_in_order([(distributed.rank(), torch.full((1, 2), float(distributed.rank())))])
        return ModelOutputs(torch.cat(rows), torch.zeros(len(rows), dtype=torch.long))

    first = stages.StageStore(folder, {"settings": 1}).run("s", compute)
    distributed.barrier()
    if distributed.rank() == 1:  # this rank alone cannot read the kept stage (a bad disk block, a file cut short)
        stages.read_stage = lambda path: (_ for _ in ()).throw(OSError("unreadable"))
    again = stages.StageStore(folder, {"settings": 1}).run("s", compute)
    (out / f"rank{distributed.rank()}.json").write_text(json.dumps(
        {"computed": len(computed), "same": bool(torch.equal(first.logits, again.logits))}))
    distributed.teardown()  # gloo's threads left running at exit aborted a rank now and then ("terminate called")
""")


def test_a_stage_one_rank_cannot_read_is_computed_again_by_every_rank(tmp_path):
    """The rank that could not read it computed it (with its collectives) while the others read it back: a hang."""
    script = tmp_path / "worker.py"
    script.write_text(STAGE_READ_WORKER)
    result = torchrun(2, str(script), str(tmp_path / "stages"), str(tmp_path), timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks == [{"computed": 2, "same": True}] * 2


def test_a_per_epoch_check_of_fewer_images_than_ranks_is_refused_before_the_first_epoch(toy_data, tmp_path):
    """--eval-subset 1 on two ranks trained a whole epoch and then failed in its check."""
    result = torchrun(2, "--monitor-interval", "5", "-m", "robgen", "train", "--data", str(toy_data), "--width", "4",
                      "--epochs", "1", "--batch-size", "8", "--val-size", "32", "--eval-subset", "1",
                      "--out", str(tmp_path / "run"), timeout=300)
    assert result.returncode != 0
    assert "or raise --eval-subset" in result.stderr, result.stderr[-3000:]
    assert "epoch 1/1" not in result.stderr and not (tmp_path / "run" / "model.safetensors").exists()


def test_the_train_command_on_two_ranks_ends_as_in_one_process(toy_data, tmp_path):
    """Every rank printed the epoch lines, and rank 1, whose model holds no record of the run, failed at the end
    with KeyError: 'wall_seconds' (torchrun then killed rank 0 and exited 1), though the checkpoint was whole."""
    result = torchrun(2, "--monitor-interval", "5", "-m", "robgen", "train", "--data", str(toy_data), "--width", "4",
                      "--epochs", "2", "--batch-size", "8", "--val-size", "32", "--eval-subset", "16",
                      "--eval-steps", "1", "--out", str(tmp_path / "run"), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count('"epoch": ') == 2 and result.stdout.count("wrote ") == 1, result.stdout


def test_a_command_that_runs_in_one_process_is_refused_under_torchrun(monkeypatch, tmp_path, capsys):
    """zoo and ablation (and every command but train, eval, reproduce and adaptive) ran whole on every rank,
    each writing the same files at once."""
    from robgen.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "zoo"
    assert main(["zoo", "--model", "cifar10-resnet10-standard", "--data", "cifar10", "--limit", "4",
                 "--out", str(out)]) == 2
    assert "zoo runs in one process, and torchrun started 2" in capsys.readouterr().err and not out.exists()
