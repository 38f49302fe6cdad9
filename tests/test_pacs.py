"""PACS over DICOMweb against a real Orthanc (Debian's packages), started by the fixtures here.
What needs no server (settings, queries, multipart answers, building the structured report) is in
``test_pacs_offline.py`` and runs everywhere.

Studies are made in the tests from the sample films (CR and DX, MONOCHROME1 and 2, JPEG baseline
and uncompressed, a lateral view, a multi-frame image, a text report, a PDF and a video syntax),
with sentinel patient name, id, accession number and birth date. Faults are real ones: a wrong
password, a certificate nobody vouches for, a stopped and a frozen server, a file taken from the
server's disk (HTTP 500), a server that refuses every STOW-RS request.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from pneumo_model.lab import orthanc as orthanc_server
from pneumo_model.lab.orthanc import PASSWORD, USER, OrthancServer, TlsFront
from pacs_studies import SAMPLES, SENTINELS, grey, main_study_files, sentinel_study
from pneumo_model.artifacts import REPO_ROOT
from pneumo_model.audit import AuditTrail
from pneumo_model.errors import ConfigError
from pneumo_model.lab.pacs_files import StudyFacts, chest_dicom
from pneumo_model.pacs import (
    PacsAuthError,
    PacsClient,
    PacsNotFoundError,
    PacsSettings,
    PacsStoreError,
    PacsUnreachableError,
    StudyQuery,
)
from pneumo_model.pacs_workflow import exit_status, record_sent, score_instances, send_report
from pneumo_model.pipeline import DecodedImage
from pneumo_model.prediction import Predictor
from pneumo_model.structured_report import SERIES_DESCRIPTION, read_report, report_uids

pytestmark = [pytest.mark.pacs, pytest.mark.shipped_model]

@pytest.fixture(scope="module", autouse=True)
def _orthanc_installed():
    reason = orthanc_server.missing()
    if reason:
        if os.environ.get("REQUIRE_PACS") == "1":
            pytest.fail(f"{reason} and REQUIRE_PACS=1")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """One Orthanc for the read-only tests, holding the main study and three more for the filters."""
    server = OrthancServer(tmp_path_factory.mktemp("orthanc")).start()
    study = sentinel_study()
    files = main_study_files(study)
    for data in files.values():
        server.upload(data)
    picture = grey(SAMPLES[0])
    extra = {
        "cr_october": sentinel_study(accession_number="ACCOCT2", study_date="20261015"),
        "mr_november": sentinel_study(accession_number="ACCMR3", study_date="20261120"),
        "hand_dx": sentinel_study(accession_number="ACCHAND4", study_date="20261125"),
    }
    server.upload(chest_dicom(picture, extra["cr_october"], generate_uid(), modality="CR"))
    mr = pydicom.dcmread(io.BytesIO(chest_dicom(picture, extra["mr_november"], generate_uid())))
    mr.Modality = "MR"
    buffer = io.BytesIO()
    mr.save_as(buffer, enforce_file_format=True)
    server.upload(buffer.getvalue())
    hand = pydicom.dcmread(io.BytesIO(chest_dicom(picture, extra["hand_dx"], generate_uid())))
    hand.BodyPartExamined = "HAND"
    buffer = io.BytesIO()
    hand.save_as(buffer, enforce_file_format=True)
    server.upload(buffer.getvalue())
    yield {"server": server, "study": study, "files": files, "extra": extra}
    server.remove()


@pytest.fixture(scope="module")
def predictor():
    return Predictor.from_file()


def settings_for(server, **changes) -> PacsSettings:
    return PacsSettings(**{"url": server.dicomweb_url, "username": USER, "password": PASSWORD, **changes})


def client_for(server, **changes) -> PacsClient:
    return PacsClient(settings_for(server, **changes))


# --- query -----------------------------------------------------------------------------------


def test_query_filters_by_date_modality_accession_and_body_part(pacs):
    client = client_for(pacs["server"])
    extra = pacs["extra"]
    by_accession = {study.accession_number: study for study in client.query_studies()}
    assert set(by_accession) == {SENTINELS["accession_number"], "ACCOCT2", "ACCHAND4"}  # the MR study is not CR/DX
    main = by_accession[SENTINELS["accession_number"]]
    assert main.study_uid == pacs["study"].study_uid and main.images == len(pacs["files"])
    assert {"CR", "DX", "SR", "DOC"} <= set(main.modalities) and main.study_date == "20261130"
    assert [s.study_uid for s in client.query_studies(StudyQuery(modalities=("CR",)))] == [
        pacs["study"].study_uid, extra["cr_october"].study_uid]
    november = client.query_studies(StudyQuery(date_from="20261101", date_to="20261130"))
    assert {s.accession_number for s in november} == {SENTINELS["accession_number"], "ACCHAND4"}
    assert [s.study_uid for s in client.query_studies(StudyQuery(accession_number="ACCOCT2"))] == [extra["cr_october"].study_uid]
    assert [s.study_uid for s in client.query_studies(StudyQuery(modalities=("MR",)))] == [extra["mr_november"].study_uid]
    chest = client.query_studies(StudyQuery(body_part="CHEST"))
    assert extra["hand_dx"].study_uid not in {s.study_uid for s in chest} and len(chest) == 2
    assert client.query_studies(StudyQuery(accession_number="NOSUCH")) == []
    assert client.study_views(pacs["study"].study_uid) == ("AP", "LL")
    newest_first = [s.study_date for s in client.query_studies()]
    assert newest_first == sorted(newest_first, reverse=True)
    assert len(client.query_studies(StudyQuery(limit=1))) == 1  # which one is the server's choice


def test_patient_name_and_id_are_read_only_when_the_setting_allows_and_never_printed(pacs):
    hidden = client_for(pacs["server"]).query_studies(StudyQuery(accession_number=SENTINELS["accession_number"]))[0]
    assert hidden.patient_name is None and hidden.patient_id is None
    shown = client_for(pacs["server"], show_patient_identity=True).query_studies(
        StudyQuery(accession_number=SENTINELS["accession_number"]))[0]
    assert (shown.patient_name, shown.patient_id) == (SENTINELS["patient_name"], SENTINELS["patient_id"])
    record = json.dumps(shown.to_record())
    assert SENTINELS["patient_name"] not in record and SENTINELS["patient_id"] not in record and SENTINELS["patient_name"] not in repr(shown)
    assert sorted(shown.to_record()) == ["accession_number", "images", "modalities", "study_date", "study_uid"]


def test_a_wrong_password_and_an_unknown_study_are_plain_messages(pacs):
    server = pacs["server"]
    with pytest.raises(PacsAuthError, match="refused the credentials while searching for studies. Check PNEUMO_DICOMWEB_USER"):
        client_for(server, password="not-the-password").query_studies()
    with pytest.raises(PacsAuthError, match="refused the credentials"):
        PacsClient(PacsSettings(server.dicomweb_url)).query_studies()
    with pytest.raises(PacsNotFoundError, match="has no study 1.2.3.4"):
        client_for(server).instances("1.2.3.4")
    with pytest.raises(ConfigError, match="digits separated by dots"):
        client_for(server).instances("1.2.3.4/../../tools")


def test_tls_is_verified_against_the_ca_file_given_and_refused_without_it(pacs, tmp_path):
    front = TlsFront(tmp_path, pacs["server"].port)
    try:
        with pytest.raises(PacsUnreachableError, match="certificate is not trusted. Give the hospital's certificate authority in PNEUMO_DICOMWEB_CA_FILE"):
            PacsClient(PacsSettings(front.dicomweb_url, USER, PASSWORD)).query_studies()
        trusted = PacsClient(PacsSettings(front.dicomweb_url, USER, PASSWORD, ca_file=front.ca_file))
        studies = trusted.query_studies(StudyQuery(accession_number=SENTINELS["accession_number"]))
        assert [s.study_uid for s in studies] == [pacs["study"].study_uid]
        instance = next(i for i in trusted.instances(pacs["study"].study_uid) if i.instance_number == 1 and i.has_pixels)
        assert trusted.retrieve(instance) == pacs["files"]["dx_mono2"]
        (tmp_path / "other").mkdir()
        other_ca, _ = orthanc_server.self_signed_certificate(tmp_path / "other")  # another hospital's CA
        with pytest.raises(PacsUnreachableError, match="not trusted"):
            PacsClient(PacsSettings(front.dicomweb_url, USER, PASSWORD, ca_file=other_ca)).query_studies()
    finally:
        front.close()


# --- retrieve and score ------------------------------------------------------------------------


def test_a_study_scores_like_uploading_the_same_files_and_lists_what_it_cannot_score(pacs, predictor):
    client = client_for(pacs["server"])
    files = pacs["files"]
    results = score_instances(client, predictor, client.instances(pacs["study"].study_uid))
    assert len(results) == len(files)
    by_sha = {hashlib.sha256(data).hexdigest(): name for name, data in files.items()}
    scored = {by_sha[r.digest]: r for r in results if r.prediction is not None}
    assert sorted(scored) == ["cr_mono1_jpeg", "cr_mono2_jpeg", "dx_mono1", "dx_mono2", "multi_frame"]
    for name, result in scored.items():  # the bytes retrieved are the file uploaded, and score the same
        uploaded = predictor.call(DecodedImage.decode(files[name]))
        assert result.prediction.probability == pytest.approx(uploaded.probability, abs=1e-6), name
        assert (result.prediction.ood, result.prediction.label) == (uploaded.ood, uploaded.label)
        assert result.prediction.operating_point == predictor.operating_point.id
    assert any("frame" in warning for warning in scored["multi_frame"].prediction.info.warnings)
    assert any("MONOCHROME1" in warning for warning in scored["dx_mono1"].prediction.info.warnings)
    reasons = sorted(r.error for r in results if r.prediction is None)
    assert len(reasons) == 4 and all(not r.retryable for r in results)
    assert any(reason.startswith("a lateral view (ViewPosition LL)") for reason in reasons)
    assert any("not an image (Basic Text SR Storage)" in reason for reason in reasons)
    assert any("not an image (Encapsulated PDF Storage)" in reason for reason in reasons)
    assert any("MPEG2" in reason and "cannot decode" in reason for reason in reasons)
    assert exit_status(results) == 2
    records = [r.to_record() for r in results]
    assert all({"study_uid", "series_uid", "sop_instance_uid"} <= set(record) for record in records)
    assert {record["sop_instance_uid"] for record in records} == {r.instance.sop_uid for r in results}


def run_cli(*argv: str, env: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pneumo_model", *argv], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
    )


def pacs_env(server) -> dict:
    return {"PNEUMO_DICOMWEB_URL": server.dicomweb_url, "PNEUMO_DICOMWEB_USER": USER, "PNEUMO_DICOMWEB_PASSWORD": PASSWORD}


def test_the_cli_queries_and_scores_with_the_exit_codes_of_predict(pacs, tmp_path):
    env = pacs_env(pacs["server"])
    query = run_cli("pacs", "query", "--date-from", "20261101", "--modality", "CR,DX", env=env)
    assert query.returncode == 0, query.stderr
    rows = [json.loads(line) for line in query.stdout.splitlines()]
    assert {row["accession_number"] for row in rows} == {SENTINELS["accession_number"], "ACCHAND4"}
    assert all(sorted(row) == ["accession_number", "images", "modalities", "study_date", "study_uid"] for row in rows)

    score = run_cli("pacs", "score", "--study", pacs["study"].study_uid, env=env)
    assert score.returncode == 2, score.stderr  # some instances are not radiographs
    records = [json.loads(line) for line in score.stdout.splitlines()]
    assert len(records) == len(pacs["files"])
    scored = [r for r in records if "error" not in r]
    assert len(scored) == 5 and all({"probability", "label", "grey_zone", "operating_point", "model_sha", "ood",
                                     "study_uid", "series_uid", "sop_instance_uid", "sha256"} <= set(r) for r in scored)
    assert "5 of 9 images scored" in score.stderr

    only = scored[0]["sop_instance_uid"]
    again = run_cli("pacs", "score", "--study", pacs["study"].study_uid, "--instance", only, env=env)
    assert again.returncode == 0 and [json.loads(line)["probability"] for line in again.stdout.splitlines()] == [scored[0]["probability"]]

    for argv, environ, message in [
        (("pacs", "score"), env, "--study"),
        (("pacs", "query", "--date-from", "yesterday"), env, "must be a date as YYYYMMDD"),
        (("pacs", "query"), {**env, "PNEUMO_DICOMWEB_PASSWORD": "wrong"}, "refused the credentials"),
        (("pacs", "query"), {"PNEUMO_DICOMWEB_URL": ""}, "No PACS is configured"),
        (("pacs", "score", "--study", "1.2.3.4"), env, "has no study 1.2.3.4"),
        (("pacs", "score", "--study", pacs["study"].study_uid, "--instance", "9.9"), env, "has no instance 9.9"),
    ]:
        failed = run_cli(*argv, env=environ)
        assert failed.returncode == 1, (argv, failed.stderr)
        assert message in failed.stderr and "Traceback" not in failed.stderr


# --- the structured report --------------------------------------------------------------------


def test_a_report_goes_back_into_the_study_reads_back_right_and_is_never_sent_twice(pacs, predictor, tmp_path):
    from highdicom.sr import ComprehensiveSR

    client = client_for(pacs["server"])
    study = pacs["study"].study_uid
    frontal = next(i for i in client.instances(study) if i.instance_number == 2 and i.has_pixels)  # the CR, MONOCHROME1, JPEG
    (result,) = score_instances(client, predictor, [frontal])
    trail = AuditTrail(tmp_path / "audit.sqlite3")
    from pneumo_model.audit import ResultRecord

    (result_id,) = trail.record_results([ResultRecord.of(result.prediction, result.digest, "cli")])
    sent = send_report(client, frontal, result.prediction, predictor.operating_point)
    assert not sent.already_on_server and record_sent(trail, result_id, sent, predictor.operating_point)
    assert sent.sr_uid == report_uids(frontal.sop_uid, predictor.operating_point.id, result.prediction.model_sha).sop_uid

    reports = [i for i in client.instances(study) if i.sop_uid == sent.sr_uid]
    assert len(reports) == 1 and reports[0].series_uid not in {i.series_uid for i in client.instances(study) if i.has_pixels}
    dataset = pydicom.dcmread(io.BytesIO(client.retrieve(reports[0])))
    assert dataset.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert dataset.StudyInstanceUID == study and dataset.SeriesDescription == SERIES_DESCRIPTION
    assert dataset.PatientID == SENTINELS["patient_id"]  # the PACS's own patient module, as DICOM requires
    report = ComprehensiveSR.from_dataset(dataset)
    evidence = report.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert evidence.ReferencedSOPInstanceUID == frontal.sop_uid
    values = read_report(dataset)
    assert values["image"] == (frontal.sop_class_uid, frontal.sop_uid)
    assert values["label"] == result.prediction.label
    assert values["probability"] == pytest.approx(result.prediction.probability, abs=1e-6)
    assert values["threshold"] == pytest.approx(predictor.threshold, abs=1e-6)
    assert values["operating_point"] == f"shipped {predictor.operating_point.id}"
    assert values["grey_zone"] is result.prediction.grey_zone and values["ood"] is result.prediction.ood
    assert values["model_sha"] == result.prediction.model_sha and len(values["model_sha"]) == 64
    assert values["comment"].startswith("Decision support, not a diagnosis.")

    again = send_report(client, frontal, result.prediction, predictor.operating_point)
    assert again.already_on_server and again.sr_uid == sent.sr_uid
    assert record_sent(trail, result_id, again, predictor.operating_point) is None
    assert len([i for i in client.instances(study) if i.sop_class_uid == dataset.SOPClassUID]) == 1
    (event,) = trail.events("sr_sent")
    assert event["result_id"] == result_id and event["detail"]["sr_uid"] == sent.sr_uid


# --- faults -----------------------------------------------------------------------------------


def one_study_server(folder: Path, n_films: int = 4, **options) -> tuple[OrthancServer, StudyFacts, dict[str, str]]:
    """A fresh Orthanc with one study of ``n_films`` frontal films; returns Orthanc's ids by SOP UID."""
    server = OrthancServer(folder, **options).start()
    study, series = sentinel_study(), generate_uid()
    ids = {}
    for k in range(n_films):
        sop = generate_uid()
        ids[sop] = server.upload(chest_dicom(grey(SAMPLES[k % len(SAMPLES)]), study, series, sop_uid=sop, instance_number=k + 1))
    return server, study, ids


