"""Writes the audit trail fixture ``audit_v5.sqlite3`` with the audit code of commit d844464
(schema version 5, before results kept their raw logit and verdicts their submission id). Run from a
checkout of that commit:

    git worktree add /tmp/audit_v5 d844464
    cd /tmp/audit_v5 && PYTHONPATH=. python /path/to/make_audit_v5.py /tmp/audit_v5.sqlite3

It does not run against today's code (it checks the schema version).
"""

import sqlite3
import sys
from pathlib import Path

from pneumo_model.audit import SCHEMA_VERSION, AuditTrail

assert SCHEMA_VERSION == 5, "run this with the code of commit d844464"
path = Path(sys.argv[1])
trail = AuditTrail(path)
common = dict(model_sha256="b" * 64, threshold=0.6, source="app")
shipped = "0123456789abcdef"  # an operating point whose scale and offset the test knows
first = trail.record_result(image_sha256="1" * 64, probability=0.81, label="pneumonia", grey_zone=False,
                            ood=False, ood_score=0.42, operating_point=shipped, **common)
again = trail.record_result(image_sha256="1" * 64, probability=0.81, label="pneumonia", grey_zone=False,
                            ood=False, ood_score=0.42, operating_point=shipped, **common)
cropped = trail.record_result(image_sha256="1" * 64, probability=0.3, label="normal", grey_zone=False,
                              ood=False, ood_score=0.4, crop_box=(0, 0, 200, 150), operating_point=shipped, **common)
second = trail.record_result(image_sha256="2" * 64, probability=0.1, label="normal", grey_zone=True,
                             ood=None, ood_score=None, operating_point="fedcba9876543210", **common)
third = trail.record_result(image_sha256="3" * 64, model_sha256="c" * 64, threshold=0.6, source="cli",
                            probability=0.55, label="normal", grey_zone=False, ood=True, ood_score=1.7,
                            operating_point=shipped)
trail.record_verdict(first, "agree", reviewer="Dr A")
trail.record_verdict(first, "agree", reviewer="Dr A")  # a double click before submission ids: two rows
trail.record_verdict(second, "disagree", note='looks "fine", to me', reviewer="Dr B", reviewer_subject="sub-2")
trail.record_reveal(third)
trail.record_event("trail_exported", subject="admin-1", rows=5)
# Everything into the main file, so that the fixture is one file with no -wal or -shm beside it.
connection = sqlite3.connect(path)
connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
connection.close()
