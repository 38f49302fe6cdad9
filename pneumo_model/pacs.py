"""The hospital's PACS over DICOMweb: search (QIDO-RS), retrieve (WADO-RS), store (STOW-RS).

This module is the transport client; scoring a study, sending results back and the batch source
are the workflow on top of it (``pneumo_model.pacs_workflow``). The client is ``dicomweb-client``'s, on a ``requests`` session that carries the credentials and
the TLS settings (``PacsSettings``, read from the environment or Streamlit's secrets, never from a
page). An instance is retrieved in the transfer syntax it was stored in (``transfer-syntax=*``),
as the bytes of its DICOM file, and goes through the one pipeline (``DecodedImage.decode``), so
the same film gets the same probability, gate and SHA-256 whether it was uploaded or retrieved.

What never leaves this module: patient names and ids (read only when
``PacsSettings.show_patient_identity`` allows, and then only for display), and request URLs (a
QIDO query carries the accession number): errors name the server by its base URL and say what
failed, and the debug records of ``dicomweb_client`` and ``urllib3`` (which print URLs) are
dropped by a filter while a client exists.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ConfigError, InvalidImageError, PneumoError
from .preprocessing import ImageLimits

ENVIRONMENT = {
    "url": "PNEUMO_DICOMWEB_URL",
    "username": "PNEUMO_DICOMWEB_USER",
    "password": "PNEUMO_DICOMWEB_PASSWORD",
    "token": "PNEUMO_DICOMWEB_TOKEN",
    "ca_file": "PNEUMO_DICOMWEB_CA_FILE",
    "verify_tls": "PNEUMO_DICOMWEB_VERIFY_TLS",
    "timeout_s": "PNEUMO_DICOMWEB_TIMEOUT_S",
    "show_patient_identity": "PNEUMO_DICOMWEB_SHOW_PATIENT",
}
DEFAULT_MODALITIES = ("CR", "DX")
# ViewPosition values of a lateral film (DICOM defines LL and RL; LAT is common in practice).
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL"})
PIXEL_DATA = "7FE00010"
_ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
# Images are fetched without HTTP compression: a server that gzips each file spends more time
# compressing than the network saves (Orthanc on localhost: 3 images/s gzipped, 68 uncompressed,
# 1400 x 1400 px), and JPEG pixel data does not compress anyway.
_RETRIEVE_HEADERS = {"Accept": _ACCEPT_DICOM, "Accept-Encoding": "identity"}
_CODE_STRING = re.compile(r"^[A-Z0-9_ ]{1,16}$")
_DATE = re.compile(r"^\d{8}$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class PacsError(PneumoError):
    """The PACS cannot be reached or refused a request; the message says which and what to do."""


class PacsUnreachableError(PacsError):
    """No answer from the server (refused, timed out, name or TLS failure): a retry may work."""


class PacsAuthError(PacsError):
    """The server refused the credentials (HTTP 401) or the access (403)."""


class PacsNotFoundError(PacsError):
    """The study or instance is not on the server."""


class PacsStoreError(PacsError):
    """The server did not store what was sent (STOW-RS); nothing is lost, it can be sent again."""


@dataclass(frozen=True)
class PacsSettings:
    """How to reach the DICOMweb server. Credentials are settings, never page input, and are
    never printed (they are left out of ``repr``).

    Attributes:
        url: the DICOMweb root, e.g. ``https://pacs.example.org/dicom-web``.
        username, password: HTTP basic authentication (both or neither).
        token: a bearer token instead (not with basic authentication).
        ca_file: a PEM file of the certificate authorities to trust (a hospital's own CA);
            without it the system's are used.
        verify_tls: certificate checking, on unless an administrator turns it off.
        connect_timeout_s, read_timeout_s: how long to wait for the connection and for each answer.
        show_patient_identity: whether the app may show patient names and ids (never stored).
        workers: retrievals at once when scoring a study.
    """

    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    ca_file: Path | None = None
    verify_tls: bool = True
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    show_patient_identity: bool = False
    workers: int = 4

    def __post_init__(self):
        url = (self.url or "").strip().rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"The PACS address must be an http:// or https:// URL of the DICOMweb root (set {ENVIRONMENT['url']}); "
                "it is not."
            )
        if parts.username or parts.password or parts.query:
            raise ConfigError(
                "The PACS address must not carry credentials or a query; give the user name and password in "
                f"{ENVIRONMENT['username']} and {ENVIRONMENT['password']}."
            )
        object.__setattr__(self, "url", url)
        if bool(self.username) != bool(self.password):
            raise ConfigError(
                f"Give both {ENVIRONMENT['username']} and {ENVIRONMENT['password']} for the PACS, or neither."
            )
        if self.token and self.username:
            raise ConfigError("Give the PACS either a user name and password or a token, not both.")
        if self.ca_file is not None:
            object.__setattr__(self, "ca_file", Path(self.ca_file))
            if not self.ca_file.is_file():
                raise ConfigError(f"The PACS certificate authority file {self.ca_file} does not exist.")
        for name in ("connect_timeout_s", "read_timeout_s"):
            if not 0 < float(getattr(self, name)) <= 600:
                raise ConfigError(f"The PACS {name.replace('_s', '').replace('_', ' ')} must be between 0 and 600 s.")
        if not 1 <= int(self.workers) <= 16:
            raise ConfigError("The PACS workers setting must be between 1 and 16.")

    @property
    def server(self) -> str:
        """The server as messages name it: scheme, host and port, no path (a path can be long)."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    @classmethod
    def from_mapping(cls, values: Mapping[str, object], url: str | None = None) -> "PacsSettings":
        """Settings from a mapping with this class's field names (Streamlit's ``[pacs]`` secrets),
        or from the environment's names (``ENVIRONMENT``); ``url`` overrides.

        Raises:
            ConfigError: no URL, or a value that cannot work.
        """
        def get(name: str):
            value = values.get(name, values.get(ENVIRONMENT.get(name, name)))
            return None if value is None or value == "" else value

        address = url or get("url")
        if not address:
            raise ConfigError(
                f"No PACS is configured: set {ENVIRONMENT['url']} to the DICOMweb root (or give --url)."
            )
        timeout = get("timeout_s")
        try:
            timeout_s = None if timeout is None else float(timeout)
        except ValueError:
            raise ConfigError(f"{ENVIRONMENT['timeout_s']} must be a number of seconds.") from None
        return cls(
            url=str(address),
            username=get("username"),
            password=get("password"),
            token=get("token"),
            ca_file=None if get("ca_file") is None else Path(str(get("ca_file"))),
            verify_tls=_flag(get("verify_tls"), True, ENVIRONMENT["verify_tls"]),
            read_timeout_s=cls.read_timeout_s if timeout_s is None else timeout_s,
            connect_timeout_s=cls.connect_timeout_s if timeout_s is None else min(timeout_s, cls.connect_timeout_s),
            show_patient_identity=_flag(get("show_patient_identity"), False, ENVIRONMENT["show_patient_identity"]),
        )

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ, url: str | None = None) -> "PacsSettings":
        """Settings from the ``PNEUMO_DICOMWEB_*`` variables (``ENVIRONMENT``)."""
        return cls.from_mapping({name: environ.get(variable) for name, variable in ENVIRONMENT.items()}, url=url)


