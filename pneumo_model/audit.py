"""The audit trail: an append-only SQLite record of every result shown and every reviewer verdict.

One row in ``results`` per result first shown (app) or printed (CLI), one row in ``verdicts``
per reviewer verdict, and one in ``reveals`` each time a user asks to see a call that the
out-of-distribution gate hid; both point at their result. Rows are never changed or deleted: triggers refuse
UPDATE and DELETE. What is stored is what a later review needs and nothing that identifies a
patient: the SHA-256 of the image bytes (not the pixels, not the file name, which in this data
set carries a patient number, and no DICOM tag), the model's SHA-256, the operating threshold,
the id of the operating point that made the call, the calibrated probability, the grey-zone and
out-of-distribution flags and the crop box.

Durability: WAL journal with ``synchronous=FULL``, one short transaction per record, so a
record whose ``record_*`` call returned survives a killed process or an app restart. Each call
opens its own connection: Streamlit runs sessions on several threads, and SQLite connections
must not be shared between them. Concurrent writers wait up to ``busy_timeout_s`` for the lock.

Schema versions (``PRAGMA user_version``): 1, results and verdicts; 2 adds the reveals table;
3 adds ``results.operating_point`` and 4 ``results.markers_masked``, NULL in the records written
before them; 5 adds ``verdicts.reviewer_subject`` (the signed-in reviewer's stable subject id from the
identity provider; NULL in local mode and before) and the ``events`` table: what was done with the
trail or a result that is not a result or a verdict (a structured report sent to the PACS, the full
trail opened or exported), each with its kind, the subject who did it (NULL in local mode), the
result it concerns if any, and a small JSON detail that never holds patient data; 6 adds
``results.logit`` (the model's raw logit, so that any operating point can be recomputed: what site
alignment and the drift monitor read) and ``results.age_years`` (the age in the DICOM header, in
years, NULL when it says none), and ``verdicts.submission_id`` with a unique index: the id of the
one drawing of a verdict form a verdict came from, so that the same submission sent twice (a
double click, a resend after a lost answer) is one row; 7 adds ``results.subtype`` and
``results.subtype_probability``: the radiographic pattern of a film called pneumonia
("bacterial-like", "viral-like", "undetermined"; ``pneumo_model.subtype``) and its calibrated
probability of the viral pattern, NULL when the pattern does not apply (a film called normal or
flagged by the gate), when it is off, and in the records written before. Opening an older
database brings it up to date in one transaction and keeps every record as it was; a database
written by a newer version is refused and left untouched.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from .csv_export import write_csv
from .errors import PneumoError
from .subtype import PATTERNS

if TYPE_CHECKING:
    from .prediction import Prediction

SCHEMA_VERSION = 7  # 2: reveals; 3: results.operating_point; 4: results.markers_masked; 5: events, reviewer_subject;
# 6: results.logit and age_years, verdicts.submission_id (unique); 7: results.subtype and subtype_probability
# What an event records (``AuditTrail.record_event``): a DICOM structured report sent to the PACS,
# the whole trail opened or exported by an administrator, a sign-out (its detail names the sign-in
# it ended, by digest, so that a replayed copy of its cookie is refused, even after a restart).
EVENT_KINDS = ("sr_sent", "trail_opened", "trail_exported", "signed_out")
MAX_EVENT_DETAIL_CHARS = 2000
SOURCES = ("app", "cli")
VERDICTS = ("agree", "disagree", "unsure")
MAX_NOTE_CHARS = 2000
MAX_REVIEWER_CHARS = 100

_APPEND_ONLY = "BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END"
# One statement each, so that they run inside the opening transaction (``executescript`` would
# commit first). ``operating_point`` and ``markers_masked`` come last, where ALTER TABLE puts them in
# an older database.
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recorded_utc TEXT NOT NULL,
    source TEXT NOT NULL CHECK (source IN ('app', 'cli')),
    image_sha256 TEXT NOT NULL CHECK (length(image_sha256) = 64),
    model_sha256 TEXT NOT NULL CHECK (length(model_sha256) = 64),
    threshold REAL NOT NULL,
    probability REAL NOT NULL CHECK (probability BETWEEN 0.0 AND 1.0),
    label TEXT NOT NULL CHECK (label IN ('pneumonia', 'normal')),
    grey_zone INTEGER NOT NULL CHECK (grey_zone IN (0, 1)),
    ood INTEGER CHECK (ood IN (0, 1)),
    ood_score REAL,
    crop_box TEXT,
    operating_point TEXT,
    markers_masked INTEGER CHECK (markers_masked IN (0, 1)),
    logit REAL,
    age_years REAL CHECK (age_years >= 0),
    subtype TEXT CHECK (subtype IN ('bacterial-like', 'viral-like', 'undetermined')),
    subtype_probability REAL CHECK (subtype_probability BETWEEN 0.0 AND 1.0)
)""",
    """CREATE TABLE IF NOT EXISTS verdicts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recorded_utc TEXT NOT NULL,
    result_id INTEGER NOT NULL REFERENCES results(id),
    verdict TEXT NOT NULL CHECK (verdict IN ('agree', 'disagree', 'unsure')),
    note TEXT NOT NULL DEFAULT '',
    reviewer TEXT NOT NULL DEFAULT '',
    reviewer_subject TEXT,
    submission_id TEXT CHECK (length(submission_id) BETWEEN 8 AND 64)
)""",
    """CREATE TABLE IF NOT EXISTS reveals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recorded_utc TEXT NOT NULL,
    result_id INTEGER NOT NULL REFERENCES results(id)
)""",
    """CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recorded_utc TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (length(kind) > 0),
    subject TEXT,
    result_id INTEGER REFERENCES results(id),
    detail TEXT NOT NULL DEFAULT '{}'
)""",
    *(
        f"CREATE TRIGGER IF NOT EXISTS {table}_append_only_{action.lower()} BEFORE {action} ON {table} {_APPEND_ONLY}"
        for table in ("events", "reveals", "results", "verdicts")
        for action in ("UPDATE", "DELETE")
    ),
)

