"""Writes the audit trail fixture ``audit_v2.sqlite3`` with the audit code of commit e74230e
(schema version 2, before results kept their operating point). Run from a checkout of that commit:

    git worktree add /tmp/audit_old e74230e
    cd /tmp/audit_old && PYTHONPATH=. python /path/to/make_audit_v2.py /tmp/audit_v2.sqlite3

It does not run against today's code (it checks the schema version).
"""

import sqlite3
import sys
from pathlib import Path

from pneumo_model.audit import SCHEMA_VERSION, AuditTrail

assert SCHEMA_VERSION == 2, "run this with the code of commit e74230e"
path = Path(sys.argv[1])
trail = AuditTrail(path)
common = dict(model_sha256="b" * 64, threshold=0.241, source="app")
first = trail.record_result(image_sha256="1" * 64, probability=0.81, label="pneumonia", grey_zone=False,
                            ood=False, ood_score=0.42, crop_box=(0, 0, 200, 150), **common)
second = trail.record_result(image_sha256="2" * 64, probability=0.1, label="normal", grey_zone=True,
                             ood=None, ood_score=None, **common)
third = trail.record_result(image_sha256="3" * 64, model_sha256="c" * 64, threshold=0.241, source="cli",
                            probability=0.55, label="pneumonia", grey_zone=False, ood=True, ood_score=1.7)
trail.record_verdict(first, "agree", reviewer="Dr A")
trail.record_verdict(second, "disagree", note='looks "fine", to me', reviewer="Dr B")
trail.record_reveal(third)
# Everything into the main file, so that the fixture is one file with no -wal or -shm beside it.
connection = sqlite3.connect(path)
connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
connection.close()
