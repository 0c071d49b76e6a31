"""Schema tags of the files ecmctl writes: one place, importable without torch or mmdet."""

COUNTS_SCHEMA = "ecmctl/counts@1"
WEIGHTS_SCHEMA = "ecmctl/weights@1"
CALIBRATION_SCHEMA = "ecmctl/calibration@1"
RUN_SCHEMA = "ecmctl/run@1"
METRICS_SCHEMA = "ecmctl/metrics@1"
SWEEP_SCHEMA = "ecmctl/sweep@1"
DEMO_SCHEMA = "ecmctl/demo@1"
COMPARE_SCHEMA = "ecmctl/compare@1"
# metrics@1: the summary metrics of each IoU type, and the ones that compare frequency groups
METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
GROUP_KEYS = ("AP", "APr", "APc", "APf")
BACKGROUND = "__background__"  # the name of the appended background class in a weights file
MAX_BG_RATIO = 1e6  # r is a ratio of sampled RoIs (hundreds at most): beyond this it is a typo
CHECKPOINTS_SCHEMA = "ecmctl/checkpoints@1"
