"""The package's exceptions: one base class, one subclass per kind of failure.

Every message is a plain sentence that says what is wrong and what to do, so that the CLI
and the app can show it to a user as it is.
"""


class PneumoError(Exception):
    """Base class of every error raised on purpose by ``pneumo_model``."""


class InvalidImageError(PneumoError):
    """The input cannot be used as a chest X-ray image (unreadable, empty, wrong kind)."""


class UnsupportedDicomError(InvalidImageError):
    """A readable DICOM file that holds no usable radiograph (no pixel data, a compression,
    bit depth or colour model this package cannot use)."""


class ModelFileError(PneumoError):
    """The model file or its metadata is missing, altered or incompatible."""


class DataError(PneumoError):
    """The data set is missing or does not look like the expected folder layout."""


class ConfigError(PneumoError):
    """A setting has a value that cannot work."""


class ExplanationError(PneumoError, ValueError):
    """An explanation or overlay was asked for with inputs it cannot use (also a ValueError)."""


class SiteProfileError(PneumoError):
    """A site profile is unreadable, altered, or was fitted for another model."""


class SiteInputError(PneumoError):
    """A labelled local sample cannot be used to fit or check a site profile (the message lists why)."""


class BatchError(PneumoError):
    """A batch run cannot start or go on: a bad SOURCE or RESULTS, or a cluster that does not answer."""
