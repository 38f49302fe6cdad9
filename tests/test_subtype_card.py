"""The model card's section on the radiographic pattern (issue 27): built by ``card`` from the subtype
network's own metadata and ``reports/subtype_evaluation.json`` (read key by key), and shown on the
Model card page with Kermany 2018's figures beside ours and whether the pattern is on by default."""

from __future__ import annotations

import json
import re

import pytest
from streamlit.testing.v1 import AppTest

from pneumo_model.artifacts import REPO_ROOT, read_metadata
from pneumo_model.bundle import subtype_model_path
from pneumo_model.lab.model_card import OURS_NOTE, SUBTYPE_TEST_FIGURES, subtype_card_facts, write_model_card
from pneumo_model.subtype import ENABLED_BY_DEFAULT
from ui import reports

KERMANY = {"accuracy": 0.907, "sensitivity": 0.886, "specificity": 0.909, "roc_auc": 0.940}


def small_report(met: bool = False) -> dict:
    """A report of the shape ``evaluate --subtype`` writes, with made-up figures (this is a test of
    the card, not of a model), one figure and one interval left out."""
    metrics = {key: round(0.5 + index / 40, 4) for index, key in enumerate(SUBTYPE_TEST_FIGURES)}
    metrics["undetermined_fraction"] = 0.213
    del metrics["viral_recall_undetermined_as_miss"]
    intervals = {key: [value - 0.05, value + 0.04] for key, value in metrics.items() if key != "accuracy"}
    return {"metrics": metrics, "intervals": intervals, "must_reach_met": met, "kermany_2018": dict(KERMANY)}


def test_the_section_reads_the_metadata_and_the_report_key_by_key(tiny_subtype):
    metadata = read_metadata(subtype_model_path(tiny_subtype))
    report = small_report()
    facts = subtype_card_facts(metadata, report)
    assert facts["model"]["sha256"] == metadata.model_sha256 and facts["model"]["command"] == metadata.command
    assert facts["model"]["band"] == list(metadata.grey_zone) and facts["model"]["threshold"] == metadata.threshold
    assert facts["model"]["temperature"] == metadata.temperature
    assert facts["model"]["training_seconds"] == metadata.training_seconds
    validation = facts["model"]["validation"]
    assert validation["viral_recall"] == metadata.validation["sensitivity"]  # viral is the positive class
    assert validation["bacterial_recall"] == metadata.validation["specificity"]
    assert validation["undetermined_fraction"] == metadata.validation["undetermined_fraction"]
    test = facts["test"]
    assert test["metrics"]["roc_auc"] == report["metrics"]["roc_auc"]
    assert test["metrics"]["viral_recall_undetermined_as_miss"] is None  # absent: None, never guessed
    assert "accuracy" not in test["intervals"] and test["intervals"]["roc_auc"] == report["intervals"]["roc_auc"]
    assert test["must_reach_met"] is False and facts["kermany_2018"] == KERMANY
    assert facts["enabled_by_default"] is ENABLED_BY_DEFAULT
    assert "cannot reliably tell bacterial from viral" in facts["what_it_is_not"]
    assert "selected on the test split" in facts["kermany_note"] and facts["kermany_note"].endswith(OURS_NOTE)
    with_note = subtype_card_facts(metadata, report | {"kermany_note": "Their words."})
    assert with_note["kermany_note"] == f"Their words. {OURS_NOTE}"  # the report's own note, when it has one
    # Before the test run, and without a subtype network: the section says so, with nothing made up.
    assert subtype_card_facts(metadata, None)["test"] is None
    assert subtype_card_facts(None, None)["model"] is None
    odd = subtype_card_facts(None, {"metrics": {"roc_auc": "high"}, "intervals": {"roc_auc": [0.1]}, "must_reach_met": "yes"})
    assert odd["test"]["metrics"]["roc_auc"] is None and odd["test"]["intervals"] == {} and odd["test"]["must_reach_met"] is None


def test_card_writes_the_section_from_the_report_beside_it(tiny_subtype, tmp_path):
    folder = tmp_path / "reports"
    folder.mkdir()
    assert write_model_card(folder, None, model_path=tiny_subtype)["subtype"]["test"] is None
    (folder / "subtype_evaluation.json").write_text(json.dumps(small_report(met=True)))
    facts = write_model_card(folder, None, model_path=tiny_subtype)
    assert facts["subtype"]["test"]["must_reach_met"] is True
    assert json.loads((folder / "model_card.json").read_text())["subtype"] == facts["subtype"]


