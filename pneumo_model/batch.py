"""Scoring a whole archive: ``python -m pneumo_model batch SOURCE --out RESULTS``.

The same pipeline as ``predict`` and the app (``DecodedImage.decode``, ``Predictor.calls`` with
the gate and the active operating point), over thousands of files, into a Parquet data set with
one row per file (``RESULT_COLUMNS``): a file that cannot be used is a row with its reason, never
a crash and never a gap.

Three parts, each replaceable:

* a **source** is an iterable of ``SourceItem`` (a name for the ``file`` column and a function
  that returns the bytes; ``pneumo_model.sources``): ``folder_items`` (a folder, recursively),
  ``list_items`` (a text file of paths). Anything that can list names and fetch bytes plugs in the same way (a DICOMweb query:
  one item per instance, its reader a WADO-RS fetch); items with a ``path`` can also go to Ray.
* an **engine** turns items into rows: ``LocalEngine`` (decoding in threads, one forward pass per
  batch in this process) or ``batch_ray.RayEngine`` (Ray Data, for a cluster).
* the **results folder** (``ResultsFolder``) makes the run resumable and loses nothing: rows are
  written in parts of at most ``BatchSettings.part_rows`` rows, each written to a hidden temporary
  file, flushed to disk and then renamed into place, so a part is either whole or absent whatever
  kills the process. A rerun skips every file already in RESULTS with the same path and the same
  bytes, so a run killed with SIGKILL and started again scores each file exactly once. With an
  audit trail, a part's results are recorded after the part is on disk and before it is renamed,
  and a journal in the folder says which parts were recorded (or, for a part killed while it was
  being recorded, the trail itself is asked), so a part is never recorded twice nor lost.
  Each part says in its Parquet metadata which version of the columns (``RESULTS_SCHEMA_VERSION``)
  and which subtype pattern network (or none) wrote it: a folder of an older version, or of
  another subtype setting, is refused, never mixed.

No file name goes to the log: paths in an archive can carry patient numbers. They are in RESULTS
(its ``file`` column) and nowhere else.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .errors import BatchError, InvalidImageError
from .paths import bytes_sha256
from .preprocessing import ImageLimits
from .sources import SourceItem, folder_items, list_items, read_file, unexpected_reason  # noqa: F401 (re-exported)

# The columns of RESULTS, in order; nothing else is written.
RESULT_COLUMNS = (
    "file", "sha256", "probability", "label", "grey_zone", "ood", "ood_score", "ood_grade",
    "subtype", "subtype_probability", "operating_point", "model_sha", "warnings", "error",
)
# The version of those columns, in each part's Parquet metadata (``SCHEMA_KEY``). Raise it when a
# column is added, changes meaning or goes away; a RESULTS of another version is refused.
# History: 1 (no metadata): the columns up to ``ood_grade`` and ``operating_point`` to ``error``;
# 2: adds ``subtype`` and ``subtype_probability`` (the radiographic pattern of a film called
# pneumonia; null where it does not apply or is off), and ``SUBTYPE_KEY``.
RESULTS_SCHEMA_VERSION = 2
SCHEMA_KEY = b"pneumo.results_schema"
SUBTYPE_KEY = b"pneumo.subtype_model"  # the subtype network's SHA-256, or "off"
SUBTYPE_OFF = "off"
_PART = re.compile(r"^part-(\d{6,})\.parquet$")
_TEMPORARY = re.compile(r"^\.part-(\d{6,})\.parquet\.tmp$")
JOURNAL_NAME = "_audited.jsonl"  # parts whose results are in the audit trail
LOCK_NAME = "_lock"  # held by the run writing the folder
# pyarrow and pandas skip names starting with "_" or "." when they read a folder as one table.


@dataclass(frozen=True)
class BatchSettings:
    """How a batch run goes.

    Attributes:
        part_rows: rows per part of RESULTS; a killed run scores at most this many files again.
        part_seconds: a part is also written once its first row is this old, so that a slow
            source still commits its work.
        decoders: threads decoding for the local engine (None: one per CPU core).
        limits: what an input may be (``ImageLimits``), as everywhere.
    """

    part_rows: int = 256
    part_seconds: float = 30.0
    decoders: int | None = None
    limits: ImageLimits = ImageLimits()

    def __post_init__(self):
        if self.part_rows < 1:
            raise BatchError(f"Rows per part must be at least 1; got {self.part_rows}.")
        if self.decoders is not None and self.decoders < 1:
            raise BatchError(f"Decoding threads must be at least 1; got {self.decoders}.")


# --- sources -------------------------------------------------------------------------------


def open_source(source: str | Path, limits: ImageLimits = ImageLimits()) -> list[SourceItem]:
    """The items of SOURCE: a folder (recursively), a text file of paths, or a DICOMweb query
    (``dicomweb:?...``, ``pneumo_model.pacs_workflow.parse_source``; the server from ``PNEUMO_DICOMWEB_*``).

    Raises:
        BatchError: SOURCE does not exist, is empty, or is neither.
        PacsError, ConfigError: a DICOMweb source that cannot be searched or read.
    """
    if str(source).startswith("dicomweb:"):
        from .pacs import PacsClient, PacsSettings
        from .pacs_workflow import source_items

        items = source_items(PacsClient(PacsSettings.from_environment()), str(source), limits)
        if not items:
            raise BatchError("The DICOMweb query matches no image. Widen the dates or change the modality.")
        return items
    path = Path(source)
    if path.is_dir():
        return folder_items(path, limits)
    if path.is_file():
        return list_items(path, limits)
    raise BatchError("SOURCE does not exist. Give a folder of images or a text file of paths, one per line.")


# --- rows ----------------------------------------------------------------------------------


def result_schema(subtype_model: str | None = None):
    """The Arrow schema of RESULTS (``RESULT_COLUMNS``), its metadata saying the columns' version
    and ``subtype_model``: the SHA-256 of the subtype pattern's network that filled ``subtype``,
    None when the pattern was off."""
    import pyarrow as pa

    metadata = {SCHEMA_KEY: str(RESULTS_SCHEMA_VERSION).encode(), SUBTYPE_KEY: (subtype_model or SUBTYPE_OFF).encode()}
    return pa.schema([
        ("file", pa.string()), ("sha256", pa.string()), ("probability", pa.float64()), ("label", pa.string()),
        ("grey_zone", pa.bool_()), ("ood", pa.bool_()), ("ood_score", pa.float64()), ("ood_grade", pa.string()),
        ("subtype", pa.string()), ("subtype_probability", pa.float64()),
        ("operating_point", pa.string()), ("model_sha", pa.string()), ("warnings", pa.list_(pa.string())),
        ("error", pa.string()),
    ], metadata=metadata)


def subtype_model_sha(predictor) -> str | None:
    """The SHA-256 of the subtype pattern's network ``predictor`` asks, None when it asks none."""
    return None if predictor.subtype is None else predictor.subtype.metadata.model_sha256


