"""The only coupling to mmengine/mmdet beyond the losses: Hydra config -> mmdet config, Runners, hooks.

builder (mmdet config from ecmctl's config) · placement (the chosen loss into any detector's heads, config
only, no torch) · runner (per-rank train/test functions, distributed init)
· hooks (calibration, progress) · loops (resumable epoch loop) · lvis_stream_metric (the streaming LVIS
metric) · checkpoints (backbone weights) · atomic_backend (run checkpoints written whole) · compat (old-stack
workarounds) · native (schedule=native: the detector config's own recipe on ecmctl's data) · packed_dataset
(mmdet's LVIS/COCO datasets and RFS on a packed, memory-mapped annotation file).
"""
