"""Label-free site profiles: the method on synthetic scores with known answers (a pure shift, a
prevalence change, both), every refusal, ages, the profile file and its contract with the drift
monitor, the operating point's mapping, the CLI's names and exit codes, ``predict --site`` and
the app's banner with a label-free profile active."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from helpers import encode, synthetic_xray
from pneumo_model import alignment, site
from pneumo_model.alignment import AlignmentRefused, LocalScores, Reference
from pneumo_model.artifacts import read_metadata
from pneumo_model.cli import main
from pneumo_model.dicom import age_in_years
from pneumo_model.errors import SiteProfileError
from pneumo_model.operating_point import OperatingPoint
from pneumo_model.paths import DEFAULT_MODEL_PATH, REPO_ROOT

SHA = "a" * 64


class Metadata:
    """What ``alignment.align`` reads of a model's metadata (a shipped point of temperature 1)."""

    model_sha256 = SHA
    temperature = 1.0
    threshold = 0.2
    grey_zone = (0.08, 0.45)


def _classes(rng: np.random.Generator, n: int, prevalence: float) -> tuple[np.ndarray, np.ndarray]:
    """Raw logits of two well-separated classes: normal N(-4, 1.2), pneumonia N(3, 1.5)."""
    labels = (np.arange(n) < round(n * prevalence)).astype(int)
    logits = np.where(labels == 1, rng.normal(3.0, 1.5, n), rng.normal(-4.0, 1.2, n))
    return logits, labels


@pytest.fixture(scope="module")
def reference() -> Reference:
    logits, labels = _classes(np.random.default_rng(0), 800, 0.74)
    return Reference(SHA, logits, labels)


def _local(n: int, prevalence: float, shift: float = 0.0, scale: float = 1.0, seed: int = 1, **counts) -> tuple[LocalScores, np.ndarray]:
    logits, labels = _classes(np.random.default_rng(seed), n, prevalence)
    digests = tuple(hashlib.sha256(f"{seed}-{i}".encode()).hexdigest() for i in range(n))
    return LocalScores(scale * logits + shift, digests, SHA, n, **counts), labels


def _calls(profile, scores: LocalScores, labels: np.ndarray) -> tuple[float, float]:
    point = profile.operating_point()
    called = point.probabilities(scores.logits) >= point.threshold
    return float(called[labels == 1].mean()), float((~called[labels == 0]).mean())


# --- the method ---------------------------------------------------------------------------


def test_a_pure_shift_is_undone_and_not_read_as_more_pneumonia(reference):
    scores, labels = _local(300, 0.74, shift=2.5)
    profile = alignment.align(Metadata, reference, scores)
    assert profile.estimated_prevalence == pytest.approx(0.74, abs=0.05)
    assert profile.threshold_move == pytest.approx(2.5, abs=0.6)
    sensitivity, specificity = _calls(profile, scores, labels)
    assert sensitivity > 0.97 and specificity > 0.97
    # The shipped point on the same shifted films calls many normal films pneumonia.
    shipped = OperatingPoint.shipped(Metadata)
    assert (shipped.probabilities(scores.logits[labels == 0]) >= shipped.threshold).mean() > 0.1


def test_a_prevalence_change_is_estimated_and_plain_alignment_would_have_failed(reference):
    scores, labels = _local(300, 0.30)
    profile = alignment.align(Metadata, reference, scores)
    low, high = profile.prevalence_interval
    assert profile.estimated_prevalence == pytest.approx(0.30, abs=0.05) and low <= 0.30 <= high
    assert abs(profile.threshold_move) < 1.0
    sensitivity, specificity = _calls(profile, scores, labels)
    assert sensitivity > 0.95 and specificity > 0.95
    # Aligned at the reference's own prevalence (Roschewitz et al. without a prevalence estimate),
    # the upper normal films are mapped onto validation's pneumonia films.
    plain = alignment.quantile_mapping(reference, scores.logits, reference.prevalence)
    t = math.log(0.2 / 0.8)
    assert (plain(scores.logits[labels == 0]) >= t).mean() > 0.3


