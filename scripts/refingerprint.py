"""Rewrite the model fingerprints that robgen before 2026-12-05 recorded in JSON files (reject options, adaptive
results.json, ablation rows), so that they load with the models they were made for.

    python scripts/refingerprint.py results/adaptive/*/results.json results/adaptive/*/detectors/*.json
    python scripts/refingerprint.py --model runs/my-model my-reject.json

Older code hashed every tensor's shape after flattening it, so two models whose tensors had the same names and
values but other shapes shared a fingerprint (robgen.models.fingerprint now hashes the real shapes). The old and the
new fingerprint of each model named (default: every shipped checkpoint) are computed here and every old one found in
the files is replaced by the new one; other text is left as it is. Files are rewritten only when something changed.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robgen.models.fingerprint import model_fingerprint  # noqa: E402
from robgen.models.loading import list_models, load_model  # noqa: E402
from robgen.models.subnormals import FLOAT_BITS, subnormal_mask  # noqa: E402


def legacy_fingerprint(model: torch.nn.Module) -> str:
    """The fingerprint as older robgen computed it (each shape recorded after flattening)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        if tensor.dtype in FLOAT_BITS:
            tensor = tensor.masked_fill(subnormal_mask(tensor), 0.0)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="JSON files to rewrite in place")
    parser.add_argument("--model", action="append", default=None,
                        help="a model name or checkpoint folder (repeat; default: every shipped checkpoint)")
    args = parser.parse_args(argv)
    missing = [str(path) for path in args.files if not path.is_file()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)}")
    mapping = {}
    for name in args.model or list_models():
        model = load_model(name)
        old, new = legacy_fingerprint(model), model_fingerprint(model)
        if old != new:
            mapping[old] = new
        print(f"{name}: {old[:12]}… -> {new[:12]}…")
    for path in args.files:
        text = path.read_text()
        found = {old: text.count(old) for old in mapping if old in text}
        if found:
            for old in found:
                text = text.replace(old, mapping[old])
            path.write_text(text)
        print(f"{path}: {sum(found.values())} fingerprint(s) rewritten")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
