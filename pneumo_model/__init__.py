"""pneumo_model: a paediatric chest X-ray pneumonia classifier, its training pipeline and tools.

Decision support for trained readers; not a medical device and not for diagnosis.
Importing the package does no work: no model loading, no TensorFlow set-up. The names below
are loaded lazily on first use, so ``import pneumo_model`` stays fast and light.
"""

from importlib import import_module

__version__ = "0.1.0"

# The public API: what a script needs to score films as `pneumo predict` does (docs/install.md, "From
# Python", whose example tests/test_package.py runs), nothing of the lab (training and evaluation are
# commands). Everything else is imported from its module.
_EXPORTS = {
    # Every deliberate error is a PneumoError whose message says what to do.
    "PneumoError": "errors",
    "InvalidImageError": "errors",
    "UnsupportedDicomError": "errors",
    "ModelFileError": "errors",
    "SiteProfileError": "errors",
    "ConfigError": "errors",
    # The shipped model (inside the installed package, else the clone's assets/model) and its record.
    "DEFAULT_MODEL_PATH": "paths",
    "ModelMetadata": "artifacts",
    # The one image path: decoded once, scored through the gate at the operating point.
    "DecodedImage": "pipeline",
    "Predictor": "prediction",
    "Prediction": "prediction",
    # The audit trail a call can be written to, by the image's SHA-256, never its file name.
    "AuditTrail": "audit",
    "ResultRecord": "audit",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'pneumo_model' has no attribute '{name}'")