def test_a_server_error_mid_retrieve_keeps_what_was_scored_and_the_failed_image_can_be_retried(tmp_path, predictor):
    server, study, ids = one_study_server(tmp_path / "orthanc")
    try:
        client = client_for(server)
        instances = client.instances(study.study_uid)
        broken = instances[1]
        stored = server.attachment_file(ids[broken.sop_uid])
        kept = tmp_path / "kept.dcm"
        shutil.move(stored, kept)  # the disk lost it: Orthanc answers 500
        results = score_instances(client, predictor, instances)
        assert [r.prediction is not None for r in results] == [True, False, True, True]
        assert results[1].retryable and "answered HTTP 500 while retrieving an image; try again later" in results[1].error
        assert exit_status(results) == 1 and results[1].to_record()["retryable"] is True
        shutil.move(kept, stored)
        (retried,) = score_instances(client, predictor, [broken])
        assert retried.prediction is not None and exit_status([retried]) == 0
    finally:
        server.remove()


def test_a_server_stopped_mid_run_leaves_the_scored_images_and_lists_the_rest_to_retry(tmp_path, predictor):
    server, study, _ = one_study_server(tmp_path / "orthanc", n_films=5)
    try:
        client = client_for(server, workers=1)
        instances = client.instances(study.study_uid)
        seen = []

        def stop_after_the_first(result):
            seen.append(result)
            if len(seen) == 1:
                server.stop()

        results = score_instances(client, predictor, instances, batch_size=1, on_result=stop_after_the_first)
        scored = [r for r in results if r.prediction is not None]
        failed = [r for r in results if r.prediction is None]
        assert 1 <= len(scored) <= 3 and len(scored) + len(failed) == 5  # at most two were already fetched
        assert all(r.retryable and "cannot be reached while retrieving an image" in r.error for r in failed)
        server.start()
        retried = score_instances(client_for(server), predictor, [r.instance for r in failed])
        assert all(r.prediction is not None for r in retried)
    finally:
        server.remove()


