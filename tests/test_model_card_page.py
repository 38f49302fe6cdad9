"""The Model card page for readers (issue 14): the first screen (intended use, headline figures,
limitations) before everything else, every model named and never shown by a raw key or hash, one
heading per section, the developer detail collapsed, the shipped model highlighted.

The page runs in ``AppTest`` on the committed reports; the names and tables it shows are checked
against those reports (and the published figures against the lab's constant), so a number typed
into the page instead of read would fail here.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from pneumo_model.artifacts import DEFAULT_MODEL_PATH, REPO_ROOT, read_metadata
from pneumo_model.lab.evaluation import KERMANY_2018
from ui import frame, reports

pytestmark = pytest.mark.shipped_model

REPORTS_DIR = REPO_ROOT / "reports"
FIRST_SCREEN = ["Intended use and population", "Headline figures", "Limitations and shortcuts"]
DEVELOPER_DETAIL = (
    "The full test-split report",
    "Validation under shift",
    "Drift inside official train",
    "Model comparison",
    "Does cropping the diaphragm help?",
    "Out-of-distribution check",
)
RAW_KEY = re.compile(r"\(\w+_\w+\)")
WHICH_MODEL = "**Which model is this.**"


def report(name: str) -> dict:
    return json.loads((REPORTS_DIR / f"{name}.json").read_text())


def open_card() -> AppTest:
    app = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=180).run()
    app.switch_page("pages/model_card.py").run()
    assert not app.exception, app.exception
    return app


@pytest.fixture(scope="module")
def card() -> AppTest:
    return open_card()


def walk(node, in_expander: bool = False):
    """``(element, inside an expander)`` for every element of the page's main area, in page order."""
    for child in getattr(node, "children", {}).values():
        yield child, in_expander
        yield from walk(child, in_expander or type(child).__name__ == "Expander")


def headings(app: AppTest) -> list[str]:
    """Every heading in the main area, in order: the frame's page title and the Markdown headings."""
    found = []
    for element, _ in walk(app.main):
        kind = type(element).__name__
        if kind in ("Title", "Header", "Subheader"):
            found.append(element.value)
        elif kind == "Markdown":
            found += [line.lstrip("#").strip() for line in element.value.splitlines() if line.startswith("#")]
    return found


def shown_texts(app: AppTest) -> list[str]:
    """Every text the main area shows a reader, the frame's banner left out (it names the model by design)."""
    texts = []
    for element, _ in walk(app.main):
        kind = type(element).__name__
        if kind in ("Markdown", "Caption", "Info", "Warning", "Error", "Title", "Header", "Subheader"):
            if frame.DISCLAIMER not in element.value:
                texts.append(element.value)
        elif kind == "Expander":
            texts.append(element.label)
        elif kind in ("Dataframe", "Table"):
            table = element.value.reset_index()
            texts += [str(column) for column in table.columns]
            texts += [str(cell) for cell in table.to_numpy().ravel()]
    return texts


def expander(app: AppTest, label_start: str):
    (found,) = [e for e in app.main.expander if e.label.startswith(label_start)]
    return found


def highlighted_cells(dataframe) -> set[tuple[int, int]]:
    """``(row, column)`` of the cells the page's Styler highlights (``pages/model_card.py``, SHIPPED_STYLE)."""
    cells = set()
    for selectors, style in re.findall(r"([^{}]+)\{([^}]*)\}", dataframe.proto.arrow_data.styler.styles):
        if "background-color" in style:
            cells |= {(int(r), int(c)) for r, c in re.findall(r"_row(\d+)_col(\d+)", selectors)}
    return cells


def test_the_first_screen_is_intended_use_then_headline_figures_then_limitations(card):
    found = headings(card)
    assert found[0] == "Model card"  # the frame's page title
    assert found[1:4] == FIRST_SCREEN
    # Nothing of the first screen is tucked away, and the plots come right after it.
    assert found[4].startswith("Confusion matrix, ROC and reliability")
    shown = "\n".join(
        element.value for element, inside in walk(card.main) if not inside and type(element).__name__ == "Markdown"
    )
    facts = report("model_card")
    assert facts["intended_use"] in shown and facts["population"] in shown
    assert all(line in shown for line in facts["limitations_plain"])


