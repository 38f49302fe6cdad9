"""The version of the ``predict`` command's JSON lines.

A module of its own, importing nothing, so that the command line can write an error line
(``schema_version``, ``file``, ``error``) without loading TensorFlow through ``prediction``.
Raise it when a line's fields change meaning or go away.

History:
    1: ``file``, ``probability``, ``label``, ``grey_zone``, ``threshold``, ``model_sha``,
       ``warnings``, ``ood``, ``ood_score`` (an error line: ``file``, ``error``).
    2: adds ``operating_point``, the id of the operating point that made the call (the shipped
       one's content hash, or a site profile's ``id``), so a line says which threshold and grey
       zone its label and flag come from.
    3: adds ``ood_grade`` (the gate's score in words: "in_distribution", "unusual", "outside";
       docs/ood_grades.md) and ``age_years`` (the age a DICOM header gives, in years; null
       where none), so a line says whether the call is hidden and whether the film is from the
       trained population.
    4: adds ``subtype`` ("bacterial-like", "viral-like", "undetermined") and
       ``subtype_probability`` (calibrated probability of the viral pattern), the radiographic
       pattern of a film called pneumonia that the gate does not flag (docs/subtype_rule.md);
       both null when not applicable or when the pattern is off (``PNEUMO_SUBTYPE``).
"""

PREDICTION_SCHEMA_VERSION = 4
