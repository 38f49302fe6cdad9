"""Command line: ``python -m pneumo_model COMMAND`` in the repository, ``pneumo COMMAND`` once installed.

Commands: ``predict``, ``batch``, ``explain``, ``crop``, ``site``, ``train``, ``evaluate``, ``compare``,
``stress``, ``card``, ``bench``, ``ood``, ``heatmap-scale``, ``export-onnx``, ``zone``, ``attention``, ``monitor``.
Exit codes: 0 success, 1 a usage or model error, 2 (``predict``, ``batch``) when any file was rejected, (``site``) when
the labelled sample is refused or ``site align`` refuses the unlabelled films, (``monitor``) when the audit trail is
missing or unreadable.

Each command is one function that adds its sub-parser, with ``set_defaults(handler=...)``, and
the handler beside it; ``main`` calls the parsed command's handler. Building the parser imports
no TensorFlow (``--help`` is instant): handlers import what they need when they run.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InvalidImageError, PneumoError
from .paths import DEFAULT_MODEL_PATH
from .schema import PREDICTION_SCHEMA_VERSION

if TYPE_CHECKING:  # annotations only: the lab side loads TensorFlow
    from .lab.training import TrainConfig

EXIT_OK, EXIT_ERROR, EXIT_REJECTED = 0, 1, 2
# training.PROTOCOLS and training.IMBALANCE_METHODS, copied so that building the parser does not
# load TensorFlow through training (tests/test_cli.py keeps the copies equal).
TRAIN_PROTOCOLS = ("official", "pooled")
TRAIN_IMBALANCE_METHODS = ("class_weight", "oversample", "none")
# TrainConfig fields that a train flag of the same name sets (the others are mapped by hand).
_TRAIN_FIELDS = (
    "architecture", "input_size", "epochs", "batch_size", "learning_rate", "label_smoothing",
    "imbalance", "patience", "val_fraction", "protocol", "seed", "members",
)


def _prog() -> str:
    """The command's name in usage lines: ``pneumo`` when run as the installed console command."""
    return "pneumo" if Path(sys.argv[0]).name == "pneumo" else "python -m pneumo_model"


def _command_line(argv: list[str]) -> str:
    return "python -m pneumo_model " + shlex.join(argv)


def _add_data_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        default=None,
        help="chest_xray_224 folder (default: $PNEUMO_DATA, else ../shared/data/chest_xray_224)",
    )


def _add_model_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH, help="model .keras file (metadata beside it)")


def _rejected(file: str, error: InvalidImageError) -> dict:
    """The JSON line of a file that could not be scored (``predict``'s schema)."""
    return {"schema_version": PREDICTION_SCHEMA_VERSION, "file": file, "error": str(error)}


def _one_image(command):
    """A one-image command whose unusable image is that file's ``error`` line, exit 2 (as ``predict``)."""

    @functools.wraps(command)
    def run(args) -> int:
        try:
            return command(args)
        except InvalidImageError as error:
            print(json.dumps(_rejected(args.image, error)))
            return EXIT_REJECTED

    return run


# --- predict -------------------------------------------------------------------------------


def _add_predict(commands) -> None:
    parser = commands.add_parser("predict", help="score images; one JSON object per line and file")
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, BMP, TIFF or DICOM)")
    _add_model_flag(parser)
    _add_site_flag(parser)
    _add_audit_flag(parser)
    parser.set_defaults(handler=_predict)


def _add_audit_flag(
    parser: argparse.ArgumentParser, help: str = "also append each result to this audit trail (SQLite; created if missing)"
) -> None:
    parser.add_argument("--audit", type=Path, default=None, metavar="DB", help=help)


def _add_site_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--site", type=Path, default=None, metavar="PROFILE.json",
        help="call with this site profile's operating point (`site fit`) instead of the shipped one",
    )


def _predict(args) -> int:
    from .pipeline import DecodedImage
    from .prediction import Predictor

    predictor = Predictor.from_file(args.model, site=args.site)
    trail = None
    if args.audit is not None:
        from .audit import AuditTrail, ResultRecord

        trail = AuditTrail(args.audit)
    status = EXIT_OK
    for image in args.images:
        try:
            decoded = DecodedImage.decode(_read_image_file(image))  # hashed once, with the bytes it scores
            prediction = predictor.call(decoded)
        except InvalidImageError as error:
            print(json.dumps(_rejected(image, error)), flush=True)
            status = EXIT_REJECTED
            continue
        record = prediction.to_record(image)
        if trail is not None:
            # Only the image's SHA-256 goes in: file names can carry patient identifiers.
            (record["audit_id"],) = trail.record_results([ResultRecord.of(prediction, decoded.digest, "cli")])
        print(json.dumps(record), flush=True)
    return status


def _read_image_file(path: str) -> bytes:
    """The file's bytes, read once (scored and hashed from the same bytes), within the size limit.

    Raises:
        InvalidImageError: missing, a folder, unreadable or too large (``load_image``'s messages).
    """
    from .preprocessing import read_image_bytes

    return read_image_bytes(path)


# --- batch ---------------------------------------------------------------------------------


