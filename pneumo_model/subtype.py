"""The subtype pattern: for a film called pneumonia, does it look more like the bacterial or the
viral pneumonia films the subtype network learned from (docs/subtype_rule.md)?

A radiographic pattern, never a cause: the radiograph alone cannot reliably tell bacterial from
viral infection, and the training labels are the hospital's diagnoses, not microbiology.
"""

from __future__ import annotations

SUBTYPE_TASK = "subtype"
VIRAL = "virus"  # the data's name for the viral films (``data.Sample.subtype``)
BACTERIAL_LIKE, VIRAL_LIKE, UNDETERMINED = "bacterial-like", "viral-like", "undetermined"
PATTERNS = (BACTERIAL_LIKE, VIRAL_LIKE, UNDETERMINED)
