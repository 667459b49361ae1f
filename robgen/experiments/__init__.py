"""Experiments: the detection pipeline and what is built on it.

- pipeline.py: split → attack → energies (+ features) → fit → evaluate
- calibration.py: the detector shipped next to a checkpoint
- reproduce.py (+ reproduce_report.py): the paper's Table 1 and Figs. 2-3, baselines, adaptive attacker
- single_image.py: attack images against the model's own prediction, as the CLI and the app show it
- ablation.py (+ ablation_report.py): what moves the detector, one model per row under the official protocol
- adaptive.py (+ adaptive_suite.py, adaptive_report.py): detectors against attackers who know them (DARA)
- stages.py: finished stages of a long experiment, kept so that an interrupted run continues; cost.py: its passes
"""