def test_a_server_that_stops_answering_times_out_with_a_plain_message(tmp_path):
    server, study, _ = one_study_server(tmp_path / "orthanc", n_films=1)
    try:
        client = client_for(server, read_timeout_s=1.0, connect_timeout_s=1.0)
        os.kill(server.process.pid, signal.SIGSTOP)  # frozen: the connection is accepted, nothing answers
        try:
            with pytest.raises(PacsUnreachableError, match=r"did not answer in time while searching for studies; try again, or raise PNEUMO_DICOMWEB_TIMEOUT_S \(now 1 s\)"):
                client.query_studies()
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        assert len(client_for(server).query_studies()) == 1
    finally:
        server.remove()


def test_a_refused_report_keeps_the_result_and_is_sent_once_the_pacs_accepts_it(tmp_path, predictor):
    folder = tmp_path / "orthanc"
    server, study, _ = one_study_server(folder, n_films=1, refuse_reports=True)
    try:
        client = client_for(server)
        (instance,) = client.instances(study.study_uid)
        (result,) = score_instances(client, predictor, [instance])
        with pytest.raises(PacsStoreError, match="The result is kept; send it again later"):
            send_report(client, instance, result.prediction, predictor.operating_point)
        assert len(client.instances(study.study_uid)) == 1  # nothing half-stored
        server.stop()
        accepting = OrthancServer(folder).start()  # the same storage, the refusal lifted
        server = accepting
        sent = send_report(client_for(accepting), instance, result.prediction, predictor.operating_point)
        assert not sent.already_on_server and len(client_for(accepting).instances(study.study_uid)) == 2
    finally:
        server.remove()


