"""The local stack: an MLflow tracking server (sqlite or PostgreSQL) and a local Triton server,
started as real processes bound to 127.0.0.1, with health checks and clean stops."""