def _flag(value, default: bool, name: str) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} is 1 or 0 (true or false); got something else.")


@dataclass(frozen=True)
class StudyQuery:
    """What to search for; every field optional. Dates are DICOM dates, ``YYYYMMDD``."""

    date_from: str | None = None
    date_to: str | None = None
    modalities: tuple[str, ...] = DEFAULT_MODALITIES
    body_part: str | None = None
    accession_number: str | None = None
    limit: int = 200

    def __post_init__(self):
        for name in ("date_from", "date_to"):
            value = getattr(self, name)
            if value is not None and not (_DATE.match(value) and _valid_date(value)):
                raise ConfigError(f"The {name.replace('_', ' ')} must be a date as YYYYMMDD; got '{value}'.")
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise ConfigError("The date from is after the date to: nothing can match.")
        modalities = tuple(dict.fromkeys(m.strip().upper() for m in self.modalities if m.strip()))
        if not modalities or not all(_CODE_STRING.match(m) for m in modalities):
            raise ConfigError("Modalities are DICOM codes such as CR and DX, separated by commas.")
        object.__setattr__(self, "modalities", modalities)
        if self.body_part is not None:
            part = self.body_part.strip().upper()
            if not _CODE_STRING.match(part):
                raise ConfigError("A body part is a DICOM code such as CHEST (letters, digits, at most 16).")
            object.__setattr__(self, "body_part", part)
        if self.accession_number is not None:
            number = self.accession_number.strip()
            if not number or len(number) > 16 or any(c in number for c in "*?\\"):
                raise ConfigError("An accession number has 1 to 16 characters and no wildcard (* ? \\).")
            object.__setattr__(self, "accession_number", number)
        if not 1 <= int(self.limit) <= 10_000:
            raise ConfigError("The study limit must be between 1 and 10000.")


