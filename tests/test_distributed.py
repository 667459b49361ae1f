"""Training and evaluation under torchrun: two CPU processes (gloo) on a tiny subset agree."""

import json
import os
import socket
import subprocess
import sys

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
