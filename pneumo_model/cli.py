"""Command line: ``python -m pneumo_model COMMAND``.

Commands: ``predict``, ``explain``, ``crop``, ``train``, ``evaluate``, ``compare``, ``stress``,
``card``, ``bench``, ``ood``. Exit codes: 0 success, 1 a usage
or model error, 2 (``predict``) when any file was rejected.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shlex
import sys
from pathlib import Path

from .errors import PneumoError

EXIT_OK, EXIT_ERROR, EXIT_REJECTED = 0, 1, 2


def _command_line(argv: list[str]) -> str:
    return "python -m pneumo_model " + shlex.join(argv)


def _add_data_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        default=None,
        help="chest_xray_224 folder (default: $PNEUMO_DATA, else ../shared/data/chest_xray_224)",
    )


def _add_model_flag(parser: argparse.ArgumentParser) -> None:
    from .artifacts import DEFAULT_MODEL_PATH

    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH, help="model .keras file (metadata beside it)")


def build_parser() -> argparse.ArgumentParser:
    from .training import IMBALANCE_METHODS, PROTOCOLS, TrainConfig

    defaults = TrainConfig()
    parser = argparse.ArgumentParser(prog="python -m pneumo_model", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser("predict", help="score images; one JSON object per line and file")
    predict.add_argument("images", nargs="+", help="image files (PNG, JPEG, BMP, TIFF or DICOM)")
    _add_model_flag(predict)
    predict.add_argument(
        "--audit", type=Path, default=None, metavar="DB",
        help="also append each result to this audit trail (SQLite; created if missing)",
    )

    train = commands.add_parser("train", help="train, calibrate on validation, write model + metadata")
    _add_data_flag(train)
    _add_model_flag(train)
    train.add_argument("--architecture", default=defaults.architecture)
    train.add_argument("--input-size", type=int, default=defaults.input_size)
    train.add_argument("--epochs", type=int, default=defaults.epochs)
    train.add_argument("--batch-size", type=int, default=defaults.batch_size)
    train.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    train.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing)
    train.add_argument("--imbalance", choices=IMBALANCE_METHODS, default=defaults.imbalance)
    train.add_argument("--patience", type=int, default=defaults.patience)
    train.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    train.add_argument("--protocol", choices=PROTOCOLS, default=defaults.protocol)
    train.add_argument("--seed", type=int, default=defaults.seed)
    train.add_argument(
        "--members", type=int, default=defaults.members,
        help="networks averaged into one deep ensemble (same split; member k seeded seed+k)",
    )
    train.add_argument("--time-budget", type=float, default=None, help="seconds; stop after the epoch past it")
    train.add_argument("--no-augment", action="store_true")
    train.add_argument(
        "--max-aspect", type=float, default=defaults.augmentation.max_aspect,
        help="augmentation: largest change of width/height scale ratio, either way",
    )
    train.add_argument(
        "--class-aspect", type=float, default=defaults.augmentation.class_aspect,
        help="augmentation: widen pneumonia and narrow normal anatomy by this ratio on average "
        "(1.25 cancels the data set's class-correlated squash; 1 = off)",
    )
    train.add_argument(
        "--target-sensitivity", type=float, default=defaults.operating.target_sensitivity,
        help="validation sensitivity the threshold is set for",
    )

    evaluate = commands.add_parser("evaluate", help="write the evaluation report for a model")
    _add_data_flag(evaluate)
    _add_model_flag(evaluate)
    evaluate.add_argument("--reports", type=Path, default=None, help="report folder (default: reports/)")
    evaluate.add_argument("--split", choices=("test", "validation"), default="test")
    evaluate.add_argument(
        "--crop", choices=("none", "auto"), default="none",
        help="auto: score with and without the automatic diaphragm crop (crop_evaluation report)",
    )

    explain = commands.add_parser("explain", help="write a Grad-CAM or LIME overlay at the image's own size")
    explain.add_argument("image")
    explain.add_argument("--method", choices=("gradcam", "lime"), default="gradcam")
    explain.add_argument("--out", type=Path, required=True, help="PNG file to write")
    explain.add_argument("--alpha", type=float, default=0.4, help="heat-map opacity (gradcam)")
    explain.add_argument("--samples", type=int, default=1000, help="LIME perturbation samples")
    explain.add_argument("--segments", type=int, default=50, help="LIME superpixels (SLIC)")
    explain.add_argument("--seed", type=int, default=0, help="LIME seed")
    _add_model_flag(explain)

    crop = commands.add_parser("crop", help="crop the diaphragm (automatic or --box) and rescore; JSON out")
    crop.add_argument("image")
    crop.add_argument("--box", default=None, help="x0,y0,x1,y1 in the image's pixels (default: detected)")
    crop.add_argument("--out", type=Path, default=None, help="PNG of the image with the kept box outlined")
    _add_model_flag(crop)

    compare = commands.add_parser(
        "compare", help="train and score variants: the architecture families, or the class-imbalance methods"
    )
    compare.add_argument(
        "--study", choices=("families", "imbalance"), default="families",
        help="families: every architecture, test reported; imbalance: production network per method, validation only",
    )
    _add_data_flag(compare)
    compare.add_argument("--input-size", type=int, default=96)
    compare.add_argument("--time-budget", type=float, default=600.0, help="seconds per architecture")
    compare.add_argument("--epochs", type=int, default=30)
    compare.add_argument("--architectures", nargs="*", default=None)
    compare.add_argument("--reports", type=Path, default=None)
    compare.add_argument("--work", type=Path, default=Path("runs/compare"), help="folder for the trained models")

    stress = commands.add_parser(
        "stress", help="score models' validation split under deliberate shifts; name the preferred one"
    )
    stress.add_argument("models", nargs="+", type=Path, help="candidate .keras files (metadata beside each)")
    _add_data_flag(stress)
    stress.add_argument("--reports", type=Path, default=None)

    bench = commands.add_parser(
        "bench", help="time every step against its target and measure one upload's peak memory; writes reports/bench.json"
    )
    _add_data_flag(bench)
    _add_model_flag(bench)
    bench.add_argument("--fullres", type=Path, default=None, help="folder of full-size originals (default: beside the data)")
    bench.add_argument("--lime-images", type=int, default=20)
    bench.add_argument("--naive-images", type=int, default=3)
    bench.add_argument("--samples", type=int, default=1000, help="LIME samples, both ways")
    bench.add_argument(
        "--only", choices=("speed", "memory"), default=None,
        help="measure one part and keep the other's figures in bench.json; memory: the peak of one upload "
        "(decode to Grad-CAM and the screen copy) above the idle process, for each of the worst accepted "
        "files, each in a fresh interpreter (a few minutes), and the worst one against the bound (300 MB)",
    )
    bench.add_argument("--reports", type=Path, default=None)

    ood = commands.add_parser("ood", help="fit the out-of-distribution gate, or measure it into reports/ood.json")
    ood.add_argument("action", choices=("fit", "evaluate"))
    _add_data_flag(ood)
    _add_model_flag(ood)
    ood.add_argument("--reports", type=Path, default=None)

    card = commands.add_parser("card", help="write the model card facts to reports/model_card.json")
    card.add_argument("--fullres", type=Path, default=None, help="folder of original files (default: beside the data)")
    _add_data_flag(card)
    card.add_argument("--reports", type=Path, default=None)
    return parser


def _stress(args) -> int:
    from .data import resolve_data_dir
    from .evaluation import DEFAULT_REPORTS_DIR
    from .stress import stress_report

    report = stress_report(args.models, resolve_data_dir(args.data), args.reports or DEFAULT_REPORTS_DIR)
    for name, per_stress in report["results"].items():
        print(json.dumps({"model": name, **{k: round(v["roc_auc"], 4) for k, v in per_stress.items()}}))
    print(json.dumps({"preferred": report["preferred"]}))
    return EXIT_OK


def _explain(args) -> int:
    from PIL import Image

    from .explain import GradCam, LimeConfig, explain_lime, overlay_heatmap
    from .pipeline import DecodedImage
    from .prediction import Predictor

    predictor = Predictor.from_file(args.model)
    image = DecodedImage.decode(args.image)
    pixels, model_input = image.pixels, image.model_input(predictor.input_size)  # (size, size, 1)
    prediction = predictor.call(image)
    record = prediction.to_record(args.image) | {"method": args.method, "out": str(args.out)}
    if args.method == "gradcam":
        heatmap = GradCam(predictor.model, predictor.metadata.gradcam_layer)(model_input)  # (size, size)
        picture = overlay_heatmap(pixels, heatmap, alpha=args.alpha)
    else:
        config = LimeConfig(num_samples=args.samples, n_segments=args.segments, seed=args.seed)
        explanation = explain_lime(model_input, predictor, config)
        picture = explanation.overlay(pixels)
        record |= {"towards_pneumonia": list(explanation.positive), "away_from_pneumonia": list(explanation.negative)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(args.out)
    print(json.dumps(record))
    return EXIT_OK


def _one_image(command, args) -> int:
    """Runs a one-image command; an unusable image is that file's ``error``, exit 2 (as ``predict``)."""
    from .errors import InvalidImageError

    try:
        return command(args)
    except InvalidImageError as error:
        print(json.dumps({"schema_version": 1, "file": args.image, "error": str(error)}))
        return EXIT_REJECTED