def _add_batch(commands) -> None:
    parser = commands.add_parser(
        "batch", help="score a whole archive (a folder or a list of paths) into a resumable Parquet data set"
    )
    parser.add_argument(
        "source", metavar="SOURCE",
        help="a folder of images (searched recursively), a text file of paths, one per line, or a DICOMweb query "
        "such as 'dicomweb:?date-from=20261101&date-to=20261130&modality=CR,DX' (keys date-from, date-to, modality, "
        "accession, body-part, study, limit; the server from PNEUMO_DICOMWEB_URL and its credentials)"
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="RESULTS",
        help="the results folder, a Parquet data set (pandas.read_parquet reads it); a rerun skips the files "
        "already in it with the same path and bytes",
    )
    parser.add_argument("--engine", choices=("local", "ray"), default="local", help="this process (default) or Ray Data")
    parser.add_argument(
        "--ray-address", default=None, metavar="ADDRESS",
        help="with --engine ray: a running cluster (host:port, ray://host:port or auto); default: start one here",
    )
    parser.add_argument(
        "--ray-temp", type=Path, default=None, metavar="DIR",
        help="with --engine ray started here: Ray's temporary and log folder (default: $PNEUMO_RAY_TEMP, else Ray's own)",
    )
    parser.add_argument(
        "--part-rows", type=int, default=256, metavar="N",
        help="rows per durable part of RESULTS (a killed run scores at most this many files again; default 256)",
    )
    parser.add_argument("--decoders", type=int, default=None, metavar="N", help="decoding threads (default: one per core)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    _add_model_flag(parser)
    _add_site_flag(parser)
    _add_audit_flag(parser)
    parser.set_defaults(handler=_batch)


def _batch(args) -> int:
    import os

    from .batch import BatchSettings, LocalEngine, open_source, run_batch

    settings = BatchSettings(part_rows=args.part_rows, decoders=args.decoders)
    if args.engine == "ray" and str(args.source).startswith("dicomweb:"):  # before searching the PACS
        print("error: the Ray engine reads files and object stores; score a DICOMweb source with --engine local.",
              file=sys.stderr)
        return EXIT_ERROR
    items = open_source(args.source, settings.limits)  # a bad SOURCE is refused before the model loads
    trail = None
    if args.audit is not None:
        from .audit import AuditTrail

        trail = AuditTrail(args.audit)
    if args.engine == "ray":
        from .batch_ray import RayEngine, RaySettings

        temp = args.ray_temp or (Path(os.environ["PNEUMO_RAY_TEMP"]) if os.environ.get("PNEUMO_RAY_TEMP") else None)
        engine = RayEngine(args.model, args.site, RaySettings(address=args.ray_address, temp_dir=temp, limits=settings.limits))
    else:
        if args.ray_address is not None or args.ray_temp is not None:
            print("error: --ray-address and --ray-temp go with --engine ray.", file=sys.stderr)
            return EXIT_ERROR
        from .prediction import Predictor

        engine = LocalEngine(Predictor.from_file(args.model, site=args.site), settings)
    summary = run_batch(items, engine, args.out, settings, trail, progress=not args.no_progress)
    for line in summary.lines():
        print(line)
    print(json.dumps(summary.to_dict()))
    return EXIT_REJECTED if summary.errors or summary.errors_held else EXIT_OK


# --- pacs ----------------------------------------------------------------------------------


def _add_pacs(commands) -> None:
    parser = commands.add_parser(
        "pacs", help="query a PACS over DICOMweb, score a study's images, send the results back as DICOM SR",
        description="The server comes from PNEUMO_DICOMWEB_URL (or --url); credentials from PNEUMO_DICOMWEB_USER "
        "and PNEUMO_DICOMWEB_PASSWORD, or PNEUMO_DICOMWEB_TOKEN; PNEUMO_DICOMWEB_CA_FILE names the certificate "
        "authority to trust. Usage, server and model errors exit 1.",
    )
    actions = parser.add_subparsers(dest="action", required=True)
    query = actions.add_parser("query", help="list the studies that match; one JSON object per study")
    _add_url_flag(query)
    query.add_argument("--date-from", default=None, metavar="YYYYMMDD", help="study date on or after")
    query.add_argument("--date-to", default=None, metavar="YYYYMMDD", help="study date on or before")
    query.add_argument("--modality", default="CR,DX", metavar="CR,DX", help="modalities in the study (default CR,DX)")
    query.add_argument("--accession", default=None, metavar="N", help="the study's accession number")
    query.add_argument("--body-part", default=None, metavar="CHEST", help="a series of the study examines this part")
    query.add_argument("--limit", type=int, default=200, help="at most this many studies (default 200)")
    query.set_defaults(handler=_pacs_query)
    score = actions.add_parser(
        "score", help="retrieve and score a study's images; one JSON object per instance (exit 2: some not scored)",
    )
    _add_url_flag(score)
    score.add_argument("--study", required=True, metavar="UID", help="the Study Instance UID")
    score.add_argument(
        "--instance", action="append", default=None, metavar="UID",
        help="score only this SOP Instance UID (repeat it; to retry the ones a server fault left out)",
    )
    score.add_argument(
        "--send", action="store_true",
        help="send each scored result back as a DICOM Comprehensive SR in the study (never twice for the same "
        "image and operating point)",
    )
    score.add_argument(
        "--with-heatmap", action="store_true",
        help="with --send, also send the Grad-CAM overlay as a DICOM Secondary Capture with NOT FOR DIAGNOSIS "
        "burned in (once, like the report)",
    )
    _add_model_flag(score)
    _add_site_flag(score)
    _add_audit_flag(score, "also append each result (and each report sent) to this audit trail (SQLite; created if missing)")
    score.set_defaults(handler=_pacs_score)


def _add_url_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None, help="the DICOMweb root (default: $PNEUMO_DICOMWEB_URL)")


def _pacs_client(args):
    from .pacs import PacsClient, PacsSettings

    return PacsClient(PacsSettings.from_environment(url=args.url))


def _pacs_query(args) -> int:
    from .pacs import StudyQuery

    query = StudyQuery(
        date_from=args.date_from, date_to=args.date_to, modalities=tuple(args.modality.split(",")),
        body_part=args.body_part, accession_number=args.accession, limit=args.limit,
    )
    studies = _pacs_client(args).query_studies(query)
    for study in studies:
        print(json.dumps(study.to_record()), flush=True)
    print(f"{len(studies)} studies found.", file=sys.stderr)
    return EXIT_OK


def _pacs_score(args) -> int:
    from .pacs import PacsError
    from .pacs_workflow import exit_status, format_counts, heatmap_picture, record_sent, score_instances, send_report
    from .prediction import Predictor

    if args.with_heatmap and not args.send:
        print("error: --with-heatmap sends the heat map beside the report: give --send too.", file=sys.stderr)
        return EXIT_ERROR
    client = _pacs_client(args)
    predictor = Predictor.from_file(args.model, site=args.site)
    scale = None
    if args.with_heatmap:
        from .explain import HeatmapScale, heatmap_scale_path

        scale = HeatmapScale.load(heatmap_scale_path(args.model), predictor.metadata.model_sha256)
    trail = None
    if args.audit is not None:
        from .audit import AuditTrail

        trail = AuditTrail(args.audit)
    instances = client.instances(args.study)
    if args.instance:
        wanted = set(args.instance)
        missing = wanted - {instance.sop_uid for instance in instances}
        if missing:
            print(f"error: the study has no instance {sorted(missing)[0]}.", file=sys.stderr)
            return EXIT_ERROR
        instances = [instance for instance in instances if instance.sop_uid in wanted]
    status = EXIT_OK

    def show(result) -> None:
        nonlocal status
        record = result.to_record()
        if result.prediction is not None:
            if trail is not None:
                from .audit import ResultRecord

                (record["audit_id"],) = trail.record_results([ResultRecord.of(result.prediction, result.digest, "cli")])
            if args.send:
                try:
                    picture = None if scale is None else heatmap_picture(predictor, result.image, scale)
                    sent = send_report(client, result.instance, result.prediction, predictor.operating_point, picture)
                except PacsError as error:
                    record["send_error"] = str(error)
                    status = EXIT_ERROR
                else:
                    record["sent_sr_uid"] = sent.sr_uid
                    record["already_sent"] = sent.already_on_server
                    if sent.capture_uid is not None:
                        record["sent_heatmap_uid"] = sent.capture_uid
                    if sent.capture_error is not None:
                        record["heatmap_error"] = sent.capture_error
                        status = EXIT_ERROR
                    if trail is not None:
                        from .audit import AuditError

                        try:
                            record_sent(trail, record["audit_id"], sent, predictor.operating_point)
                        except AuditError as error:  # the report is on the PACS: say so, go on with the study
                            record["audit_error"] = str(error)
                            status = EXIT_ERROR
        print(json.dumps(record), flush=True)

    # With the heat map, each image is kept until its picture is sent: 16 at a time, not the study.
    step = 16 if scale is not None else max(1, len(instances))
    results = []
    for start in range(0, len(instances), step):
        chunk = score_instances(client, predictor, instances[start:start + step], keep_images=scale is not None,
                                on_result=show)
        results += [dataclasses.replace(result, image=None) for result in chunk]
    print(format_counts(results), file=sys.stderr)
    return max(status, exit_status(results), key=lambda code: {EXIT_OK: 0, EXIT_REJECTED: 1, EXIT_ERROR: 2}[code])


# --- site ----------------------------------------------------------------------------------


