"""The audit trail: append-only, durable across restarts, concurrent writers and a killed writer."""

from __future__ import annotations

import csv
import io
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pneumo_model.artifacts import REPO_ROOT
from pneumo_model.audit import TRAIL_COLUMNS, AuditError, AuditTrail, ResultRecord

IMAGE_SHA = "a" * 64
MODEL_SHA = "b" * 64


def record(trail: AuditTrail, **changes) -> int:
    values = dict(
        image_sha256=IMAGE_SHA,
        model_sha256=MODEL_SHA,
        threshold=0.23,
        probability=0.81,
        label="pneumonia",
        grey_zone=False,
        source="app",
        ood=False,
        ood_score=0.4,
    )
    return trail.record_result(**{**values, **changes})


def test_results_and_verdicts_are_read_back_joined(tmp_path):
    trail = AuditTrail(tmp_path / "audit.sqlite3")
    first = record(trail, crop_box=(0, 0, 200, 150))
    second = record(trail, probability=0.1, label="normal", grey_zone=True, ood=None, ood_score=None)
    verdict = trail.record_verdict(first, "disagree", note="  looks normal to me ", reviewer="Dr A")
    rows = trail.trail()
    assert [row["result_id"] for row in rows] == [first, second]
    assert rows[0]["verdict_id"] == verdict and rows[0]["verdict"] == "disagree"
    assert rows[0]["note"] == "looks normal to me" and rows[0]["reviewer"] == "Dr A"
    assert rows[0]["crop_box"] == "[0, 0, 200, 150]"
    assert rows[1]["verdict"] is None and rows[1]["grey_zone"] == 1 and rows[1]["ood"] is None
    assert rows[1]["probability"] == pytest.approx(0.1) and rows[1]["label"] == "normal"
    assert rows[0]["recorded_utc"].endswith("+00:00")
    assert trail.counts() == {"results": 2, "verdicts": 1, "reveals": 0}


def test_a_reveal_is_kept_and_shown_with_its_result(tmp_path):
    trail = AuditTrail(tmp_path / "audit.sqlite3")
    hidden, other = record(trail, ood=True, ood_score=1.7), record(trail)
    trail.record_reveal(hidden)
    trail.record_reveal(hidden)  # asked twice: both kept, the first time shown
    rows = {row["result_id"]: row for row in trail.trail()}
    assert rows[hidden]["revealed_utc"] is not None and rows[other]["revealed_utc"] is None
    assert trail.counts()["reveals"] == 2
    with pytest.raises(AuditError, match="no recorded result 42"):
        trail.record_reveal(42)


def test_several_verdicts_on_one_result_are_all_kept(tmp_path):
    trail = AuditTrail(tmp_path / "audit.sqlite3")
    result = record(trail)
    for verdict in ("agree", "unsure", "disagree"):
        trail.record_verdict(result, verdict)
    assert [row["verdict"] for row in trail.trail()] == ["agree", "unsure", "disagree"]


def test_csv_export_has_the_header_and_one_line_per_row(tmp_path):
    trail = AuditTrail(tmp_path / "audit.sqlite3")
    result = record(trail)
    trail.record_verdict(result, "agree", note='a "quoted", note\non two lines')
    rows = list(csv.DictReader(io.StringIO(trail.to_csv())))
    assert list(rows[0]) == list(TRAIL_COLUMNS)
    assert len(rows) == 1 and rows[0]["note"] == 'a "quoted", note\non two lines'
    assert rows[0]["image_sha256"] == IMAGE_SHA


def test_csv_export_defuses_spreadsheet_formulas(tmp_path):
    trail = AuditTrail(tmp_path / "audit.sqlite3")
    result = record(trail)
    trail.record_verdict(result, "unsure", note="=HYPERLINK(\"http://x\")", reviewer="@admin")
    (row,) = csv.DictReader(io.StringIO(trail.to_csv()))
    assert row["note"] == "'=HYPERLINK(\"http://x\")" and row["reviewer"] == "'@admin"
    assert trail.trail()[0]["note"] == "=HYPERLINK(\"http://x\")"  # stored as typed


def test_a_batch_is_recorded_whole_or_not_at_all(tmp_path):
    trail = AuditTrail(tmp_path / "audit.sqlite3")
    good = ResultRecord(IMAGE_SHA, MODEL_SHA, 0.2, 0.5, "normal", False, "app")
    ids = trail.record_results([good, good])
    assert ids == [1, 2]
    bad = ResultRecord(IMAGE_SHA, MODEL_SHA, 0.2, 7.0, "normal", False, "app")  # probability out of range
    with pytest.raises(AuditError, match="not acceptable"):
        trail.record_results([good, bad])
    assert trail.counts()["results"] == 2
    assert trail.record_results([]) == []