def test_one_heading_per_section_and_no_heading_inside_the_reports(card):
    titles = [title.casefold() for title in headings(card) + [e.label for e in card.main.expander]]
    assert len(titles) == len(set(titles)), sorted(t for t in titles if titles.count(t) > 1)
    # The generated reports' own headings ("# Model comparison") are dropped: inside the collapsed
    # detail no heading competes with the page's.
    inside = [e.value for e, hidden in walk(card.main) if hidden and type(e).__name__ == "Markdown"]
    assert inside and not [text for text in inside if any(line.startswith("#") for line in text.splitlines())]
    assert "Model comparison" not in headings(card)


def test_no_raw_key_and_no_hash_outside_the_which_model_line(card):
    texts = shown_texts(card)
    assert [text for text in texts if RAW_KEY.search(text)] == []
    assert [column for text in texts for column in re.findall(r"^\w+_\w+$", text)] == []
    with_hash = [text for text in texts if reports.short_hashes(text)]
    assert len(with_hash) == 1 and with_hash[0].startswith(WHICH_MODEL), with_hash
    metadata = read_metadata(DEFAULT_MODEL_PATH)
    assert reports.short_hashes(with_hash[0]) == [metadata.short_sha]
    assert "the shipped model (pneumonet, 128 px, v7)" in with_hash[0].lower()
    assert all("None" not in text.split() for text in texts)


def test_the_headline_table_reads_the_shipped_the_site_and_the_published_figures(card):
    (table,) = card.main.table
    headline = table.value.map(lambda cell: cell.replace("\u00a0", " ").replace("\u2011", "-"))  # shown unbroken
    evaluation, site = report("evaluation"), report("site_calibration")
    assert list(headline.index) == ["sensitivity", "specificity", "accuracy", "ROC AUC", "indeterminate"]
    shipped, local, published = headline.columns
    assert shipped == f"Shipped, {evaluation['image']['n']} films (95 % CI)"
    # Named for what it is: a simulation on the official test split, not a local validation.
    assert local == "What a site can expect: simulated on the official test split, profiles fitted on 200 films"
    assert published == "Kermany 2018"
    caption = next(c.value for c in card.main.caption if c.value.startswith("Official test split."))
    assert "a simulation, not a validation at any hospital" in caption and f"{site['config']['draws']} times" in caption
    value, (low, high) = evaluation["image"]["specificity"], evaluation["image_ci95"]["specificity"]
    assert headline.loc["specificity", shipped] == f"{value:.3f} ({low:.3f}-{high:.3f})"
    spread = site["results"]["200"]["prevalence"]["split"]["site"]["sensitivity"]
    assert headline.loc["sensitivity", local] == f"{spread['median']:.3f} ({spread['p5']:.3f}-{spread['p95']:.3f})"
    assert headline.loc["ROC AUC", local] == reports.DASH  # a site profile does not re-rank films
    for key, name in reports.HEADLINE_FIGURES:  # the card's copy of the published figures is the lab's
        assert headline.loc[name, published] == f"{KERMANY_2018[key]:.3f}"
    assert headline.loc["indeterminate", shipped] == f"{evaluation['grey_zone_fraction']:.1%}"
    confusion = evaluation["image"]["confusion"]
    limitations = "\n".join(element.value for element in card.main.markdown)
    assert f"{confusion['fp']} of {confusion['fp'] + confusion['tn']} normal test films called pneumonia" in limitations


