"""The only coupling to mmengine/mmdet beyond the losses: Hydra config -> mmdet config, Runners, hooks.

builder (mmdet config from ecmctl's config) · runner (per-rank train/test functions, distributed init)
· hooks (calibration, progress) · lvis_metric (subset-correct LVIS metric) · compat (old-stack workarounds).
"""