def test_records_are_append_only(tmp_path):
    path = tmp_path / "audit.sqlite3"
    trail = AuditTrail(path)
    result = record(trail)
    trail.record_verdict(result, "agree")
    trail.record_reveal(result)
    connection = sqlite3.connect(path)
    for statement in (
        "UPDATE reveals SET result_id = 2",
        "DELETE FROM reveals",
        "UPDATE results SET probability = 0.5",
        "DELETE FROM results",
        "UPDATE verdicts SET verdict = 'disagree'",
        "DELETE FROM verdicts",
    ):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            connection.execute(statement)
    connection.close()
    assert trail.trail()[0]["probability"] == pytest.approx(0.81)
    assert trail.counts() == {"results": 1, "verdicts": 1, "reveals": 1}


def test_database_uses_wal_and_survives_a_reopen(tmp_path):
    path = tmp_path / "sub" / "audit.sqlite3"
    ids = [record(AuditTrail(path)) for _ in range(3)]
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    connection.close()
    reopened = AuditTrail(path)
    assert [row["result_id"] for row in reopened.trail()] == ids
    assert reopened.integrity_ok()


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"source": "web"}, "Unknown result source"),
        ({"label": "maybe"}, "not acceptable"),
        ({"probability": 1.5}, "not acceptable"),
        ({"image_sha256": "abc"}, "not acceptable"),
        ({"crop_box": (1, 2, 3)}, "4 numbers"),
    ],
)
def test_bad_result_values_are_refused_and_nothing_is_written(tmp_path, changes, reason):
    trail = AuditTrail(tmp_path / "audit.sqlite3")
    with pytest.raises(AuditError, match=reason):
        record(trail, **changes)
    assert trail.counts()["results"] == 0


def test_bad_verdicts_are_refused(tmp_path):
    trail = AuditTrail(tmp_path / "audit.sqlite3")
    result = record(trail)
    with pytest.raises(AuditError, match="agree, disagree, unsure"):
        trail.record_verdict(result, "yes")
    with pytest.raises(AuditError, match="no recorded result 99"):
        trail.record_verdict(99, "agree")
    with pytest.raises(AuditError, match="at most 2000"):
        trail.record_verdict(result, "agree", note="x" * 2001)
    with pytest.raises(AuditError, match="reviewer name"):
        trail.record_verdict(result, "agree", reviewer="x" * 101)
    assert trail.counts()["verdicts"] == 0


def test_unusable_paths_give_a_plain_error(tmp_path):
    with pytest.raises(AuditError, match="is a folder"):
        AuditTrail(tmp_path)
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(AuditError, match="cannot be used"):
        AuditTrail(garbage)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(AuditError, match="cannot be created"):
        AuditTrail(blocker / "audit.sqlite3")


_WRITER = textwrap.dedent(
    """
    import sys
    from pneumo_model.audit import AuditTrail
    trail = AuditTrail(sys.argv[1])
    count = int(sys.argv[2])
    index = 0
    while count < 0 or index < count:
        result = trail.record_result(
            image_sha256=f"{index:064x}", model_sha256="b" * 64, threshold=0.2, probability=0.5,
            label="normal", grey_zone=False, source="cli",
        )
        print(result, flush=True)
        index += 1
    """
)


def _writer(tmp_path: Path, db: Path, count: int) -> subprocess.Popen:
    script = tmp_path / "writer.py"
    if not script.exists():  # rewriting it while an earlier writer starts would hand that one an empty script
        script.write_text(_WRITER)
    return subprocess.Popen(
        [sys.executable, str(script), str(db), str(count)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_eight_concurrent_writers_lose_nothing(tmp_path):
    db = tmp_path / "audit.sqlite3"
    AuditTrail(db)
    writers = [_writer(tmp_path, db, 100) for _ in range(8)]
    printed = []
    for writer in writers:
        out, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err
        ids = [int(line) for line in out.split()]
        assert len(ids) == 100, err
        printed += ids
    trail = AuditTrail(db)
    stored = [row["result_id"] for row in trail.trail()]
    assert len(printed) == 800 and sorted(stored) == sorted(printed)
    assert trail.integrity_ok()


def test_a_writer_killed_mid_run_loses_no_committed_record(tmp_path):
    db = tmp_path / "audit.sqlite3"
    AuditTrail(db)
    writer = _writer(tmp_path, db, -1)  # writes until killed
    printed = []
    deadline = time.monotonic() + 120
    while len(printed) < 200 and time.monotonic() < deadline:
        printed.append(int(writer.stdout.readline()))
    os.kill(writer.pid, signal.SIGKILL)
    rest, _ = writer.communicate(timeout=60)  # stderr: the kill's leftovers, not checked
    printed += [int(line) for line in rest.split()]
    assert writer.returncode == -signal.SIGKILL and len(printed) >= 200
    trail = AuditTrail(db)
    stored = {row["result_id"] for row in trail.trail()}
    assert set(printed) <= stored
    assert trail.integrity_ok()
