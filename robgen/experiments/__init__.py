"""Experiments: the detection pipeline and what is built on it.

- pipeline.py: split → attack → energies (+ features) → fit → evaluate
- calibration.py: the detector shipped next to a checkpoint
- reproduce.py (+ reproduce_report.py): the paper's Table 1 and Figs. 2-3, baselines, adaptive attacker
- single_image.py: attack images against the model's own prediction, as the CLI and the app show it
"""