def test_a_shift_and_a_prevalence_change_together(reference):
    scores, labels = _local(250, 0.35, shift=1.5, scale=1.2, seed=3)
    profile = alignment.align(Metadata, reference, scores)
    assert profile.estimated_prevalence == pytest.approx(0.35, abs=0.06)
    sensitivity, specificity = _calls(profile, scores, labels)
    assert sensitivity > 0.95 and specificity > 0.95


def test_the_mapping_is_monotone_keeps_the_ranking_and_has_slope_one_beyond_its_knots(reference):
    scores, _ = _local(200, 0.5, shift=1.0)
    mapping = alignment.quantile_mapping(reference, scores.logits, 0.5)
    grid = np.linspace(-30, 30, 2001)
    mapped = mapping(grid)
    assert np.all(np.diff(mapped) > 0)
    assert mapped[-1] - mapped[-2] == pytest.approx(grid[-1] - grid[-2])
    assert mapping.inverse(mapping(np.array([-2.0, 0.3, 4.0]))) == pytest.approx([-2.0, 0.3, 4.0])
    point = OperatingPoint("x", "label-free", SHA, 0.5, 0.1, 0.3, site.GreyZone(0.1, 0.6), "", (mapping.x, mapping.y))
    z = np.array([-3.0, 0.0, 2.0])
    assert point.probabilities(z) == pytest.approx(1 / (1 + np.exp(-(0.5 * mapping(z) + 0.1))), rel=1e-12)


def test_the_reference_reweighted_to_a_prevalence_has_that_share_of_pneumonia(reference):
    weights = alignment.reference_weights(reference.labels, 0.3)
    assert weights[reference.labels == 1].sum() == pytest.approx(0.3) and weights.sum() == pytest.approx(1.0)


# --- refusals -----------------------------------------------------------------------------


def test_fewer_than_100_films_after_exclusions_is_refused_with_the_counts(reference):
    scores, _ = _local(99, 0.5, flagged=3, over_age=2, with_age=40)
    with pytest.raises(AlignmentRefused) as refused:
        alignment.align(Metadata, reference, scores)
    assert any("Only 99 distinct films" in reason for reason in refused.value.reasons)
    assert refused.value.facts["counts"]["excluded_by_gate"] == 3 and refused.value.facts["counts"]["excluded_over_age"] == 2


def test_a_sample_the_gate_flags_too_often_is_refused(reference):
    scores, _ = _local(200, 0.5, flagged=40)  # 40 of 240 distinct films: 17 %
    with pytest.raises(AlignmentRefused, match="flags 40 of 240"):
        alignment.align(Metadata, reference, scores)


def test_a_sample_of_older_children_is_refused(reference):
    scores, _ = _local(200, 0.5, over_age=30, with_age=100)
    with pytest.raises(AlignmentRefused, match="30 of 100 films with an age"):
        alignment.align(Metadata, reference, scores)


def test_a_prevalence_at_its_bound_is_refused(reference):
    scores, _ = _local(200, 0.0)  # normal films only
    with pytest.raises(AlignmentRefused, match="at the end of what can be estimated"):
        alignment.align(Metadata, reference, scores)


def test_an_unstable_estimate_and_a_threshold_moved_too_far_are_refused():
    wide = alignment.Alignment(alignment.PrevalenceFit(0.5, 1.0, 0.0, 0.2, 0.7), alignment.Mapping((0.0, 1.0), (0.0, 1.0)), 0.0)
    assert any("unstable" in reason for reason in alignment.refusal_reasons(None, wide))
    far = alignment.Alignment(alignment.PrevalenceFit(0.5, 1.0, 0.0, 0.45, 0.55), alignment.Mapping((0.0, 1.0), (0.0, 1.0)), 4.5)
    (reason,) = alignment.refusal_reasons(None, far)
    assert "move the threshold by +4.50" in reason


