"""Model inference on a pod: predictions, usage limits, CSV reports and output images.

This is the computation side only; the inference protocol moves the results. A worker
runs :func:`predict` on a batch, asks :func:`apply_usage_limit` how many results the
model's usage limit still allows, :func:`cut` s the predictions to that many, and turns
them into report rows (:func:`report_rows`) that are written at the pod
(:func:`write_report_csv`) and/or sent to the modeller (:func:`rows_to_body`). The
image-output variant writes one PNG per input with a registered :data:`IMAGE_OUTPUTS`
function (:func:`write_output_images`).

Models are either built from a registered name (:func:`~fedloom.algorithms.ml.build_model`)
or loaded from an *approved* safetensors file (:func:`load_approved_model`): its SHA-256
must be on the pod's list, and it is never unpickled.

Each part has its module: ``predictions``, ``usage`` (limits), ``report`` (rows and the
CSV), ``images`` (output images) and ``model_files`` (approved model files).
"""

from __future__ import annotations

from fedloom.algorithms.inference._images import (
    IMAGE_OUTPUTS,
    ImageContext,
    ImageOutput,
    write_output_images,
)
from fedloom.algorithms.inference._model_files import load_approved_model

# Not in __all__, but the inference protocol imports these two from here.
from fedloom.algorithms.inference._model_files import (
    load_approved_model_bytes as load_approved_model_bytes,
)
from fedloom.algorithms.inference._model_files import (
    load_model_bytes as load_model_bytes,
)
from fedloom.algorithms.inference._predictions import (
    DEFAULT_INFERENCE_BATCH_SIZE,
    PredictionRow,
    Predictions,
    predict,
)
from fedloom.algorithms.inference._report import (
    REPORT_COLUMNS,
    report_rows,
    rows_from_body,
    rows_to_body,
    write_report_csv,
)
from fedloom.algorithms.inference._usage import UsageCut, apply_usage_limit, cut

__all__ = [
    "DEFAULT_INFERENCE_BATCH_SIZE",
    "IMAGE_OUTPUTS",
    "REPORT_COLUMNS",
    "ImageContext",
    "ImageOutput",
    "PredictionRow",
    "Predictions",
    "UsageCut",
    "apply_usage_limit",
    "cut",
    "load_approved_model",
    "predict",
    "report_rows",
    "rows_from_body",
    "rows_to_body",
    "write_output_images",
    "write_report_csv",
]
