"""ecmctl: experiment orchestrator for long-tailed detection with the ECM loss."""
__version__ = "0.1.0"
