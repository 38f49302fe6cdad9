"""The version of the ``predict`` command's JSON lines.

A module of its own, importing nothing, so that the command line can write an error line
(``schema_version``, ``file``, ``error``) without loading TensorFlow through ``prediction``.
Raise it when a line's fields change meaning or go away.
"""

PREDICTION_SCHEMA_VERSION = 1
