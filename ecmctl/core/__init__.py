"""Core: what every layer uses and nothing else in ecmctl is imported by it.

errors (UserError) · io (atomic writes, schema-tagged JSON) · schemas (file tags) · runs (run directories and
their one-writer lock) · signals (SIGTERM as Ctrl-C, final records written whole) · config (Hydra composition,
typed validation) · environment (versions, devices) · mmdet_configs (where detector.mmdet_config points; its own
recipe's numbers for schedule=native).
"""
