"""Training and evaluation under torchrun: two CPU processes (gloo) on a tiny subset agree, and resume exactly."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_agree(toy_data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), str(REPO / "tests" / "ddp_worker.py"), str(toy_data), str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], abs=1e-9), "DDP kept the replicas equal"
    assert ranks[0]["eval"]["n"] == ranks[1]["eval"]["n"] == 40, "counts were reduced across ranks"
    assert ranks[0]["eval"]["clean_accuracy"] == ranks[1]["eval"]["clean_accuracy"]
    assert ranks[0]["eval"]["pgd_accuracy"] == ranks[1]["eval"]["pgd_accuracy"]
    saved = json.loads((tmp_path / "checkpoint" / "config.json").read_text())
    assert saved["training"]["world_size"] == 2 and saved["training"]["epochs_done"] == 2


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
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), str(worker), str(toy_data), str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        assert json.loads((tmp_path / f"resume{rank}.json").read_text()) == [], f"rank {rank}: weights differ"
