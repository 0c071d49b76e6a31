"""ecmctl: experiment orchestrator for long-tailed detection with the ECM loss (Cho & Krähenbühl, ECCV 2022).

Layers, imports pointing down only:
  cli       the `ecmctl` command (thin) and rich renderings
  pipeline  stages: prepare, calibrate, train, evaluate, sweep, demo (+ seeds: statistics over seeds), report
  launch    Task, local / torchrun / SLURM launchers, the worker entry point
  engine    mmengine/mmdet coupling: config builder, runners, hooks, metrics, compat
  losses    ECMLoss, ECMFocalLoss (mmdet registry) and their placement in detector configs
  dataset · ecm   annotation files and synthetic data · the ECM math (pure numpy)
  core      errors, files, run directories, config composition
"""

__version__ = "0.1.0"
