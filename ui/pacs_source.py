"""The PACS as a worklist source beside file upload: search studies, retrieve one and score it, send a
result back as a DICOM structured report.

The server's settings come from the ``[pacs]`` section of ``.streamlit/secrets.toml`` or, without
it, from the ``PNEUMO_DICOMWEB_*`` environment variables (``pneumo_model.pacs.ENVIRONMENT``); never
from the page. Patient names and ids are shown only when the settings allow it, and are kept in
this tab's session only (never written, logged or put in the audit trail). A retrieved study
becomes the worklist's list of files: each image is named by its UIDs and goes through the same
scoring, opening and verdict as an uploaded file.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

import pandas as pd
import streamlit as st

from pneumo_model.errors import ConfigError, PneumoError
from pneumo_model.pacs import (
    DEFAULT_MODALITIES,
    ENVIRONMENT,
    Instance,
    PacsClient,
    PacsError,
    PacsSettings,
    Study,
    StudyQuery,
)
from pneumo_model.pacs_workflow import iter_retrieved, record_sent, send_report
from pneumo_model.paths import bytes_sha256

from . import audit
from .markup import plain

STUDIES_KEY = "pacs_studies"  # the last search's studies
RETRIEVED_KEY = "pacs_retrieved"  # the study scored into the worklist: a ``Retrieved``
SENT_KEY = "pacs_sent"  # sha256 -> the report's UID, for this tab
TABLE_KEY = "pacs_study_table"
MODALITY_CHOICES = ("CR", "DX", "DR", "RG", "OT")
SEARCH_DAYS = 7  # the default date range: the last week
VIEWS_FOR = 50  # studies whose views (AP, PA, LL...) are read, one request each


@dataclass(frozen=True)
class Retrieved:
    """A study retrieved into the worklist.

    Attributes:
        study: the study (as found by the search).
        files: ``(row name, DICOM bytes)`` of each image retrieved, the worklist's files.
        instances: the instance of each file, by the SHA-256 of its bytes.
        skipped: ``(row name, reason)`` of the instances not scored (not an image, a lateral view).
        failed: the instances a server fault left unretrieved, with the reason (retry them).
    """

    study: Study
    files: tuple[tuple[str, bytes], ...]
    instances: dict[str, Instance]
    skipped: tuple[tuple[str, str], ...]
    failed: tuple[tuple[Instance, str], ...]


def _secrets_section() -> dict:
    try:
        return dict(st.secrets.to_dict().get("pacs") or {})
    except FileNotFoundError:  # no secrets.toml: the environment may still name a PACS
        return {}


def settings() -> PacsSettings | None:
    """The PACS settings, or None when no PACS is configured.

    Raises:
        ConfigError: a PACS is configured with settings that cannot work.
    """
    section = _secrets_section()
    if section:
        return PacsSettings.from_mapping(section)
    if not os.environ.get(ENVIRONMENT["url"]):
        return None
    return PacsSettings.from_environment()


@st.cache_resource(show_spinner=False, max_entries=4)
def _client(settings: PacsSettings) -> PacsClient:
    return PacsClient(settings)


def row_name(instance: Instance) -> str:
    """How a retrieved image is named in the worklist: what it is, then its SOP Instance UID."""
    what = " ".join(part for part in (instance.modality, instance.view_position) if part)
    number = f" #{instance.instance_number}" if instance.instance_number is not None else ""
    return f"{what or 'image'}{number} · {instance.sop_uid}"


def search_form(pacs: PacsSettings) -> None:
    """The study search (date range, modality, accession number, body part) and its result table."""
    today = dt.date.today()
    with st.form("pacs_search", border=True):
        dates, modalities, accession, body_part = st.columns([1.6, 1.4, 1, 1], vertical_alignment="bottom")
        chosen_dates = dates.date_input(
            "Study date", value=(today - dt.timedelta(days=SEARCH_DAYS), today), max_value=today, key="pacs_dates",
            format="YYYY-MM-DD",
        )
        chosen_modalities = modalities.multiselect(
            "Modality", MODALITY_CHOICES, default=list(DEFAULT_MODALITIES), key="pacs_modalities"
        )
        number = accession.text_input("Accession number", max_chars=16, key="pacs_accession", placeholder="any")
        part = body_part.text_input("Body part", max_chars=16, key="pacs_body_part", placeholder="any (e.g. CHEST)")
        searched = st.form_submit_button("Search the PACS", icon=":material/search:", type="primary")
    if searched:
        low, high = (list(chosen_dates) + [None, None])[:2] if isinstance(chosen_dates, (tuple, list)) else (chosen_dates, None)
        try:
            query = StudyQuery(
                date_from=low.strftime("%Y%m%d") if low else None,
                date_to=(high or low).strftime("%Y%m%d") if (high or low) else None,
                modalities=tuple(chosen_modalities),
                accession_number=number.strip() or None,
                body_part=part.strip() or None,
            )
            with st.spinner("Searching the PACS..."):
                studies = _client(pacs).query_studies(query)
                views = {study.study_uid: _client(pacs).study_views(study.study_uid) for study in studies[:VIEWS_FOR]}
        except (ConfigError, PacsError) as error:
            st.error(plain(error), icon=":material/error:")
            return
        st.session_state[STUDIES_KEY] = (studies, query.limit, views)
        st.session_state.pop(TABLE_KEY, None)


def study_table(pacs: PacsSettings) -> Study | None:
    """The last search's studies as a table; returns the one selected, if any."""
    found = st.session_state.get(STUDIES_KEY)
    if found is None:
        st.info("Search the PACS for a study, then select it to retrieve and score its images.", icon=":material/search:")
        return None
    studies, limit, views = found
    if not studies:
        st.info("No study matches. Widen the dates or change the modality.", icon=":material/search_off:")
        return None
    if len(studies) >= limit:
        st.warning(f"The first {limit} studies the PACS returned are shown; there may be more. Narrow the dates.")
    if len(studies) > VIEWS_FOR:
        st.caption(f"Views are read for the first {VIEWS_FOR} studies (one request each); narrow the search to see the rest.")
    rows = [
        {
            "study date": date_text(study.study_date),
            "accession": study.accession_number or "",
            "modalities": ", ".join(study.modalities),
            "views": ", ".join(views[study.study_uid]) if study.study_uid in views else "",
            "instances": study.images,
            "description": study.description or "",
            **({"patient": study.patient_name or "", "patient id": study.patient_id or ""} if pacs.show_patient_identity else {}),
        }
        for study in studies
    ]
    event = st.dataframe(
        pd.DataFrame(rows), hide_index=True, key=TABLE_KEY, on_select="rerun", selection_mode="single-row",
        width="stretch",
    )
    chosen = [row for row in event.selection.rows if row < len(studies)]
    return studies[chosen[0]] if chosen else None