# --- identifiers --------------------------------------------------------------------------------


def test_no_patient_identifier_reaches_the_audit_trail_our_logs_stdout_or_any_file_we_write(pacs, tmp_path, caplog):
    env = pacs_env(pacs["server"])
    audit = tmp_path / "audit.sqlite3"
    score = run_cli("pacs", "score", "--study", pacs["study"].study_uid, "--send", "--audit", str(audit), env=env)
    assert score.returncode == 2, score.stderr
    sent = [json.loads(line) for line in score.stdout.splitlines() if "sent_sr_uid" in line]
    assert len(sent) == 5
    trail = AuditTrail(audit)
    assert {event["detail"]["sr_uid"] for event in trail.events("sr_sent")} == {r["sent_sr_uid"] for r in sent}
    assert len(trail.trail()) == 5

    # In this process, every logger at DEBUG: the HTTP libraries print URLs at that level.
    caplog.set_level(logging.DEBUG)
    client = client_for(pacs["server"])
    client.query_studies(StudyQuery(accession_number=SENTINELS["accession_number"]))
    client.instances(pacs["study"].study_uid)
    logged = "\n".join(record.getMessage() for record in caplog.records)

    identifiers = [SENTINELS[key] for key in ("patient_name", "patient_id", "birth_date")]
    identifiers += ["ZZSENTINEL", SENTINELS["patient_name"].replace("^", " ")]
    written = b"".join(path.read_bytes() for path in tmp_path.rglob("*") if path.is_file())
    for text in identifiers + [SENTINELS["accession_number"]]:
        assert text not in score.stdout and text not in score.stderr, text
        assert text not in logged, text
        assert text.encode() not in written, text
    assert "AccessionNumber" not in logged and "dicom-web/studies?" not in logged
    with sqlite3.connect(audit) as connection:
        dump = "\n".join(connection.iterdump())
    assert not any(text in dump for text in identifiers + [SENTINELS["accession_number"]])