def test_a_site_scoring_far_above_validation_is_refused_not_aligned(reference):
    # Shifted by more than the gap between the classes, the films look like pneumonia films only:
    # the estimate runs to its bound, and the sample is refused rather than aligned.
    scores, _ = _local(250, 0.74, shift=6.5)
    with pytest.raises(AlignmentRefused) as refused:
        alignment.align(Metadata, reference, scores)
    assert any("at the end of what can be estimated" in r or "move the threshold" in r for r in refused.value.reasons)


@pytest.mark.parametrize(
    ("patient_age", "birth", "dates", "excluded"),
    [
        ("006Y", None, (), True),
        ("005Y", None, (), False),
        ("7", None, (), True),  # digits without a unit read as years
        ("071M", None, (), False),  # 5.9 years: 5 completed years
        ("072M", None, (), True),
        (None, "20180301", ("20240302",), True),
        (None, "20190301", ("20240228",), False),
        (None, None, (), False),  # no age: kept
    ],
)
def test_ages_over_five_completed_years_are_excluded_with_or_without_a_unit_and_from_dates(patient_age, birth, dates, excluded):
    reading = age_in_years(patient_age, birth, dates)
    assert alignment.over_age(reading.years) is excluded


# --- the profile ----------------------------------------------------------------------------


def test_a_label_free_profile_keeps_the_monitor_contract_and_round_trips(reference, tmp_path):
    scores, _ = _local(300, 0.6, shift=1.0, flagged=6)
    profile = alignment.align(Metadata, reference, scores, created_utc="2026-12-07T09:00:00+00:00")
    path = tmp_path / "p.json"
    profile.save(path)
    data = json.loads(path.read_text())
    assert data["kind"] == "label-free"
    sample = data["sample"]
    assert sample["n"] == 300 and len(sample["logit_quantiles"]) == 101
    assert sample["logit_quantiles"] == pytest.approx(list(np.percentile(scores.logits, np.arange(101))))
    assert sample["fingerprint"] == hashlib.sha256("\n".join(sorted(scores.digests)).encode()).hexdigest()
    assert sample["share_flagged"] == pytest.approx(6 / 306) and sample["estimated_prevalence"] == data["estimated_prevalence"]
    for key in ("id", "model_sha256", "counts", "mapping", "threshold", "grey_zone", "rule", "created_utc", "schema_version"):
        assert key in data, key
    loaded = site.SiteProfile.load(path)
    assert isinstance(loaded, alignment.LabelFreeProfile) and loaded.id == profile.id
    point = loaded.operating_point()
    assert point.kind == "label-free" and point.mapping is not None and point.threshold == Metadata.threshold
    assert "provisional" in point.description
    data["threshold"] = 0.3
    path.write_text(json.dumps(data))
    with pytest.raises(SiteProfileError, match="changed after it was made"):
        site.SiteProfile.load(path)


def test_labelled_profiles_say_their_kind_and_old_ones_without_it_keep_their_id(tmp_path):
    from test_site import _sample

    profile = site.fit_profile(_sample(), created_utc="2026-12-01T00:00:00+00:00")
    data = json.loads(profile.to_json())
    assert data["kind"] == "labelled"
    del data["kind"]  # as written before kinds existed
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    old = site.SiteProfile.load(path)
    assert old.kind == "labelled" and old.id == profile.id
    data["kind"] = "guessed"
    path.write_text(json.dumps(data))
    with pytest.raises(SiteProfileError, match="unknown kind"):
        site.SiteProfile.load(path)


def test_site_check_says_whether_a_label_free_profile_held():
    good = {"sensitivity": {"value": 0.96, "low": 0.92, "high": 0.98}, "specificity": {"value": 0.9, "low": 0.85, "high": 0.94}}
    assert alignment.held(good)["held"]
    bad = {**good, "specificity": {"value": 0.7, "low": 0.62, "high": 0.77}}
    verdict = alignment.held(bad)
    assert not verdict["held"] and any("below 0.90" in reason for reason in verdict["reasons"])


