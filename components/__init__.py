"""genexflow.components (installed from the top-level components/ folder)."""