# The trail as people read it: each result, then each verdict on it (a result without a
# verdict appears once with empty verdict columns). ``operating_point`` is None for the records
# written before the audit trail kept it.
TRAIL_COLUMNS = (
    "result_id",
    "recorded_utc",
    "source",
    "image_sha256",
    "model_sha256",
    "threshold",
    "operating_point",
    "probability",
    "label",
    "grey_zone",
    "ood",
    "ood_score",
    "crop_box",
    "markers_masked",
    "subtype",
    "subtype_probability",
    "revealed_utc",
    "verdict_id",
    "verdict_utc",
    "verdict",
    "note",
    "reviewer",
    "reviewer_subject",
)
_TRAIL_QUERY = """
SELECT r.id, r.recorded_utc, r.source, r.image_sha256, r.model_sha256, r.threshold, r.operating_point,
       r.probability, r.label, r.grey_zone, r.ood, r.ood_score, r.crop_box, r.markers_masked,
       r.subtype, r.subtype_probability,
       (SELECT min(x.recorded_utc) FROM reveals AS x WHERE x.result_id = r.id),
       v.id, v.recorded_utc, v.verdict, v.note, v.reviewer, v.reviewer_subject
FROM results AS r LEFT JOIN verdicts AS v ON v.result_id = r.id
ORDER BY r.id, v.id
"""


class AuditError(PneumoError):
    """The audit trail cannot be opened or written, or a record is not acceptable."""


