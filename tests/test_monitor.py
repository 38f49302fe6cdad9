"""The drift monitor (issue 24, part 5): its statistics on synthetic scores with known answers, the
windows of a trail, and the ``monitor`` command's names, output and exit codes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pneumo_model.artifacts import DEFAULT_MODEL_PATH, read_metadata
from pneumo_model.audit import AuditTrail, ResultRecord
from pneumo_model.cli import main
from pneumo_model.monitor import (
    FILMS,
    FIRST_WINDOW,
    PREVALENCE,
    SITE_SAMPLE,
    Baseline,
    Films,
    MonitorError,
    MonitorRule,
    Reference,
    baseline_from_profile,
    em_prevalence,
    judge,
    ks_distance,
    location_shift,
    monitor,
    trail_films,
    window_bounds,
)
from pneumo_model.operating_point import OperatingPoint

# Two Gaussian classes of raw logits, means -+MU, sd SIGMA: at prevalence 0.5 the true posterior is
# sigmoid(2 MU x / SIGMA^2), so this reference is exactly calibrated and EM's answers are known.
MU, SIGMA = 3.0, 1.2
REFERENCE = Reference(temperature=SIGMA**2 / (2 * MU), prevalence=0.5)
WINDOW_KEYS = {
    "first_utc", "last_utc", "n", "share_pneumonia", "share_grey_zone", "share_flagged",
    "estimated_prevalence", "prevalence_low", "prevalence_high", "shift", "alert", "reasons",
}


def scores(rng, n: int, prevalence: float, normal_move: float = 0.0, pneumonia_move: float = 0.0) -> np.ndarray:
    sick = rng.random(n) < prevalence
    return np.where(sick, rng.normal(MU + pneumonia_move, SIGMA, n), rng.normal(-MU + normal_move, SIGMA, n))


def baseline_of(logits) -> Baseline:
    return Baseline.of(FIRST_WINDOW, logits, 0, REFERENCE, "test baseline")


def test_em_recovers_the_prevalence_of_scores_drawn_from_the_reference(rng):
    for prevalence in (0.2, 0.5, 0.85):
        estimate, _ = em_prevalence(scores(rng, 4000, prevalence), REFERENCE)
        assert estimate == pytest.approx(prevalence, abs=0.02)


def test_ks_distance_is_zero_for_equal_samples_and_one_for_disjoint_ones():
    values = np.arange(10.0)
    assert ks_distance(values, values) == 0.0
    assert ks_distance(values, values + 100) == 1.0
    # Weights move the baseline's CDF: all the weight on the largest value.
    assert ks_distance(np.array([0.0]), np.array([0.0, 5.0]), np.array([0.0, 1.0])) == 1.0


def test_location_shift_sees_a_move_of_the_normal_films_and_not_a_change_of_mix(rng):
    base = scores(rng, 400, 0.5)
    moved = location_shift(scores(rng, 400, 0.5, normal_move=1.5), base, 0.0)
    mixed = location_shift(scores(rng, 400, 0.85), base, 0.0)
    assert moved[0] > 5 and abs(moved[1]) < 3
    assert max(abs(z) for z in mixed) < 3


def test_no_change_no_alert(rng):
    verdict = judge(scores(rng, 100, 0.5), 0, baseline_of(scores(rng, 100, 0.5)), REFERENCE, MonitorRule())
    assert not verdict.alert and verdict.cause is None and verdict.reasons == []


def test_more_sick_children_alone_is_named_a_prevalence_change(rng):
    verdict = judge(scores(rng, 200, 0.9), 0, baseline_of(scores(rng, 200, 0.3)), REFERENCE, MonitorRule(window=200))
    assert verdict.alert and verdict.cause == PREVALENCE
    assert verdict.estimated_prevalence == pytest.approx(0.9, abs=0.06)
    assert "share of sick children" in verdict.reasons[-1]


def test_normal_films_that_score_higher_are_named_a_change_of_the_films(rng):
    verdict = judge(scores(rng, 100, 0.5, normal_move=1.5), 0, baseline_of(scores(rng, 100, 0.5)), REFERENCE, MonitorRule())
    assert verdict.alert and verdict.cause == FILMS
    assert "normal-looking films' scores went up" in verdict.reasons[0]


def test_a_change_of_films_with_more_sick_children_is_still_a_change_of_the_films(rng):
    window = scores(rng, 200, 0.85, normal_move=1.5, pneumonia_move=1.0)
    verdict = judge(window, 0, baseline_of(scores(rng, 200, 0.4)), REFERENCE, MonitorRule(window=200))
    assert verdict.alert and verdict.cause == FILMS


def test_more_films_flagged_by_the_gate_is_a_change_of_the_films(rng):
    logits = scores(rng, 100, 0.5)
    baseline = Baseline.of(FIRST_WINDOW, scores(rng, 100, 0.5), 1, REFERENCE, "test")
    verdict = judge(logits, 15, baseline, REFERENCE, MonitorRule())
    assert verdict.alert and verdict.cause == FILMS
    assert "flagged 15 of 100" in verdict.reasons[0]
    assert not judge(logits, 2, baseline, REFERENCE, MonitorRule()).alert


def test_a_label_free_profile_sample_is_read_from_its_percentiles(rng):
    sample = scores(rng, 300, 0.6)
    profile = {
        "id": "ab" * 8,
        "kind": "label-free",
        "sample": {
            "n": 300,
            "fingerprint": "0" * 64,
            "logit_quantiles": np.percentile(sample, np.linspace(0, 100, 101)).tolist(),
            "share_flagged": 0.02,
            "estimated_prevalence": 0.6,
        },
    }
    baseline = baseline_from_profile(profile, REFERENCE)
    assert baseline.kind == SITE_SAMPLE and baseline.n == 300 and baseline.n_flagged == 6
    assert ks_distance(baseline.logits, sample) < 0.02
    assert baseline.prevalence == pytest.approx(em_prevalence(sample, REFERENCE)[0], abs=0.02)
    assert baseline_from_profile({"id": "x", "kind": "labelled"}, REFERENCE) is None  # labelled: no sample
    # With the sample as baseline, every window is judged, the first one too.
    report = monitor(films_of(np.concatenate([scores(rng, 100, 0.6), scores(rng, 100, 0.6, normal_move=2.0)])),
                     point(), REFERENCE, MonitorRule(), baseline)
    assert report["baseline"]["kind"] == SITE_SAMPLE and "label-free" in report["baseline"]["description"]
    assert [row["alert"] for row in report["windows"]] == [False, True]
    assert report["windows"][0]["reasons"] != ["this window is the baseline"]
    broken = json.loads(json.dumps(profile))
    broken["sample"]["logit_quantiles"] = broken["sample"]["logit_quantiles"][::-1]
    with pytest.raises(MonitorError, match="101 increasing"):
        baseline_from_profile(broken, REFERENCE)
    del broken["sample"]["n"]
    with pytest.raises(MonitorError, match="film count"):
        baseline_from_profile(broken, REFERENCE)


def test_a_window_is_at_least_20_films():
    with pytest.raises(MonitorError, match="at least 20"):
        MonitorRule(window=5)


def point() -> OperatingPoint:
    return OperatingPoint.shipped(read_metadata(DEFAULT_MODEL_PATH))


def films_of(logits, flagged=None) -> Films:
    times = [f"2026-12-0{1 + i // 100}T{(i // 60) % 24:02d}:{i % 60:02d}:00+00:00" for i in range(len(logits))]
    return Films(times, np.asarray(logits, dtype=np.float64), list(flagged or [False] * len(logits)))


def test_windows_in_recording_order_with_a_partial_last_one(rng):
    logits = np.concatenate([scores(rng, 200, 0.5), scores(rng, 100, 0.5, normal_move=2.0), scores(rng, 30, 0.5)])
    report = monitor(films_of(logits), point(), REFERENCE, MonitorRule())
    assert window_bounds(330, 100) == [(0, 100), (100, 200), (200, 300), (300, 330)]
    windows = report["windows"]
    assert [row["n"] for row in windows] == [100, 100, 100, 30]
    assert [row["full"] for row in windows] == [True, True, True, False]
    assert set(windows[0]) >= WINDOW_KEYS
    assert windows[0]["reasons"] == ["this window is the baseline"] and not windows[0]["alert"]
    assert not windows[1]["alert"]
    assert windows[2]["alert"] and windows[2]["cause"] == FILMS
    assert "partial window of 30" in windows[3]["reasons"][-1]
    # The command's alert is the last *full* window's, with what to do.
    assert report["alert"] is True and report["cause"] == FILMS
    assert any("scanner's processing" in action for action in report["actions"])
    for row in windows:
        assert row["prevalence_low"] <= row["estimated_prevalence"] <= row["prevalence_high"]
        assert row["first_utc"] <= row["last_utc"]
    assert report["baseline"]["kind"] == FIRST_WINDOW


def test_fewer_films_than_a_window_and_no_sample_is_refused_plainly(rng):
    with pytest.raises(MonitorError, match="first full window"):
        monitor(films_of(scores(rng, 50, 0.5)), point(), REFERENCE, MonitorRule())


# --- the command ---------------------------------------------------------------------------------


def test_a_missing_trail_exits_2_and_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "audit.sqlite3"
    assert main(["monitor", "--audit", str(missing)]) == 2
    assert not missing.exists() and not missing.parent.exists()
    assert "no audit trail" in capsys.readouterr().err.lower()
    with pytest.raises(MonitorError):
        trail_films(missing, "0" * 64)
    assert not missing.exists()


def test_an_unreadable_trail_exits_2_and_is_left_as_it_was(tmp_path, capsys):
    garbage = tmp_path / "audit.sqlite3"
    garbage.write_bytes(b"this is not a database" * 100)
    before = garbage.read_bytes()
    assert main(["monitor", "--audit", str(garbage)]) == 2
    assert garbage.read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["audit.sqlite3"]
    assert "cannot be read" in capsys.readouterr().err
    folder = tmp_path / "a_folder"
    folder.mkdir()
    assert main(["monitor", "--audit", str(folder)]) == 2


@pytest.mark.parametrize(
    "argv",
    [["monitor"], ["monitor", "--audit", "x.sqlite3", "--window", "5"], ["monitor", "--audit", "x.sqlite3", "--window", "ten"]],
)
def test_usage_errors_exit_1(argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    assert not (tmp_path / "x.sqlite3").exists()


def write_trail(path, logits, flagged, metadata, first: int = 0) -> None:
    """Records one result per logit, the shipped point's call on it, as films ``first``, ``first + 1``..."""
    shipped = OperatingPoint.shipped(metadata)
    probabilities = shipped.probabilities(np.asarray(logits))
    trail = AuditTrail(path)
    trail.record_results([
        ResultRecord(
            image_sha256=f"{first + index:064x}", model_sha256=metadata.model_sha256, threshold=shipped.threshold,
            probability=float(p), label=shipped.label(float(p)), grey_zone=shipped.in_grey_zone(float(p)),
            source="cli", ood=bool(flag), ood_score=0.5, operating_point=shipped.id, logit=float(logit),
        )
        for index, (logit, p, flag) in enumerate(zip(logits, probabilities, flagged))
    ])


