"""genexflow.monitoring (installed from the top-level monitoring/ folder)."""
