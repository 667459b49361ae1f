"""Run by tests/test_distributed.py under torchrun: train and evaluate, write what this rank saw."""

import json
import sys
from pathlib import Path

from robgen import data, distributed
from robgen.evaluation import evaluate_robustness
from robgen.training import TrainConfig, train

root, out = sys.argv[1], Path(sys.argv[2])
config = TrainConfig(data=root, width=4, epochs=2, batch_size=8, val_size=32, eval_subset=16, eval_steps=1)
model = train(config, out / "checkpoint", device="cpu", progress=False)
subset = data.first(data.load_dataset(root), 40)
result = evaluate_robustness(model, subset, steps=2, batch_size=16, progress=False)  # 3 batches: 2 on rank 0
checksum = float(sum(p.double().sum() for p in model.parameters()))
report = {"rank": distributed.rank(), "world": distributed.world_size(), "checksum": checksum, "eval": result}
(out / f"rank{distributed.rank()}.json").write_text(json.dumps(report))
distributed.teardown()