def date_text(value: str | None) -> str:
    """A DICOM date (YYYYMMDD) as the pages write dates, YYYY-MM-DD."""
    if value and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value or ""


def retrieve(pacs: PacsSettings, study: Study, only: tuple[Instance, ...] | None = None) -> Retrieved | None:
    """Retrieves the study's images (or only ``only``, to retry) with a progress bar; None after
    a plain message when the study cannot be listed."""
    client = _client(pacs)
    try:
        instances = list(only) if only else client.instances(study.study_uid)
    except (ConfigError, PacsError) as error:
        st.error(plain(error), icon=":material/error:")
        return None
    skipped = tuple((row_name(i), i.skip_reason) for i in instances if i.skip_reason)
    wanted = [i for i in instances if not i.skip_reason]
    bar = st.progress(0.0, text=f"Retrieving {len(wanted)} images from the PACS...")
    files, by_sha, failed = [], {}, []
    for done, (index, data, error, retryable) in enumerate(iter_retrieved(client, wanted, decode=False), start=1):
        instance = wanted[index]
        if data is None:
            if retryable:
                failed.append((instance, error))
            else:
                skipped += ((row_name(instance), error),)
        else:
            files.append((row_name(instance), data))
            by_sha[bytes_sha256(data)] = instance
        bar.progress(done / max(1, len(wanted)), text=f"Retrieved {done} of {len(wanted)} images")
    bar.empty()
    return Retrieved(study, tuple(files), by_sha, skipped, tuple(failed))