def scored_row(name: str, digest: str, prediction) -> dict:
    """The row of a scored file (``prediction``: a ``Prediction``)."""
    return {
        "file": name, "sha256": digest, "probability": float(prediction.probability), "label": prediction.label,
        "grey_zone": bool(prediction.grey_zone), "ood": prediction.ood, "ood_score": prediction.ood_score,
        "ood_grade": prediction.ood_grade, "subtype": prediction.subtype,
        "subtype_probability": prediction.subtype_probability,
        "operating_point": prediction.operating_point, "model_sha": prediction.model_sha,
        "warnings": list(prediction.info.warnings), "error": None,
        # For the audit trail only (``_recorder``); RESULTS keeps ``RESULT_COLUMNS``.
        "logit": float(prediction.logit), "age_years": prediction.info.age_years,
    }


def error_row(name: str, digest: str | None, reason: str, model_sha: str, operating_point: str) -> dict:
    """The row of a file that could not be scored: the reason, the score columns null."""
    return {
        "file": name, "sha256": digest, "probability": None, "label": None, "grey_zone": None, "ood": None,
        "ood_score": None, "ood_grade": None, "subtype": None, "subtype_probability": None,
        "operating_point": operating_point, "model_sha": model_sha, "warnings": [],
        "error": reason,
    }


