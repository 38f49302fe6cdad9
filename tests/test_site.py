"""Site profiles: the fitting rules on synthetic scores with known answers, every refusal of a
labelled sample, the profile file, the CLI's names and exit codes, and the predictor and the app
with a profile active."""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from helpers import encode, synthetic_xray
from pneumo_model import site
from pneumo_model.artifacts import read_metadata
from pneumo_model.cli import main
from pneumo_model.errors import SiteInputError, SiteProfileError
from pneumo_model.operating_point import OperatingPoint, logit
from pneumo_model.paths import DEFAULT_MODEL_PATH, REPO_ROOT
from pneumo_model.prediction import Predictor


def _scores(n: int, prevalence: float, a: float, b: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Raw logits drawn so that P(pneumonia | raw) = sigmoid(a * raw + b) exactly."""
    rng = np.random.default_rng(seed)
    raw = rng.normal(0.0, 3.0, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-(a * raw + b)))).astype(int)
    return raw, labels


# --- the rules ---------------------------------------------------------------------------


def test_platt_is_chosen_and_recovered_when_the_site_scores_are_shifted():
    raw, labels = _scores(6000, 0.5, a=0.8, b=-1.5)
    calibration = site.fit_calibration(raw, labels, seed=3)
    assert calibration.method == "platt"
    assert abs(calibration.scale - 0.8) < 0.08 and abs(calibration.offset + 1.5) < 0.15
    assert calibration.cv_log_loss["platt"] < calibration.cv_log_loss["temperature"] - site.PLATT_MARGIN_NATS


def test_temperature_is_kept_when_the_intercept_buys_nothing():
    raw, labels = _scores(6000, 0.5, a=0.5, b=0.0, seed=1)
    calibration = site.fit_calibration(raw, labels, seed=3)
    assert calibration.method == "temperature" and calibration.offset == 0.0
    assert abs(calibration.scale - 0.5) < 0.05


def test_the_threshold_is_the_conformal_order_statistic_of_the_pneumonia_images():
    # 100 pneumonia images at raw logits 0..99, 100 normals far below: k = floor(101 * 0.03) = 3.
    raw = np.concatenate([np.arange(100.0) / 10, np.full(100, -30.0) + np.arange(100) / 100])
    labels = np.array([1] * 100 + [0] * 100)
    fit = site.fit_operating_point(raw, labels, target=0.97, seed=0)
    assert fit.conformal_rank == 3
    _, called, _ = fit.calls(raw)
    assert called[:100].sum() == 98  # the two lowest pneumonia images are called normal, the third is not
    assert not called[0] and not called[1] and called[2]
    # The plain quantile would have allowed floor(100 * 0.03) = 3 misses: the conformal rule is stricter.
    assert site.conformal_rank(100, 0.97) == 3 and site.conformal_rank(125, 0.97) == 3
    assert site.conformal_rank(20, 0.97) == 1  # too few for k >= 1 by the formula: the lowest pneumonia image


def test_a_sample_whose_classes_do_not_overlap_keeps_a_finite_calibration_and_the_threshold_inside():
    # The case that broke the first `site evaluate` run (1 draw in 200 at 200 images): fitted on 0 / 1
    # labels, the scale grew to its bound, the threshold rounded to 1.0 and the band's top edge with it.
    rng = np.random.default_rng(0)
    raw = np.r_[rng.normal(8, 1, 125), rng.normal(-3, 1, 75)]
    labels = np.r_[np.ones(125), np.zeros(75)].astype(int)
    assert raw[labels == 1].min() > raw[labels == 0].max()
    fit = site.fit_operating_point(raw, labels, 0.97, 0)
    assert fit.threshold < 1.0 and fit.grey_zone.low < fit.threshold < fit.grey_zone.high
    assert fit.calibration.scale < 5
    p, called, _ = fit.calls(raw)
    assert p.max() < 1.0 and called[labels == 1].sum() == 125 - (fit.conformal_rank - 1)
    np.testing.assert_allclose(site.platt_targets(np.array([1, 1, 0])), [3 / 4, 3 / 4, 1 / 3])


def test_the_grey_zone_is_chow_s_band_with_the_threshold_strictly_inside():
    zone = site.grey_zone_around(logit(0.3))
    assert (zone.low, zone.high) == (0.1, 0.9)
    for threshold in (0.02, 0.1, 0.3, 0.5, 0.89, 0.95, 0.999):
        zone = site.grey_zone_around(logit(threshold))
        assert zone.low < threshold < zone.high
        assert logit(threshold) - logit(zone.low) >= 0.25 - 1e-12
        assert logit(zone.high) - logit(threshold) >= 0.25 - 1e-12
        assert zone.low <= site.CHOW_COST and zone.high >= 1 - site.CHOW_COST


def test_out_of_fold_calls_each_image_with_a_profile_fitted_without_its_fold():
    raw, labels = _scores(300, 0.6, a=1.0, b=0.5, seed=4)
    p, called, in_zone = site.out_of_fold(raw, labels, 0.97, seed=11)
    ids = site.fold_ids(labels, site.FOLDS, 12)
    for fold in range(site.FOLDS):
        held = ids == fold
        fit = site.fit_operating_point(raw[~held], labels[~held], 0.97, 11)
        expected = fit.calls(raw[held])
        np.testing.assert_array_equal(p[held], expected[0])
        np.testing.assert_array_equal(called[held], expected[1])
        np.testing.assert_array_equal(in_zone[held], expected[2])
    # The whole-sample fit would call its own pneumonia images with sensitivity >= target by
    # construction; out of fold that is not guaranteed, which is the point.
    for label in (0, 1):
        counts = np.bincount(ids[labels == label], minlength=site.FOLDS)
        assert counts.max() - counts.min() <= 1


def test_wilson_intervals_match_known_values():
    low, high = site.wilson_interval(8, 10)
    assert math.isclose(low, 0.4902, abs_tol=1e-4) and math.isclose(high, 0.9433, abs_tol=1e-4)
    low, high = site.wilson_interval(0, 20)
    assert low == 0.0 and math.isclose(high, 0.1611, abs_tol=1e-4)
    assert site.wilson_interval(0, 0) is None
    line = site.uncertainty_line(62, "pneumonia", site.figures(np.ones(62), np.r_[np.ones(60), np.zeros(2)], np.zeros(62))["sensitivity"])
    assert line.startswith("62 local pneumonia images: sensitivity known to about ±0.0")


def test_the_threshold_explorer_trades_sensitivity_for_specificity():
    raw, labels = _scores(400, 0.6, a=1.0, b=0.0, seed=2)
    rows = site.threshold_explorer(raw, labels, site.Calibration("temperature", 1.0, 0.0))
    thresholds = [row["threshold"] for row in rows]
    assert thresholds == sorted(thresholds) and rows[0]["sensitivity"] == 1.0 and rows[-1]["called_pneumonia"] == 0.0
    assert all(a["sensitivity"] >= b["sensitivity"] and a["specificity"] <= b["specificity"] for a, b in zip(rows, rows[1:]))


def _small_site(seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """40 normal and 40 pneumonia raw logits that overlap, one pneumonia image scoring among the normals
    (a small site's least typical pneumonia film)."""
    rng = np.random.default_rng(seed)
    raw = np.r_[rng.normal(-3.0, 1.5, 40), rng.normal(3.0, 1.5, 39), -4.0]
    return raw, np.r_[np.zeros(40, int), np.ones(40, int)]


def test_every_row_of_the_target_table_is_the_threshold_a_profile_fitted_for_that_target_would_have():
    raw, labels = _small_site()
    targets = (0.80, 0.90, 0.95, 0.97, 0.99)
    calibration = site.fit_calibration(raw, labels, seed=5)
    rows = site.target_rows(raw, labels, calibration, targets)
    assert [row["target"] for row in rows] == list(targets)
    p = site._sigmoid(calibration.logits(raw))
    for row in rows:
        fit = site.fit_operating_point(raw, labels, row["target"], seed=5)  # the calibration does not depend on the target
        assert row["threshold"] == fit.threshold and row["rank"] == fit.conformal_rank
        assert (row["grey_zone_low"], row["grey_zone_high"]) == (fit.grey_zone.low, fit.grey_zone.high)
        # Achieved in the sample, under that row's own threshold and band.
        assert row["sensitivity"] == (p[labels == 1] >= row["threshold"]).mean()
        assert row["specificity"] == (p[labels == 0] < row["threshold"]).mean()
        assert row["grey_zone_share"] == ((p >= row["grey_zone_low"]) & (p < row["grey_zone_high"])).mean()
    # The lowest pneumonia image sits among the normals: the targets that need it stretch their band
    # around a low threshold and hold more films than the others.
    bands = {(row["grey_zone_low"], row["grey_zone_high"]) for row in rows}
    assert len(bands) >= 2 and len({row["grey_zone_share"] for row in rows}) >= 2
    (lowest,) = {row["threshold"] for row in rows if row["rank"] == 1}
    assert lowest == p[labels == 1].min() and lowest < site.CHOW_COST


def test_translate_places_a_threshold_of_one_scale_on_another_and_back():
    shipped = site.Calibration("temperature", 1 / 0.76, 0.0)
    profile = site.Calibration("platt", 0.8, 1.2)
    raw = 0.37
    on_shipped = float(site._sigmoid(shipped.logits(np.array([raw])))[0])
    on_profile = float(site._sigmoid(profile.logits(np.array([raw])))[0])
    assert math.isclose(site.translate(on_shipped, shipped, profile), on_profile, rel_tol=1e-12)
    assert math.isclose(site.translate(on_profile, profile, shipped), on_shipped, rel_tol=1e-12)
    assert site.translate(0.0, shipped, profile) == 0.0 and site.translate(1.0, shipped, profile) == 1.0
    point = OperatingPoint.shipped(read_metadata(DEFAULT_MODEL_PATH))  # an OperatingPoint has a scale and an offset too
    assert math.isclose(site.translate(point.threshold, point, point), point.threshold, rel_tol=1e-12)


def test_the_small_sample_cost_counts_the_rank_the_promise_the_stretch_and_the_films_that_would_change_them():
    assert [site.pneumonia_images_for_rank(k, 0.97) for k in (2, 3)] == [66, 99]
    for k, target in ((2, 0.97), (3, 0.97), (2, 0.9), (5, 0.95)):
        n = site.pneumonia_images_for_rank(k, target)
        assert site.conformal_rank(n, target) == k and site.conformal_rank(n - 1, target) < k
    raw, labels = _small_site()
    calibration = site.fit_calibration(raw, labels, seed=5)
    cost = site.small_sample_cost(raw, labels, calibration, 0.97)
    assert (cost.n_normal, cost.n_pneumonia, cost.rank) == (40, 40, 1)
    assert math.isclose(cost.promised_sensitivity, 40 / 41) and cost.promised_sensitivity > 0.97
    assert cost.next_rank_at == 66
    assert cost.widened and cost.grey_zone[0] < site.CHOW_COST
    p = site._sigmoid(calibration.logits(raw))
    assert cost.widened_images == int(((p >= cost.grey_zone[0]) & (p < site.CHOW_COST)).sum()) >= 1
    assert cost.platt_targets == (1 / 42, 41 / 42)
    # 20 pneumonia images cannot promise 0.97 at all: even the lowest leaves 1 in 21 below it.
    few = site.small_sample_cost(raw[:60], labels[:60], calibration, 0.97)
    assert few.n_pneumonia == 20 and few.rank == 1 and few.promised_sensitivity < 0.97


# --- the profile file --------------------------------------------------------------------


def _sample(n: int = 200, model_sha: str = "a" * 64, seed: int = 5) -> site.ScoredSample:
    raw, labels = _scores(n, 0.6, a=1.2, b=-0.4, seed=seed)
    digests = tuple(f"{i:064x}" for i in range(n))
    return site.ScoredSample(raw, labels, digests, model_sha, files_in=n)


def test_a_profile_is_reproducible_and_its_id_is_its_content():
    sample = _sample()
    first = site.fit_profile(sample, created_utc="2026-12-01T00:00:00+00:00")
    again = site.fit_profile(sample, created_utc="2026-12-02T00:00:00+00:00")
    assert first.id == again.id and len(first.id) == 16
    assert site.fit_profile(sample, target=0.95).id != first.id
    assert first.figures["sensitivity"]["n"] == sample.n_pneumonia
    point = first.operating_point()
    assert point.kind == "site" and point.threshold == first.threshold and point.id == first.id
    assert point.grey_zone.low < first.threshold < point.grey_zone.high
    assert "fitted on 200 local images on 2026-12-01" in first.description


def test_an_altered_or_foreign_profile_file_is_refused(tmp_path):
    profile = site.fit_profile(_sample())
    path = tmp_path / "profile.json"
    profile.save(path)
    assert site.SiteProfile.load(path) == profile
    data = json.loads(path.read_text())
    data["threshold"] = 0.5
    path.write_text(json.dumps(data))
    with pytest.raises(SiteProfileError, match="changed after it was fitted"):
        site.SiteProfile.load(path)
    path.write_text("{not json")
    with pytest.raises(SiteProfileError, match="unreadable"):
        site.SiteProfile.load(path)
    with pytest.raises(SiteProfileError, match="does not exist"):
        site.SiteProfile.load(tmp_path / "none.json")
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(SiteProfileError, match="not a site profile"):
        site.SiteProfile.load(path)


# --- the sample and its refusals ------------------------------------------------------------


def _folder(root: Path, normal: int, pneumonia: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name, count, lesion in (("NORMAL", normal, False), ("PNEUMONIA", pneumonia, True)):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (root / name / f"{name.lower()}_{i:03d}.png").write_bytes(encode(synthetic_xray(rng, lesion=lesion)))
    return root


@pytest.fixture(scope="module")
def tiny_predictor(tiny_model) -> Predictor:
    return Predictor.from_file(tiny_model)


def test_a_folder_sample_is_scored_once_per_image_and_a_duplicate_counts_once(tiny_predictor, tmp_path):
    root = _folder(tmp_path / "site", 22, 23)
    (root / "NORMAL" / "copy.png").write_bytes((root / "NORMAL" / "normal_000.png").read_bytes())
    seen = []
    sample = site.score_sample(tiny_predictor, site.read_labelled_folder(root), progress=lambda d, t: seen.append((d, t)))
    assert (sample.n_normal, sample.n_pneumonia, sample.files_in) == (22, 23, 46)
    assert sample.merged == (("NORMAL/normal_000.png", "NORMAL/copy.png"),) or sample.merged == (("NORMAL/normal_000.png", "NORMAL/copy.png")[::-1],)
    assert seen[-1] == (46, 46)
    expected = [tiny_predictor.predict_source(root / "PNEUMONIA" / "pneumonia_000.png").logit]
    assert np.isclose(sample.raw_logits[sample.labels == 1][0], expected[0], atol=1e-5)
    assert any("Only 22 normal images" in warning for warning in sample.warnings)


def test_too_few_images_of_a_class_is_refused_after_exclusions(tiny_predictor, tmp_path):
    root = _folder(tmp_path / "site", 19, 30)
    with pytest.raises(SiteInputError, match="19 normal and 30 pneumonia.*at least 20"):
        site.score_sample(tiny_predictor, site.read_labelled_folder(root))


def test_one_class_only_is_refused(tiny_predictor, tmp_path):
    root = _folder(tmp_path / "site", 0, 30)
    with pytest.raises(SiteInputError, match="only pneumonia images"):
        site.score_sample(tiny_predictor, site.read_labelled_folder(root))


def test_a_labels_csv_with_unknown_labels_and_missing_files_lists_every_row(tmp_path):
    root = _folder(tmp_path / "site", 2, 2)
    (root / "labels.csv").write_text(
        "file,label\nNORMAL/normal_000.png,normal\nNORMAL/normal_001.png,Covid\nnowhere.png,pneumonia\n,\n"
    )
    with pytest.raises(SiteInputError) as refused:
        site.read_labels_csv(root / "labels.csv")
    message = str(refused.value)
    assert "2 problems" in message and "row 3 (NORMAL/normal_001.png): unknown label 'Covid'" in message
    assert "row 4 (nowhere.png): no such file" in message
    (root / "bad.csv").write_text("path,class\na.png,normal\n")
    with pytest.raises(SiteInputError, match="needs the columns file,label"):
        site.read_labels_csv(root / "bad.csv")


def test_an_unreadable_file_and_a_duplicate_under_two_labels_are_refused_and_named(tiny_predictor, tmp_path):
    root = _folder(tmp_path / "site", 25, 25)
    (root / "NORMAL" / "notes.png").write_bytes(b"these are notes")
    (root / "labels.csv").write_text(
        "file,label\n"
        + "".join(f"NORMAL/normal_{i:03d}.png,normal\n" for i in range(25))
        + "".join(f"PNEUMONIA/pneumonia_{i:03d}.png,pneumonia\n" for i in range(25))
        + "NORMAL/notes.png,normal\nPNEUMONIA/pneumonia_000.png,normal\n"
    )
    with pytest.raises(SiteInputError) as refused:
        site.score_sample(tiny_predictor, site.read_labels_csv(root / "labels.csv"))
    message = str(refused.value)
    assert "nothing was written" in message and "2 problems" in message
    assert "row 52 (NORMAL/notes.png)" in message
    assert "row 53 (PNEUMONIA/pneumonia_000.png) is labelled normal but the same image is row 27 (PNEUMONIA/pneumonia_000.png), labelled pneumonia" in message


def test_a_labelled_zip_reads_folders_at_any_depth_or_its_labels_csv(tmp_path):
    root = _folder(tmp_path / "site", 2, 3)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(root.rglob("*.png")):
            archive.write(path, f"export/{path.relative_to(root)}")
        archive.writestr("__MACOSX/export/NORMAL/._normal_000.png", b"resource fork")
    files = site.read_labelled_zip(buffer.getvalue())
    assert sorted((f.name, f.label) for f in files)[0] == ("export/NORMAL/normal_000.png", "normal")
    assert len(files) == 5 and files[0].read()[:4] == b"\x89PNG"
    with pytest.raises(SiteInputError, match="not a readable zip"):
        site.read_labelled_zip(b"PK not really")
    empty = io.BytesIO()
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("images/a.png", b"x")
    with pytest.raises(SiteInputError, match="no files in NORMAL/ or PNEUMONIA/"):
        site.read_labelled_zip(empty.getvalue())


@pytest.mark.data
@pytest.mark.shipped_model
def test_images_the_gate_flags_are_excluded_listed_and_their_share_reported(tmp_path):
    from pneumo_model.data import DEFAULT_DATA_DIR

    root = tmp_path / "site"
    for name, count in (("NORMAL", 25), ("PNEUMONIA", 25)):
        (root / name).mkdir(parents=True)
        for path in sorted((DEFAULT_DATA_DIR / "train" / name).iterdir())[:count]:
            (root / name / path.name).write_bytes(path.read_bytes())
    photo = (np.random.default_rng(0).random((300, 400, 3)) * 255).astype(np.uint8)
    (root / "NORMAL" / "holiday.png").write_bytes(encode(photo))
    sample = site.score_sample(Predictor.from_file(), site.read_labelled_folder(root))
    excluded = [name for name, _ in sample.excluded]
    assert "NORMAL/holiday.png" in excluded
    assert sample.n_normal + sample.n_pneumonia + len(excluded) == 51
    assert any(f"{len(excluded)} of 51 distinct images" in w and "out-of-distribution gate" in w for w in sample.warnings)


# --- the command line --------------------------------------------------------------------


def _run(capsys, argv):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out.splitlines(), out.err


def test_site_fit_writes_a_profile_and_ends_with_the_json_line(tiny_model, tmp_path, capsys):
    root = _folder(tmp_path / "site", 24, 26)
    out = tmp_path / "profiles" / "site.json"
    code, lines, _ = _run(capsys, ["site", "fit", "--folder", str(root), "--out", str(out), "--model", str(tiny_model)])
    assert code == 0
    summary = json.loads(lines[-1])
    assert {"id", "threshold", "grey_zone", "n_normal", "n_pneumonia", "sensitivity", "specificity"} <= set(summary)
    assert set(summary["sensitivity"]) == {"value", "low", "high"} and summary["n_normal"] == 24
    profile = site.SiteProfile.load(out)
    assert profile.id == summary["id"] and profile.model_sha256 == read_metadata(tiny_model).model_sha256
    assert profile.target_sensitivity == 0.97 and any("out of fold" in line for line in lines)

    # --labels gives the same sample, so the same profile; check scores a sample with it.
    (root / "labels.csv").write_text(
        "file,label\n" + "".join(f"{p.relative_to(root)},{p.parent.name.lower()}\n" for p in sorted(root.rglob("*.png")))
    )
    code, lines, _ = _run(capsys, ["site", "fit", "--labels", str(root / "labels.csv"), "--out", str(tmp_path / "b.json"), "--model", str(tiny_model)])
    assert code == 0 and json.loads(lines[-1])["id"] == profile.id
    code, lines, _ = _run(capsys, ["site", "check", str(out), "--labels", str(root / "labels.csv"), "--model", str(tiny_model)])
    assert code == 0 and json.loads(lines[-1])["id"] == profile.id

    # predict --site calls with the profile's operating point and says so.
    image = str(root / "PNEUMONIA" / "pneumonia_000.png")
    code, lines, _ = _run(capsys, ["predict", image, "--model", str(tiny_model), "--site", str(out)])
    record = json.loads(lines[-1])
    assert code == 0 and record["operating_point"] == profile.id and record["threshold"] == round(profile.threshold, 6)
    assert record["label"] == ("pneumonia" if record["probability"] >= profile.threshold else "normal")


def test_site_fit_exit_codes_refused_2_usage_1_and_nothing_written(tiny_model, tmp_path, capsys):
    root = _folder(tmp_path / "site", 5, 30)
    out = tmp_path / "site.json"
    code, _, err = _run(capsys, ["site", "fit", "--folder", str(root), "--out", str(out), "--model", str(tiny_model)])
    assert code == 2 and "refused" in err and "at least 20" in err and not out.exists()
    assert _run(capsys, ["site", "fit", "--folder", str(root)])[0] == 1  # --out missing
    assert _run(capsys, ["site", "fit", "--folder", str(root), "--labels", "x.csv", "--out", str(out)])[0] == 1
    assert _run(capsys, ["site", "fot"])[0] == 1
    code, _, err = _run(capsys, ["site", "fit", "--folder", str(root), "--out", str(out), "--target-sensitivity", "1.5"])
    assert code == 1 and "target-sensitivity" in err and not out.exists()


def test_another_model_s_profile_is_refused_by_predict_check_and_the_predictor(tiny_model, tmp_path, capsys):
    foreign = site.fit_profile(_sample(model_sha="b" * 64))
    path = tmp_path / "foreign.json"
    foreign.save(path)
    root = _folder(tmp_path / "site", 1, 1)
    code, _, err = _run(capsys, ["predict", str(root / "NORMAL" / "normal_000.png"), "--model", str(tiny_model), "--site", str(path)])
    assert code == 1 and "was fitted for model bbbbbbbbbbbb" in err
    code, _, err = _run(capsys, ["site", "check", str(path), "--folder", str(root), "--model", str(tiny_model)])
    assert code == 1 and "was fitted for model bbbbbbbbbbbb" in err
    with pytest.raises(SiteProfileError, match="Fit a new profile"):
        Predictor.from_file(tiny_model, site=path)


def test_the_predictor_with_a_profile_uses_its_calibration_threshold_and_grey_zone(tiny_predictor, tmp_path):
    sha = tiny_predictor.metadata.model_sha256
    profile = site.fit_profile(_sample(model_sha=sha))
    with_site = tiny_predictor.with_operating_point(profile.operating_point())
    assert with_site.model is tiny_predictor.model and with_site.gate is tiny_predictor.gate
    image = encode(synthetic_xray(np.random.default_rng(9), lesion=True))
    shipped, local = tiny_predictor.predict_source(image), with_site.predict_source(image)
    assert shipped.logit == local.logit
    point = profile.operating_point()
    expected = 1 / (1 + math.exp(-(point.scale * local.logit + point.offset)))
    assert math.isclose(local.probability, expected, rel_tol=1e-12)
    assert local.threshold == profile.threshold and local.operating_point == profile.id
    assert local.label == ("pneumonia" if expected >= profile.threshold else "normal")
    assert local.grey_zone == (profile.grey_zone[0] <= expected < profile.grey_zone[1])
    assert shipped.operating_point == OperatingPoint.shipped(tiny_predictor.metadata).id != profile.id


# --- the app -----------------------------------------------------------------------------


def _shipped_profile(tmp_path: Path, model_sha: str | None = None) -> tuple[site.SiteProfile, Path]:
    sha = model_sha or read_metadata(DEFAULT_MODEL_PATH).model_sha256
    profile = site.fit_profile(_sample(model_sha=sha), created_utc="2026-12-02T08:00:00+00:00")
    path = tmp_path / "profile.json"
    profile.save(path)
    return profile, path


@pytest.mark.shipped_model
def test_the_app_with_pneumo_site_calls_with_the_profile_and_says_so_on_every_page(tmp_path, monkeypatch):
    from test_app import PAGES, SAMPLE, texts

    profile, path = _shipped_profile(tmp_path)
    monkeypatch.setenv("PNEUMO_SITE", str(path))
    app = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=60).run()
    app.button(key=f"sample-{SAMPLE}").click().run()
    assert not app.exception, app.exception
    assert f"site profile {profile.id[:8]}… fitted on 200 local images on 2026-12-02" in texts(app.warning)
    from ui import resources

    assert resources.predictor().operating_point.id == profile.id
    captions = texts(app.caption)
    assert f"pneumonia at probability ≥ {profile.threshold:.3f}; set for sensitivity 0.97 on this site's 200 labelled images" in captions
    assert "validation" not in captions
    for page in PAGES[1:]:
        app.switch_page(page).run()
        assert not app.exception and f"site profile {profile.id[:8]}" in texts(app.warning), page


@pytest.mark.shipped_model
def test_the_app_serves_no_calls_with_another_model_s_profile(tmp_path, monkeypatch):
    from test_app import SAMPLE, texts

    _, path = _shipped_profile(tmp_path, model_sha="c" * 64)
    monkeypatch.setenv("PNEUMO_SITE", str(path))
    app = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=60).run()
    assert not app.exception, app.exception
    message = texts(app.error)
    assert "was fitted for model cccccccccccc" in message and "serves no calls" in message and "PNEUMO_SITE" in message
    assert not app.metric  # no probability shown anywhere
    assert not [b for b in app.button if b.key and b.key.startswith("sample-")]  # the page stopped before the sidebar's demos
    assert SAMPLE  # the demo images exist, but none can be picked
