"""genexflow.pipelines (installed from the top-level pipelines/ folder)."""