def test_the_reference_refuses_another_model_and_a_missing_file(reference, tmp_path):
    path = tmp_path / "m.reference.json"
    path.write_text(reference.to_json())
    assert Reference.load(path, SHA).sha256 == reference.sha256
    with pytest.raises(SiteProfileError, match="made for model aaaaaaaaaaaa"):
        Reference.load(path, "b" * 64)
    with pytest.raises(SiteProfileError, match="site reference"):
        Reference.load(tmp_path / "none.json", SHA)


@pytest.mark.shipped_model
def test_the_shipped_reference_is_the_model_s_validation_scores_only():
    metadata = read_metadata(DEFAULT_MODEL_PATH)
    shipped = Reference.load(alignment.reference_path(DEFAULT_MODEL_PATH), metadata.model_sha256)
    assert "validation" in shipped.facts["split"] and shipped.logits.size == shipped.facts["normal"] + shipped.facts["pneumonia"]
    assert shipped.logits.size + shipped.facts["excluded_by_gate"] == 781  # the model's validation split
    # The shipped threshold sits where validation put it: sensitivity near 0.97 on the reference.
    point = OperatingPoint.shipped(metadata)
    called = point.probabilities(shipped.logits) >= point.threshold
    assert called[shipped.labels == 1].mean() >= 0.95


# --- the command line -------------------------------------------------------------------------


def _run(capsys, argv):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out.splitlines(), out.err


@pytest.fixture(scope="module")
def aligned_model(tiny_model, tmp_path_factory):
    """The tiny model with a reference beside it, and a folder of 130 unlabelled films."""
    from pneumo_model.prediction import Predictor

    predictor = Predictor.from_file(tiny_model)
    root = tmp_path_factory.mktemp("films")
    rng = np.random.default_rng(11)
    images = [encode(synthetic_xray(rng, lesion=i % 3 == 0)) for i in range(130)]
    for i, data in enumerate(images):
        (root / f"film_{i:03d}.png").write_bytes(data)
    # The reference: the tiny model's scores of other films, with their labels.
    labels = np.array([i % 2 for i in range(200)])
    logits = predictor.logits(np.stack([
        __import__("pneumo_model.pipeline", fromlist=["DecodedImage"]).DecodedImage.decode(encode(synthetic_xray(rng, lesion=bool(y)))).model_input(predictor.input_size)
        for y in labels
    ]))
    alignment.reference_path(tiny_model).write_text(Reference(predictor.metadata.model_sha256, logits, labels).to_json())
    return tiny_model, root


def test_site_align_names_and_exit_codes(aligned_model, tmp_path, capsys):
    model, root = aligned_model
    out = tmp_path / "lf.json"
    code, lines, err = _run(capsys, ["site", "align", "--folder", str(root), "--out", str(out), "--model", str(model)])
    last = json.loads(lines[-1])
    if code == 0:
        assert {"id", "kind", "n", "estimated_prevalence", "threshold", "grey_zone"} <= set(last)
        assert last["kind"] == "label-free" and out.is_file() and site.SiteProfile.load(out).id == last["id"]
    else:  # the tiny model may not separate its classes well enough: then a reasoned refusal, nothing written
        assert code == 2 and last["refused"] is True and last["reasons"] and not out.exists()
    # --files: the same films by list, so the same answer.
    listing = tmp_path / "films.txt"
    listing.write_text("\n".join(str(path) for path in sorted(root.glob("*.png"))) + "\n")
    code_files, lines_files, _ = _run(capsys, ["site", "align", "--files", str(listing), "--out", str(tmp_path / "b.json"), "--model", str(model)])
    assert code_files == code and json.loads(lines_files[-1]).get("id") == last.get("id")
    # Refused: too few films; exit 2, the last line says why, nothing written.
    few = tmp_path / "few.txt"
    few.write_text("\n".join(str(path) for path in sorted(root.glob("*.png"))[:40]))
    code, lines, err = _run(capsys, ["site", "align", "--files", str(few), "--out", str(tmp_path / "c.json"), "--model", str(model)])
    refusal = json.loads(lines[-1])
    assert code == 2 and refusal["refused"] is True and "Only 40 distinct films" in refusal["reasons"][0]
    assert not (tmp_path / "c.json").exists()
    # Usage: exit 1.
    assert _run(capsys, ["site", "align", "--folder", str(root)])[0] == 1  # no --out
    assert _run(capsys, ["site", "align", "--folder", str(root), "--last", "5", "--out", str(out)])[0] == 1
    assert _run(capsys, ["site", "align", "--audit", str(tmp_path / "t.db"), "--until", "2026-12-01", "--out", str(out)])[0] == 1
    assert _run(capsys, ["site", "align", "--audit", str(tmp_path / "t.db"), "--since", "12/01/2026", "--out", str(out)])[0] == 1
    assert _run(capsys, ["site", "align", "--folder", str(root), "--files", str(listing), "--out", str(out)])[0] == 1
    # A model without a reference beside it: exit 1 with what to do.
    code, _, err = _run(capsys, ["site", "align", "--folder", str(root), "--out", str(out), "--model", str(DEFAULT_MODEL_PATH.parent / "missing.keras")])
    assert code == 1


