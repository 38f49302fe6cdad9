"""The PACS workflow on top of the DICOMweb client (``pneumo_model.pacs``): scoring a study's
instances through the one pipeline, sending the result back as a structured report (and the
heat-map picture), and a DICOMweb query as a batch source.

The client knows nothing of the model; this module knows nothing of HTTP. The split keeps imports
one way: ``batch`` takes its DICOMweb source from here, and both take ``SourceItem`` from
``pneumo_model.sources``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import ConfigError, InvalidImageError
from .pacs import (
    DEFAULT_MODALITIES,
    Instance,
    PacsClient,
    PacsError,
    PacsNotFoundError,
    PacsStoreError,
    StudyQuery,
    _check_uid,
    _quiet_dicom,
    _report_header,
)
from .pipeline import DecodedImage
from .preprocessing import ImageLimits
from .sources import SourceItem, unexpected_reason

if TYPE_CHECKING:
    from .audit import AuditTrail
    from .explain import HeatmapScale
    from .operating_point import OperatingPoint
    from .prediction import Prediction, Predictor


# --- scoring a study -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class InstanceResult:
    """One instance's outcome: a prediction, or why there is none.

    Attributes:
        image: the decoded image (kept when asked, for the app to open it on its pages).
        error: the reason there is no prediction (not an image, a lateral view, unreadable, or a
            server fault), None when scored.
        retryable: the failure was the server's, and the instance can be tried again.
    """

    instance: Instance
    prediction: "Prediction | None" = None
    digest: str | None = None
    image: DecodedImage | None = None
    error: str | None = None
    retryable: bool = False

    def to_record(self) -> dict:
        """The ``pacs score`` JSON object: ``predict``'s fields and the instance's UIDs, or its
        UIDs and ``error``. ``file`` is the instance's SOP Instance UID (never a path or name)."""
        from .schema import PREDICTION_SCHEMA_VERSION

        if self.prediction is None:
            record = {"schema_version": PREDICTION_SCHEMA_VERSION, "file": self.instance.sop_uid, "error": self.error}
            if self.retryable:
                record["retryable"] = True
        else:
            record = self.prediction.to_record(self.instance.sop_uid)
            record["sha256"] = self.digest
        return {**record, **self.instance.uids()}


def _fetch(client: PacsClient, instance: Instance, limits: ImageLimits, decode: bool):
    """Retrieves (and decodes) one instance: (image or bytes, error, retryable). A decoder failure
    the package does not foresee is that instance's error (with the batch command's words), so one
    odd file cannot stop a study."""
    try:
        data = client.retrieve(instance, limits.max_bytes)
    except InvalidImageError as error:
        return None, str(error), False
    except PacsNotFoundError as error:
        return None, str(error), False
    except PacsError as error:
        return None, str(error), True
    if not decode:
        return data, None, False
    try:
        return DecodedImage.decode(data, limits), None, False
    except InvalidImageError as error:
        return None, str(error), False
    except Exception as error:  # noqa: BLE001 - a row with the reason, not a stopped study
        return None, unexpected_reason(error), False


def iter_retrieved(
    client: PacsClient, instances: Sequence[Instance], *, decode: bool = True, limits: ImageLimits = ImageLimits()
) -> Iterator[tuple[int, "DecodedImage | bytes | None", str | None, bool]]:
    """Retrieves ``instances`` (decoded through the one pipeline, or as their bytes), in order:
    ``(index, image or bytes or None, error, retryable)``.

    ``client.settings.workers`` retrievals run at once, at most 2 per worker ahead of the
    consumer: memory is bounded by that window, not by the study's size, and a fault mid-run
    leaves little fetched and unused.
    """
    workers = client.settings.workers
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pacs-retrieve") as pool:
        window: deque = deque()
        upcoming = iter(range(len(instances)))

        def submit_next() -> None:
            index = next(upcoming, None)
            if index is not None:
                window.append((index, pool.submit(_fetch, client, instances[index], limits, decode)))

        for _ in range(2 * workers):
            submit_next()
        while window:
            index, future = window.popleft()
            value, error, retryable = future.result()
            submit_next()
            yield index, value, error, retryable