def test_the_pacs_doc_speed_lines_are_the_benchs_figures():
    from pneumo_model.lab.pacs_bench import README_END, README_START, markdown

    figures = json.loads((REPO_ROOT / "reports" / "bench.json").read_text())["pacs"]
    block = (REPO_ROOT / "docs" / "pacs.md").read_text().split(README_START, 1)[1].split(README_END, 1)[0]
    assert block == markdown(figures, figures["machine"])
    assert figures["scored"] == figures["images"] >= 100 and figures["short_side_px"][0] >= 1024


def test_the_heat_map_goes_beside_the_report_with_not_for_diagnosis_burned_in_and_only_once(tmp_path, predictor):
    from pneumo_model.explain import HeatmapScale, heatmap_scale_path
    from pneumo_model.pacs_workflow import heatmap_picture
    from pneumo_model.paths import DEFAULT_MODEL_PATH
    from pneumo_model.structured_report import CAPTURE_SERIES_DESCRIPTION, capture_uids

    server, study, _ = one_study_server(tmp_path / "orthanc", n_films=1)
    try:
        client = client_for(server)
        (instance,) = client.instances(study.study_uid)
        (result,) = score_instances(client, predictor, [instance], keep_images=True)
        scale = HeatmapScale.load(heatmap_scale_path(DEFAULT_MODEL_PATH), predictor.metadata.model_sha256)
        picture = heatmap_picture(predictor, result.image, scale)
        assert picture.shape == (*result.image.pixels.shape, 3) and picture.dtype == np.uint8
        sent = send_report(client, instance, result.prediction, predictor.operating_point, picture)
        assert sent.capture_uid == capture_uids(instance.sop_uid, predictor.operating_point.id, result.prediction.model_sha).sop_uid

        (stored,) = [i for i in client.instances(study.study_uid) if i.sop_uid == sent.capture_uid]
        capture = pydicom.dcmread(io.BytesIO(client.retrieve(stored)))
        assert capture.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and capture.BurnedInAnnotation == "YES"
        assert capture.StudyInstanceUID == study.study_uid and capture.SeriesDescription == CAPTURE_SERIES_DESCRIPTION
        assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID == instance.sop_uid
        assert capture.ImageComments.startswith("NOT FOR DIAGNOSIS.")
        pixels = capture.pixel_array  # (band + h, w, 3)
        band = pixels.shape[0] - picture.shape[0]
        assert band > 0 and np.array_equal(pixels[band:], picture)  # the overlay itself, unchanged
        assert (pixels[:band] > 200).any() and (pixels[:band] == 0).mean() > 0.5  # white words on black

        again = send_report(client, instance, result.prediction, predictor.operating_point, picture)
        assert again.already_on_server and again.capture_uid == sent.capture_uid
        assert len(client.instances(study.study_uid)) == 3  # the film, one report, one picture
    finally:
        server.remove()
    refused = run_cli("pacs", "score", "--study", "1.2.3", "--with-heatmap", env={"PNEUMO_DICOMWEB_URL": "http://127.0.0.1:9/dw"})
    assert refused.returncode == 1 and "give --send too" in refused.stderr