def _valid_date(text: str) -> bool:
    from datetime import datetime

    try:
        datetime.strptime(text, "%Y%m%d")
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Study:
    """A study found on the server. ``patient_name`` and ``patient_id`` are None unless the
    settings allow showing them; ``to_record`` never includes them."""

    study_uid: str
    study_date: str | None
    accession_number: str | None
    modalities: tuple[str, ...]
    images: int | None
    description: str | None = None
    patient_name: str | None = field(default=None, repr=False)
    patient_id: str | None = field(default=None, repr=False)

    def to_record(self) -> dict:
        """The ``pacs query`` JSON object (no patient identity, ever)."""
        return {
            "study_uid": self.study_uid,
            "study_date": self.study_date,
            "accession_number": self.accession_number,
            "modalities": list(self.modalities),
            "images": self.images,
        }


@dataclass(frozen=True)
class Instance:
    """One instance of a study, from the study's WADO-RS metadata (UIDs and the few tags that
    decide whether it can be scored; nothing about the patient)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    modality: str | None
    view_position: str | None
    frames: int
    has_pixels: bool
    series_number: int | None = None
    instance_number: int | None = None

    @property
    def skip_reason(self) -> str | None:
        """Why this instance is not scored (not an image, a lateral view), or None."""
        if not self.has_pixels:
            return f"not an image ({_sop_class_name(self.sop_class_uid)}); nothing to score"
        if (self.view_position or "").upper() in LATERAL_VIEWS:
            return (
                f"a lateral view (ViewPosition {self.view_position}); the model reads frontal films only"
            )
        return None

    def uids(self) -> dict:
        return {"study_uid": self.study_uid, "series_uid": self.series_uid, "sop_instance_uid": self.sop_uid}


def _sop_class_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name if uid else ""
    return name if name and name != uid else f"SOP class {uid or 'unknown'}"


def _value(item: Mapping, tag: str):
    """The first value of a DICOM JSON attribute, or None."""
    element = item.get(tag) or {}
    values = element.get("Value") or []
    if not values:
        return None
    value = values[0]
    if isinstance(value, dict):  # a person name
        return value.get("Alphabetic")
    return value


def _values(item: Mapping, tag: str) -> list:
    element = item.get(tag) or {}
    return list(element.get("Value") or [])


class _DropAll(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


@contextlib.contextmanager
def _quiet_dicom():
    """pydicom's warnings and log records while a header from the PACS is read or copied: they
    quote the values they complain of (a malformed birth date), which must reach no log."""
    logger, drop = logging.getLogger("pydicom"), _DropAll()
    logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.removeFilter(drop)


# The Type 2 elements a report copies from the image's header: present (empty if unknown) and
# valid, or highdicom cannot build it. Dates and times that DICOM does not allow are emptied.
_COPIED_ELEMENTS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
                    "AccessionNumber", "ReferringPhysicianName")
_VALID_VALUE = {
    "DA": re.compile(r"^\d{8}$"),
    "TM": re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$"),
}


def _report_header(header):
    """A copy of the image's header fit for highdicom: the copied Type 2 elements present, and a
    date or time DICOM does not allow emptied (the PACS keeps its own record as it is)."""
    import copy

    header = copy.deepcopy(header)
    for keyword in _COPIED_ELEMENTS:
        if keyword not in header:
            setattr(header, keyword, "")
            continue
        element = header[keyword]
        pattern = _VALID_VALUE.get(element.VR)
        if pattern is not None and element.value not in (None, "") and not pattern.match(str(element.value).strip()):
            element.value = ""
    return header


class _NoUrls(logging.Filter):
    """Drops the debug and info records of the HTTP libraries: they print request URLs, and a
    QIDO URL carries the accession number."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


_NO_URLS = _NoUrls()
_QUIET_LOGGERS = ("dicomweb_client", "dicomweb_client.web", "urllib3.connectionpool")