def _add_site(commands) -> None:
    parser = commands.add_parser(
        "site", help="fit, check or evaluate a site profile: an operating point calibrated on local labelled films"
    )
    actions = parser.add_subparsers(dest="site_command", required=True)

    fit = actions.add_parser("fit", help="fit a site profile on a labelled local sample (exit 2: sample refused)")
    _add_sample_flags(fit)
    fit.add_argument("--out", type=Path, required=True, metavar="PROFILE.json", help="where to write the profile")
    fit.add_argument(
        "--target-sensitivity", type=float, default=None, metavar="S",
        help="sensitivity the threshold aims at (default 0.97)",
    )
    _add_model_flag(fit)
    fit.set_defaults(handler=_site_fit)

    align = actions.add_parser(
        "align", help="a label-free site profile from unlabelled local films (exit 2: refused, nothing written)"
    )
    films = align.add_mutually_exclusive_group(required=True)
    films.add_argument("--folder", type=Path, metavar="DIR", help="every image file under this folder")
    films.add_argument("--files", type=Path, metavar="LIST.txt", help="a text file of image paths, one per line")
    films.add_argument("--audit", type=Path, metavar="DB", help="the films of this audit trail scored by this model")
    align.add_argument("--last", type=int, default=None, metavar="N", help="with --audit: the last N distinct films only")
    align.add_argument("--since", default=None, metavar="YYYY-MM-DD", help="with --audit: films recorded on or after this day (UTC)")
    align.add_argument("--until", default=None, metavar="YYYY-MM-DD", help="with --audit and --since: on or before this day (UTC)")
    align.add_argument("--out", type=Path, required=True, metavar="PROFILE.json", help="where to write the profile")
    _add_model_flag(align)
    align.set_defaults(handler=_site_align)

    reference = actions.add_parser(
        "reference", help="write the model's validation reference (<model>.reference.json) that `site align` aligns to"
    )
    _add_data_flag(reference)
    _add_model_flag(reference)
    reference.set_defaults(handler=_site_reference)

    check = actions.add_parser("check", help="score a fresh labelled sample with a profile and report its figures")
    check.add_argument("profile", type=Path, metavar="PROFILE.json")
    _add_sample_flags(check)
    _add_model_flag(check)
    check.set_defaults(handler=_site_check)

    evaluate = actions.add_parser(
        "evaluate", help="the official test split plays a new site: profiles fitted on drawn samples, scored on the rest"
    )
    _add_data_flag(evaluate)
    _add_model_flag(evaluate)
    evaluate.add_argument("--reports", type=Path, default=None, help="report folder (default: reports/)")
    evaluate.add_argument("--draws", type=int, default=200, help="seeded draws per sample size (default 200)")
    evaluate.add_argument(
        "--label-free", action="store_true",
        help="evaluate label-free alignment (`site align`) instead: unlabelled samples of 100, 250 and 500 films",
    )
    evaluate.set_defaults(handler=_site_evaluate)


def _add_sample_flags(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--labels", type=Path, metavar="LABELS.csv",
        help="CSV with the columns file,label (normal or pneumonia); file relative to the CSV's folder",
    )
    source.add_argument("--folder", type=Path, metavar="DIR", help="a folder with NORMAL/ and PNEUMONIA/ inside")


def _scored_sample(args, predictor):
    """The labelled sample named by ``--labels`` or ``--folder``, scored (progress on stderr)."""
    from .site import read_labelled_folder, read_labels_csv, score_sample

    files = read_labels_csv(args.labels) if args.labels is not None else read_labelled_folder(args.folder)

    def progress(done: int, total: int) -> None:
        print(f"\rscoring {done}/{total} images", end="" if done < total else "\n", file=sys.stderr, flush=True)

    sample = score_sample(predictor, files, progress)
    print(f"{sample.n_normal} normal and {sample.n_pneumonia} pneumonia images used, of {sample.files_in} files.")
    for name, first in sample.merged:
        print(f"counted once: {name} is the same image as {first}")
    for name, reason in sample.excluded:
        print(f"excluded: {name}: {reason}")
    for warning in sample.warnings:
        print(f"warning: {warning}")
    return sample


def _print_figures(stated: dict, sample, out_of_fold: bool) -> None:
    from .site import uncertainty_line

    how = "out of fold (5 folds; never on the images a threshold was chosen on)" if out_of_fold else "on this sample"
    print(f"figures {how}, 95 % Wilson intervals:")
    for name, value in stated.items():
        if value is not None:
            print(f"  {name.replace('_', ' ')}: {value['value']:.3f} ({value['low']:.3f}-{value['high']:.3f}; {value['count']}/{value['n']})")
    print("  " + uncertainty_line(sample.n_pneumonia, "pneumonia", stated["sensitivity"]))
    print("  " + uncertainty_line(sample.n_normal, "normal", stated["specificity"]))
    if out_of_fold:
        print(
            "  these intervals are optimistic: in the test-split protocol (reports/site_calibration.md) they held "
            "the figure later found on new images less often than 95 % of the time"
        )


def _site_fit(args) -> int:
    from .errors import SiteInputError
    from .prediction import Predictor
    from .site import DEFAULT_TARGET_SENSITIVITY, fit_profile, summary

    target = DEFAULT_TARGET_SENSITIVITY if args.target_sensitivity is None else args.target_sensitivity
    if not 0.5 <= target < 1.0:
        print(f"error: --target-sensitivity must lie in [0.5, 1); got {target}.", file=sys.stderr)
        return EXIT_ERROR
    if args.out.is_dir():
        print(f"error: --out {args.out} is a folder; give a file name such as site_profile.json.", file=sys.stderr)
        return EXIT_ERROR
    predictor = Predictor.from_file(args.model)
    try:
        sample = _scored_sample(args, predictor)
        profile = fit_profile(sample, target)
    except SiteInputError as error:
        print(f"refused: {error}", file=sys.stderr)
        return EXIT_REJECTED
    calibration = profile.calibration
    losses = ", ".join(f"{name} {loss:.4f}" for name, loss in calibration["cv_log_loss"].items())
    print(f"recalibration: {calibration['method']} (cross-validated log loss: {losses})")
    print(f"threshold {profile.threshold:.4f} for a target sensitivity of {target}; grey zone [{profile.grey_zone[0]:.4f}, {profile.grey_zone[1]:.4f})")
    _print_figures(profile.figures, sample, out_of_fold=True)
    profile.save(args.out)
    print(f"wrote {args.out} ({profile.description}); activate it with PNEUMO_SITE={args.out} or predict --site {args.out}")
    print(json.dumps(summary(profile.id, profile.threshold, profile.grey_zone, profile.n_normal, profile.n_pneumonia, profile.figures)))
    return EXIT_OK


def _site_check(args) -> int:
    from .errors import SiteInputError
    from .prediction import Predictor
    from .site import SiteProfile, check_profile, summary

    profile = SiteProfile.load(args.profile)
    predictor = Predictor.from_file(args.model, site=args.profile)  # refuses another model's profile before scoring
    try:
        sample = _scored_sample(args, predictor)
    except SiteInputError as error:
        print(f"refused: {error}", file=sys.stderr)
        return EXIT_REJECTED
    stated = check_profile(profile, sample)
    print(f"{profile.description}: threshold {profile.threshold:.4f}, grey zone [{profile.grey_zone[0]:.4f}, {profile.grey_zone[1]:.4f})")
    _print_figures(stated, sample, out_of_fold=False)
    line = summary(profile.id, profile.threshold, profile.grey_zone, sample.n_normal, sample.n_pneumonia, stated)
    if getattr(profile, "kind", "labelled") == "label-free":
        from .alignment import held

        verdict = held(stated)
        line |= {"kind": profile.kind, "held": verdict["held"], "reasons": verdict["reasons"]}
        print(("the label-free profile held: " if verdict["held"] else "the label-free profile did NOT hold: ") + " ".join(verdict["reasons"]))
    print(json.dumps(line))
    return EXIT_OK


def _site_reference(args) -> int:
    from .data import resolve_data_dir
    from .lab.label_free import write_reference

    path = write_reference(args.model, resolve_data_dir(args.data), args.command_line)
    print(json.dumps({"reference": str(path)}))
    return EXIT_OK