def _version(connection: sqlite3.Connection) -> int:
    """The database's schema version (0 for a new file).

    Raises:
        AuditError: it was written by a newer version of this code, which may record what this
            one does not know about.
    """
    version = int(connection.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise AuditError(
            f"The audit trail was written by a newer version of this software (schema {version}; this one "
            f"knows up to {SCHEMA_VERSION}). Nothing was recorded; use the newer version or another audit file."
        )
    return version


# Columns that later versions added to a table, in order: an older database gets them by ALTER
# TABLE (NULL in its old records).
_ADDED_COLUMNS = (
    ("results", "operating_point", "TEXT"),
    ("results", "markers_masked", "INTEGER CHECK (markers_masked IN (0, 1))"),
    ("verdicts", "reviewer_subject", "TEXT"),
    ("results", "logit", "REAL"),
    ("results", "age_years", "REAL CHECK (age_years >= 0)"),
    ("verdicts", "submission_id", "TEXT CHECK (length(submission_id) BETWEEN 8 AND 64)"),
    ("results", "subtype", "TEXT CHECK (subtype IN ('bacterial-like', 'viral-like', 'undetermined'))"),
    ("results", "subtype_probability", "REAL CHECK (subtype_probability BETWEEN 0.0 AND 1.0)"),
)
# After the columns they index exist. Old verdicts have no submission id: NULLs never collide.
_INDEXES = (
    "CREATE UNIQUE INDEX IF NOT EXISTS verdicts_submission ON verdicts (submission_id)",
    "CREATE INDEX IF NOT EXISTS results_image ON results (image_sha256, model_sha256)",  # scored_films
)


def _upgrade(connection: sqlite3.Connection) -> None:
    """Creates what is missing (a new file; the reveals table of version 1; the operating point
    column of versions 1 and 2) and sets the version, in one transaction. The write lock is taken
    first and everything checked again under it, so two processes opening an old database at
    once do not both change it."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        version = _version(connection)
        if version < SCHEMA_VERSION:
            for statement in _SCHEMA:
                connection.execute(statement)
            for table, column, definition in _ADDED_COLUMNS:
                columns = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
                if column not in columns:
                    connection.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
            for statement in _INDEXES:
                connection.execute(statement)
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _box_text(box: Sequence[int] | None) -> str | None:
    if box is None:
        return None
    values = [int(value) for value in box]
    if len(values) != 4:
        raise AuditError(f"A crop box has 4 numbers (x0, y0, x1, y1); got {len(values)}.")
    return "[" + ", ".join(str(value) for value in values) + "]"


@dataclass(frozen=True)
class ResultRecord:
    """One result as shown to a user (see the module's docstring for what is and is not kept).

    Attributes:
        source: "app" or "cli".
        ood: None when the model had no out-of-distribution gate.
        crop_box: ``(x0, y0, x1, y1)`` when the result is of a cropped image, else None.
        markers_masked: True when the call was made with the image's burned-in markers painted
            out (``Predictor.call_masked``); records written before the trail kept it have None.
        operating_point: the id of the operating point that made the call
            (``Prediction.operating_point``). Required: None is refused when recording, and only
            records written before the trail kept it have none.
        logit: the model's raw logit (``Prediction.logit``); None only in records written
            before the trail kept it (``scored_films`` then recomputes it where that is exact).
        age_years: the patient's age by the DICOM header (``ImageInfo.age_years``), None when it
            gives none: alignment and monitoring leave out films of another population.
        subtype: the radiographic pattern (``Prediction.subtype``: "bacterial-like", "viral-like",
            "undetermined"), None when it does not apply or is off, and in older records.
        subtype_probability: its calibrated probability of the viral pattern; None with ``subtype``.
    """

    image_sha256: str
    model_sha256: str
    threshold: float
    probability: float
    label: str
    grey_zone: bool
    source: str
    ood: bool | None = None
    ood_score: float | None = None
    crop_box: Sequence[int] | None = None
    operating_point: str | None = None
    markers_masked: bool = False
    logit: float | None = None
    age_years: float | None = None
    subtype: str | None = None
    subtype_probability: float | None = None

    def row(self) -> tuple:
        """The values of an INSERT into ``results``, stamped with the current UTC time.

        Raises:
            AuditError: an unknown source, a crop box that is not four numbers, no operating point, or
                a subtype pattern that is unknown or without its probability (or the other way round).
        """
        if self.source not in SOURCES:
            raise AuditError(f"Unknown result source '{self.source}'; one of {SOURCES}.")
        if not isinstance(self.operating_point, str) or not self.operating_point.strip():
            raise AuditError(
                "A result must say which operating point made its call: give operating_point (the id in "
                "Prediction.operating_point), or make the record with ResultRecord.of(prediction, ...)."
            )
        if self.subtype is not None and self.subtype not in PATTERNS:
            raise AuditError(f"A subtype pattern is one of {', '.join(PATTERNS)}; got '{self.subtype}'.")
        if (self.subtype is None) != (self.subtype_probability is None):
            raise AuditError(
                "A subtype pattern is recorded with its probability, or neither is: make the record with "
                "ResultRecord.of(prediction, ...)."
            )
        return (
            _utc_now(),
            self.source,
            self.image_sha256,
            self.model_sha256,
            float(self.threshold),
            float(self.probability),
            self.label,
            int(bool(self.grey_zone)),
            None if self.ood is None else int(bool(self.ood)),
            None if self.ood_score is None else float(self.ood_score),
            _box_text(self.crop_box),
            self.operating_point,
            int(bool(self.markers_masked)),
            None if self.logit is None else float(self.logit),
            None if self.age_years is None else round(float(self.age_years), 2),
            self.subtype,
            None if self.subtype_probability is None else float(self.subtype_probability),
        )

    @classmethod
    def of(
        cls,
        prediction: "Prediction",
        image_sha256: str,
        source: str,
        crop_box: Sequence[int] | None = None,
        markers_masked: bool = False,
    ) -> "ResultRecord":
        """The record of a ``Prediction`` (of the whole image, or of the crop ``crop_box``, with or
        without the markers painted out)."""
        return cls(
            image_sha256=image_sha256,
            model_sha256=prediction.model_sha,
            threshold=prediction.threshold,
            probability=prediction.probability,
            label=prediction.label,
            grey_zone=prediction.grey_zone,
            source=source,
            ood=prediction.ood,
            ood_score=prediction.ood_score,
            crop_box=None if crop_box is None else tuple(int(value) for value in crop_box),
            operating_point=prediction.operating_point,
            markers_masked=bool(markers_masked),
            logit=prediction.logit,
            age_years=prediction.info.age_years,
            subtype=prediction.subtype,
            subtype_probability=prediction.subtype_probability,
        )


@dataclass(frozen=True)
class AuditTrail:
    """An audit database at ``path`` (created with its folder on first use).

    Args:
        path: the SQLite file.
        busy_timeout_s: how long a writer waits for another writer's lock before failing.
    """

    path: Path
    busy_timeout_s: float = 30.0

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))
        if self.path.is_dir():
            raise AuditError(f"The audit trail path {self.path} is a folder; give a file name such as audit.sqlite3.")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise AuditError(f"The audit trail folder {self.path.parent} cannot be created: {error.strerror}.") from None
        with self._connection() as connection:
            if _version(connection) < SCHEMA_VERSION:
                _upgrade(connection)

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        try:
            connection = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        except sqlite3.Error as error:
            raise AuditError(f"The audit trail {self.path} cannot be opened ({error}).") from None
        try:
            _version(connection)  # before anything writes: a newer database is left as it is
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = FULL")
            connection.execute("PRAGMA foreign_keys = ON")
            yield connection
        except sqlite3.IntegrityError:
            raise  # a refused value: the caller says which
        except sqlite3.DatabaseError as error:
            raise AuditError(
                f"The audit trail {self.path} cannot be used ({error}). Nothing was recorded; "
                "check that the file is a readable, writable audit database."
            ) from None
        finally:
            connection.close()

    def _insert(self, sql: str, rows: list[tuple]) -> list[int]:
        """Inserts ``rows`` in one transaction; returns their ids once committed."""
        with self._connection() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                ids = [int(connection.execute(sql, values).lastrowid) for values in rows]
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            return ids

    def record_results(self, records: Sequence["ResultRecord"]) -> list[int]:
        """Appends shown results in one transaction (all or none); returns their ids once committed.

        Raises:
            AuditError: a value is not acceptable, or the database cannot be written.
        """
        rows = [record.row() for record in records]
        if not rows:
            return []
        try:
            return self._insert(
                "INSERT INTO results (recorded_utc, source, image_sha256, model_sha256, threshold, probability, "
                "label, grey_zone, ood, ood_score, crop_box, operating_point, markers_masked, logit, age_years, subtype, "
                "subtype_probability) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        except sqlite3.IntegrityError as error:
            raise AuditError(f"The result was not recorded: a value is not acceptable ({error}).") from None

    def record_result(self, **fields) -> int:
        """Appends one shown result (``ResultRecord``'s fields as keywords); returns its id once committed."""
        return self.record_results([ResultRecord(**fields)])[0]

    def record_verdict(
        self, result_id: int, verdict: str, note: str = "", reviewer: str = "", reviewer_subject: str | None = None
    ) -> int:
        """Appends a reviewer's verdict on a recorded result; returns the verdict's id.

        ``reviewer`` is the name shown with the verdict (typed in local mode; the display name from
        the identity provider when signed in), ``reviewer_subject`` the signed-in user's stable
        subject id (None in local mode).

        Raises:
            AuditError: an unknown verdict or result, a note or name that is too long, or the
                database cannot be written.
        """
        values = _verdict_values(result_id, verdict, note, reviewer, reviewer_subject)
        try:
            return self._insert(
                "INSERT INTO verdicts (recorded_utc, result_id, verdict, note, reviewer, reviewer_subject) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [values],
            )[0]
        except sqlite3.IntegrityError:
            raise AuditError(f"There is no recorded result {result_id} to attach the verdict to.") from None

    def record_verdict_once(
        self,
        submission_id: str,
        result_id: int,
        verdict: str,
        note: str = "",
        reviewer: str = "",
        reviewer_subject: str | None = None,
    ) -> "VerdictWrite":
        """Appends a verdict unless its submission already wrote one; says which happened.

        ``submission_id`` names the one drawing of a verdict form the press came from. The trail
        keeps it under a unique index, so the same submission sent twice (a double click, a resend
        after an answer lost to a restart, two server processes) is one row, whoever sends it;
        the second send gets the first one's record back with ``new`` False. Checked and written in
        one transaction under the write lock.

        Raises:
            AuditError: an unknown verdict or result, a note or name that is too long, a
                submission id that is not 8 to 64 characters, or the database cannot be written.
        """
        submission_id = str(submission_id)
        if not 8 <= len(submission_id) <= 64:
            raise AuditError("A verdict's submission id has 8 to 64 characters; nothing was recorded.")
        values = _verdict_values(result_id, verdict, note, reviewer, reviewer_subject)
        with self._connection() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                written = _verdict_of_submission(connection, submission_id)
                if written is None:
                    connection.execute(
                        "INSERT INTO verdicts (recorded_utc, result_id, verdict, note, reviewer, reviewer_subject, "
                        "submission_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (*values, submission_id),
                    )
                    written = _verdict_of_submission(connection, submission_id)
                    written = replace(written, new=True)
                connection.execute("COMMIT")
            except sqlite3.IntegrityError:
                connection.execute("ROLLBACK")
                raise AuditError(f"There is no recorded result {result_id} to attach the verdict to.") from None
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
        return written

    def verdict_of_submission(self, submission_id: str) -> "VerdictWrite | None":
        """The verdict a submission wrote (``new`` False), or None: how a form that lost its answer
        (a restart between the write and the confirmation) learns that it was saved."""
        with self._connection() as connection:
            return _verdict_of_submission(connection, str(submission_id))

    def scored_films(
        self,
        model_sha256: str,
        *,
        scales: Mapping[str, tuple[float, float]] | None = None,
        last: int | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> "ScoredFilms":
        """The films the model scored, each image once, in the order they were first scored: what
        label-free site alignment and the drift monitor read.

        A film counts once (its SHA-256), at its first record for ``model_sha256`` of the whole,
        unmasked image (a crop or a film with its markers painted out is another input, not another
        film). Its logit is the recorded one; a record from before the trail kept it gets it back
        from its probability where its operating point is in ``scales`` (exact: the probability is
        ``sigmoid(scale * logit + offset)``, kept as a float64), else it is left out and counted.

        Args:
            model_sha256: the model whose scores are read (the scores of two models do not mix).
            scales: ``{operating point id: (scale, offset)}`` of the points whose old records may
                be recomputed (``OperatingPoint.scale`` and ``offset``).
            last: only the last ``last`` films.
            since, until: only films first scored on or after ``since`` and on or before
                ``until`` (ISO dates, ``YYYY-MM-DD``, UTC, both days inclusive).

        Raises:
            AuditError: a date that is not ``YYYY-MM-DD``, or the database cannot be read.
        """
        clauses, arguments = ["first.model_sha256 = ?"], [model_sha256]
        for day, operator, suffix in ((since, ">=", ""), (until, "<", "~")):  # "~" sorts after any time of the day
            if day is not None:
                try:
                    datetime.strptime(day, "%Y-%m-%d")
                except (TypeError, ValueError):
                    raise AuditError(f"A date is given as YYYY-MM-DD; got '{day}'.") from None
                clauses.append(f"first.recorded_utc {operator} ?")
                arguments.append(day + suffix)
        query = f"""
            SELECT first.image_sha256, first.recorded_utc, first.logit, first.probability, first.operating_point,
                   first.ood, first.ood_score, first.age_years
            FROM results AS first
            WHERE first.id = (SELECT min(r.id) FROM results AS r
                              WHERE r.image_sha256 = first.image_sha256 AND r.model_sha256 = first.model_sha256
                                AND r.crop_box IS NULL AND coalesce(r.markers_masked, 0) = 0)
              AND {" AND ".join(clauses)}
            ORDER BY first.id"""
        with self._connection() as connection:
            rows = connection.execute(query, arguments).fetchall()
        scales = dict(scales or {})
        films, left_out = [], 0
        for sha, utc, stored, probability, point, ood, ood_score, age in rows:
            value = stored
            if value is None and point in scales and 0.0 < probability < 1.0:
                scale, offset = scales[point]
                value = (math.log(probability) - math.log1p(-probability) - offset) / scale
            if value is None:
                left_out += 1
                continue
            films.append(ScoredFilm(sha, utc, float(value), None if ood is None else bool(ood), ood_score, age))
        if last is not None:
            films = films[-int(last):] if last > 0 else []
        return ScoredFilms(tuple(films), left_out)

    def record_reveal(self, result_id: int) -> int:
        """Appends that a user asked to see the call of a result the out-of-distribution gate
        flagged (the app hides it until then); returns the record's id.

        Raises:
            AuditError: an unknown result, or the database cannot be written.
        """
        try:
            return self._insert("INSERT INTO reveals (recorded_utc, result_id) VALUES (?, ?)", [(_utc_now(), int(result_id))])[0]
        except sqlite3.IntegrityError:
            raise AuditError(f"There is no recorded result {result_id} to note the reveal on.") from None

    def record_event(self, kind: str, *, subject: str | None = None, result_id: int | None = None, **detail) -> int:
        """Appends an event (one of ``EVENT_KINDS``) done by ``subject`` (None in local mode) on
        the result ``result_id`` if any; ``detail`` is kept as JSON and must hold no patient data
        (UIDs the software generated, operating point ids, counts). Returns the record's id.

        Raises:
            AuditError: an unknown kind or result, a detail that is not JSON or too long, or the
                database cannot be written.
        """
        if kind not in EVENT_KINDS:
            raise AuditError(f"Unknown audit event '{kind}'; one of {', '.join(EVENT_KINDS)}.")
        try:
            text = json.dumps(detail, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise AuditError(f"The event's detail cannot be kept as JSON ({error}).") from None
        if len(text) > MAX_EVENT_DETAIL_CHARS:
            raise AuditError(f"The event's detail has {len(text)} characters; at most {MAX_EVENT_DETAIL_CHARS} are kept.")
        try:
            return self._insert(
                "INSERT INTO events (recorded_utc, kind, subject, result_id, detail) VALUES (?, ?, ?, ?, ?)",
                [(_utc_now(), kind, _subject_text(subject), None if result_id is None else int(result_id), text)],
            )[0]
        except sqlite3.IntegrityError:
            raise AuditError(f"There is no recorded result {result_id} to note the event on.") from None

    def events(self, kind: str | None = None) -> list[dict]:
        """The events recorded (of one kind, or all), oldest first: dicts with ``id``,
        ``recorded_utc``, ``kind``, ``subject``, ``result_id`` and ``detail`` (the JSON read back)."""
        query = "SELECT id, recorded_utc, kind, subject, result_id, detail FROM events"
        arguments: tuple = ()
        if kind is not None:
            query, arguments = query + " WHERE kind = ?", (kind,)
        with self._connection() as connection:
            rows = connection.execute(query + " ORDER BY id", arguments).fetchall()
        keys = ("id", "recorded_utc", "kind", "subject", "result_id", "detail")
        return [dict(zip(keys, row[:5] + (json.loads(row[5]),))) for row in rows]

    def trail(self) -> list[dict]:
        """Every result with its verdicts, oldest first, as dicts keyed by ``TRAIL_COLUMNS``."""
        with self._connection() as connection:
            rows = connection.execute(_TRAIL_QUERY).fetchall()
        return [dict(zip(TRAIL_COLUMNS, row)) for row in rows]

    def counts(self) -> dict[str, int]:
        """Number of results, verdicts and reveals recorded."""
        with self._connection() as connection:
            return {
                table: int(connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
                for table in ("results", "verdicts", "reveals")
            }

    def to_csv(self) -> str:
        """The whole trail as CSV text (see ``trail_csv``)."""
        return trail_csv(self.trail())

    def integrity_ok(self) -> bool:
        """``PRAGMA integrity_check`` returns ok."""
        with self._connection() as connection:
            return connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@dataclass(frozen=True)
class VerdictWrite:
    """A verdict as the trail holds it, and whether this call wrote it.

    Attributes:
        verdict_id: its record.
        result_id, verdict: what it says.
        recorded_utc: when it was written (ISO, UTC).
        image_sha256: the SHA-256 of the judged image (its result's).
        new: True when this call wrote it; False when its submission had written it before.
    """

    verdict_id: int
    result_id: int
    verdict: str
    recorded_utc: str
    image_sha256: str
    new: bool = False


def _verdict_of_submission(connection: sqlite3.Connection, submission_id: str) -> VerdictWrite | None:
    row = connection.execute(
        "SELECT v.id, v.result_id, v.verdict, v.recorded_utc, r.image_sha256 FROM verdicts AS v "
        "JOIN results AS r ON r.id = v.result_id WHERE v.submission_id = ?",
        (submission_id,),
    ).fetchone()
    return None if row is None else VerdictWrite(int(row[0]), int(row[1]), row[2], row[3], row[4])


def _verdict_values(result_id: int, verdict: str, note: str, reviewer: str, reviewer_subject: str | None) -> tuple:
    """The checked values of a verdict row, stamped with the current UTC time.

    Raises:
        AuditError: an unknown verdict, or a note, name or subject that is too long.
    """
    if verdict not in VERDICTS:
        raise AuditError(f"A verdict is one of {', '.join(VERDICTS)}; got '{verdict}'.")
    note, reviewer = note.strip(), reviewer.strip()
    if len(note) > MAX_NOTE_CHARS:
        raise AuditError(f"The note has {len(note)} characters; at most {MAX_NOTE_CHARS} are kept. Shorten it.")
    if len(reviewer) > MAX_REVIEWER_CHARS:
        raise AuditError(f"The reviewer name has more than {MAX_REVIEWER_CHARS} characters. Shorten it.")
    return (_utc_now(), int(result_id), verdict, note, reviewer, _subject_text(reviewer_subject))


@dataclass(frozen=True)
class ScoredFilm:
    """A film as ``AuditTrail.scored_films`` reads it (no patient data: the image's SHA-256 only).

    Attributes:
        image_sha256: the image bytes' SHA-256.
        first_utc: when the model first scored it (ISO, UTC).
        logit: the model's raw logit.
        ood: whether the gate flagged it (None: the model had no gate).
        ood_score: the gate's score, None without a gate.
        age_years: the age in the DICOM header, None when there was none.
    """

    image_sha256: str
    first_utc: str
    logit: float
    ood: bool | None
    ood_score: float | None
    age_years: float | None


@dataclass(frozen=True)
class ScoredFilms:
    """The films ``AuditTrail.scored_films`` read, and how many it left out (old records whose
    logit cannot be recomputed exactly)."""

    films: tuple[ScoredFilm, ...]
    left_out: int


def _subject_text(subject: str | None) -> str | None:
    """A signed-in user's subject id as stored (None in local mode).

    Raises:
        AuditError: an empty or over-long subject.
    """
    if subject is None:
        return None
    subject = str(subject).strip()
    if not subject or len(subject) > MAX_REVIEWER_CHARS * 3:
        raise AuditError("A signed-in user's subject id is empty or too long; nothing was recorded.")
    return subject


def trail_csv(rows: list[dict]) -> str:
    """Trail rows (as ``AuditTrail.trail`` returns them) as CSV text, header ``TRAIL_COLUMNS``.

    Free text that a spreadsheet would run as a formula is written as text (``csv_export``).
    """
    return write_csv(rows, TRAIL_COLUMNS)