class PacsClient:
    """A DICOMweb server, as ``settings`` says to reach it.

    Every request answers within the settings' timeouts or raises a ``PacsError`` whose message
    names the server (scheme, host, port) and what failed, never the request's URL.
    """

    def __init__(self, settings: PacsSettings):
        import requests
        from dicomweb_client.api import DICOMwebClient

        self.settings = settings
        for name in _QUIET_LOGGERS:
            logger = logging.getLogger(name)
            if _NO_URLS not in logger.filters:
                logger.addFilter(_NO_URLS)
        session = requests.Session()
        session.trust_env = False  # no proxy from the environment: the PACS is reached directly
        if settings.username:
            session.auth = (settings.username, settings.password)
        elif settings.token:
            session.headers["Authorization"] = f"Bearer {settings.token}"
        session.verify = str(settings.ca_file) if settings.ca_file and settings.verify_tls else settings.verify_tls
        self._session = session
        self._timeout = (settings.connect_timeout_s, settings.read_timeout_s)
        self._client = DICOMwebClient(url=settings.url, session=session, timeout=self._timeout)
        self._client.set_http_retry_params(retry=False)

    # --- errors ------------------------------------------------------------------------

    def _fault(self, error: Exception, what: str, uid: str | None = None) -> PacsError:
        """A plain message for a failed request (never its URL)."""
        import requests

        server = self.settings.server
        if isinstance(error, requests.exceptions.SSLError):
            return PacsUnreachableError(
                f"The PACS at {server} could not be reached securely while {what}: its certificate is not "
                f"trusted. Give the hospital's certificate authority in {ENVIRONMENT['ca_file']}."
            )
        if isinstance(error, requests.exceptions.Timeout):
            return PacsUnreachableError(
                f"The PACS at {server} did not answer in time while {what}; try again, or raise "
                f"{ENVIRONMENT['timeout_s']} (now {self.settings.read_timeout_s:g} s)."
            )
        if isinstance(error, requests.exceptions.ConnectionError):
            return PacsUnreachableError(
                f"The PACS at {server} cannot be reached while {what} (the connection was refused or dropped). "
                "Check that the server is running and the address is right, then try again."
            )
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status == 401:
            return PacsAuthError(
                f"The PACS at {server} refused the credentials while {what}. Check "
                f"{ENVIRONMENT['username']} and {ENVIRONMENT['password']} (or {ENVIRONMENT['token']})."
            )
        if status == 403:
            return PacsAuthError(f"The PACS at {server} does not allow this account to do this ({what}).")
        if status == 404:
            thing = f"{uid}" if uid else "what was asked for"
            return PacsNotFoundError(f"The PACS at {server} has no {thing} ({what}).")
        if status is not None:
            return PacsError(f"The PACS at {server} answered HTTP {status} while {what}; try again later.")
        return PacsError(f"The PACS at {server} gave an answer that could not be read while {what}.")

    def _call(self, what: str, function: Callable, *args, uid: str | None = None, **kwargs):
        import requests

        try:
            return function(*args, **kwargs)
        except (requests.exceptions.RequestException, ValueError) as error:
            raise self._fault(error, what, uid) from None

    # --- query ---------------------------------------------------------------------------

    def query_studies(self, query: StudyQuery = StudyQuery()) -> list[Study]:
        """The studies that match, newest first (one QIDO-RS search per modality, merged), at
        most ``query.limit``: when more match, which ones come back is the server's choice, so a
        caller that gets ``limit`` studies should say that there may be more (narrow the dates).

        Raises:
            PacsError: the server cannot be reached or refused the search.
        """
        fields = ["StudyDate", "AccessionNumber", "ModalitiesInStudy", "NumberOfStudyRelatedInstances",
                  "StudyDescription", "StudyInstanceUID"]
        if self.settings.show_patient_identity:
            fields += ["PatientName", "PatientID"]
        filters: dict[str, str] = {}
        if query.date_from or query.date_to:
            filters["StudyDate"] = f"{query.date_from or ''}-{query.date_to or ''}"
        if query.accession_number:
            filters["AccessionNumber"] = query.accession_number
        found: dict[str, Study] = {}
        for modality in query.modalities:
            items = self._call(
                "searching for studies", self._client.search_for_studies,
                search_filters={**filters, "ModalitiesInStudy": modality}, fields=fields, limit=query.limit,
            )
            for item in items:
                study = self._study(item)
                if study is not None:
                    found.setdefault(study.study_uid, study)
        studies = list(found.values())
        if query.body_part:
            studies = [study for study in studies if self._has_body_part(study.study_uid, query.body_part)]
        studies.sort(key=lambda study: (study.study_date or "", study.study_uid), reverse=True)
        return studies[: query.limit]

    def _study(self, item: Mapping) -> Study | None:
        uid = _value(item, "0020000D")
        if not uid:
            return None
        images = _value(item, "00201208")
        allowed = self.settings.show_patient_identity
        return Study(
            study_uid=str(uid),
            study_date=_value(item, "00080020"),
            accession_number=_value(item, "00080050"),
            modalities=tuple(str(m) for m in _values(item, "00080061")),
            images=None if images is None else int(images),
            description=_value(item, "00081030"),
            patient_name=str(_value(item, "00100010") or "") or None if allowed else None,
            patient_id=str(_value(item, "00100020") or "") or None if allowed else None,
        )

    def _has_body_part(self, study_uid: str, body_part: str) -> bool:
        items = self._call(
            "searching the study's series", self._client.search_for_series,
            study_instance_uid=study_uid, search_filters={"BodyPartExamined": body_part}, uid=f"study {study_uid}",
        )
        return bool(items)

    def instances(self, study_uid: str) -> list[Instance]:
        """The study's instances (from its WADO-RS metadata), in series and instance order.

        Raises:
            ConfigError: ``study_uid`` is not a UID.
            PacsNotFoundError: no such study.
            PacsError: the server cannot be reached or refused.
        """
        _check_uid(study_uid, "study")
        items = self._call(
            "reading the study's list of images", self._client.retrieve_study_metadata, study_uid,
            uid=f"study {study_uid}",
        )
        if not items:
            raise PacsNotFoundError(f"The PACS at {self.settings.server} has no study {study_uid}.")
        instances = [self._instance(item, study_uid) for item in items]
        instances = [instance for instance in instances if instance is not None]
        return sorted(instances, key=lambda i: (i.series_number or 0, i.series_uid, i.instance_number or 0, i.sop_uid))

    @staticmethod
    def _instance(item: Mapping, study_uid: str) -> Instance | None:
        sop_uid, series_uid = _value(item, "00080018"), _value(item, "0020000E")
        if not sop_uid or not series_uid:
            return None
        frames = _value(item, "00280008")
        try:
            frames = int(frames) if frames is not None else 1
        except (TypeError, ValueError):
            frames = 1
        series_number, instance_number = _value(item, "00200011"), _value(item, "00200013")
        return Instance(
            study_uid=str(_value(item, "0020000D") or study_uid),
            series_uid=str(series_uid),
            sop_uid=str(sop_uid),
            sop_class_uid=str(_value(item, "00080016") or ""),
            modality=_value(item, "00080060"),
            view_position=_value(item, "00185101"),
            frames=frames,
            # Some servers leave encapsulated pixel data out of the metadata: an image module
            # (rows and columns) says there are pixels too.
            has_pixels=PIXEL_DATA in item or ("00280010" in item and "00280011" in item),
            series_number=_int_or_none(series_number),
            instance_number=_int_or_none(instance_number),
        )

    def study_views(self, study_uid: str) -> tuple[str, ...]:
        """The views (``ViewPosition``: AP, PA, LL...) of the study's images, sorted, each once
        (one QIDO-RS instance search)."""
        items = self._call(
            "reading the study's views", self._client.search_for_instances,
            study_instance_uid=study_uid, fields=["00185101"], uid=f"study {study_uid}",
        )
        return tuple(sorted({str(view) for view in (_value(item, "00185101") for item in items) if view}))

    def instance_exists(self, study_uid: str, sop_uid: str) -> bool:
        """Whether the study holds an instance with this SOP Instance UID (QIDO-RS)."""
        items = self._call(
            "checking what the study already holds", self._client.search_for_instances,
            study_instance_uid=study_uid, search_filters={"SOPInstanceUID": sop_uid}, uid=f"study {study_uid}",
        )
        return any(_value(item, "00080018") == sop_uid for item in items)

    def instance_metadata(self, instance: Instance):
        """The instance's data set without its pixels (a ``pydicom.Dataset`` from the WADO-RS
        metadata): what a structured report copies its patient and study modules from."""
        from pydicom.dataset import Dataset

        item = self._call(
            "reading the image's header", self._client.retrieve_instance_metadata,
            instance.study_uid, instance.series_uid, instance.sop_uid, uid=f"instance {instance.sop_uid}",
        )
        if isinstance(item, list):  # a server that answers with a list of one
            item = item[0] if item else {}
        try:
            with _quiet_dicom():  # pydicom's warnings on odd values quote them (a birth date...)
                return Dataset.from_json({tag: value for tag, value in item.items() if "BulkDataURI" not in value})
        except (ValueError, TypeError, KeyError, AttributeError):
            raise PacsError(
                f"The PACS at {self.settings.server} sent an image header that could not be read (reading the image's header)."
            ) from None

    # --- retrieve and store ----------------------------------------------------------------

    def retrieve(self, instance: Instance, max_bytes: int = ImageLimits().max_bytes) -> bytes:
        """The instance's DICOM file, as stored (WADO-RS, ``transfer-syntax=*``).

        Raises:
            InvalidImageError: the file is over ``max_bytes`` (nothing more is read).
            PacsError: the server cannot be reached, refused, or sent something unreadable.
        """
        import requests

        url = (
            f"{self.settings.url}/studies/{instance.study_uid}/series/{instance.series_uid}"
            f"/instances/{instance.sop_uid}"
        )
        what = "retrieving an image"
        try:
            with self._session.get(url, headers=_RETRIEVE_HEADERS, stream=True, timeout=self._timeout) as response:
                response.raise_for_status()
                body = bytearray()
                for chunk in response.iter_content(chunk_size=1 << 20):
                    body += chunk
                    if len(body) > max_bytes + 64 * 1024:  # room for the multipart envelope
                        raise InvalidImageError(
                            f"The image is larger than {max_bytes // 2**20} MB, the most this software reads; "
                            "it was not retrieved."
                        )
                content_type = response.headers.get("Content-Type", "")
        except requests.exceptions.RequestException as error:
            raise self._fault(error, what, f"instance {instance.sop_uid}") from None
        data = _dicom_part(bytes(body), content_type)
        if data is None:
            raise PacsError(f"The PACS at {self.settings.server} sent an image that could not be read ({what}).")
        return data

    def store(self, dataset) -> None:
        """Stores one data set in its study (STOW-RS).

        Raises:
            PacsStoreError: it was not stored: refused (by status, by a failure in the answer, or for
                want of write access) or the server could not be reached; nothing was changed.
        """
        import requests

        try:
            answer = self._client.store_instances([dataset], study_instance_uid=dataset.StudyInstanceUID)
        except requests.exceptions.HTTPError as error:
            status = getattr(error.response, "status_code", None)
            if status in (401, 403):
                raise PacsStoreError(
                    f"{self._fault(error, 'sending the report')} Storing needs write access on the PACS; ask its "
                    "administrator. The result is kept; send it again later."
                ) from None
            raise PacsStoreError(
                f"The PACS at {self.settings.server} did not store the report (HTTP {status}). The result is kept; "
                "send it again later."
            ) from None
        except requests.exceptions.RequestException as error:
            fault = self._fault(error, "sending the report")
            raise PacsStoreError(f"{fault} The result is kept; send it again later.") from None
        except (ValueError, KeyError, TypeError, AttributeError):  # an answer dicomweb-client could not read
            raise PacsStoreError(
                f"The PACS at {self.settings.server} gave an answer to the report that could not be read; whether it "
                "was stored is not known. The result is kept; send it again (a report already there is not sent twice)."
            ) from None
        failed = getattr(answer, "FailedSOPSequence", None) if answer is not None else None
        if failed:
            reason = getattr(failed[0], "FailureReason", None)
            raise PacsStoreError(
                f"The PACS at {self.settings.server} refused the report (failure reason {reason}). The result is "
                "kept; send it again once the PACS accepts it."
            )


def _int_or_none(value) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _check_uid(uid: str, what: str) -> None:
    if not isinstance(uid, str) or not _UID.match(uid) or len(uid) > 64:
        raise ConfigError(f"The {what} UID must be digits separated by dots (at most 64 characters).")


def _dicom_part(body: bytes, content_type: str) -> bytes | None:
    """The one DICOM file in a WADO-RS answer (``multipart/related``, or a bare
    ``application/dicom`` body from a server that does not wrap it)."""
    if content_type.startswith("application/dicom"):
        return body or None
    header = Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        return None
    delimiter = b"--" + boundary.encode("latin-1")
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):  # the closing delimiter
            break
        head, separator, content = part.partition(b"\r\n\r\n")
        if not separator:
            continue
        if content.endswith(b"\r\n"):
            content = content[:-2]
        if content:
            return content
    return None