def _audit_window(args) -> dict | None:
    """``--last`` / ``--since`` / ``--until`` checked; their keywords for the trail's reading, or None (usage error printed)."""
    import datetime as dt

    if args.audit is None:
        if args.last is not None or args.since is not None or args.until is not None:
            print("error: --last, --since and --until go with --audit only.", file=sys.stderr)
            return None
        return {}
    if args.last is not None and (args.since is not None or args.until is not None):
        print("error: give --last N or --since/--until, not both.", file=sys.stderr)
        return None
    if args.until is not None and args.since is None:
        print("error: --until needs --since.", file=sys.stderr)
        return None
    if args.last is not None and args.last < 1:
        print(f"error: --last must be at least 1; got {args.last}.", file=sys.stderr)
        return None
    window = {}
    for name in ("since", "until"):
        value = getattr(args, name)
        if value is None:
            continue
        try:
            window[name] = dt.date.fromisoformat(value).isoformat()
        except ValueError:
            print(f"error: --{name} must be a date YYYY-MM-DD; got {value!r}.", file=sys.stderr)
            return None
    if args.last is not None:
        window["last"] = args.last
    return window


def _site_align(args) -> int:
    from .alignment import MAX_AGE_YEARS, AlignmentRefused, Reference, align, reference_path, score_unlabelled
    from .prediction import Predictor

    window = _audit_window(args)
    if window is None:
        return EXIT_ERROR
    if args.out.is_dir():
        print(f"error: --out {args.out} is a folder; give a file name such as site_profile.json.", file=sys.stderr)
        return EXIT_ERROR
    predictor = Predictor.from_file(args.model)
    reference = Reference.load(reference_path(args.model), predictor.metadata.model_sha256)
    if args.audit is not None:
        from .alignment import scores_from_audit

        # An old record without its logit gets it back from its probability where its operating point was the shipped one.
        shipped = predictor.operating_point
        scores = scores_from_audit(args.audit, predictor.metadata.model_sha256, {shipped.id: (shipped.scale, shipped.offset)}, **window)
    else:
        from .batch import folder_items, list_items

        items = folder_items(args.folder) if args.folder is not None else list_items(args.files)

        def progress(done: int, total: int) -> None:
            print(f"\rscoring {done}/{total} films", end="" if done < total else "\n", file=sys.stderr, flush=True)

        scores = score_unlabelled(predictor, items, progress)
    for name, reason in scores.unreadable:
        print(f"left out: {name}: {reason}", file=sys.stderr)
    counts = scores.counts()
    print(
        f"{counts['used']} distinct films used, of {counts['files_in']} given ({counts['unreadable']} unreadable, "
        f"{counts['duplicates_merged']} duplicates counted once, {counts['excluded_by_gate']} flagged by the gate, "
        f"{counts['excluded_over_age']} over {MAX_AGE_YEARS} years by the header)."
    )
    try:
        profile = align(predictor.metadata, reference, scores)
    except AlignmentRefused as refused:
        for reason in refused.reasons:
            print(f"refused: {reason}", file=sys.stderr)
        print(json.dumps({"refused": True, "reasons": refused.reasons, **refused.facts}))
        return EXIT_REJECTED
    low, high = profile.prevalence_interval
    print(
        f"estimated prevalence {profile.estimated_prevalence:.2f} ({low:.2f}-{high:.2f}, without labels); threshold "
        f"{profile.threshold:.4f} and grey zone [{profile.grey_zone[0]:.4f}, {profile.grey_zone[1]:.4f}) kept from validation, "
        f"in the aligned probability; the threshold moved by {profile.threshold_move:+.2f} log-odds."
    )
    profile.save(args.out)
    print(
        f"wrote {args.out} ({profile.description}); activate it with PNEUMO_SITE={args.out} or predict --site {args.out}. "
        "A labelled profile (`site fit`) stays the better evidence; confirm this one with `site check` on labelled films."
    )
    print(json.dumps({
        "id": profile.id, "kind": profile.kind, "n": profile.n, "estimated_prevalence": profile.estimated_prevalence,
        "prevalence_interval": [low, high], "threshold": profile.threshold, "grey_zone": list(profile.grey_zone),
        "threshold_move": profile.threshold_move, "counts": profile.counts, "written": str(args.out),
    }))
    return EXIT_OK


def _site_evaluate(args) -> int:
    from .data import resolve_data_dir
    from .lab.evaluation import DEFAULT_REPORTS_DIR
    from .lab.site_evaluation import evaluate_site_calibration

    if args.draws < 1:
        print(f"error: --draws must be at least 1; got {args.draws}.", file=sys.stderr)
        return EXIT_ERROR
    if args.label_free:
        from .lab.label_free import evaluate_label_free

        report = evaluate_label_free(args.model, resolve_data_dir(args.data), args.reports or DEFAULT_REPORTS_DIR, draws=args.draws)
        print(json.dumps({"must_reach": report["must_reach"], "must_reach_met": report["must_reach_met"]}))
        return EXIT_OK
    report = evaluate_site_calibration(
        args.model, resolve_data_dir(args.data), args.reports or DEFAULT_REPORTS_DIR, draws=args.draws
    )
    print(json.dumps({key: report[key] for key in ("must_reach",) if key in report} or {"written": True}))
    return EXIT_OK


# --- train ---------------------------------------------------------------------------------


def _add_train(commands) -> None:
    # The defaults are None: TrainConfig's own fill them in (train_config_from_args), so that
    # building the parser does not import training, and with it TensorFlow.
    parser = commands.add_parser("train", help="train, calibrate on validation, write model + metadata")
    _add_data_flag(parser)
    _add_model_flag(parser)
    _add_train_flags(parser)
    parser.set_defaults(handler=_train)


def _add_train_subtype(commands) -> None:
    parser = commands.add_parser(
        "train-subtype",
        help="train the subtype pattern's network (bacterial-like / viral-like) on train's pneumonia films "
        "(docs/subtype_rule.md)",
    )
    _add_data_flag(parser)
    _add_model_flag(parser)
    parser.add_argument("--out", type=Path, default=None, help="the subtype model to write (default: <model>.subtype.keras)")
    parser.add_argument(
        "--init-from", type=Path, default=None,
        help="start from this model's weights (all but its last dense unit); default: random weights",
    )
    _add_train_flags(parser)
    parser.set_defaults(handler=_train_subtype)


def _trained_summary(metadata) -> dict:
    """What ``train`` and ``train-subtype`` print of the model they wrote."""
    data = metadata.to_dict()
    return {k: data[k] for k in ("model_sha256", "temperature", "threshold", "grey_zone", "training_seconds")}


def _train_subtype(args) -> int:
    from .bundle import subtype_model_path
    from .data import resolve_data_dir
    from .lab.subtype_training import train_subtype

    config = train_config_from_args(args)
    out = args.out or subtype_model_path(args.model)
    metadata = train_subtype(config, resolve_data_dir(args.data), out, init_from=args.init_from, command=args.command_line)
    summary = _trained_summary(metadata)
    summary["validation"] = {k: metadata.validation[k] for k in ("roc_auc", "undetermined_fraction", "viral_recall_outside_band")}
    print(json.dumps(summary))
    return EXIT_OK


def _add_train_flags(parser) -> None:
    parser.add_argument("--architecture")
    parser.add_argument("--input-size", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--label-smoothing", type=float)
    parser.add_argument("--imbalance", choices=TRAIN_IMBALANCE_METHODS)
    parser.add_argument("--patience", type=int)
    parser.add_argument("--val-fraction", type=float)
    parser.add_argument("--protocol", choices=TRAIN_PROTOCOLS)
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--members", type=int,
        help="networks averaged into one deep ensemble (same split; member k seeded seed+k)",
    )
    parser.add_argument("--time-budget", type=float, default=None, help="seconds; stop after the epoch past it")
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument(
        "--max-aspect", type=float,
        help="augmentation: largest change of width/height scale ratio, either way",
    )
    parser.add_argument(
        "--class-aspect", type=float,
        help="augmentation: widen pneumonia and narrow normal anatomy by this ratio on average "
        "(1.25 cancels the data set's class-correlated squash; 1 = off)",
    )
    parser.add_argument(
        "--target-sensitivity", type=float,
        help="validation sensitivity the threshold is set for",
    )


