"""Model card for readers: what the model is for, its headline figures next to Kermany 2018 and its
limitations on the first screen; then the plots; developer detail collapsed below. Every figure
is read from reports/, every model named by what it is."""

import streamlit as st

from ui import frame

model = frame.render("Model card")  # first: the banner shows while the imports below load

import pandas as pd  # noqa: E402

from pneumo_model.artifacts import read_metadata  # noqa: E402
from pneumo_model.bundle import subtype_model_path  # noqa: E402
from pneumo_model.paths import DEFAULT_MODEL_PATH  # noqa: E402
from ui import drawing, reports  # noqa: E402

SITE_SIZE = 200  # local films in the site-calibration headline (reports/site_calibration.json has 100, 200, 300)
SHIPPED_STYLE = "background-color: #e3ecf7; font-weight: 600"

metadata = model.metadata
card = reports.read_json("model_card")
evaluation = reports.read_json("evaluation")
site = reports.read_json("site_calibration")
stress = reports.read_json("validation_stress")
comparison = reports.read_json("model_comparison")
shipped_name = reports.shipped_model_name(metadata, stress)
# The stress report's models by name ('v7: the shipped model'), and the shipped one's row.
names = reports.candidate_names(stress, metadata) if stress else {}
shipped_row = names.get(f"{metadata.architecture}@{metadata.short_sha}", shipped_name)


def _zone_rule_words(rule: dict) -> str:
    """The shipped grey zone's rule in a reader's words, with the half-width it measured."""
    return (
        "the band within which a benign change of acquisition (brightness, contrast, gamma, a 5° rotation, "
        f"a 5 % zoom, a lower resolution, JPEG re-encoding) moved the call of 9 validation images in 10: "
        f"±{rule['w']:.2f} on the calibrated logit scale around the threshold (`{rule['document']}`)"
    )


def section(title: str) -> None:
    """A section's one heading, a level below the page's title (drawn by the frame)."""
    st.markdown(f"#### {title}")


def not_generated(what: str, command: str) -> None:
    st.info(f"{what} not yet generated (`{command}`).", icon=":material/hourglass_empty:")


def table(rows: list[dict], shipped: str | None = None) -> None:
    """Rows as a compact table; the row whose first cell starts with ``shipped`` (or the column
    named ``shipped``) is highlighted: the model this app runs."""
    data = pd.DataFrame(rows)
    styled = data.style
    if shipped is not None:
        first = data.columns[0]
        styled = styled.apply(
            lambda row: [SHIPPED_STYLE if str(row[first]).startswith(shipped) else "" for _ in row], axis=1
        )
        if shipped in data.columns:
            styled = styled.map(lambda _: SHIPPED_STYLE, subset=[shipped])
    st.dataframe(styled, hide_index=True, width="content")


stale = reports.other_model_reports(
    metadata,
    {"the test-split evaluation": evaluation, "the site calibration": site,
     "the crop evaluation": reports.read_json("crop_evaluation"), "the out-of-distribution check": reports.read_json("ood")},
)
if stale:
    st.warning(
        f"These reports describe another model file than the loaded one: {', '.join(stale)}. Regenerate them "
        "(`python -m pneumo_model evaluate`, `site evaluate`, `evaluate --crop auto`, `ood evaluate`).",
        icon=":material/warning:",
    )

# --- First screen: intended use, headline figures, limitations ----------------------------------

section("Intended use and population")
if card is None:
    not_generated("The model card facts are", "python -m pneumo_model card")
else:
    st.markdown(f"**Intended use.** {card['intended_use']}")
    st.markdown(f"**Population.** {card['population']}")

figures, limits = st.columns([3, 2], gap="medium")
with figures:
    section("Headline figures")
    if evaluation is None:
        not_generated("The evaluation report is", "python -m pneumo_model evaluate")
    else:
        published = (card or {}).get("published_reference") or {}
        columns = {
            "figure": "",
            "shipped": f"Shipped, {evaluation['image']['n']} films (95 % CI)",
            "site": reports.site_column_name(SITE_SIZE),
            "published": published.get("name", "published"),
        }
        rows = reports.headline_rows(evaluation, site, card, SITE_SIZE)
        headline = pd.DataFrame(rows).rename(columns=columns).set_index("")
        st.table(headline.map(reports.unbroken))  # a figure and its interval on one line; the long column name wraps
        draws = (site or {}).get("config", {}).get("draws")
        st.caption(
            "Official test split. The site column is a simulation, not a validation at any hospital: the test split "
            f"played a new hospital{f' {draws} times' if draws else ''}, each time a profile fitted on {SITE_SIZE} of its "
            "films was scored on the others (Site calibration, below): the median and, in brackets, the 5th-95th percentile "
            "over the draws. A profile moves the threshold, not the ranking (AUC)."
        )

