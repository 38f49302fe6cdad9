"""The site-calibration protocol on the test split (``lab.site_evaluation``): the group-stratified
draws, the summaries, the report, and the committed report against a fresh run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from helpers import same_report
from pneumo_model.lab import site_evaluation as se
from pneumo_model.paths import REPO_ROOT

SHIPPED = {"threshold": 0.24, "temperature": 1.3, "grey_zone": [0.03, 0.24]}
MODEL = {"model_sha256": "ab" * 32, "architecture": "synthetic", "shipped_operating_point": SHIPPED}


def synthetic_groups(seed: int = 0, normal: int = 234, pneumonia: int = 390) -> tuple[np.ndarray, np.ndarray]:
    """Labels and groups shaped like the test split: normal groups mostly single, pneumonia groups of 1-9."""
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for label, total, sizes in ((0, normal, [1] * 9 + [3]), (1, pneumonia, [1, 1, 1, 2, 3, 5, 9])):
        count = 0
        while count < total:
            size = min(total - count, int(rng.choice(sizes)))
            groups += [f"{label}-{len(groups)}"] * size
            labels += [label] * size
            count += size
    return np.array(labels), np.array(groups)


def synthetic_split(seed: int = 0) -> se.ScoredSplit:
    labels, groups = synthetic_groups(seed)
    rng = np.random.default_rng(seed + 1)
    raw = rng.normal(0.0, 1.5, labels.size) + 5.0 * labels - 1.0
    digests = np.array([f"{i:064x}" for i in range(labels.size)])
    digests[1] = digests[0]  # one byte-identical pair, inside one group below
    groups = groups.copy()
    groups[1] = groups[0]
    p = 1.0 / (1.0 + np.exp(-raw / 1.3))
    ood = np.zeros(labels.size, dtype=bool)
    ood[::97] = True
    return se.ScoredSplit(raw, labels, groups, digests, ood, p, p >= 0.24, (p >= 0.03) & (p < 0.24))


@pytest.mark.parametrize("seed", range(20))
def test_draw_local_takes_whole_groups_at_the_counts_wanted(seed):
    labels, groups = synthetic_groups(seed % 3)
    counts = se.local_counts(200, labels.mean())
    local = se.draw_local(labels, groups, counts, np.random.default_rng(seed))
    remaining = np.setdiff1d(np.arange(labels.size), local)
    assert ((labels[local] == 0).sum(), (labels[local] == 1).sum()) == counts
    assert np.intersect1d(local, remaining).size == 0
    assert local.size + remaining.size == labels.size
    assert set(groups[local]).isdisjoint(groups[remaining])  # no group split between the two


def test_draw_local_is_seeded_and_refuses_more_than_there_is():
    labels, groups = synthetic_groups()
    first = se.draw_local(labels, groups, (75, 125), np.random.default_rng([1, 200, 3]))
    again = se.draw_local(labels, groups, (75, 125), np.random.default_rng([1, 200, 3]))
    other = se.draw_local(labels, groups, (75, 125), np.random.default_rng([1, 200, 4]))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    with pytest.raises(ValueError, match="Cannot draw"):
        se.draw_local(labels, groups, (235, 10), np.random.default_rng(0))


def test_local_counts_follow_the_split_prevalence():
    prevalence = 390 / 624
    assert [se.local_counts(size, prevalence) for size in (100, 200, 300)] == [(37, 63), (75, 125), (112, 188)]


def test_low_prevalence_keeps_every_normal_and_subsamples_pneumonia():
    labels, _ = synthetic_groups()
    rows = np.arange(100, labels.size)
    chosen = se.low_prevalence_rows(labels, rows, 0.30, np.random.default_rng(0))
    assert set(chosen) <= set(rows)
    assert set(rows[labels[rows] == 0]) <= set(chosen)
    assert labels[chosen].mean() == pytest.approx(0.30, abs=0.005)


def test_spread_on_known_numbers():
    assert se.spread(np.arange(101)) == {"median": 50.0, "p5": 5.0, "p95": 95.0}
    assert se.spread([0.0, 1.0, np.nan]) == {"median": 0.5, "p5": 0.05, "p95": 0.95, "undefined": 1}
    assert se.spread([np.nan])["median"] is None


def test_operating_figures_on_known_calls():
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    called = np.array([1, 1, 1, 0, 1, 0, 0, 0], dtype=bool)
    zone = np.array([0, 0, 0, 1, 1, 0, 0, 0], dtype=bool)
    result = se.operating_figures(labels, np.where(called, 0.9, 0.1), called, zone)
    assert result["sensitivity"] == 0.75 and result["specificity"] == 0.75 and result["accuracy"] == 0.75
    assert result["grey_zone_share"] == 0.25
    assert result["accuracy_outside_grey_zone"] == 1.0  # both errors are in the zone
    assert math.isnan(se.operating_figures(labels, called, called, np.ones(8, bool))["accuracy_outside_grey_zone"])


def test_a_draw_never_scores_the_images_its_profile_was_fitted_on():
    scored = synthetic_split()
    before = scored.raw.copy()
    draw = se.one_draw(scored, 200, 0, se.SEED, 0.97)
    local, remaining = draw["local"]["local_rows"], draw["local"]["remaining_rows"]
    assert np.intersect1d(local, remaining).size == 0 and local.size + remaining.size == scored.labels.size
    assert draw["images"]["split"] == ((scored.labels[remaining] == 0).sum(), (scored.labels[remaining] == 1).sum())
    assert draw["local"]["used"][0] + draw["local"]["used"][1] == local.size - scored.ood[local].sum() - (0 in local and 1 in local)
    assert np.array_equal(scored.raw, before)  # the inputs are not changed


def test_the_fit_leaves_out_the_gate_flags_and_counts_a_duplicate_once():
    scored = synthetic_split()  # 0 and 1 are the same bytes; 0 and 97 are flagged by the gate
    sample = se.fit_sample(scored, np.array([0, 1, 2, 3, 97, 98]))
    assert list(sample.raw_logits) == list(scored.raw[[2, 3, 98]])
    assert sample.files_in == 6


def test_draws_are_deterministic_and_the_report_says_what_it_must():
    scored = synthetic_split()
    first = se.run_draws(scored, sizes=(100, 200), draws=4)
    again = se.run_draws(scored, sizes=(100, 200), draws=4)
    report = se.build_report(scored, first, MODEL, (100, 200), 4, se.SEED, 0.97)
    assert report == se.build_report(scored, again, MODEL, (100, 200), 4, se.SEED, 0.97)
    assert set(report["results"]) == {"100", "200"}
    split = report["results"]["200"]["prevalence"]["split"]
    assert set(split["site"]) == set(se.FIGURES) == set(split["shipped"])
    low = report["results"]["200"]["prevalence"]["low"]
    assert low["images"]["pneumonia"]["median"] / (low["images"]["pneumonia"]["median"] + low["images"]["normal"]["median"]) == pytest.approx(0.3, abs=0.01)
    markdown = se.report_markdown(se.json_safe(report))
    assert se.SPREAD_SENTENCE in markdown
    assert sum(line.startswith(("- met:", "- **missed**:")) for line in markdown.splitlines()) == len(se.MUST_REACH) + 1


def test_must_reach_is_judged_by_the_numbers():
    def block(sens, spec, zone, zone_p95, outside, two_sided):
        site = {name: {"median": 0.5, "p5": 0.5, "p95": 0.5} for name in se.FIGURES}
        site["sensitivity"] = {"median": sens, "p5": sens - 0.02, "p95": 1.0}
        site["specificity"] = {"median": spec, "p5": spec - 0.05, "p95": 1.0}
        site["grey_zone_share"] = {"median": zone, "p5": 0.0, "p95": zone_p95}
        site["accuracy_outside_grey_zone"] = {"median": outside, "p5": 0.9, "p95": 1.0}
        return {"prevalence": {"split": {"site": site}}, "profile": {"two_sided_share": two_sided}}

    good = {"100": block(0.97, 0.86, 0.1, 0.2, 0.98, 1.0), "200": block(0.97, 0.9, 0.1, 0.2, 0.98, 1.0)}
    assert all(row["met"] for row in se.must_reach(good))
    bad = {"100": block(0.95, 0.86, 0.1, 0.2, 0.98, 1.0), "200": block(0.97, 0.9, 0.1, 0.31, 0.98, 0.995)}
    missed = {(row["size"], row["figure"], row["statistic"]) for row in se.must_reach(bad) if not row["met"]}
    assert missed == {(100, "sensitivity", "median"), (200, "grey_zone_share", "p95"), (200, "two_sided_grey_zone", "share of draws")}


def test_the_figure_is_drawn(tmp_path):
    scored = synthetic_split()
    report = se.json_safe(se.build_report(scored, se.run_draws(scored, (100, 200), 3), MODEL, (100, 200), 3, se.SEED, 0.97))
    path = se.site_calibration_figure(report, tmp_path / "figures" / "site.png")
    assert path.is_file() and path.stat().st_size > 10_000


def test_the_evaluation_scores_through_the_pipeline_and_logs_the_run(tiny_model, synthetic_data, tmp_path):
    report = se.evaluate_site_calibration(tiny_model, synthetic_data, tmp_path, sizes=(12,), draws=2)
    assert report["split"]["images"] == 24 and report["results"]["12"]["prevalence"]["split"]["images"]["normal"]["median"] == 6
    assert report["test_evaluations_so_far"] == 1
    assert json.loads((tmp_path / "site_calibration.json").read_text()) == report
    assert (tmp_path / "site_calibration.md").read_text() == se.report_markdown(report)
    assert (tmp_path / se.FIGURE_PATH).is_file()
    assert not report["must_reach_met"]  # no 100 or 200 local images here: nothing to judge, nothing met


@pytest.mark.data
@pytest.mark.shipped_model
def test_committed_site_report_is_what_the_protocol_gives(tmp_path):
    from pneumo_model.artifacts import DEFAULT_MODEL_PATH
    from pneumo_model.data import DEFAULT_DATA_DIR

    fresh = se.evaluate_site_calibration(DEFAULT_MODEL_PATH, DEFAULT_DATA_DIR, tmp_path)  # logs in tmp_path, not reports/
    committed = json.loads((REPO_ROOT / "reports" / "site_calibration.json").read_text())
    assert committed["config"]["draws"] == se.DRAWS
    same_report(committed, fresh)
    assert (tmp_path / se.FIGURE_PATH).is_file()


def test_site_calibration_doc_is_the_generated_report():
    readme = (REPO_ROOT / "docs" / "site_calibration.md").read_text()
    block = readme.split("<!-- site_calibration:start -->\n", 1)[1].split("<!-- site_calibration:end -->", 1)[0]
    assert block == (REPO_ROOT / "reports" / "site_calibration.md").read_text()
    # The Markdown, with its must-reach verdicts, is what the code makes of the committed figures.
    assert block == se.report_markdown(json.loads((REPO_ROOT / "reports" / "site_calibration.json").read_text()))


def test_the_model_card_rows_put_shipped_and_site_side_by_side():
    from ui import reports

    report = json.loads((REPO_ROOT / "reports" / "site_calibration.json").read_text())
    rows = reports.site_calibration_rows(report, 200)
    assert [row["figure"] for row in rows] == [se.FIGURE_NAMES[name] for name in se.FIGURES]
    site = report["results"]["200"]["prevalence"]["split"]["site"]["specificity"]
    assert rows[1]["site profile"] == f"{site['median']:.3f} ({site['p5']:.3f}-{site['p95']:.3f})"
    assert reports.site_calibration_rows(report, 150) == []
    met = sum(row["met"] for row in report["must_reach"])
    assert reports.site_calibration_verdict(report).startswith(f"Must reach: {met} of {len(report['must_reach'])} items met")


@pytest.mark.shipped_model
def test_the_model_card_shows_the_site_calibration():
    from streamlit.testing.v1 import AppTest

    app = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=180).run()
    app.switch_page("pages/model_card.py").run()
    assert not app.exception, app.exception
    report = json.loads((REPO_ROOT / "reports" / "site_calibration.json").read_text())
    shown = [str(element.value) for element in app.markdown]
    assert report["protocol_plain"] in shown
    assert f"**{report['spread_note']}**" in shown
    table = next(frame.value for frame in app.dataframe if "site profile" in frame.value.columns)
    assert list(table["figure"]) == [se.FIGURE_NAMES[name] for name in se.FIGURES]