def train_config_from_args(args) -> TrainConfig:
    """The ``TrainConfig`` that ``train`` runs with for parsed command-line ``args``.

    A flag left out (None) keeps ``TrainConfig``'s default.
    """
    from .lab.training import TrainConfig

    defaults = TrainConfig()
    given = {name: getattr(args, name) for name in _TRAIN_FIELDS if getattr(args, name) is not None}
    aspects = {name: getattr(args, name) for name in ("max_aspect", "class_aspect") if getattr(args, name) is not None}
    operating = {} if args.target_sensitivity is None else {"target_sensitivity": args.target_sensitivity}
    return dataclasses.replace(
        defaults,
        **given,
        time_budget_s=args.time_budget,
        augment=not args.no_augment,
        augmentation=dataclasses.replace(defaults.augmentation, **aspects),
        operating=dataclasses.replace(defaults.operating, **operating),
    )


def _train(args) -> int:
    from .data import resolve_data_dir
    from .lab.training import train

    config = train_config_from_args(args)
    metadata = train(config, resolve_data_dir(args.data), args.model, command=args.command_line)
    summary = _trained_summary(metadata)
    summary["validation_auc"] = metadata.validation["roc_auc"]
    print(json.dumps(summary))
    return EXIT_OK


# --- evaluate ------------------------------------------------------------------------------


def _add_evaluate(commands) -> None:
    parser = commands.add_parser("evaluate", help="write the evaluation report for a model")
    _add_data_flag(parser)
    _add_model_flag(parser)
    parser.add_argument("--reports", type=Path, default=None, help="report folder (default: reports/)")
    parser.add_argument("--split", choices=("test", "validation"), default="test")
    parser.add_argument(
        "--crop", choices=("none", "auto", "markers", "boxes"), default="none",
        help="auto: score with and without the automatic diaphragm crop (crop_evaluation report); markers: with "
        "and without the burned-in markers painted out, alone and with the automatic crop (marker_evaluation report); "
        "boxes: strips, halves, random allowed boxes and the automatic crop rescored under the rescore rule "
        "(crop_boxes report)",
    )
    parser.add_argument(
        "--fullres", type=Path, default=None,
        help="--crop markers: folder of full-size originals whose marker find rate is reported too (default: beside the data)",
    )
    parser.add_argument(
        "--subtype", action="store_true",
        help="the subtype pattern (bacterial-like / viral-like) of the split's pneumonia films, by the network beside "
        "the model (subtype_evaluation report; docs/subtype_rule.md)",
    )
    parser.set_defaults(handler=_evaluate)


def _evaluate(args) -> int:
    from .data import resolve_data_dir
    from .lab.evaluation import DEFAULT_REPORTS_DIR, evaluate

    if args.subtype:
        if args.crop != "none":
            from .errors import ConfigError

            raise ConfigError("--subtype scores the films as they are; leave out --crop.")
        from .lab.subtype_evaluation import evaluate_subtype

        report = evaluate_subtype(args.model, resolve_data_dir(args.data), args.reports or DEFAULT_REPORTS_DIR, split=args.split)
        summary = {key: report["metrics"][key] for key in ("roc_auc", "accuracy", "viral_recall", "bacterial_recall", "undetermined_fraction", "viral_recall_outside_band")}
        summary["must_reach_met"] = report["must_reach_met"]
        print(json.dumps(summary))
        return EXIT_OK

    if args.crop == "markers":
        from .lab.evaluation import evaluate_markers

        data_dir = resolve_data_dir(args.data)
        fullres = args.fullres or data_dir.parent / "chest_xray_fullres_sample"
        report = evaluate_markers(args.model, data_dir, args.reports or DEFAULT_REPORTS_DIR, split=args.split, fullres_dir=fullres)
        keys = ("accuracy", "sensitivity", "specificity", "roc_auc")
        summary = {column: {k: report["metrics"][column][k] for k in keys} for column in report["metrics"]}
        summary["markers_found_fraction"] = report["markers"]["found_fraction"]
        summary["calls_changed_by_masking"] = report["changes"]["masking"]["call_changed"]
        print(json.dumps(summary))
        return EXIT_OK
    if args.crop == "boxes":
        from .lab.crop_boxes import evaluate_crop_boxes

        report = evaluate_crop_boxes(args.model, resolve_data_dir(args.data), args.reports or DEFAULT_REPORTS_DIR, split=args.split)
        keys = ("pairs", "refused_share", "manufactured_share", "lost_share")
        print(json.dumps({kind: {k: row[k] for k in keys} for kind, row in report["kinds"].items()}))
        return EXIT_OK
    if args.crop == "auto":
        from .lab.evaluation import evaluate_crop

        report = evaluate_crop(args.model, resolve_data_dir(args.data), args.reports or DEFAULT_REPORTS_DIR, split=args.split)
        keys = ("accuracy", "sensitivity", "specificity", "roc_auc")
        print(json.dumps({column: {k: report["metrics"][column][k] for k in keys} for column in report["metrics"]}))
        return EXIT_OK
    report = evaluate(args.model, resolve_data_dir(args.data), args.reports or DEFAULT_REPORTS_DIR, split=args.split)
    print(json.dumps({k: report["image"][k] for k in ("accuracy", "sensitivity", "specificity", "roc_auc")}))
    return EXIT_OK


# --- explain -------------------------------------------------------------------------------


def _add_explain(commands) -> None:
    parser = commands.add_parser(
        "explain",
        help="write a Grad-CAM or LIME overlay at the image's own size, on the model's fixed heat-map scale "
        "(its colour bar to a second file with --legend-out)",
    )
    parser.add_argument("image")
    parser.add_argument("--method", choices=("gradcam", "lime"), default="gradcam")
    parser.add_argument(
        "--out", type=Path, required=True, help="PNG file to write: the overlay, at the image's own size (to lay over the film)"
    )
    parser.add_argument(
        "--legend-out", type=Path, default=None, metavar="FILE",
        help="also write the overlay's colour bar to this PNG file (at least 640 px wide, else the image's width)",
    )
    parser.add_argument("--alpha", type=float, default=0.4, help="overlay opacity where the map is strongest")
    parser.add_argument("--samples", type=int, default=1000, help="LIME perturbation samples")
    parser.add_argument("--segments", type=int, default=50, help="LIME superpixels (SLIC)")
    parser.add_argument("--seed", type=int, default=0, help="LIME seed")
    _add_model_flag(parser)
    parser.set_defaults(handler=_explain)


