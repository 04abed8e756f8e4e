"""hitl-gateway: governed human-in-the-loop control for imaging-triage AI."""

import os

# A hospital network is closed and PHI-bearing: the dependencies' telemetry must be off before
# onnxruntime or MLflow is ever imported, so it is switched off when the package loads.
for _name, _value in (
    ("ORT_DISABLE_TELEMETRY", "1"),
    ("MLFLOW_DISABLE_TELEMETRY", "true"),
    ("DO_NOT_TRACK", "true"),
    ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"),
):
    os.environ[_name] = _value

__version__ = "0.1.0"