def test_a_missing_audit_trail_is_refused_and_not_created(aligned_model, tmp_path, capsys):
    model, _ = aligned_model
    trail = tmp_path / "none.sqlite3"
    code, _, err = _run(capsys, ["site", "align", "--audit", str(trail), "--out", str(tmp_path / "p.json"), "--model", str(model)])
    assert code == 1 and "no audit trail" in err and not trail.exists()


# --- the shipped model: predict and the app ---------------------------------------------------


def _shipped_label_free(tmp_path: Path) -> tuple[alignment.LabelFreeProfile, Path]:
    metadata = read_metadata(DEFAULT_MODEL_PATH)
    reference = Reference.load(alignment.reference_path(DEFAULT_MODEL_PATH), metadata.model_sha256)
    rng = np.random.default_rng(4)
    chosen = rng.choice(reference.logits.size, 250, replace=False)
    local = reference.logits[chosen] + 1.0  # the site's films score one log-odds higher
    digests = tuple(hashlib.sha256(str(i).encode()).hexdigest() for i in chosen)
    profile = alignment.align(metadata, reference, LocalScores(local, digests, metadata.model_sha256, 250), "2026-12-07T09:00:00+00:00")
    path = tmp_path / "label_free.json"
    profile.save(path)
    return profile, path


@pytest.mark.shipped_model
def test_predict_with_a_label_free_profile_reads_the_logit_through_the_alignment(tmp_path, capsys):
    profile, path = _shipped_label_free(tmp_path)
    image = REPO_ROOT / "assets" / "samples" / "person10_virus_35.jpeg"
    code, lines, _ = _run(capsys, ["predict", str(image), "--site", str(path)])
    record = json.loads(lines[-1])
    point = profile.operating_point()
    assert code == 0 and record["operating_point"] == profile.id
    code, lines, _ = _run(capsys, ["predict", str(image)])
    shipped = json.loads(lines[-1])
    metadata = read_metadata(DEFAULT_MODEL_PATH)
    p = shipped["probability"]
    raw = metadata.temperature * math.log(p / (1 - p))  # the shipped point is sigmoid(raw / T)
    assert record["probability"] == pytest.approx(float(point.probabilities(np.array([raw]))[0]), abs=1e-4)
    assert record["probability"] < shipped["probability"]  # the site's films score higher: aligned down
    assert record["label"] == ("pneumonia" if record["probability"] >= profile.threshold else "normal")


@pytest.mark.shipped_model
def test_the_app_with_a_label_free_profile_says_on_every_page_that_it_is_provisional(tmp_path, monkeypatch):
    from test_app import PAGES, SAMPLE, texts

    profile, path = _shipped_label_free(tmp_path)
    monkeypatch.setenv("PNEUMO_SITE", str(path))
    app = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=60).run()
    app.button(key=f"sample-{SAMPLE}").click().run()
    assert not app.exception, app.exception
    banner = texts(app.warning)
    assert f"label-free site profile {profile.id[:8]}" in banner and "provisional" in banner and "site check" in banner
    from ui import resources

    assert resources.predictor().operating_point.id == profile.id
    assert "label-free alignment" in texts(app.caption)
    for page in PAGES[1:]:
        app.switch_page(page).run()
        assert not app.exception and "A label-free site profile is active: provisional" in texts(app.warning), page