def decode_item(read: Callable[[], bytes], limits: ImageLimits):
    """``(DecodedImage, None, digest)`` for a usable file, else ``(None, reason, digest or None)``."""
    from .pipeline import DecodedImage

    try:
        data = read()
    except InvalidImageError as error:
        return None, str(error), None
    try:
        image = DecodedImage.decode(data, limits)
        return image, None, image.digest
    except InvalidImageError as error:
        return None, str(error), bytes_sha256(data)
    except Exception as error:  # noqa: BLE001 - a row with the reason, not a stopped archive
        return None, unexpected_reason(error), bytes_sha256(data)


def score_decoded(predictor, names: Sequence[str], decoded: Sequence) -> list[dict]:
    """The rows of one batch: ``decoded`` holds ``decode_item``'s triples, in ``names``' order;
    the usable images are called together (``Predictor.calls``)."""
    usable = [index for index, (image, _, _) in enumerate(decoded) if image is not None]
    calls = dict(zip(usable, predictor.calls([decoded[index][0] for index in usable])))
    point = predictor.operating_point
    rows = []
    for index, (name, (image, reason, digest)) in enumerate(zip(names, decoded)):
        if index in calls:
            rows.append(scored_row(name, digest, calls[index]))
        else:
            rows.append(error_row(name, digest, reason, predictor.metadata.model_sha256, point.id))
    return rows


# --- engines -------------------------------------------------------------------------------


class LocalEngine:
    """Scores items in this process: ``decoders`` threads read and decode (Pillow, OpenCV and
    hashing release the GIL), the calling thread runs one forward pass per batch. At most two
    batches are decoded ahead, so memory holds a few batches of images whatever the archive's size.

    Args:
        predictor: the loaded model with its gate and operating point.
        settings: ``BatchSettings`` (decoders, limits).
    """

    name = "local"

    def __init__(self, predictor, settings: BatchSettings = BatchSettings()):
        self.predictor = predictor
        self.settings = settings
        self.model_sha = predictor.metadata.model_sha256
        self.operating_point = predictor.operating_point.id
        self.threshold = predictor.operating_point.threshold
        self.subtype_sha = subtype_model_sha(predictor)

    def rows(self, items: Sequence[SourceItem]) -> Iterator[dict]:
        """One row per item, in the items' order."""
        size, limits = self.predictor.batch_size, self.settings.limits
        decoders = self.settings.decoders or os.cpu_count() or 1
        with ThreadPoolExecutor(decoders, thread_name_prefix="decode") as pool:
            pending: deque = deque()
            starts = iter(range(0, len(items), size))

            def submit_next() -> None:
                start = next(starts, None)
                if start is not None:
                    chunk = items[start : start + size]
                    pending.append((chunk, [pool.submit(decode_item, item.read, limits) for item in chunk]))

            submit_next()
            submit_next()
            while pending:
                chunk, futures = pending.popleft()
                submit_next()
                decoded = [future.result() for future in futures]
                yield from score_decoded(self.predictor, [item.name for item in chunk], decoded)
                del decoded

    def close(self) -> None:
        pass


# --- the results folder --------------------------------------------------------------------