with limits:
    section("Limitations and shortcuts")
    if evaluation is not None:
        st.markdown("- " + reports.false_calls_line(evaluation))
    if card is not None:
        for line in card.get("limitations_plain", []):
            st.markdown(f"- {line}")

if card is not None:
    with st.expander("The limitations and shortcuts in detail"):
        for caveat in card["caveats"]:
            st.markdown(f"- {caveat}")
        st.markdown(f"**Shortcuts.** {card['shortcut_warning']}")
        measured = card.get("shortcut_measured", {}).get(f"{metadata.architecture}@{metadata.short_sha}")
        if measured is not None:
            st.markdown(f"Measured on {shipped_name}: {measured['summary']}")
        geometry = card.get("shortcut_geometry", {})
        if geometry.get("per_class"):
            st.dataframe(
                pd.DataFrame(geometry["per_class"]).T.rename_axis("class").reset_index().rename(columns=lambda c: c.replace("_", " ")),
                hide_index=True,
                width="content",
            )
            files = sum(row["n"] for row in geometry["per_class"].values())
            st.caption(f"Original image sizes per class, {files} files: {geometry['source']}.")

# --- The plots ---------------------------------------------------------------------------------

if evaluation is not None:
    section("Confusion matrix, ROC and reliability on the test split")
    plots = evaluation.get("figures", {})
    for column, (key, caption) in zip(
        st.columns(3),
        (("confusion", "Confusion matrix at the operating threshold"), ("roc", "ROC curve"),
         ("reliability", "Reliability diagram: films per bin under the bars, pale bins hold few")),
    ):
        path = reports.figure(plots[key]) if key in plots else None
        if path is None:
            column.info(f"{caption}: figure not generated.")
        else:
            drawing.show(path, caption=caption, where=column)
    reliability = reports.reliability_lines((card or {}).get("reliability", {}).get("test"))
    if reliability:
        st.markdown("**Reliability, read with its counts.** " + " ".join(reliability))
    st.markdown(
        "Sensitivity by pneumonia subtype: "
        + "; ".join(f"{name} {value['sensitivity']:.3f} ({value['n']} films)" for name, value in evaluation["subtype_sensitivity"].items())
        + "."
    )
    path = reports.figure(plots["worst_errors"]) if "worst_errors" in plots else None
    if path is not None:
        with st.expander("The test images the model got most wrong"):
            drawing.show(path, width=640)

reports.show_where_the_model_looks(metadata, shipped_name)  # issue 14: attention outside the body

if evaluation is not None:
    section("Operating point and grey zone")
    operating = metadata.train_config.get("operating", {})
    low, high = evaluation["grey_zone"]
    st.markdown(
        f"The call is pneumonia at a calibrated probability ≥ **{evaluation['threshold']:.3f}**"
        + (f", the highest threshold reaching validation sensitivity {operating['target_sensitivity']:.2f}"
           if "target_sensitivity" in operating else "")
        + f". The grey zone is **[{low:.3f}, {high:.3f})**"
        + (f": {_zone_rule_words(metadata.grey_zone_rule)}" if metadata.grey_zone_rule else "")
        + f". A case inside it is flagged *indeterminate: needs a careful read*; "
        f"{evaluation['grey_zone_fraction']:.1%} of the test images fell in it. "
        f"Temperature {evaluation['temperature']:.3f}; all fixed on validation, never on the test split."
    )

section("Site calibration")
if site is None:
    not_generated("The site-calibration report is", "python -m pneumo_model site evaluate")
else:
    st.markdown(
        f"A hospital can fit its own operating point on a few hundred of its labelled films (the Site calibration page). "
        f"The headline's column *what a site can expect* is what that gave at {SITE_SIZE} local films when the official "
        "test split played the hospital: a simulation, not a validation at any real site."
    )
    with st.expander("How the site calibration was measured"):
        st.markdown(site["protocol_plain"])
        rows = reports.site_calibration_rows(site, SITE_SIZE)
        if rows:
            st.markdown(
                f"At **{SITE_SIZE} local images**, on the remaining test images: median (5th-95th percentile) over the draws."
            )
            st.dataframe(pd.DataFrame(rows), hide_index=True, width="content")
        st.markdown(f"**{site['spread_note']}**")
        coverage = reports.stated_coverage_line(site, SITE_SIZE)
        if coverage:
            st.markdown(coverage)
        st.markdown(reports.site_calibration_verdict(site))
        path = reports.figure(site["figure"]) if "figure" in site else None
        if path is not None:
            drawing.show(path, width=900)
