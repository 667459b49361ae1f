"""Run by tests/test_distributed.py under torchrun: train and evaluate, write what this rank saw."""

import json
import sys
from pathlib import Path

import torch

import robgen.training.loop
from robgen import data, distributed
from robgen.evaluation import evaluate_robustness
from robgen.training import TrainConfig, train

root, out = sys.argv[1], Path(sys.argv[2])
streams = []  # the random stream each training step draws from (crops, flips): recorded at the first two steps
real_batch_loss = robgen.training.loop.batch_loss


def recording_batch_loss(*arguments, **settings):
    if len(streams) < 2:
        streams.append(float(torch.get_rng_state().double().sum() + torch.get_rng_state()[:64].double().std()))
    return real_batch_loss(*arguments, **settings)


robgen.training.loop.batch_loss = recording_batch_loss
config = TrainConfig(data=root, width=4, epochs=2, batch_size=8, val_size=32, eval_subset=16, eval_steps=1)
model = train(config, out / "checkpoint", device="cpu", progress=False)
subset = data.first(data.load_dataset(root), 40)
result = evaluate_robustness(model, subset, steps=2, batch_size=16, progress=False)  # 3 batches: 2 on rank 0
checksum = float(sum(p.double().sum() for p in model.parameters()))
report = {"rank": distributed.rank(), "world": distributed.world_size(), "checksum": checksum, "eval": result,
          "streams": streams}
(out / f"rank{distributed.rank()}.json").write_text(json.dumps(report))
distributed.teardown()