def test_the_command_reads_a_trail_once_per_film_and_ends_with_one_json_line(tmp_path, rng, capsys):
    metadata = read_metadata(DEFAULT_MODEL_PATH)
    logits = np.concatenate([rng.normal(-4, 1.1, 60), rng.normal(3.5, 1.5, 60)])
    rng.shuffle(logits)
    shifted = np.concatenate([rng.normal(-2, 1.1, 30), rng.normal(4.2, 1.5, 30)])
    db = tmp_path / "audit.sqlite3"
    write_trail(db, np.concatenate([logits, shifted]), [False] * 120 + [True] * 12 + [False] * 48, metadata)
    write_trail(db, logits[:10], [False] * 10, metadata)  # the same films again: counted once
    assert main(["monitor", "--audit", str(db), "--window", "40"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("baseline: the trail's first window of 40 films")
    report = json.loads(lines[-1])
    assert set(report) >= {"windows", "alert"}
    assert [row["n"] for row in report["windows"]] == [40, 40, 40, 40, 20]
    assert all(set(row) >= WINDOW_KEYS for row in report["windows"])
    assert [row["alert"] for row in report["windows"][:3]] == [False, False, False]
    assert report["windows"][3]["alert"] and report["windows"][3]["cause"] == FILMS
    assert report["alert"] is True  # window 4, the last full one
    assert report["windows"][3]["share_flagged"] == pytest.approx(12 / 40)
    assert report["baseline"]["kind"] == FIRST_WINDOW


def test_with_a_labelled_profile_the_first_window_is_the_baseline_and_its_calls_are_counted(tmp_path, rng, capsys):
    from test_site import _shipped_profile

    profile, path = _shipped_profile(tmp_path)
    metadata = read_metadata(DEFAULT_MODEL_PATH)
    logits = np.concatenate([rng.normal(-4, 1.1, 30), rng.normal(3.5, 1.5, 50)])
    db = tmp_path / "audit.sqlite3"
    write_trail(db, logits, [False] * 80, metadata)
    assert main(["monitor", "--audit", str(db), "--window", "40", "--site", str(path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    report = json.loads(out[-1])
    assert report["baseline"]["kind"] == FIRST_WINDOW and out[0].startswith("baseline: the trail's first window")
    first = logits[:40]
    called = profile.operating_point().probabilities(first) >= profile.threshold
    assert report["windows"][0]["share_pneumonia"] == pytest.approx(called.mean())
    assert main(["monitor", "--audit", str(db), "--site", str(tmp_path / "missing.json")]) == 1


@pytest.mark.data
@pytest.mark.shipped_model
def test_monitor_on_a_trail_made_by_batch_without_and_with_a_deliberate_shift(tmp_path, capsys):
    """Validation films scored by ``batch --audit``: 100 as they are, then 100 others zoomed in by
    1.25 (a shift of ``lab/shifts.py`` that moves validation specificity by far more than 5 points)."""
    import cv2

    from pneumo_model.data import model_split, resolve_data_dir
    from pneumo_model.lab.shifts import rotate_and_zoom

    metadata = read_metadata(DEFAULT_MODEL_PATH)
    validation = model_split(metadata, resolve_data_dir()).validation
    chosen = [validation[i] for i in np.random.default_rng(7).permutation(len(validation))[:200]]
    plain_list, zoomed_list = tmp_path / "plain.txt", tmp_path / "zoomed.txt"
    plain_list.write_text("\n".join(str(sample.path) for sample in chosen[:100]) + "\n")
    zoomed = tmp_path / "zoomed"
    zoomed.mkdir()
    for sample in chosen[100:]:
        grey = cv2.imread(str(sample.path), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0
        shifted = rotate_and_zoom(grey, zoom=1.25)
        cv2.imwrite(str(zoomed / (sample.path.stem + ".png")), np.round(shifted * 255).astype(np.uint8))
    zoomed_list.write_text("\n".join(str(path) for path in sorted(zoomed.iterdir())) + "\n")
    db = tmp_path / "audit.sqlite3"
    for source, out in ((plain_list, "results_plain"), (plain_list, "results_again"), (zoomed_list, "results_zoomed")):
        assert main(["batch", str(source), "--out", str(tmp_path / out), "--audit", str(db), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["monitor", "--audit", str(db), "--window", "50"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    windows = report["windows"]
    assert [row["n"] for row in windows] == [50, 50, 50, 50]  # the films scored twice count once
    assert not windows[1]["alert"]  # plain against plain
    assert windows[2]["alert"] and windows[2]["cause"] == FILMS  # the first full shifted window
    assert report["alert"] is True
    assert math.isfinite(windows[2]["shift"]) and windows[2]["shift"] > windows[1]["shift"]


# --- the rule's lab side and its committed report ----------------------------------------------


def synthetic_validation(rng, n: int = 600):
    from pneumo_model.lab.monitor_rules import ValidationScores

    labels = (rng.random(n) < 0.7).astype(int)
    plain = np.where(labels == 1, rng.normal(MU, SIGMA, n), rng.normal(-MU, SIGMA, n))
    moved = plain + np.where(labels == 0, 2.5, 0.5)
    return ValidationScores(
        model_sha256="0" * 64, labels=labels, logits={"plain": plain, "moved": moved},
        flagged={"plain": np.zeros(n, bool), "moved": rng.random(n) < 0.05},
        threshold_logit=-1.0, temperature=REFERENCE.temperature,
    )


def test_the_labs_fast_rule_is_the_monitors_own_and_sees_a_moved_stream(rng):
    from pneumo_model.lab.monitor_rules import FIRST, alerts, draw_statistics, qualifying_shifts

    scores = synthetic_validation(rng)
    assert set(qualifying_shifts(scores)) == {"moved"}
    for shift in ("plain", "moved"):
        stats = draw_statistics(scores, REFERENCE, 100, FIRST, 60, seed=3, shift=shift)
        alert, _ = alerts(stats, MonitorRule())
        assert np.array_equal(alert, stats["judged_alert"])
    assert stats["judged_alert"].mean() > 0.9  # the moved stream
    assert np.all((stats["true_prevalence"] > 0.5) & (stats["true_prevalence"] < 0.9))


def test_the_committed_report_is_of_the_committed_rule_and_its_verdicts_follow_its_numbers():
    from pneumo_model.paths import REPO_ROOT

    report = json.loads((REPO_ROOT / "reports" / "monitor_rule.json").read_text())
    calibration = json.loads((REPO_ROOT / "reports" / "monitor_rule_calibration.json").read_text())
    rule = MonitorRule()
    for source in (report["rule"], calibration):
        assert (source["shift_constant"], source["films_constant"], source["flag_alpha"]) == (
            rule.shift_constant, rule.films_constant, rule.flag_alpha)
    assert report["model_sha256"] == read_metadata(DEFAULT_MODEL_PATH).model_sha256 == calibration["model_sha256"]
    measured = report["measured"]
    qualifying = {name for name, row in report["shifts"].items() if row["qualifies"]}
    assert qualifying == set(measured["qualifying_shifts"])
    assert all(abs(report["shifts"][name]["specificity_change"]) >= 0.05 - 1e-9 for name in qualifying)
    for key, meets in measured["meets"].items():
        assert meets["false_alarms_at_most_1_in_100"] == (measured["false_alarms"][key]["rate"] <= 0.01)
        detected = [row["rate"] >= 0.9 for row in measured["detection"][key].values()]
        assert meets["each_qualifying_shift_detected_90"] == all(detected)
        assert meets["share_of_shifts_detected_90"] == pytest.approx(sum(detected) / len(detected))
