"""Schema tags of the files ecmctl writes: one place, importable without torch or mmdet."""

COUNTS_SCHEMA = "ecmctl/counts@1"
WEIGHTS_SCHEMA = "ecmctl/weights@1"
CALIBRATION_SCHEMA = "ecmctl/calibration@1"
RUN_SCHEMA = "ecmctl/run@1"
METRICS_SCHEMA = "ecmctl/metrics@1"
SWEEP_SCHEMA = "ecmctl/sweep@1"
DEMO_SCHEMA = "ecmctl/demo@1"
BACKGROUND = "__background__"  # the name of the appended background class in a weights file
