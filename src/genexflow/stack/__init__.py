"""Local services: an MLflow tracking server (sqlite or PostgreSQL) started as real processes bound to
127.0.0.1, with health checks and clean stops, and the process plumbing the Triton launcher shares.
``genexflow stack up`` composes them with Triton in :mod:`genexflow.serving.local_stack`."""