# --- the committed evaluation -------------------------------------------------------------------


def test_the_label_free_report_says_what_it_must_and_judges_by_its_numbers():
    from pneumo_model.lab import label_free as lf

    report = json.loads((REPO_ROOT / "reports" / "site_label_free.json").read_text())
    assert report["config"]["draws"] >= 200 and set(report["results"]) == {"100|split", "250|split", "500|split", "100|low", "250|low"}
    assert report["rule"]["document"] == alignment.RULE and report["rule"]["commit"]
    assert report["rule"]["sha256"] == hashlib.sha256((REPO_ROOT / alignment.RULE).read_bytes()).hexdigest()  # rules unchanged since
    for row in report["must_reach"]:
        block = report["results"][f"{row['size']}|{row['prevalence']}"]
        value = block["refused_share"] if row["figure"] == "refused_share" else block["points"]["label_free"][row["figure"]][row["statistic"]]
        assert row["value"] == pytest.approx(value, rel=1e-6)
        assert row["met"] == (value >= row["target"] if row["op"] == ">=" else value <= row["target"])
    assert (REPO_ROOT / "reports" / "site_label_free.md").read_text() == lf.label_free_markdown(report)


@pytest.mark.data
@pytest.mark.shipped_model
def test_committed_label_free_report_is_what_site_evaluate_label_free_gives(tmp_path):
    from helpers import same_report
    from pneumo_model.data import DEFAULT_DATA_DIR
    from pneumo_model.lab import label_free as lf

    fresh = lf.evaluate_label_free(DEFAULT_MODEL_PATH, DEFAULT_DATA_DIR, tmp_path)  # logs in tmp_path, not reports/
    committed = json.loads((REPO_ROOT / "reports" / "site_label_free.json").read_text())
    same_report(committed, fresh)
    assert (tmp_path / lf.EVAL_FIGURE_PATH).is_file()


def test_site_align_reads_the_films_batch_audit_recorded_each_once(aligned_model, tmp_path, capsys):
    model, root = aligned_model
    trail = tmp_path / "trail.sqlite3"
    assert main(["batch", str(root), "--out", str(tmp_path / "results"), "--audit", str(trail), "--model", str(model), "--no-progress"]) == 0
    # The same films scored again count once.
    assert main(["batch", str(root), "--out", str(tmp_path / "again"), "--audit", str(trail), "--model", str(model), "--no-progress"]) == 0
    capsys.readouterr()
    out = tmp_path / "from_trail.json"
    code, lines, _ = _run(capsys, ["site", "align", "--audit", str(trail), "--out", str(out), "--model", str(model)])
    last = json.loads(lines[-1])
    counts = last["counts"]
    assert counts["files_in"] == 130 and counts["used"] + counts["excluded_by_gate"] == 130
    code_folder, lines_folder, _ = _run(capsys, ["site", "align", "--folder", str(root), "--out", str(tmp_path / "f.json"), "--model", str(model)])
    assert code == code_folder  # the trail's films are the folder's films
    if code == 0:
        assert last["id"] == json.loads(lines_folder[-1])["id"] or last["n"] == json.loads(lines_folder[-1])["n"]
    code, lines, _ = _run(capsys, ["site", "align", "--audit", str(trail), "--last", "40", "--out", str(tmp_path / "l.json"), "--model", str(model)])
    assert code == 2 and json.loads(lines[-1])["counts"]["files_in"] == 40
    code, lines, _ = _run(capsys, ["site", "align", "--audit", str(trail), "--since", "2099-01-01", "--out", str(tmp_path / "s.json"), "--model", str(model)])
    assert code == 2 and json.loads(lines[-1])["counts"]["files_in"] == 0


