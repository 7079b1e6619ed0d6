"""genexflow.serving (installed from the top-level serving/ folder)."""