def test_the_reliability_counts_add_up_to_every_test_film_and_are_shown_under_the_diagram(card):
    import csv

    from pneumo_model.lab.metrics import calibration_bins

    evaluation, reliability = report("evaluation"), report("model_card")["reliability"]["test"]
    films = [b["films"] for b in reliability["bins"]]
    with open(REPORTS_DIR / "predictions_test.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    # Every test film in one bin: the counts add up to the split, the report and the predictions.
    assert sum(films) == reliability["films"] == evaluation["image"]["n"] == len(rows) == 624
    assert films == [b["count"] for b in evaluation["calibration_bins"]]
    recomputed = calibration_bins(np.array([int(r["label"]) for r in rows]), np.array([float(r["probability"]) for r in rows]))
    assert films == [b["count"] for b in recomputed]
    assert reliability["figure"] == evaluation["figures"]["reliability"]
    # The page says them in words beside the diagram, the sparse bins counted.
    said = next(m.value for m in card.main.markdown if m.value.startswith("**Reliability, read with its counts.**"))
    assert f"{', '.join(str(n) for n in films)} ({sum(films)} in all)" in said
    sparse = sum(1 for n in films[1:-1] if n < reliability["sparse_bin_films"])
    assert f"{len(films) - 2} bins between hold {sum(films[1:-1])} films, {sparse} of them fewer than" in said
    assert sparse >= 1 and "calibrated probabilities" not in " ".join(shown_texts(card))


def test_the_reliability_diagram_is_redrawn_from_the_predictions_and_refuses_predictions_that_disagree(tmp_path):
    from pneumo_model.lab.metrics import calibration_bins
    from pneumo_model.lab.model_card import redraw_reliability

    rng = np.random.default_rng(0)
    labels, probabilities = rng.integers(0, 2, 50), rng.random(50)
    (tmp_path / "predictions_test.csv").write_text(
        "file,label,probability\n" + "".join(f"f{i}.jpeg,{y},{p:.9f}\n" for i, (y, p) in enumerate(zip(labels, probabilities)))
    )
    bins = calibration_bins(labels, probabilities)
    evaluation = {"calibration_bins": bins, "figures": {"reliability": "figures/reliability.png"}}
    (tmp_path / "evaluation.json").write_text(json.dumps(evaluation))
    drawn = redraw_reliability(tmp_path, "test")
    assert (tmp_path / "figures" / "reliability.png").stat().st_size > 10_000
    assert sum(b["films"] for b in drawn["bins"]) == drawn["films"] == 50
    assert redraw_reliability(tmp_path, "validation") is None  # no such report: nothing drawn
    evaluation["calibration_bins"] = bins[::-1]
    (tmp_path / "evaluation.json").write_text(json.dumps(evaluation))
    with pytest.raises(ValueError, match="disagree on the films per reliability bin"):
        redraw_reliability(tmp_path, "test")


def test_the_developer_detail_is_collapsed_and_holds_every_developer_table(card):
    labels = [e.label for e in card.main.expander]
    for title in DEVELOPER_DETAIL:
        assert sum(label.startswith(title) for label in labels) == 1, title
    assert not any(e.proto.expanded for e in card.main.expander)
    # After its heading, the last of the page, the developer detail is nothing but collapsed expanders
    # (and a caption): every table of it inside one.
    assert headings(card)[-1] == "Developer detail"
    order = list(walk(card.main))
    start = next(i for i, (e, _) in enumerate(order) if type(e).__name__ == "Markdown" and e.value.endswith("Developer detail"))
    after = order[start + 1:]
    top = [type(e).__name__ for e, inside in after if not inside]
    assert set(top) <= {"Expander", "Caption"} and top.count("Expander") == len(DEVELOPER_DETAIL)
    tables = [inside for e, inside in after if type(e).__name__ in ("Dataframe", "Table")]
    assert len(tables) >= 5 and all(tables)  # stress (3), drift, comparison
    # The first screen's headline is a plain table, open.
    first_table = next((e, inside) for e, inside in order if type(e).__name__ == "Table")
    assert "Kermany 2018" in first_table[0].value.columns and not first_table[1]


def test_the_shipped_model_is_highlighted_and_named_in_the_comparison(card):
    (table,) = expander(card, "Model comparison").dataframe
    rows, evaluation = table.value, report("evaluation")
    assert rows["model"].iloc[0] == "The shipped model (pneumonet, 128 px, v7)"
    others = list(rows["model"].iloc[1:])
    assert others and all(name.endswith("comparison run, not the shipped model") for name in others)
    assert others[0] == f"pneumonet at {report('model_comparison')['input_size']} px: comparison run, not the shipped model"
    assert {row for row, _ in highlighted_cells(table)} == {0}
    assert rows["test spec"].iloc[0] == f"{evaluation['image']['specificity']:.3f}"
    assert rows["val AUC"].iloc[0] == f"{read_metadata(DEFAULT_MODEL_PATH).validation['roc_auc']:.3f}"


def test_the_stress_and_drift_tables_name_the_runs_and_highlight_the_shipped_one(card):
    stress = report("validation_stress")
    runs = sorted(reports.candidate_names(stress, read_metadata(DEFAULT_MODEL_PATH)).values())
    assert runs.count("v7 (shipped)") == 1 and all(name.endswith("(not shipped)") for name in runs if name != "v7 (shipped)")
    shift = expander(card, "Validation under shift")
    assert len(shift.dataframe) == 3
    for table in shift.dataframe:
        shipped_rows = list(table.value.index[table.value["model"] == "v7 (shipped)"])
        assert sorted(table.value["model"]) == runs
        assert {row for row, _ in highlighted_cells(table)} == set(shipped_rows)
    assert "Preferred by the rule (highest worst-case AUC): **v7 (shipped)**." in [m.value for m in shift.markdown]
    (drift,) = expander(card, "Drift inside official train").dataframe
    assert len(drift.value) == len(stress["acquisition_drift"][stress["preferred"]])
    column = list(drift.value.columns).index("v7 (shipped)")
    assert {col for _, col in highlighted_cells(drift)} == {column}
    assert len(highlighted_cells(drift)) == len(drift.value)


def test_every_missing_report_is_said_in_plain_words(monkeypatch):
    monkeypatch.setattr(reports, "read_json", lambda name, reports_dir=None: None)
    monkeypatch.setattr(reports, "read_markdown", lambda name, reports_dir=None: None)
    app = open_card()
    said = " ".join(info.value for info in app.main.info)
    for command in ("python -m pneumo_model card", "python -m pneumo_model evaluate", "site evaluate", "compare", "ood evaluate"):
        assert command in said, command
    assert not app.main.table and not app.main.dataframe


def test_reports_made_for_another_model_file_are_named_in_a_warning(monkeypatch):
    read = reports.read_json

    def older(name, reports_dir=reports.REPORTS_DIR):
        found = read(name, reports_dir)
        return {**found, "model_sha256": "0" * 64} if name in ("evaluation", "ood") else found

    monkeypatch.setattr(reports, "read_json", older)
    app = open_card()
    (warning,) = [w.value for w in app.main.warning if frame.DISCLAIMER not in w.value]
    assert "the test-split evaluation" in warning and "the out-of-distribution check" in warning
    assert "the site calibration" not in warning
    which = next(m.value for m in app.main.markdown if m.value.startswith(WHICH_MODEL))
    assert "Some reports describe another file" in which


# --- The names and tables, without the page -------------------------------------------------------


def test_named_replaces_the_shipped_hash_and_drops_headings_but_keeps_other_hashes():
    metadata = read_metadata(DEFAULT_MODEL_PATH)
    text = (
        f"# Title\n\nModel `{metadata.short_sha}` ({metadata.description}), test split.\n"
        f"Gate of model `{metadata.short_sha}`: fine.\n| a | b |\n|---|---|\n| 1 | 2 |\nother `0123456789ab`."
    )
    named = reports.named(text, metadata, "the shipped model (x)")
    assert named.startswith("The shipped model (x), test split.\n\nGate of the shipped model (x): fine.")
    assert "# Title" not in named and metadata.short_sha not in named
    assert "| a | b |\n|---|---|\n| 1 | 2 |" in named  # a table's lines stay together
    assert reports.short_hashes(named) == ["0123456789ab"]


def test_the_headline_without_a_site_report_or_published_figures_shows_dashes():
    rows = reports.headline_rows(report("evaluation"), None, None)
    assert [row["figure"] for row in rows] == [name for _, name in reports.HEADLINE_FIGURES] + ["indeterminate"]
    assert {row["site"] for row in rows} == {reports.DASH} and {row["published"] for row in rows} == {reports.DASH}
    assert all(row["shipped"] != reports.DASH for row in rows)


def test_the_shipped_model_name_comes_from_the_metadata_and_the_stress_report():
    metadata = read_metadata(DEFAULT_MODEL_PATH)
    assert reports.shipped_model_name(metadata, report("validation_stress")) == (
        f"the shipped model ({metadata.description}, {metadata.input_size} px, v7)"
    )
    assert reports.shipped_model_name(metadata, None) == f"the shipped model ({metadata.description}, {metadata.input_size} px)"
    assert reports.other_model_reports(metadata, {"a": {"model_sha256": metadata.model_sha256}, "b": None, "c": {}}) == []
    assert reports.other_model_reports(metadata, {"old": {"model_sha256": "f" * 64}}) == ["old"]
