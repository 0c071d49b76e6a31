"""The stages behind the CLI commands, each a library function: prepare inputs, calibrate, train, evaluate,
sweep, demo, compare, report. They compose configs, write run directories and hand tasks to `ecmctl.launch`.
"""
