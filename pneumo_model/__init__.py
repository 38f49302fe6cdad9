"""pneumo_model: a paediatric chest X-ray pneumonia classifier, its training pipeline and tools.

Decision support for trained readers; not a medical device and not for diagnosis.
Importing the package does no work: no model loading, no TensorFlow set-up. The names below
are loaded lazily on first use, so ``import pneumo_model`` stays fast and light.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "PneumoError": "errors",
    "InvalidImageError": "errors",
    "ModelFileError": "errors",
    "DataError": "errors",
    "ConfigError": "errors",
    "ExplanationError": "errors",
    "UnsupportedDicomError": "errors",
    "ImageInfo": "preprocessing",
    "ImageLimits": "preprocessing",
    "load_image": "preprocessing",
    "preprocess": "preprocessing",
    "load_and_preprocess": "pipeline",
    "Sample": "data",
    "resolve_data_dir": "data",
    "scan_split": "data",
    "group_ids": "data",
    "split_groups": "data",
    "ARCHITECTURES": "lab.models",
    "get_architecture": "lab.models",
    "OperatingPointConfig": "calibration",
    "GreyZone": "calibration",
    "fit_temperature": "calibration",
    "threshold_for_sensitivity": "calibration",
    "ModelMetadata": "artifacts",
    "DEFAULT_MODEL_PATH": "artifacts",
    "load_model": "artifacts",
    "save_model": "artifacts",
    "Prediction": "prediction",
    "Predictor": "prediction",
    "OnnxModel": "onnx_model",
    "DecodedImage": "pipeline",
    "BatchError": "batch",
    "BatchSettings": "batch",
    "SourceItem": "batch",
    "LocalEngine": "batch",
    "run_batch": "batch",
    "GradCam": "explain",
    "overlay_heatmap": "explain",
    "LimeConfig": "explain",
    "LimeExplanation": "explain",
    "explain_lime": "explain",
    "CropLimits": "crop",
    "DiaphragmSettings": "crop",
    "DiaphragmResult": "crop",
    "find_diaphragm": "crop",
    "validate_box": "crop",
    "apply_crop": "crop",
    "RescoreResult": "crop",
    "MarkerSettings": "crop",
    "MarkerResult": "crop",
    "find_markers": "crop",
    "TrainConfig": "lab.training",
    "train": "lab.training",
    "evaluate": "lab.evaluation",
    "compare": "lab.comparison",
    "StressConfig": "lab.stress",
    "OodConfig": "ood",
    "OodGate": "ood",
    "OodGrades": "ood",
    "fit_gate": "lab.ood_fit",
    "fix_grades": "lab.ood_fit",
    "evaluate_ood": "lab.evaluation",
    "AuditTrail": "audit",
    "AuditError": "audit",
    "ResultRecord": "audit",
    "read_image_bytes": "preprocessing",
    "stress_metrics": "lab.stress",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'pneumo_model' has no attribute '{name}'")