label_free = reports.read_json("site_label_free")
if label_free is not None:
    with st.expander("Without labels: label-free alignment, measured the same way"):
        st.markdown(
            "A site with no confirmed diagnoses can align the tool on a few hundred of its unlabelled films "
            "(`site align`, rules in `docs/label_free_rules.md`, fixed on validation before this run). The official test "
            "split played the site again; its labels were never shown to the method. A labelled profile stays the better evidence."
        )
        for key, title in (("250|split", "the split's prevalence"), ("250|low", "30 % prevalence")):
            rows = reports.label_free_rows(label_free, key)
            if rows:
                block = label_free["results"][key]
                st.markdown(
                    f"At **250 unlabelled films, {title}** (refused in {block['refused']} of {block['draws']} draws), on the "
                    "remaining test films: median (5th-95th percentile) over the draws."
                )
                st.dataframe(pd.DataFrame(rows), hide_index=True, width="content")
        st.markdown(reports.label_free_verdict(label_free))
        path = reports.figure(label_free["figure"]) if "figure" in label_free else None
        if path is not None:
            drawing.show(path, width=900)

section("Radiographic pattern (bacterial-like / viral-like)")
pattern = (card or {}).get("subtype")
if pattern is None:
    not_generated("The pattern's section of the model card is", "python -m pneumo_model card")
else:
    st.markdown(f"**What it is.** {pattern['what_it_is']}")
    st.markdown(f"**What it is not.** {pattern['what_it_is_not']}")
    st.markdown(reports.subtype_status(pattern, running=model.subtype is not None))
    trained = pattern.get("model")
    beside = subtype_model_path(DEFAULT_MODEL_PATH)
    if trained is not None and beside.is_file() and read_metadata(beside).model_sha256 != trained["sha256"]:
        st.warning(
            "This section describes another subtype network than the one beside the model: regenerate it "
            "(`python -m pneumo_model card`).",
            icon=":material/warning:",
        )
    if trained is None:
        st.markdown("No subtype network lies beside the model (`python -m pneumo_model train-subtype`).")
    else:
        figures = trained["validation"]
        low, high = trained["band"]
        start = f"from the shipped network's weights ({trained['init_from']})" if trained.get("init_from") else "from scratch"
        st.markdown(
            f"**How it was trained.** A second {trained['architecture']} at {trained['input_size']} px, {start}, on the "
            f"official train split's pneumonia films only (the shipped model's train part; no test image), class "
            f"imbalance handled by {str(trained['imbalance']).replace('_', ' ')}s in the loss; "
            f"{trained['training_seconds'] / 60:.0f} min of training, finished {trained['created_utc'][:10]}. Fixed on its {figures['films']} validation pneumonia films "
            f"({figures['viral_films']} viral), by rules written before it was trained (`{pattern['rule']}`): "
            f"temperature {trained['temperature']:.3f}, threshold {trained['threshold']:.3f} on the probability of the "
            f"viral pattern, undetermined band [{low:.3f}, {high:.3f})."
        )
        st.markdown(
            "On those validation films: "
            + "; ".join(
                f"{name} {figures[key]:.3f}" if "fraction" not in key else f"{name} {figures[key]:.1%}"
                for key, name in (
                    ("roc_auc", "AUC"), ("accuracy", "accuracy"), ("viral_recall", "viral recall"),
                    ("bacterial_recall", "bacterial recall"), ("undetermined_fraction", "undetermined"),
                    ("accuracy_outside_band", "accuracy outside the band"),
                )
                if figures.get(key) is not None
            )
            + "."
        )
        st.caption(f"Command: `{trained['command']}`")
    rows = reports.subtype_rows(pattern)
    if not rows:
        st.info(
            "Not evaluated on the test split yet (`python -m pneumo_model evaluate --subtype`, then "
            "`python -m pneumo_model card`): no test figure to show.",
            icon=":material/hourglass_empty:",
        )
    else:
        test_sha = pattern["test"].get("model_sha256")
        if trained is not None and test_sha and test_sha != trained["sha256"]:
            st.warning(
                "The pattern's test report describes another subtype network than the one beside the model: "
                "regenerate it (`python -m pneumo_model evaluate --subtype`, then `card`).",
                icon=":material/warning:",
            )
        st.dataframe(
            pd.DataFrame(rows).rename(
                columns={"ours": "Ours, official test split (95 % CI)", "published": "Kermany 2018 (test-selected)"}
            ),
            hide_index=True,
            width="content",
        )
        st.caption(pattern["kermany_note"])