def test_batch_scores_a_dicomweb_query_one_row_per_instance_and_a_rerun_skips_them(pacs, tmp_path):
    import pandas as pd

    from pneumo_model.batch import RESULT_COLUMNS

    env = pacs_env(pacs["server"])
    out = tmp_path / "results"
    source = f"dicomweb:?accession={SENTINELS['accession_number']}&modality=CR,DX"
    first = run_cli("batch", source, "--out", str(out), "--no-progress", env=env)
    assert first.returncode == 2, first.stderr  # four instances are not scored, and say why
    table = pd.read_parquet(out)
    assert list(table.columns) == list(RESULT_COLUMNS)
    client = client_for(pacs["server"])
    assert len(table) == len(client.instances(pacs["study"].study_uid))  # rows out = instances in (reports too)
    assert all(name.startswith("dicomweb:" + pacs["study"].study_uid + "/") for name in table["file"])
    scored = table[table["error"].isna()]
    assert len(scored) == 5
    by_sop = {name.rsplit("/", 1)[1]: p for name, p in zip(scored["file"], scored["probability"])}
    score = run_cli("pacs", "score", "--study", pacs["study"].study_uid, env=env)
    expected = {r["sop_instance_uid"]: r["probability"] for r in map(json.loads, score.stdout.splitlines()) if "probability" in r}
    assert by_sop.keys() == expected.keys() and all(abs(by_sop[k] - expected[k]) < 1e-6 for k in expected)
    reasons = " ".join(table["error"].dropna())
    assert "Not scored: a lateral view" in reasons and "not an image (Basic Text SR Storage)" in reasons

    again = run_cli("batch", source, "--out", str(out), "--no-progress", env=env)
    summary = json.loads(again.stdout.splitlines()[-1])
    assert summary["skipped"] >= 5 and summary["scored"] == 0 and len(pd.read_parquet(out)) == len(table)
    written = b"".join(path.read_bytes() for path in out.rglob("*") if path.is_file())
    for text in (SENTINELS["patient_name"], SENTINELS["patient_id"], SENTINELS["accession_number"]):
        assert text.encode() not in written and text not in again.stdout + again.stderr + first.stdout + first.stderr

    refused = run_cli("batch", source, "--out", str(tmp_path / "r2"), "--engine", "ray", env=env)
    assert refused.returncode == 1 and "score a DICOMweb source with --engine local" in refused.stderr
    bad = run_cli("batch", "dicomweb:?colour=red", "--out", str(tmp_path / "r3"), env=env)
    assert bad.returncode == 1 and "Unknown key 'colour'" in bad.stderr


