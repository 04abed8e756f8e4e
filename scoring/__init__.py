"""Model governance and inference: registry, promotion gate, preprocessing, onnxruntime runner."""

import os

# Switched off before any onnxruntime or MLflow import, whoever imports scoring first.
for _name, _value in (
    ("ORT_DISABLE_TELEMETRY", "1"),
    ("MLFLOW_DISABLE_TELEMETRY", "true"),
    ("DO_NOT_TRACK", "true"),
    ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),
):
    os.environ[_name] = _value

# A remote registry that does not answer must not stall scoring or the CLI for minutes: bounded
# per-request timeout and retries, unless the operator sets them.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