def score_instances(
    client: PacsClient,
    predictor: "Predictor",
    instances: Sequence[Instance],
    *,
    keep_images: bool = False,
    batch_size: int = 16,
    limits: ImageLimits = ImageLimits(),
    on_result: Callable[[InstanceResult], None] | None = None,
) -> list[InstanceResult]:
    """Retrieves and scores ``instances`` through the one pipeline, in order.

    Retrieval (``iter_retrieved``) runs while the model scores what has arrived, ``batch_size``
    images per forward pass. An instance that is not an image or is a lateral view is listed
    with the reason and not retrieved; one that cannot be retrieved or decoded is listed with
    the reason (``retryable`` for a server fault) and the rest is still scored. ``on_result`` is
    called with each result as it is final (for a progress bar).
    """
    results: list[InstanceResult | None] = [None] * len(instances)

    def done(index: int, result: InstanceResult) -> None:
        results[index] = result
        if on_result is not None:
            on_result(result)

    wanted = []
    for index, instance in enumerate(instances):
        if instance.skip_reason:
            done(index, InstanceResult(instance, error=instance.skip_reason))
        else:
            wanted.append(index)
    pending: list[tuple[int, DecodedImage]] = []

    def flush() -> None:
        if not pending:
            return
        predictions = predictor.calls([image for _, image in pending])
        for (index, image), prediction in zip(pending, predictions):
            done(index, InstanceResult(
                instances[index], prediction, image.digest, image if keep_images else None,
            ))
        pending.clear()

    for position, image, error, retryable in iter_retrieved(client, [instances[i] for i in wanted], limits=limits):
        index = wanted[position]
        if image is None:
            done(index, InstanceResult(instances[index], error=error, retryable=retryable))
            continue
        pending.append((index, image))
        if len(pending) >= batch_size:
            flush()
    flush()
    return [result for result in results if result is not None]


def exit_status(results: Iterable[InstanceResult]) -> int:
    """``predict``'s codes: 0 every instance scored, 2 some not scored (not an image, a lateral
    view, unreadable), 1 a server fault left some unretrieved."""
    results = list(results)
    if any(result.retryable for result in results):
        return 1
    return 2 if any(result.prediction is None for result in results) else 0


def format_counts(results: Sequence[InstanceResult]) -> str:
    """One line for people: how many were scored, flagged, skipped, failed."""
    scored = [r for r in results if r.prediction is not None]
    skipped = [r for r in results if r.prediction is None and not r.retryable]
    failed = [r for r in results if r.retryable]
    parts = [f"{len(scored)} of {len(results)} images scored"]
    if scored:
        parts.append(f"{sum(r.prediction.grey_zone for r in scored)} in the grey zone")
        parts.append(f"{sum(bool(r.prediction.ood) for r in scored)} flagged by the gate")
    if skipped:
        parts.append(f"{len(skipped)} not scored (listed with the reason)")
    if failed:
        parts.append(f"{len(failed)} not retrieved (server fault; retry them)")
    return ", ".join(parts) + "."


# --- sending the result back -----------------------------------------------------------------


@dataclass(frozen=True)
class SentReport:
    """A structured report on the PACS: its SOP Instance UID, whether it was already there (sent
    before for the same image, operating point and model; not sent again), and the UID of the
    heat-map picture sent beside it, if one was asked for (or why it could not be sent)."""

    sr_uid: str
    already_on_server: bool
    capture_uid: str | None = None
    capture_error: str | None = None  # the report is there, its picture could not be sent (send again)


def send_report(
    client: PacsClient, instance: Instance, prediction: "Prediction", point: "OperatingPoint", heatmap=None
) -> SentReport:
    """Sends ``prediction`` of ``instance`` back as a Comprehensive SR in its study (STOW-RS),
    unless the PACS already holds the report of this image at this operating point; with
    ``heatmap`` ((h, w, 3) uint8 RGB, the Grad-CAM overlay at the image's geometry), also a
    Secondary Capture of it with "NOT FOR DIAGNOSIS" burned in, once likewise.

    Raises:
        PacsStoreError: the PACS did not store it (the result is unchanged; send again later).
        PacsError: the PACS cannot be reached or refused.
    """
    from . import __version__
    from .structured_report import build_heatmap_capture, build_report, capture_uids, report_uids

    uids = report_uids(instance.sop_uid, point.id, prediction.model_sha)
    header = None
    already = client.instance_exists(instance.study_uid, uids.sop_uid)
    if not already:
        header = _built(_report_header, client.instance_metadata(instance))
        client.store(_built(build_report, header, prediction, point, __version__))
    if heatmap is None:
        return SentReport(uids.sop_uid, already_on_server=already)
    capture = capture_uids(instance.sop_uid, point.id, prediction.model_sha).sop_uid
    try:  # the report is on the PACS now: a failed picture must not hide that
        if not client.instance_exists(instance.study_uid, capture):
            header = header if header is not None else _built(_report_header, client.instance_metadata(instance))
            client.store(_built(build_heatmap_capture, header, heatmap, prediction, point, __version__))
    except PacsError as error:
        return SentReport(uids.sop_uid, already_on_server=already, capture_error=str(error))
    return SentReport(uids.sop_uid, already_on_server=already, capture_uid=capture)


def _built(build: Callable, header, *args):
    """``build(header, *args)``, quiet (see ``_quiet_dicom``), its failures a plain message that
    quotes no value of the header."""
    try:
        with _quiet_dicom():
            return build(header, *args)
    except (ValueError, TypeError, AttributeError, KeyError):
        raise PacsStoreError(
            "The image's header has values DICOM does not allow, so the report could not be built. The result is kept."
        ) from None