def test_an_image_that_breaks_the_decoder_unexpectedly_is_its_own_error_and_the_study_goes_on(pacs, predictor, monkeypatch):
    from pneumo_model import pipeline

    client = client_for(pacs["server"])
    frontal = [i for i in client.instances(pacs["study"].study_uid) if i.has_pixels and not i.skip_reason][:2]
    real = pipeline.DecodedImage.decode.__func__
    calls = []

    def decode(cls, data, limits=pipeline.ImageLimits()):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a decoder bug the package does not foresee")  # a fault no real file is known to cause
        return real(cls, data, limits)

    monkeypatch.setattr(pipeline.DecodedImage, "decode", classmethod(decode))
    results = score_instances(client_for(pacs["server"], workers=1), predictor, frontal)
    assert results[0].prediction is None and "Unexpected error while decoding (RuntimeError" in results[0].error
    assert not results[0].retryable and results[1].prediction is not None


def test_a_header_with_a_malformed_birth_date_and_no_study_time_still_gets_its_report_and_quotes_nothing(
    tmp_path, predictor, capsys, caplog
):
    server = OrthancServer(tmp_path / "orthanc").start()
    try:
        study = sentinel_study()
        film = pydicom.dcmread(io.BytesIO(chest_dicom(grey(SAMPLES[0]), study, generate_uid())))
        film.PatientBirthDate = "1980-01-01"  # not a DICOM date, as real files often have
        del film.StudyTime
        buffer = io.BytesIO()
        film.save_as(buffer, enforce_file_format=True)
        caplog.set_level(logging.DEBUG)
        caplog.clear()  # from here on, only what retrieving, scoring and sending says
        capsys.readouterr()
        server.upload(buffer.getvalue())
        client = client_for(server)
        (instance,) = client.instances(study.study_uid)
        (result,) = score_instances(client, predictor, [instance])
        sent = send_report(client, instance, result.prediction, predictor.operating_point,
                           heatmap=np.zeros((8, 8), dtype=np.float64))  # not a picture: its capture fails alone
        assert not sent.already_on_server and sent.capture_uid is None
        assert sent.capture_error and "could not be built" in sent.capture_error and "1980" not in sent.capture_error
        (report,) = [i for i in client.instances(study.study_uid) if i.sop_uid == sent.sr_uid]
        dataset = pydicom.dcmread(io.BytesIO(client.retrieve(report)))
        assert dataset.PatientBirthDate == "" and dataset.StudyTime == "" and dataset.PatientID == SENTINELS["patient_id"]
        out = capsys.readouterr()
        logged = "\n".join(record.getMessage() for record in caplog.records)
        assert "1980-01-01" not in out.out + out.err + logged
    finally:
        server.remove()


def test_a_report_with_the_subtype_pattern_goes_back_and_reads_back_with_its_private_codes(tmp_path, tiny_subtype):
    from helpers import calling_every_film

    predictor = calling_every_film(Predictor.from_file(tiny_subtype, subtype=True), "pneumonia")
    server, study, _ = one_study_server(tmp_path / "orthanc", n_films=1)
    try:
        client = client_for(server)
        (instance,) = client.instances(study.study_uid)
        (result,) = score_instances(client, predictor, [instance])
        assert result.prediction.subtype is not None
        sent = send_report(client, instance, result.prediction, predictor.operating_point)
        (stored,) = [i for i in client.instances(study.study_uid) if i.sop_uid == sent.sr_uid]
        values = read_report(pydicom.dcmread(io.BytesIO(client.retrieve(stored))))  # as the PACS keeps it
        assert (values["label"], values["subtype"]) == ("pneumonia", result.prediction.subtype)
        assert values["subtype_probability"] == pytest.approx(result.prediction.subtype_probability, abs=1e-6)
        assert values["subtype_note"].startswith("A radiographic pattern, not a cause.")
    finally:
        server.remove()