@_one_image
def _explain(args) -> int:
    from PIL import Image

    from .explain import (
        GradCam,
        HeatmapScale,
        LimeConfig,
        explain_lime,
        gradcam_colour_bar,
        heatmap_scale_path,
        lime_colour_bar,
    )
    from .pipeline import DecodedImage
    from .prediction import Predictor

    predictor = Predictor.from_file(args.model)
    # The page's scale: a map is never stretched to its own maximum, and another model's scale is refused.
    scale = HeatmapScale.load(heatmap_scale_path(args.model), predictor.metadata.model_sha256)
    image = DecodedImage.decode(args.image)
    pixels, model_input = image.pixels, image.model_input(predictor.input_size)  # (size, size, 1)
    prediction = predictor.call(image)
    record = prediction.to_record(args.image) | {"method": args.method, "out": str(args.out), "heatmap_scale": scale.id}
    if args.legend_out is not None:
        record["legend_out"] = str(args.legend_out)
    legend_width = max(640, pixels.shape[1])
    # The overlay alone, at the image's own size, so a viewer can lay it over the film; the colour bar
    # (as wide as the film, at least 640 px) is drawn only when asked for, into its own file.
    if args.method == "gradcam":
        raw = GradCam(predictor.model, predictor.metadata.gradcam_layer).raw(model_input)  # (size, size)
        peak = scale.peak(raw)
        picture = scale.overlay(pixels, raw, alpha=args.alpha)  # (h, w, 3)
        legend = gradcam_colour_bar(scale, args.alpha, peak=peak, width=legend_width) if args.legend_out else None
        record |= {"gradcam_peak": round(peak, 4), "gradcam_weak": scale.is_weak(raw)}
    else:
        config = LimeConfig(num_samples=args.samples, n_segments=args.segments, seed=args.seed)
        explanation = explain_lime(model_input, predictor, config)
        half_width = scale.lime_half_width(explanation)
        all_small = scale.lime_all_small(explanation, config)
        picture = explanation.overlay(pixels, half_width=half_width, alpha=args.alpha)  # (h, w, 3)
        small_below = None if all_small is None else scale.lime_small_below
        legend = lime_colour_bar(half_width, small_below, args.alpha, width=legend_width) if args.legend_out else None
        record |= {
            "towards_pneumonia": list(explanation.positive),
            "away_from_pneumonia": list(explanation.negative),
            "lime_scale": round(half_width, 4),
            "lime_all_small": all_small,
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(args.out)
    if legend is not None:
        args.legend_out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(legend).save(args.legend_out)
    print(json.dumps(record))
    return EXIT_OK


# --- crop ----------------------------------------------------------------------------------


def _add_crop(commands) -> None:
    parser = commands.add_parser(
        "crop", help="crop the diaphragm (automatic or --box) and/or paint out burned-in markers, and rescore; JSON out"
    )
    parser.add_argument("image")
    parser.add_argument(
        "--box", default=None,
        help="x0,y0,x1,y1 in pixels of the image as decoded (default: detected); an image over 16 million "
        "pixels is decoded reduced, by the factor `reduction` in the output",
    )
    parser.add_argument(
        "--mask-markers", action="store_true",
        help="paint out burned-in markers (letters, text, electrodes) before rescoring; with --no-crop, the only change",
    )
    parser.add_argument(
        "--no-crop", action="store_true", help="do not crop (with --mask-markers: rescore with the markers painted out only)"
    )
    parser.add_argument("--out", type=Path, default=None, help="PNG of the image with the kept box and the markers outlined")
    _add_model_flag(parser)
    parser.set_defaults(handler=_crop)


def _parse_box(text: str) -> tuple[int, int, int, int]:
    from .errors import ConfigError

    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ConfigError(f"--box must be four whole numbers x0,y0,x1,y1 in pixels; got '{text}'.")
    return values


@_one_image
def _crop(args) -> int:
    from PIL import Image, ImageDraw

    from .crop import find_diaphragm, find_markers
    from .display import screen_grey
    from .errors import ConfigError
    from .pipeline import DecodedImage
    from .prediction import Predictor

    if args.no_crop and args.box is not None:
        raise ConfigError("--no-crop and --box contradict each other: give one of them.")
    if args.no_crop and not args.mask_markers:
        raise ConfigError("--no-crop leaves nothing to rescore: add --mask-markers, or leave --no-crop out.")
    predictor = Predictor.from_file(args.model)
    image = DecodedImage.decode(args.image)
    pixels = image.pixels
    record = {"file": args.image, "warnings": list(image.info.warnings), "reduction": image.info.reduction}
    detection = None if args.no_crop else find_diaphragm(pixels)  # the lung outline the rescore rule checks
    if args.box is not None:
        box, source, reason = _parse_box(args.box), "given", None
    elif args.no_crop:
        box, source, reason = None, "none", None
    else:
        box, source, reason = detection.box, "automatic", detection.reason
    markers = find_markers(pixels) if args.mask_markers else None
    if markers is not None:
        record["markers"] = {"count": markers.count, "area_fraction": round(markers.area_fraction, 6), "boxes": [list(b) for b in markers.boxes]}
    if box is None and markers is None:
        before = predictor.call(image)
        record |= {"box": None, "box_source": source, "reason": reason, "probability_before": round(before.probability, 6),
                   "probability_after": None, "delta": None, "ood_before": before.ood,
                   "ood_score_before": None if before.ood_score is None else round(before.ood_score, 4)}
    else:
        # Both calls through the gate, as predict's; a crop breaking the rescore rule (docs/crop_rule.md)
        # is refused as the Crop page refuses it: exit 0, "refused": true, its reason, nothing after.
        result = predictor.rescore(image, box, markers=markers, lungs=detection)
        record |= result.to_dict() | {"box_source": source, "box_reason": reason}
        if not result.refused:
            record["reason"] = reason
    if args.out is not None and (box is not None or markers is not None):
        grey = Image.fromarray(screen_grey(pixels, max_side=max(pixels.shape))).convert("RGB")
        draw = ImageDraw.Draw(grey)
        line = max(2, grey.width // 200)
        if box is not None:
            draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=(0, 114, 178), width=line)
        for x0, y0, x1, y1 in markers.boxes if markers is not None else ():
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(230, 159, 0), width=line)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        grey.save(args.out)
        record["out"] = str(args.out)
    print(json.dumps(record))
    return EXIT_OK


# --- compare -------------------------------------------------------------------------------


def _add_compare(commands) -> None:
    parser = commands.add_parser(
        "compare", help="train and score variants: the architecture families, or the class-imbalance methods"
    )
    parser.add_argument(
        "--study", choices=("families", "imbalance"), default="families",
        help="families: every architecture, test reported; imbalance: production network per method, validation only",
    )
    _add_data_flag(parser)
    parser.add_argument("--input-size", type=int, default=96)
    parser.add_argument("--time-budget", type=float, default=600.0, help="seconds per architecture")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--architectures", nargs="*", default=None)
    parser.add_argument("--reports", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=Path("runs/compare"), help="folder for the trained models")
    parser.set_defaults(handler=_compare)


def _compare(args) -> int:
    from .lab.comparison import compare, imbalance_study
    from .data import resolve_data_dir
    from .lab.evaluation import DEFAULT_REPORTS_DIR
    from .lab.training import TrainConfig

    data_dir, reports = resolve_data_dir(args.data), args.reports or DEFAULT_REPORTS_DIR
    if args.study == "imbalance":
        base = TrainConfig(input_size=args.input_size, epochs=args.epochs, time_budget_s=args.time_budget)
        imbalance_study(data_dir, reports, args.work, base, command=args.command_line)
        return EXIT_OK
    compare(
        data_dir,
        reports,
        args.work,
        input_size=args.input_size,
        time_budget_s=args.time_budget,
        epochs=args.epochs,
        architectures=args.architectures,
        command=args.command_line,
    )
    return EXIT_OK


# --- stress --------------------------------------------------------------------------------


def _add_stress(commands) -> None:
    parser = commands.add_parser(
        "stress", help="score models' validation split under deliberate shifts; name the preferred one"
    )
    parser.add_argument("models", nargs="+", type=Path, help="candidate .keras files (metadata beside each)")
    _add_data_flag(parser)
    parser.add_argument("--reports", type=Path, default=None)
    parser.set_defaults(handler=_stress)