def _fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class ResultsFolder:
    """RESULTS: a folder of Parquet parts, read by ``pandas.read_parquet(folder)`` as one table.

    Opening it takes its lock (one run at a time), finishes or discards what a killed run left
    (a temporary part is renamed into place when its results are in the audit trail, else removed
    and scored again), reads which files it holds, and refuses a folder of another model,
    operating point, subtype pattern setting or version of the columns.

    Args:
        path: the folder (created when missing).
        model_sha: SHA-256 of the model of this run.
        operating_point: the id of this run's operating point.
        trail: the run's ``audit.AuditTrail``, or None.
        subtype_sha: SHA-256 of this run's subtype pattern network; None when the pattern is off.

    Raises:
        BatchError: the folder cannot be created or written, holds other files, is in use by
            another run, or holds results of another model, operating point, subtype pattern
            setting or version of the columns (an older version of this command).
    """

    def __init__(self, path: Path, model_sha: str, operating_point: str, trail=None, subtype_sha: str | None = None):
        self.path = Path(path)
        self.trail = trail
        self.model_sha = model_sha
        self.operating_point = operating_point
        self.subtype_sha = subtype_sha
        self._lock_file = None
        # file -> (sha256 or None, errored, part name)
        self.held: dict[str, tuple[str | None, bool, str]] = {}
        self._next = 1

    def __enter__(self) -> "ResultsFolder":
        self._open()
        return self

    def __exit__(self, *exc) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _open(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise BatchError(
                "RESULTS exists and is a file; it must be a folder (a Parquet data set). Give a new folder name."
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock_file = open(self.path / LOCK_NAME, "a")
            probe = self.path / ".write-probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise BatchError(f"RESULTS cannot be written ({error.strerror}). Give a folder you can write to.") from None
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BatchError("RESULTS is being written by another batch run. Wait for it, or give another folder.") from None
        others = [
            entry.name for entry in self.path.iterdir()
            if not (_PART.match(entry.name) or _TEMPORARY.match(entry.name) or entry.name in (JOURNAL_NAME, LOCK_NAME))
        ]
        if others:
            raise BatchError(
                f"RESULTS holds {len(others)} file(s) that are not batch results. Give a new or empty folder."
            )
        self._recover()
        self._read()

    def journal(self) -> dict[str, dict]:
        """What the journal says of each part sent to the audit trail: ``{"intent_utc"}`` once it
        was about to be recorded, and ``"ids"`` once it was."""
        path = self.path / JOURNAL_NAME
        if not path.is_file():
            return {}
        entries: dict[str, dict] = {}
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            entries.setdefault(entry.pop("part"), {}).update(entry)
        return entries

    def _append_journal(self, entry: dict) -> None:
        with open(self.path / JOURNAL_NAME, "a") as journal:
            journal.write(json.dumps(entry) + "\n")
            journal.flush()
            os.fsync(journal.fileno())

    def _recover(self) -> None:
        journal = self.journal()
        for entry in sorted(self.path.iterdir()):
            match = _TEMPORARY.match(entry.name)
            if match is None:
                continue
            final = f"part-{match.group(1)}.parquet"
            state = journal.get(final, {})
            if "ids" not in state and "intent_utc" in state and self._recorded(entry, state["intent_utc"]):
                self._append_journal({"part": final, "ids": "found in the audit trail"})
                state = {"ids": True}
            if "ids" in state:  # whole on disk and in the audit trail: only the rename was lost
                os.replace(entry, self.path / final)
            else:  # never recorded (or no trail to ask): scored again
                entry.unlink()
        _fsync_folder(self.path)

    def _recorded(self, temporary: Path, since_utc: str) -> bool:
        """Whether the audit trail holds the scored rows of a part killed while it was being recorded
        (the kill came between the trail's commit and the journal's line): every one of its results,
        from this command, made since ``since_utc`` (the trail records a part in one transaction)."""
        import pyarrow.parquet as pq

        if self.trail is None:
            return False
        rows = [row for row in pq.read_table(temporary).to_pylist() if row["error"] is None]
        wanted = {(row["sha256"], row["probability"]) for row in rows}
        found = {
            (record["image_sha256"], record["probability"]) for record in self.trail.trail()
            if record["source"] == "cli" and record["recorded_utc"] >= since_utc
            and record["model_sha256"] == self.model_sha and record["operating_point"] == self.operating_point
        }
        return bool(wanted) and wanted <= found

    def parts(self) -> list[Path]:
        return sorted((entry for entry in self.path.iterdir() if _PART.match(entry.name)), key=lambda p: p.name)

    def _read(self) -> None:
        import pyarrow.parquet as pq

        models, points = Counter(), Counter()
        held: dict[str, tuple[str | None, bool, str]] = {}
        duplicates: dict[str, set[str]] = {}  # part -> files whose later row replaces the one in it
        for part in self.parts():
            self._next = max(self._next, int(_PART.match(part.name).group(1)) + 1)
            try:
                schema = pq.read_schema(part)
                self._check_schema(schema)
                table = pq.read_table(part, columns=["file", "sha256", "model_sha", "operating_point", "error"])
            except BatchError:
                raise
            except Exception as error:  # noqa: BLE001 - pyarrow raises several kinds for a damaged file
                raise BatchError(
                    f"A part of RESULTS cannot be read ({type(error).__name__}); move it out of the folder and run again."
                ) from None
            columns = table.to_pydict()
            models.update(columns["model_sha"])
            points.update(columns["operating_point"])
            for file, digest, error in zip(columns["file"], columns["sha256"], columns["error"]):
                if file in held:
                    duplicates.setdefault(held[file][2], set()).add(file)
                held[file] = (digest, error is not None, part.name)
        foreign = {sha for sha in models if sha != self.model_sha} | {op for op in points if op != self.operating_point}
        if foreign:
            model = ", ".join(sha[:12] for sha in models)
            point = ", ".join(op[:12] for op in points)
            raise BatchError(
                f"RESULTS holds results of model {model} at operating point {point}; this run is model "
                f"{self.model_sha[:12]} at operating point {self.operating_point[:12]}. Results of two models or "
                "operating points are never mixed: give a new --out folder to start fresh (or move the old one away)."
            )
        self.held = held
        for part, files in duplicates.items():  # what a killed replacement left: the later row wins
            self._drop(self.path / part, files)

    def _check_schema(self, schema) -> None:
        """Refuses a part written by another version of the columns, or with another subtype
        pattern setting: rows with and without the pattern, or with two networks' patterns, would
        sit in one table with nothing to tell them apart.

        Raises:
            BatchError: the part's columns or metadata are not this run's.
        """
        metadata = schema.metadata or {}
        version = metadata.get(SCHEMA_KEY, b"1").decode(errors="replace")
        if version != str(RESULTS_SCHEMA_VERSION) or list(schema.names) != list(RESULT_COLUMNS):
            raise BatchError(
                f"RESULTS was written by another version of this command (results schema {version}; this one writes "
                f"{RESULTS_SCHEMA_VERSION}, with the columns subtype and subtype_probability). Results of two schemas "
                "are never mixed: give a new --out folder to start fresh (or move the old one away)."
            )
        held = metadata.get(SUBTYPE_KEY, b"").decode(errors="replace")
        wanted = self.subtype_sha or SUBTYPE_OFF
        if held != wanted:
            def said(sha: str) -> str:
                return "the subtype pattern off" if sha == SUBTYPE_OFF else f"the subtype pattern of network {sha[:12]}"

            raise BatchError(
                f"RESULTS holds results with {said(held)}; this run has {said(wanted)} (PNEUMO_SUBTYPE). Results with and "
                "without the pattern, or of two networks, are never mixed: give a new --out folder to start fresh (or "
                "move the old one away), or run with the setting RESULTS was written with."
            )

    def _drop(self, part: Path, files: set[str]) -> None:
        """Rewrites ``part`` without the rows of ``files`` (atomically: written beside it, then renamed)."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        table = pq.read_table(part)
        kept = table.filter(pc.invert(pc.is_in(table["file"], value_set=pa.array(sorted(files), pa.string()))))
        temporary = self.path / f".{part.name}.tmp"
        self._write(kept, temporary)
        os.replace(temporary, part)
        _fsync_folder(self.path)

    def _write(self, table, path: Path) -> None:
        import pyarrow.parquet as pq

        pq.write_table(table, path)
        with open(path, "rb+") as handle:
            os.fsync(handle.fileno())

    def skip(self, name: str, read: Callable[[], bytes]) -> bool | None:
        """Whether ``name`` is held with the bytes ``read`` returns now: True (skip it), False (not
        held, or held with other bytes or without bytes: score it), None for a file not held (not read)."""
        held = self.held.get(name)
        if held is None:
            return None
        digest = held[0]
        if digest is None:
            return False  # its bytes could not be read last time: try again
        try:
            return bytes_sha256(read()) == digest
        except InvalidImageError:
            return False

    def commit(self, rows: list[dict], record: Callable[[list[dict]], list[int]] | None = None) -> str:
        """Writes ``rows`` as the next part; returns its name once it is in place.

        ``record`` (the audit trail) is called between the part's write to disk and its rename,
        with a journal line before (the time) and after (the record ids), so a kill at any point
        neither loses the part's records nor records them twice on the rerun: a part killed
        between the two lines is looked for in the trail (``_recorded``).
        """
        import pyarrow as pa

        name = f"part-{self._next:06d}.parquet"
        temporary = self.path / f".{name}.tmp"
        self._write(pa.Table.from_pylist(rows, schema=result_schema(self.subtype_sha)), temporary)
        if record is not None:
            self._append_journal({"part": name, "intent_utc": datetime.now(timezone.utc).isoformat(timespec="microseconds")})
            self._append_journal({"part": name, "ids": record(rows)})
        os.replace(temporary, self.path / name)
        _fsync_folder(self.path)
        self._next += 1
        replaced: dict[str, set[str]] = {}
        for row in rows:
            before = self.held.get(row["file"])
            if before is not None:
                replaced.setdefault(before[2], set()).add(row["file"])
            self.held[row["file"]] = (row["sha256"], row["error"] is not None, name)
        for part, files in replaced.items():  # a file whose bytes changed: its new row replaces the old
            self._drop(self.path / part, files)
        return name


# --- the run -------------------------------------------------------------------------------


def _reason_group(reason: str) -> str:
    """An error's reason with its numbers taken out, so that sizes do not split one reason into many."""
    return re.sub(r"\d+(?:[.,]\d+)*", "#", reason)


@dataclass
class BatchSummary:
    """What a run did (``to_dict`` is the command's last line)."""

    engine: str
    model_sha: str
    operating_point: str
    files: int = 0
    skipped: int = 0
    scored: int = 0
    errors: int = 0
    errors_held: int = 0
    flagged: int = 0
    grey_zone: int = 0
    pneumonia: int = 0
    subtypes: Counter = None  # subtype pattern -> films
    seconds: float = 0.0
    rows_in_results: int = 0
    audited: int = 0
    reasons: Counter = None

    def to_dict(self) -> dict:
        done = self.scored + self.errors
        return {
            "engine": self.engine, "files": self.files, "skipped": self.skipped, "scored": self.scored,
            "errors": self.errors, "errors_earlier": self.errors_held, "flagged": self.flagged,
            "grey_zone": self.grey_zone, "pneumonia": self.pneumonia,
            "subtype": dict(sorted((self.subtypes or {}).items())), "audited": self.audited,
            "rows_in_results": self.rows_in_results, "seconds": round(self.seconds, 3),
            "images_per_s": round(done / self.seconds, 2) if self.seconds > 0 and done else None,
            "errors_by_reason": dict(self.reasons.most_common()) if self.reasons else {},
            "model_sha": self.model_sha, "operating_point": self.operating_point,
        }

    def lines(self) -> list[str]:
        rate = self.to_dict()["images_per_s"]
        lines = [
            f"{self.files} files: {self.scored} scored, {self.errors} could not be used, {self.skipped} already in RESULTS"
            + (f" ({self.errors_held} of them could not be used)" if self.errors_held else ""),
            f"of those scored: {self.pneumonia} called pneumonia, {self.grey_zone} in the grey zone, "
            f"{self.flagged} flagged as not like the training X-rays (their calls are not meaningful)",
            f"{self.seconds:.1f} s" + (f", {rate:.1f} images/s" if rate else "") + f", engine {self.engine}",
        ]
        if self.subtypes:
            patterns = ", ".join(f"{count} {pattern}" for pattern, count in sorted(self.subtypes.items()))
            lines.insert(2, f"radiographic pattern of the pneumonia calls the gate passed (not a cause): {patterns}")
        for reason, count in (self.reasons or Counter()).most_common():
            lines.append(f"  {count} x {reason}")
        return lines


def run_batch(
    items: Sequence[SourceItem],
    engine,
    out: Path,
    settings: BatchSettings = BatchSettings(),
    trail=None,
    progress: bool = True,
) -> BatchSummary:
    """Scores every item not yet in ``out`` with ``engine`` and writes one row per item.

    Args:
        items: the source's files.
        engine: ``LocalEngine`` or ``batch_ray.RayEngine`` (``rows(items)`` yields one row per item,
            in any order; ``model_sha``, ``operating_point``, ``threshold``, ``subtype_sha``).
        out: the RESULTS folder.
        trail: an ``audit.AuditTrail`` to append each scored result to, or None.
        progress: draw a progress bar (tqdm) on stderr.

    Raises:
        BatchError: RESULTS cannot be used (see ``ResultsFolder``).
    """
    summary = BatchSummary(
        engine.name, engine.model_sha, engine.operating_point, files=len(items), reasons=Counter(), subtypes=Counter()
    )
    start = time.perf_counter()
    try:
        subtype_sha = getattr(engine, "subtype_sha", None)  # an engine written before the pattern has none
        with ResultsFolder(out, engine.model_sha, engine.operating_point, trail, subtype_sha) as folder:
            _run(items, engine, folder, settings, trail, progress, summary)
            summary.rows_in_results = len(folder.held)
    finally:
        engine.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _run(items, engine, folder: ResultsFolder, settings: BatchSettings, trail, progress: bool, summary: BatchSummary) -> None:
    """Skips what ``folder`` holds, scores the rest with ``engine``, commits parts (``run_batch``)."""
    from tqdm import tqdm

    todo = []
    for item in items:
        if folder.skip(item.name, item.read):
            summary.skipped += 1
            summary.errors_held += folder.held[item.name][1]
        else:
            todo.append(item)
    record = None if trail is None else _recorder(trail, engine.threshold, summary)
    wanted = {item.name for item in todo}
    bar = tqdm(total=len(todo), unit="img", file=sys.stderr, disable=not progress or not todo, smoothing=0.1)
    rows: list[dict] = []
    first_at = None
    try:
        for row in engine.rows(todo):
            if row["file"] not in wanted:
                continue  # a row twice, or of a file not asked for: never written
            wanted.discard(row["file"])
            rows.append(row)
            _count(summary, row)
            bar.update(1)
            first_at = first_at or time.monotonic()
            if len(rows) >= settings.part_rows or time.monotonic() - first_at >= settings.part_seconds:
                folder.commit(rows, record)
                rows, first_at = [], None
        for name in sorted(wanted):  # an engine that lost a file: its row says so, no gap
            row = error_row(name, None, "No result came back for this file; run the batch again to retry it.",
                            engine.model_sha, engine.operating_point)
            rows.append(row)
            _count(summary, row)
        if rows:
            folder.commit(rows, record)
    finally:
        bar.close()


def _count(summary: BatchSummary, row: dict) -> None:
    if row["error"] is not None:
        summary.errors += 1
        summary.reasons[_reason_group(row["error"])] += 1
        return
    summary.scored += 1
    summary.flagged += bool(row["ood"])
    summary.grey_zone += bool(row["grey_zone"])
    summary.pneumonia += row["label"] == "pneumonia"
    if row.get("subtype") is not None:
        summary.subtypes[row["subtype"]] += 1


def _recorder(trail, threshold: float, summary: BatchSummary) -> Callable[[list[dict]], list[int]]:
    """Appends a part's scored rows to the audit trail, as ``predict --audit`` records a result
    (``ResultRecord``: the image's SHA-256, never its name)."""
    from .audit import ResultRecord

    def record(rows: list[dict]) -> list[int]:
        records = [
            ResultRecord(
                image_sha256=row["sha256"], model_sha256=row["model_sha"], threshold=threshold,
                probability=row["probability"], label=row["label"], grey_zone=row["grey_zone"], source="cli",
                ood=row["ood"], ood_score=row["ood_score"], operating_point=row["operating_point"],
                logit=row.get("logit"), age_years=row.get("age_years"),
                subtype=row.get("subtype"), subtype_probability=row.get("subtype_probability"),
            )
            for row in rows if row["error"] is None
        ]
        ids = trail.record_results(records)
        summary.audited += len(ids)
        return ids

    return record