def _parse_box(text: str) -> tuple[int, int, int, int]:
    from .errors import ConfigError

    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise ConfigError(f"--box must be four whole numbers x0,y0,x1,y1 in pixels; got '{text}'.")
    return values


def _crop(args) -> int:
    from PIL import Image, ImageDraw

    from .crop import find_diaphragm
    from .display import screen_grey
    from .pipeline import DecodedImage
    from .prediction import Predictor

    predictor = Predictor.from_file(args.model)
    image = DecodedImage.decode(args.image)
    pixels = image.pixels
    record = {"file": args.image, "warnings": list(image.info.warnings)}
    if args.box is not None:
        box, source, reason = _parse_box(args.box), "given", None
    else:
        detection = find_diaphragm(pixels)
        box, source, reason = detection.box, "automatic", detection.reason
    if box is None:
        before = predictor.call(image)
        record |= {"box": None, "box_source": source, "reason": reason, "probability_before": round(before.probability, 6),
                   "probability_after": None, "delta": None, "ood_before": before.ood,
                   "ood_score_before": None if before.ood_score is None else round(before.ood_score, 4)}
    else:
        result = predictor.rescore(image, box)  # both calls through the gate, as predict's
        record |= result.to_dict() | {"box_source": source, "reason": reason}
        record["box"] = list(result.box)
    if args.out is not None and box is not None:
        grey = Image.fromarray(screen_grey(pixels, max_side=max(pixels.shape))).convert("RGB")
        draw = ImageDraw.Draw(grey)
        draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=(0, 114, 178), width=max(2, grey.width // 200))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        grey.save(args.out)
        record["out"] = str(args.out)
    print(json.dumps(record))
    return EXIT_OK


def _bench(args) -> int:
    from .bench import BENCH_PARTS, BenchConfig, run_bench
    from .data import resolve_data_dir
    from .evaluation import DEFAULT_REPORTS_DIR

    data_dir = resolve_data_dir(args.data)
    parts = (args.only,) if args.only else BENCH_PARTS
    config = BenchConfig(lime_images=args.lime_images, naive_images=args.naive_images, lime_samples=args.samples, parts=parts)
    fullres = args.fullres or data_dir.parent / "chest_xray_fullres_sample"
    run_bench(args.model, data_dir, fullres, args.reports or DEFAULT_REPORTS_DIR, config, log=lambda line: print(line, flush=True))
    return EXIT_OK


def _card(args) -> int:
    from .data import resolve_data_dir
    from .evaluation import DEFAULT_REPORTS_DIR
    from .model_card import write_model_card

    fullres = args.fullres or resolve_data_dir(args.data).parent / "chest_xray_fullres_sample"
    facts = write_model_card(args.reports or DEFAULT_REPORTS_DIR, fullres)
    print(json.dumps(facts["shortcut_geometry"]))
    return EXIT_OK


def _predict(args) -> int:
    from .errors import InvalidImageError
    from .prediction import Predictor

    predictor = Predictor.from_file(args.model)
    trail = None
    if args.audit is not None:
        from .audit import AuditTrail, ResultRecord

        trail = AuditTrail(args.audit)
    status = EXIT_OK
    for image in args.images:
        try:
            data = _read_image_file(image)
            prediction = predictor.predict_source(data)
        except InvalidImageError as error:
            print(json.dumps({"schema_version": 1, "file": image, "error": str(error)}), flush=True)
            status = EXIT_REJECTED
            continue
        record = prediction.to_record(image)
        if trail is not None:
            # Only the image's SHA-256 goes in: file names can carry patient identifiers.
            digest = hashlib.sha256(data).hexdigest()
            (record["audit_id"],) = trail.record_results([ResultRecord.of(prediction, digest, "cli")])
        print(json.dumps(record), flush=True)
    return status


def _read_image_file(path: str) -> bytes:
    """The file's bytes, read once (scored and hashed from the same bytes), within the size limit.

    Raises:
        InvalidImageError: missing, a folder, unreadable or too large (``load_image``'s messages).
    """
    from .preprocessing import read_image_bytes

    return read_image_bytes(path)


def train_config_from_args(args) -> "TrainConfig":
    """The ``TrainConfig`` that ``train`` runs with for parsed command-line ``args``."""
    from .calibration import OperatingPointConfig
    from .training import TrainConfig

    defaults = TrainConfig()
    return TrainConfig(
        architecture=args.architecture,
        input_size=args.input_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        label_smoothing=args.label_smoothing,
        imbalance=args.imbalance,
        patience=args.patience,
        val_fraction=args.val_fraction,
        protocol=args.protocol,
        seed=args.seed,
        members=args.members,
        time_budget_s=args.time_budget,
        augment=not args.no_augment,
        augmentation=dataclasses.replace(
            defaults.augmentation, max_aspect=args.max_aspect, class_aspect=args.class_aspect
        ),
        operating=OperatingPointConfig(target_sensitivity=args.target_sensitivity),
    )


def _train(args, argv) -> int:
    from .data import resolve_data_dir
    from .training import train

    config = train_config_from_args(args)
    metadata = train(config, resolve_data_dir(args.data), args.model, command=_command_line(argv))
    summary = {k: metadata.to_dict()[k] for k in ("model_sha256", "temperature", "threshold", "grey_zone", "training_seconds")}
    summary["validation_auc"] = metadata.validation["roc_auc"]
    print(json.dumps(summary))
    return EXIT_OK


def _ood(args) -> int:
    from .data import resolve_data_dir
    from .evaluation import DEFAULT_REPORTS_DIR, evaluate_ood
    from .ood import fit_for_model, gate_path

    if args.action == "fit":
        gate = fit_for_model(args.model, resolve_data_dir(args.data))
        print(json.dumps({"gate": str(gate_path(args.model)), "threshold": gate.threshold, **gate.facts}))
        return EXIT_OK
    report = evaluate_ood(args.model, resolve_data_dir(args.data), args.reports or DEFAULT_REPORTS_DIR)
    summary = {"test_pass_rate": report["test_split"]["pass_rate"]}
    summary |= {name: category["detection_rate"] for name, category in report["categories"].items()}
    print(json.dumps(summary))
    return EXIT_OK


def _evaluate(args) -> int:
    from .data import resolve_data_dir
    from .evaluation import DEFAULT_REPORTS_DIR, evaluate

    if args.crop == "auto":
        from .evaluation import evaluate_crop

        report = evaluate_crop(args.model, resolve_data_dir(args.data), args.reports or DEFAULT_REPORTS_DIR, split=args.split)
        keys = ("accuracy", "sensitivity", "specificity", "roc_auc")
        print(json.dumps({column: {k: report["metrics"][column][k] for k in keys} for column in report["metrics"]}))
        return EXIT_OK
    report = evaluate(args.model, resolve_data_dir(args.data), args.reports or DEFAULT_REPORTS_DIR, split=args.split)
    print(json.dumps({k: report["image"][k] for k in ("accuracy", "sensitivity", "specificity", "roc_auc")}))
    return EXIT_OK


def _compare(args, argv) -> int:
    from .comparison import compare, imbalance_study
    from .data import resolve_data_dir
    from .evaluation import DEFAULT_REPORTS_DIR
    from .training import TrainConfig

    data_dir, reports = resolve_data_dir(args.data), args.reports or DEFAULT_REPORTS_DIR
    if args.study == "imbalance":
        base = TrainConfig(input_size=args.input_size, epochs=args.epochs, time_budget_s=args.time_budget)
        imbalance_study(data_dir, reports, args.work, base, command=_command_line(argv))
        return EXIT_OK
    compare(
        data_dir,
        reports,
        args.work,
        input_size=args.input_size,
        time_budget_s=args.time_budget,
        epochs=args.epochs,
        architectures=args.architectures,
        command=_command_line(argv),
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "predict":
            return _predict(args)
        if args.command == "train":
            return _train(args, argv)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "card":
            return _card(args)
        if args.command == "stress":
            return _stress(args)
        if args.command == "bench":
            return _bench(args)
        if args.command == "ood":
            return _ood(args)
        if args.command in ("explain", "crop"):
            return _one_image(_explain if args.command == "explain" else _crop, args)
        return _compare(args, argv)
    except PneumoError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