def _stress(args) -> int:
    from .data import resolve_data_dir
    from .lab.evaluation import DEFAULT_REPORTS_DIR
    from .lab.stress import stress_report

    report = stress_report(args.models, resolve_data_dir(args.data), args.reports or DEFAULT_REPORTS_DIR)
    for name, per_stress in report["results"].items():
        print(json.dumps({"model": name, **{k: round(v["roc_auc"], 4) for k, v in per_stress.items()}}))
    print(json.dumps({"preferred": report["preferred"]}))
    return EXIT_OK


# --- bench ---------------------------------------------------------------------------------


def _add_bench(commands) -> None:
    parser = commands.add_parser(
        "bench", help="time every step against its target and measure one upload's peak memory; writes reports/bench.json"
    )
    _add_data_flag(parser)
    _add_model_flag(parser)
    parser.add_argument("--fullres", type=Path, default=None, help="folder of full-size originals (default: beside the data)")
    parser.add_argument("--lime-images", type=int, default=20)
    parser.add_argument("--naive-images", type=int, default=3)
    parser.add_argument("--samples", type=int, default=1000, help="LIME samples, both ways")
    parser.add_argument(
        "--only", choices=("speed", "memory", "draft", "batch", "pacs", "onnx"), default=None,
        help="measure one part and keep the others' figures in bench.json; memory: the peak of one upload "
        "(decode to Grad-CAM and the screen copy) above the idle process, for each of the worst accepted "
        "files, each in a fresh interpreter (a few minutes), and the worst one against the bound (300 MB); "
        "draft: the JPEG draft decode against the whole decode on the full-size originals "
        "(reports/draft_decode.md); batch: full-size images/s through predict, batch local and batch ray "
        "on the same files, and a scale run of --scale-files files (linear cost, bounded memory); pacs: a "
        "100-image study of full-size films on a real Orthanc on localhost, queried, retrieved and scored, against "
        "one instance at a time, and the share of time in retrieval and in scoring; onnx: the run time on ONNX Runtime "
        "against TensorFlow in the same run (predict on one film, whole process: wall time and peak memory; a Ray "
        "actor's start; batch local and ray on each; parity on the validation and test films)",
    )
    parser.add_argument("--scale-files", type=int, default=10_000, help="distinct files of the batch part's scale run")
    parser.add_argument("--reports", type=Path, default=None)
    parser.set_defaults(handler=_bench)


def _bench(args) -> int:
    from .lab.bench import BENCH_PARTS, BenchConfig, run_bench
    from .data import resolve_data_dir
    from .lab.evaluation import DEFAULT_REPORTS_DIR

    data_dir = resolve_data_dir(args.data)
    parts = (args.only,) if args.only else BENCH_PARTS
    config = BenchConfig(lime_images=args.lime_images, naive_images=args.naive_images, lime_samples=args.samples, parts=parts,
                         scale_files=args.scale_files)
    fullres = args.fullres or data_dir.parent / "chest_xray_fullres_sample"
    run_bench(args.model, data_dir, fullres, args.reports or DEFAULT_REPORTS_DIR, config, log=lambda line: print(line, flush=True))
    return EXIT_OK


# --- ood -----------------------------------------------------------------------------------


def _add_ood(commands) -> None:
    parser = commands.add_parser(
        "ood",
        help="fit the out-of-distribution gate, fix its grade cut-offs (validation and corpus), or measure it into reports/ood.json",
    )
    parser.add_argument("action", choices=("fit", "grades", "evaluate"))
    _add_data_flag(parser)
    _add_model_flag(parser)
    parser.add_argument("--reports", type=Path, default=None)
    parser.set_defaults(handler=_ood)


def _ood(args) -> int:
    from .data import resolve_data_dir
    from .lab.evaluation import DEFAULT_REPORTS_DIR, evaluate_ood
    from .lab.ood_fit import fit_for_model, fix_grades
    from .paths import gate_path, grades_path

    if args.action == "fit":
        gate = fit_for_model(args.model, resolve_data_dir(args.data))
        print(json.dumps({"gate": str(gate_path(args.model)), "threshold": gate.threshold, **gate.facts}))
        return EXIT_OK
    if args.action == "grades":
        grades = fix_grades(args.model, resolve_data_dir(args.data))
        print(json.dumps({"grades": str(grades_path(args.model)), "unusual_from": grades.unusual_from,
                          "outside_from": grades.outside_from, "validation_whole": grades.facts["validation_whole"]}))
        return EXIT_OK
    report = evaluate_ood(args.model, resolve_data_dir(args.data), args.reports or DEFAULT_REPORTS_DIR)
    summary = {"test_pass_rate": report["test_split"]["pass_rate"]}
    summary |= {name: category["detection_rate"] for name, category in report["categories"].items()}
    print(json.dumps(summary))
    return EXIT_OK


# --- heatmap-scale -------------------------------------------------------------------------


def _add_heatmap_scale(commands) -> None:
    parser = commands.add_parser(
        "heatmap-scale",
        help="fit the fixed heat-map scale (docs/heatmap_scale.md) on the model's validation split and save it "
        "beside the model (<model>.cam.json)",
    )
    _add_data_flag(parser)
    _add_model_flag(parser)
    parser.add_argument("--out", type=Path, default=None, help="where to write it (default: beside the model)")
    parser.add_argument(
        "--subtype",
        action="store_true",
        help="fit the subtype pattern map's own scale instead, on the subtype model's validation pneumonia films "
        "(<model>.subtype.cam.json)",
    )
    parser.set_defaults(handler=_heatmap_scale)


def _heatmap_scale(args) -> int:
    from .data import resolve_data_dir
    from .explain import heatmap_scale_path, subtype_heatmap_scale_path
    from .lab.cam_scale import measure_model, measure_subtype

    measure = measure_subtype if args.subtype else measure_model
    scale = measure(args.model, resolve_data_dir(args.data), log=lambda line: print(line, file=sys.stderr, flush=True))
    out = args.out or (subtype_heatmap_scale_path if args.subtype else heatmap_scale_path)(args.model)
    scale.save(out)
    numbers = {k: v for k, v in scale.to_dict().items() if k not in ("facts", "schema_version")}
    print(json.dumps({"scale": str(out), **numbers, **scale.facts}))
    return EXIT_OK


# --- export-onnx ---------------------------------------------------------------------------


def _add_export_onnx(commands) -> None:
    parser = commands.add_parser(
        "export-onnx",
        help="export the model to the ONNX graph the app and the run-time commands score with "
        "(<model>.onnx and its record <model>.onnx.json beside it; the model itself is not changed)",
    )
    _add_model_flag(parser)
    parser.set_defaults(handler=_export_onnx)


def _export_onnx(args) -> int:
    from .lab.onnx_export import export_onnx
    from .onnx_model import onnx_path

    record = export_onnx(args.model)
    print(json.dumps({"onnx": str(onnx_path(args.model)), **record.to_dict()}))
    return EXIT_OK


# --- card ----------------------------------------------------------------------------------


def _add_card(commands) -> None:
    parser = commands.add_parser("card", help="write the model card facts to reports/model_card.json")
    parser.add_argument("--fullres", type=Path, default=None, help="folder of original files (default: beside the data)")
    _add_data_flag(parser)
    parser.add_argument("--reports", type=Path, default=None)
    parser.set_defaults(handler=_card)


def _card(args) -> int:
    from .data import resolve_data_dir
    from .lab.evaluation import DEFAULT_REPORTS_DIR
    from .lab.model_card import write_model_card

    fullres = args.fullres or resolve_data_dir(args.data).parent / "chest_xray_fullres_sample"
    facts = write_model_card(args.reports or DEFAULT_REPORTS_DIR, fullres)
    print(json.dumps(facts["shortcut_geometry"]))
    return EXIT_OK