def merged(previous: Retrieved, retried: Retrieved) -> Retrieved:
    """A retry's images added to the study already in the worklist."""
    return Retrieved(
        previous.study,
        previous.files + retried.files,
        {**previous.instances, **retried.instances},
        previous.skipped + retried.skipped,
        retried.failed,
    )


def show_left_out(retrieved: Retrieved) -> bool:
    """Lists what was not scored and why; returns whether the user asked to retry the failed ones."""
    if retrieved.skipped:
        st.info(
            f"{len(retrieved.skipped)} instance(s) of this study were not scored:  \n"
            + "  \n".join(f"**{plain(name)}**: {plain(reason)}" for name, reason in retrieved.skipped),
            icon=":material/info:",
        )
    if not retrieved.failed:
        return False
    st.error(
        f"{len(retrieved.failed)} image(s) could not be retrieved (the PACS failed); the others were scored:  \n"
        + "  \n".join(f"**{plain(row_name(i))}**: {plain(reason)}" for i, reason in retrieved.failed),
        icon=":material/cloud_off:",
    )
    return st.button("Retry them", icon=":material/refresh:", key="pacs_retry")


def send_button(pacs: PacsSettings, instance: Instance, image, result_id: int | None) -> None:
    """"Send result to PACS": the call shown (``image`` is the worklist row's ``ChosenImage``), as a
    DICOM Comprehensive SR in the study, with the Grad-CAM picture beside it if asked; each once."""
    from . import access, resources

    sent = st.session_state.setdefault(SENT_KEY, {})
    if image.digest in sent:
        st.success(f"Result on the PACS as structured report {sent[image.digest]}.", icon=":material/cloud_done:")
        return
    with_heatmap = st.checkbox(
        "With the Grad-CAM picture (marked NOT FOR DIAGNOSIS)", value=True, key=f"pacs_heatmap_{image.digest[:16]}",
        help="A DICOM Secondary Capture of the heat map on the fixed scale, the words burned into its pixels.",
    )
    if not st.button("Send result to PACS", icon=":material/cloud_upload:", key=f"pacs_send_{image.digest[:16]}",
                     help="Stores the call, probability, operating point and flags in the study as a DICOM "
                     "structured report marked \"decision support, not a diagnosis\". Never sent twice."):
        return
    predictor = resources.predictor()
    try:
        with st.spinner("Sending the result to the PACS..."):
            prediction = resources.prediction(image)  # the call shown
            picture = None
            if with_heatmap:
                picture = resources.heatmap_scale().overlay(resources.decoded(image).pixels, resources.gradcam_heatmap(image))
            report = send_report(_client(pacs), instance, prediction, predictor.operating_point, picture)
    except PneumoError as error:
        st.error(plain(error), icon=":material/cloud_off:")
        return
    if result_id is not None:
        identity = access.current()
        try:
            record_sent(audit.trail(), result_id, report, predictor.operating_point,
                        subject=identity.subject if identity else None)
        except audit.AuditError as error:
            st.error(f"The report was sent, but the audit trail could not note it: {plain(error)}")
    sent[image.digest] = report.sr_uid
    words = "was already on the PACS (not sent again)" if report.already_on_server else "was stored in the study"
    picture_words = " with its heat-map picture" if report.capture_uid else ""
    st.success(f"The structured report {report.sr_uid} {words}{picture_words}.", icon=":material/cloud_done:")
    if report.capture_error:
        sent.pop(image.digest)  # the picture is still to send: the button stays
        st.warning(f"The heat-map picture was not sent: {plain(report.capture_error)}", icon=":material/cloud_off:")