section("Which model, which data")
st.markdown(
    f"**Which model is this.** {shipped_name[0].upper() + shipped_name[1:]}: the file whose SHA-256 begins "
    f"`{metadata.short_sha}` (the id in the banner at the top of every page), trained {metadata.created_utc[:10]}. "
    + ("The test-split, site-calibration, crop and out-of-distribution reports were computed on that same file; "
       if not stale else "Some reports describe another file (see the warning at the top); ")
    + "the comparison runs below are other models, named as such."
)
if card is not None:
    st.markdown(f"**Data.** {card['data']}")
    st.markdown(f"**Citation.** {card['citation']}")

# --- Developer detail, collapsed ---------------------------------------------------------------

section("Developer detail")
st.caption(f"Highlighted: {shipped_name}.")

summary = reports.read_markdown("evaluation")
with st.expander("The full test-split report: every figure, per patient, the must-reach bar"):
    if evaluation is None or summary is None:
        not_generated("The evaluation report is", "python -m pneumo_model evaluate")
    else:
        st.markdown(reports.named(summary, metadata, shipped_name))

with st.expander("Validation under shift: why this model was chosen"):
    if stress is None:
        not_generated("`reports/validation_stress.md` is", "python -m pneumo_model stress MODEL.keras ...")
    else:
        st.markdown(
            "Validation split only, under deliberate perturbations that mimic this data set's shortcuts; each "
            "model at its own validation threshold. A model that reads the film's shape loses AUC when the shape "
            "cue is reversed; one that reads the lungs does not."
        )
        for title, rows in reports.stress_tables(stress, metadata).items():
            st.markdown(f"**{title}**")
            table(rows, shipped=shipped_row)
        preferred = names.get(stress.get("preferred"), stress.get("preferred"))
        st.markdown(f"Preferred by the rule (highest worst-case AUC): **{preferred}**.")
        for key, measured in (card or {}).get("shortcut_measured", {}).items():
            st.markdown(f"- {names.get(key, key)}: {measured['summary']}")

with st.expander("Drift inside official train"):
    if stress is None or not stress.get("acquisition_drift"):
        not_generated("The drift table is", "python -m pneumo_model stress MODEL.keras ...")
    else:
        st.markdown(
            "Plain validation images by acquisition group, at each model's threshold: specificity for the normal "
            "groups, sensitivity for the pneumonia groups. Patient numbers were presumably given "
            "in order of arrival; a trend across the thirds is drift over time."
        )
        table(reports.drift_rows(stress, metadata), shipped=shipped_row)

with st.expander("Model comparison: the published families at 96 px"):
    if comparison is None:
        not_generated("`reports/model_comparison.md` is", "python -m pneumo_model compare")
    else:
        st.markdown(
            f"Comparison runs at {comparison['input_size']} px, at most {comparison['max_epochs']} epochs and "
            f"{comparison['time_budget_s_per_model']:.0f} s of training each, threshold set on validation; ranked by "
            f"{comparison['ranked_by']}. The first row is {shipped_name}, for reference: trained longer at its own "
            "input size, so it is not part of the ranking. No row below it is the shipped model."
        )
        table(
            reports.comparison_rows(comparison, evaluation, metadata, shipped_name, model.model.count_params()),
            shipped="The shipped model",
        )
        st.caption(f"Command: `{comparison['command']}`")

for title, name, command in (
    ("Does cropping the diaphragm help?", "crop_evaluation", "python -m pneumo_model evaluate --crop auto"),
    ("Out-of-distribution check", "ood", "python -m pneumo_model ood evaluate"),
):
    with st.expander(title):
        text = reports.read_markdown(name)
        if text is None:
            not_generated(f"`reports/{name}.md` is", command)
        else:
            st.markdown(reports.named(text, metadata, shipped_name))