def shown(markdown: str) -> str:
    return re.sub(r"\\(.)", r"\1", markdown.replace("\u2060", ""))


def open_card_with(monkeypatch, section: dict) -> AppTest:
    """The Model card page with the committed card's pattern section replaced by ``section``."""
    real = reports.read_json

    def read_json(name, *args, **kwargs):
        data = real(name, *args, **kwargs)
        if name == "model_card":
            data = dict(data or {}, subtype=section)
        return data

    monkeypatch.setattr(reports, "read_json", read_json)
    app = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=180).run()
    app.switch_page("pages/model_card.py").run()
    assert not app.exception, app.exception
    return app


@pytest.mark.shipped_model
def test_the_page_shows_the_test_figures_beside_kermany_and_why_it_is_off(tiny_subtype, monkeypatch):
    metadata = read_metadata(subtype_model_path(tiny_subtype))
    report = small_report(met=False)
    section = subtype_card_facts(metadata, report)
    section["enabled_by_default"] = False  # the state this test reads: off, having missed the bar
    app = open_card_with(monkeypatch, section)
    markdown = "\n".join(shown(m.value) for m in app.markdown)
    assert "#### Radiographic pattern (bacterial-like / viral-like)" in markdown
    assert "**What it is not.** " + section["what_it_is_not"] in markdown
    assert "**Off by default** (`PNEUMO_SUBTYPE=1` turns it on)" in markdown and "missed the must-reach bar" in markdown
    assert f"AUC {report['metrics']['roc_auc']:.3f}" in markdown
    assert f"temperature {metadata.temperature:.3f}, threshold {metadata.threshold:.3f}" in markdown
    assert any(metadata.command in shown(c.value) for c in app.caption)
    (table,) = [t for t in app.dataframe if "Kermany 2018 (test-selected)" in t.value.columns]
    cells = table.value.set_index("figure")
    auc, low, high = report["metrics"]["roc_auc"], *report["intervals"]["roc_auc"]
    assert cells.loc["AUC (all films)", "Ours, official test split (95 % CI)"] == f"{auc:.3f} ({low:.3f}-{high:.3f})"
    assert cells.loc["AUC (all films)", "Kermany 2018 (test-selected)"] == f"{KERMANY['roc_auc']:.3f}"
    assert cells.loc["bacterial recall (all films)", "Kermany 2018 (test-selected)"] == f"{KERMANY['sensitivity']:.3f}"
    low, high = report["intervals"]["undetermined_fraction"]
    assert cells.loc["undetermined share", "Ours, official test split (95 % CI)"] == f"21.3% ({low:.1%}-{high:.1%})"
    assert cells.loc["viral recall, undetermined counted as misses", "Ours, official test split (95 % CI)"] == reports.DASH
    assert section["kermany_note"] in [shown(c.value) for c in app.caption]


@pytest.mark.shipped_model
def test_the_page_says_not_evaluated_yet_before_the_test_run(tiny_subtype, monkeypatch):
    section = subtype_card_facts(read_metadata(subtype_model_path(tiny_subtype)), None)
    app = open_card_with(monkeypatch, section)
    assert any(shown(info.value).startswith("Not evaluated on the test split yet") for info in app.info)
    assert not [t for t in app.dataframe if "Kermany 2018 (test-selected)" in t.value.columns]


@pytest.mark.shipped_model
def test_the_committed_card_section_is_the_committed_report_and_the_shipped_subtype_network():
    section = json.loads((REPO_ROOT / "reports" / "model_card.json").read_text())["subtype"]
    subtype_path = subtype_model_path(REPO_ROOT / "assets" / "model" / "pneumonet.keras")
    report_path = REPO_ROOT / "reports" / "subtype_evaluation.json"
    fresh = subtype_card_facts(
        read_metadata(subtype_path) if subtype_path.is_file() else None,
        json.loads(report_path.read_text()) if report_path.is_file() else None,
    )
    assert section.keys() == fresh.keys()
    assert section["enabled_by_default"] is ENABLED_BY_DEFAULT  # `card` was rerun after the setting was decided
    assert section["model"]["sha256"] == fresh["model"]["sha256"]
    for key, value in fresh["test"]["metrics"].items():
        assert section["test"]["metrics"][key] == (None if value is None else pytest.approx(value, rel=1e-6))
    assert section["test"]["must_reach_met"] == fresh["test"]["must_reach_met"]
    assert section["kermany_2018"] == fresh["kermany_2018"] and section["kermany_note"] == fresh["kermany_note"]