def heatmap_picture(predictor: "Predictor", image: DecodedImage, scale: "HeatmapScale"):
    """The Grad-CAM overlay of ``image`` on the fixed ``scale``, at the image's own size, as the
    Explain page draws it: (h, w, 3) uint8 RGB."""
    from .explain import GradCam

    raw = GradCam(predictor.model, predictor.metadata.gradcam_layer).raw(image.model_input(predictor.input_size))
    return scale.overlay(image.pixels, raw)


def record_sent(trail: "AuditTrail", result_id: int, sent: SentReport, point: "OperatingPoint", subject: str | None = None) -> int | None:
    """Notes in the audit trail that the report of result ``result_id`` is on the PACS (its
    generated UID and the operating point; nothing about the patient), once per report UID."""
    if any(event["detail"].get("sr_uid") == sent.sr_uid for event in trail.events("sr_sent")):
        return None
    extra = {} if sent.capture_uid is None else {"capture_uid": sent.capture_uid}
    return trail.record_event(
        "sr_sent", subject=subject, result_id=result_id, sr_uid=sent.sr_uid, operating_point=point.id,
        already_on_server=sent.already_on_server, **extra,
    )


# --- a DICOMweb query as a batch source ----------------------------------------------------------

SOURCE_PREFIX = "dicomweb:"
_SOURCE_KEYS = ("date-from", "date-to", "modality", "accession", "body-part", "study", "limit")


def parse_source(source: str) -> tuple[StudyQuery, str | None]:
    """``dicomweb:?date-from=YYYYMMDD&date-to=YYYYMMDD&modality=CR,DX&accession=N&body-part=CHEST``
    (every key optional), or ``dicomweb:?study=UID``: the query, and the one study asked for.

    Raises:
        ConfigError: not such a source, an unknown key, or a value ``StudyQuery`` refuses.
    """
    from urllib.parse import parse_qs

    if not source.startswith(SOURCE_PREFIX):
        raise ConfigError(f"A DICOMweb source starts with {SOURCE_PREFIX}")
    text = source[len(SOURCE_PREFIX):].lstrip("?")
    try:
        values = parse_qs(text, keep_blank_values=False, strict_parsing=bool(text), max_num_fields=len(_SOURCE_KEYS))
    except ValueError:
        raise ConfigError(
            "A DICOMweb source reads like dicomweb:?date-from=20261101&modality=CR,DX (keys: "
            + ", ".join(_SOURCE_KEYS) + ")."
        ) from None
    unknown = sorted(set(values) - set(_SOURCE_KEYS))
    if unknown:
        raise ConfigError(f"Unknown key '{unknown[0]}' in the DICOMweb source; the keys are {', '.join(_SOURCE_KEYS)}.")
    one = {key: value[-1] for key, value in values.items()}
    study = one.get("study")
    if study is not None:
        _check_uid(study, "study")
    try:
        limit = int(one.get("limit", 10_000))
    except ValueError:
        raise ConfigError("The DICOMweb source's limit must be a whole number of studies.") from None
    query = StudyQuery(
        date_from=one.get("date-from"), date_to=one.get("date-to"),
        modalities=tuple(one.get("modality", ",".join(DEFAULT_MODALITIES)).split(",")),
        accession_number=one.get("accession"), body_part=one.get("body-part"), limit=limit,
    )
    return query, study


def source_name(instance: Instance) -> str:
    """What a batch's ``file`` column holds for a PACS image: its three UIDs, nothing about the patient."""
    return f"{SOURCE_PREFIX}{instance.study_uid}/{instance.series_uid}/{instance.sop_uid}"


def source_items(client: PacsClient, source: str, limits: ImageLimits = ImageLimits()) -> list:
    """The batch items (``pneumo_model.sources.SourceItem``) of a DICOMweb source: every instance of
    every study that matches, each read by one WADO-RS retrieval when the batch gets to it. An
    instance that is not scored (not an image, a lateral view) or that the server fails to send is
    a row with the reason, as an unreadable file is; a server fault is tried again on a rerun.

    Raises:
        ConfigError: the source cannot be read (``parse_source``).
        PacsError: the server cannot be searched.
    """
    query, study = parse_source(source)
    studies = [study] if study else [found.study_uid for found in client.query_studies(query)]
    items = []
    for study_uid in studies:
        for instance in client.instances(study_uid):
            items.append(SourceItem(source_name(instance), _reader(client, instance, limits)))
    return items


def _reader(client: PacsClient, instance: Instance, limits: ImageLimits) -> Callable[[], bytes]:
    def read() -> bytes:
        if instance.skip_reason:
            raise InvalidImageError(f"Not scored: {instance.skip_reason}.")
        try:
            return client.retrieve(instance, limits.max_bytes)
        except PacsError as error:
            raise InvalidImageError(f"Not retrieved: {error}") from None

    return read
