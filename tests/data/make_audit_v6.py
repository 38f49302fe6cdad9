"""Writes the audit trail fixture ``audit_v6.sqlite3`` with the audit code of commit 675ae6b
(schema version 6, before results kept the subtype pattern). Run from a checkout of that commit:

    git worktree add /tmp/audit_v6 675ae6b
    cd /tmp/audit_v6 && PYTHONPATH=. python /path/to/make_audit_v6.py /tmp/audit_v6.sqlite3

It does not run against today's code (it checks the schema version).
"""

import sqlite3
import sys
from pathlib import Path

from pneumo_model.audit import SCHEMA_VERSION, AuditTrail

assert SCHEMA_VERSION == 6, "run this with the code of commit 675ae6b"
path = Path(sys.argv[1])
trail = AuditTrail(path)
common = dict(model_sha256="b" * 64, threshold=0.241, source="app", operating_point="0123456789abcdef")
first = trail.record_result(image_sha256="1" * 64, probability=0.93, label="pneumonia", grey_zone=False,
                            ood=False, ood_score=0.42, logit=2.61, age_years=3.46, **common)
cropped = trail.record_result(image_sha256="1" * 64, probability=0.2, label="normal", grey_zone=True,
                              ood=False, ood_score=0.4, crop_box=(0, 0, 200, 150), logit=-1.2, **common)
masked = trail.record_result(image_sha256="1" * 64, probability=0.9, label="pneumonia", grey_zone=False,
                             ood=False, ood_score=0.41, markers_masked=True, logit=2.3, **common)
flagged = trail.record_result(image_sha256="2" * 64, probability=0.7, label="pneumonia", grey_zone=False,
                              ood=True, ood_score=1.7, logit=1.1, **common)
cli = trail.record_result(image_sha256="3" * 64, model_sha256="c" * 64, threshold=0.5, source="cli",
                          probability=0.05, label="normal", grey_zone=False, ood=None, ood_score=None,
                          operating_point="fedcba9876543210", logit=-3.0, age_years=None)
trail.record_verdict(first, "agree", reviewer="Dr A")
trail.record_verdict_once("s" * 32, first, "disagree", note='looks "viral", to me', reviewer="Dr B",
                          reviewer_subject="sub-2")
trail.record_reveal(flagged)
trail.record_event("sr_sent", subject="sub-2", result_id=first, sr_uid="2.25.1234", operating_point="0123456789abcdef")
trail.record_event("trail_exported", subject="admin-1", rows=5)
# Everything into the main file, so that the fixture is one file with no -wal or -shm beside it.
connection = sqlite3.connect(path)
connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
connection.close()
