"""Datasets: LVIS/COCO annotation files and the embedded synthetic one.

jsonscan (streaming structural JSON scanner) · counting (counts files) · lvis (frequency rule, built-in
LVIS v1 statistics) · synth (the deterministic long-tailed synthetic dataset) · packed (mmdet's data list as
flat arrays in one file) · packcache (where packs live, one builder per node).
"""