# --- zone ----------------------------------------------------------------------------------


def _add_grey_zone(commands) -> None:
    parser = commands.add_parser(
        "zone", help="measure the grey-zone rule (docs/grey_zone_rule.md) on the model's validation split; JSON out"
    )
    _add_data_flag(parser)
    _add_model_flag(parser)
    parser.add_argument(
        "--write", action="store_true",
        help="also rewrite the metadata's grey_zone and grey_zone_rule (weights, SHA, threshold and temperature "
        "untouched) and log the change in reports/metadata_changes.jsonl",
    )
    parser.add_argument("--reports", type=Path, default=None, help="folder of the change log (default: reports/)")
    parser.set_defaults(handler=_zone)


def _zone(args) -> int:
    from .data import resolve_data_dir
    from .lab.evaluation import DEFAULT_REPORTS_DIR
    from .lab.grey_zone import apply_to_metadata, measure_model

    measurement = measure_model(args.model, resolve_data_dir(args.data))
    summary = measurement.summary()
    if args.write:
        changes = apply_to_metadata(args.model, measurement, args.reports or DEFAULT_REPORTS_DIR, args.command_line)
        summary["changed"] = [change["field"] for change in changes]
    print(json.dumps(summary))
    return EXIT_OK


# --- attention -----------------------------------------------------------------------------


def _add_attention(commands) -> None:
    parser = commands.add_parser(
        "attention",
        help="fit the attention cut-offs (outside the body; little heat over the lung fields) on validation "
        "(docs/attention_rule.md) beside the model; "
        "--test measures the official test split into reports/attention.{json,md}",
    )
    _add_data_flag(parser)
    _add_model_flag(parser)
    parser.add_argument("--reports", type=Path, default=None, help="report folder (default: reports/)")
    parser.add_argument("--test", action="store_true", help="also measure the official test split, to report (logged)")
    parser.add_argument(
        "--sheet", action="store_true",
        help="also draw the thorax mask on the images checked by eye (assets/annotations/thorax_check.csv) into "
        "reports/figures/thorax_check.jpg",
    )
    parser.set_defaults(handler=_attention)


def _attention(args) -> int:
    from .data import resolve_data_dir
    from .lab.attention import SHEET_FIGURE, check_sheet, evaluate_test, fit_rule, write_rule
    from .lab.evaluation import DEFAULT_REPORTS_DIR

    data_dir = resolve_data_dir(args.data)
    reports = args.reports or DEFAULT_REPORTS_DIR
    rule = fit_rule(args.model, data_dir)
    path, written = write_rule(rule, args.model)
    summary = {"file": str(path), "written": written, "mostly_outside": rule.mostly_outside, "unusual": rule.unusual,
               "validation_median": rule.validation_median, "validation_warning_rate": rule.facts["groups"]["all"]["warning_rate"],
               "lungs_unusual": rule.lungs_unusual, "lungs_median": rule.lungs_median}
    if args.sheet:
        summary["sheet"] = str(check_sheet(data_dir.parent, reports / SHEET_FIGURE))
    if args.test:
        groups = evaluate_test(args.model, data_dir, reports)["test"]["groups"]
        summary["test"] = {name: {"median_inside": groups[name]["share_inside"]["median"], "warning_rate": groups[name]["warning_rate"]}
                           for name in ("all", "correct", "wrong")}
    print(json.dumps(summary))
    return EXIT_OK


# --- the parser and main -------------------------------------------------------------------

# One function per command, in the order ``--help`` lists them; each sets its command's handler.
# --- monitor -------------------------------------------------------------------------------


def _add_monitor(commands) -> None:
    parser = commands.add_parser(
        "monitor",
        help="windows of the audit trail's films against a baseline: has the stream of films changed? "
        "(exit 0 alert or not; 2 no readable trail; 1 usage)",
        description="The audit trail's distinct films in recording order, in windows, each compared with the "
        "baseline (the site profile's own sample, else the trail's first window) by the rule of "
        "docs/monitor_rule.md. The last stdout line is one JSON object {\"windows\": [...], \"alert\": ...}.",
    )
    parser.add_argument("--audit", type=Path, required=True, metavar="DB", help="the audit trail to read (never created)")
    parser.add_argument("--window", type=int, default=None, metavar="N", help="films per window (default 100)")
    parser.add_argument("--site", type=Path, default=None, metavar="PROFILE.json",
                        help="the active site profile: its calls are counted, and its sample (a label-free profile) is the baseline")
    _add_model_flag(parser)
    parser.set_defaults(handler=_monitor)


def _monitor(args) -> int:
    from .artifacts import read_metadata
    from .monitor import DEFAULT_WINDOW, MonitorError, MonitorRule, Reference, baseline_from_profile, monitor, summary_lines, trail_films
    from .operating_point import OperatingPoint

    try:
        rule = MonitorRule(window=DEFAULT_WINDOW if args.window is None else args.window)
    except MonitorError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    metadata = read_metadata(args.model)
    reference = Reference.from_metadata(metadata)
    shipped = OperatingPoint.shipped(metadata)
    point, baseline = shipped, None
    if args.site is not None:
        from .site import SiteProfile

        point = SiteProfile.load(args.site).operating_point()
        baseline = baseline_from_profile(json.loads(args.site.read_text()), reference)
    if point.model_sha256 != metadata.model_sha256:
        print(f"error: the site profile was fitted for model {point.model_sha256[:12]}, not {metadata.short_sha}.", file=sys.stderr)
        return EXIT_ERROR
    # Old records (before the trail kept the logit) get it back from either point's probability.
    scales = {each.id: (each.scale, each.offset) for each in (shipped, point)}
    try:
        films = trail_films(args.audit, metadata.model_sha256, scales)
    except MonitorError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_REJECTED
    report = monitor(films, point, reference, rule, baseline)
    for line in summary_lines(report):
        print(line)
    print(json.dumps(report, allow_nan=False))
    return EXIT_OK


COMMANDS = (_add_predict, _add_batch, _add_pacs, _add_site, _add_train, _add_train_subtype, _add_evaluate, _add_explain, _add_crop, _add_compare, _add_stress, _add_bench, _add_ood, _add_heatmap_scale, _add_export_onnx, _add_card, _add_grey_zone, _add_attention, _add_monitor)


def _leaves(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    """``[("", parser)]``, or its sub-commands' parsers by name when it has some (``site fit``...)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices.items())
    return [("", parser)]


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command in ``COMMANDS``; a parsed command's ``args.handler`` runs it.

    Raises:
        TypeError: a command's parser sets no handler (it would otherwise run nothing, or another's).
    """
    parser = argparse.ArgumentParser(prog=_prog(), description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for add_command in COMMANDS:
        add_command(commands)
    unhandled = [
        f"{name} {sub}".strip()
        for name, command in commands.choices.items()
        for sub, leaf in _leaves(command)
        if leaf.get_default("handler") is None
    ]
    if unhandled:
        raise TypeError(f"command(s) {', '.join(unhandled)} set no handler: end their parser with set_defaults(handler=...)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs one command; returns its exit code. The package's errors are printed as ``error: ...``
    on stderr (exit 1); usage errors exit with argparse's own code, 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # train and compare record the command line with what they write.
    try:
        args = build_parser().parse_args(argv, argparse.Namespace(command_line=_command_line(argv)))
    except SystemExit as exit:
        # ``site``, ``pacs`` and ``monitor`` keep exit 2 for a refused sample, image or trail, so their usage errors exit 1
        # (argparse's own is 2).
        if argv[:1] in (["site"], ["pacs"], ["monitor"]) and exit.code == 2:
            return EXIT_ERROR
        raise
    try:
        return args.handler(args)
    except PneumoError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