@pytest.mark.shipped_model
def test_site_check_reports_whether_a_label_free_profile_held_and_rewrites_nothing(tmp_path, capsys):
    from test_site_page import labelled_images

    profile, path = _shipped_label_free(tmp_path)
    before = path.read_bytes()
    root = tmp_path / "labelled"
    for label, name, data in labelled_images(normal=24, pneumonia=26):
        (root / label.upper()).mkdir(parents=True, exist_ok=True)
        (root / label.upper() / name).write_bytes(data)
    code, lines, _ = _run(capsys, ["site", "check", str(path), "--folder", str(root)])
    last = json.loads(lines[-1])
    assert code == 0 and last["id"] == profile.id and last["kind"] == "label-free"
    assert last["held"] == alignment.held({k: last[k] for k in ("sensitivity", "specificity")})["held"]
    assert any(line.startswith("the label-free profile") for line in lines)
    assert path.read_bytes() == before


@pytest.mark.shipped_model
def test_the_model_card_shows_the_label_free_figures_and_the_verdict():
    from ui import reports

    app = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=180).run()
    app.switch_page("pages/model_card.py").run()
    assert not app.exception, app.exception
    report = json.loads((REPO_ROOT / "reports" / "site_label_free.json").read_text())
    shown = [str(element.value) for element in app.markdown]
    assert reports.label_free_verdict(report) in shown
    table = next(frame.value for frame in app.dataframe if "label-free alignment" in frame.value.columns)
    specificity = report["results"]["250|split"]["points"]["label_free"]["specificity"]
    assert f"{specificity['median']:.3f} ({specificity['p5']:.3f}-{specificity['p95']:.3f})" in list(table["label-free alignment"])


def test_translate_reads_a_label_free_threshold_through_its_mapping(reference):
    scores, _ = _local(300, 0.6, shift=1.5)
    point = alignment.align(Metadata, reference, scores).operating_point()
    labelled = site.Calibration("platt", 0.8, -0.3)
    # The film at the label-free threshold, on the labelled scale, and back.
    raw = float(alignment.Mapping(*point.mapping).inverse(np.array([math.log(point.threshold / (1 - point.threshold))]))[0])
    expected = 1 / (1 + math.exp(-(0.8 * raw - 0.3)))
    assert site.translate(point.threshold, point, labelled) == pytest.approx(expected, rel=1e-9)
    assert site.translate(expected, labelled, point) == pytest.approx(point.threshold, rel=1e-9)


def test_scoring_unlabelled_films_excludes_and_counts_duplicates_gate_flags_ages_and_unreadable_files(tiny_model):
    from pneumo_model.prediction import Predictor
    from test_inputs import dicom_file

    predictor = Predictor.from_file(tiny_model)
    rng = np.random.default_rng(21)
    film = synthetic_xray(rng)  # (64, 64) uint8
    child = encode(synthetic_xray(rng, lesion=True))
    items = [
        Upload("child.png", child),
        Upload("copy.png", child),  # the same bytes: one film
        Upload("six.dcm", dicom_file(film, PatientAge="006Y")),
        Upload("five.dcm", dicom_file(film, PatientAge="071M", PatientName="Other^Film")),
        Upload("born.dcm", dicom_file(film, PatientAge="", PatientBirthDate="20150101", StudyDate="20240101")),
        Upload("text.png", b"not an image"),
    ]
    scores = alignment.score_unlabelled(predictor, items)
    counts = scores.counts()
    assert counts["files_in"] == 6 and counts["unreadable"] == 1 and scores.unreadable[0][0] == "text.png"
    assert counts["duplicates_merged"] == 1
    assert counts["excluded_over_age"] == 2 and counts["with_header_age"] == 3  # 6 years, and 9 years from dates
    assert counts["used"] + counts["excluded_by_gate"] == 2  # the child film and the 5-year-old's


@dataclasses.dataclass(frozen=True)
class Upload:
    """A file as ``alignment.score_unlabelled`` takes it."""

    name: str
    data: bytes

    def read(self) -> bytes:
        return self.data
