"""Model card: intended use, data, test metrics, figures and known limitations, read from reports/."""

import pandas as pd
import streamlit as st

from ui import drawing, frame, reports

model = frame.render("Model card")
metadata = model.metadata
card = reports.read_json("model_card")
evaluation = reports.read_json("evaluation")


def _zone_rule_words(rule: dict) -> str:
    """The shipped grey zone's rule in a reader's words, with the half-width it measured."""
    return (
        "the band within which a benign change of acquisition (brightness, contrast, gamma, a 5° rotation, "
        f"a 5 % zoom, a lower resolution, JPEG re-encoding) moved the call of 9 validation images in 10: "
        f"±{rule['w']:.2f} on the calibrated logit scale around the threshold (`{rule['document']}`)"
    )


def not_generated(what: str, command: str) -> None:
    st.info(f"{what} not yet generated (`{command}`).", icon=":material/hourglass_empty:")


if evaluation is not None and evaluation["model_sha256"] != metadata.model_sha256:
    st.warning(
        f"The reports describe model `{evaluation['model_sha256'][:12]}`, not the loaded model "
        f"`{metadata.short_sha}`. Regenerate them with `python -m pneumo_model evaluate`.",
        icon=":material/warning:",
    )

about, metrics = st.columns(2, gap="large")
with about:
    st.subheader("Intended use and population")
    if card is None:
        not_generated("The model card facts are", "python -m pneumo_model card")
    else:
        st.markdown(f"**Intended use.** {card['intended_use']}")
        st.markdown(f"**Population.** {card['population']}")
        st.subheader("Data and citation")
        st.markdown(f"**Data.** {card['data']}")
        st.markdown(f"**Citation.** {card['citation']}")

summary = reports.read_markdown("evaluation")
with metrics:
    st.subheader("Test metrics")
    if evaluation is None or summary is None:
        not_generated("The evaluation report is", "python -m pneumo_model evaluate")
    else:
        st.markdown(summary)

if evaluation is not None:
    st.subheader("Confusion matrix, ROC and reliability on the test split")
    figures = evaluation.get("figures", {})
    columns = st.columns(3)
    for column, (key, caption) in zip(
        columns,
        (("confusion", "Confusion matrix at the operating threshold"), ("roc", "ROC curve"),
         ("reliability", "Reliability diagram (calibrated probabilities)")),
    ):
        path = reports.figure(figures[key]) if key in figures else None
        if path is None:
            column.info(f"{caption}: figure not generated.")
        else:
            drawing.show(path, caption=caption, where=column)

    st.subheader("Sensitivity by pneumonia subtype")
    st.dataframe(
        pd.DataFrame(
            [{"subtype": name, "images": value["n"], "sensitivity": value["sensitivity"]}
             for name, value in evaluation["subtype_sensitivity"].items()]
        ),
        hide_index=True,
        width="content",
        column_config={"sensitivity": st.column_config.NumberColumn(format="%.3f")},
    )

    st.subheader("Operating point and grey zone")
    operating = metadata.train_config.get("operating", {})
    low, high = evaluation["grey_zone"]
    rule = (
        f"The call is pneumonia at a calibrated probability ≥ **{evaluation['threshold']:.3f}**"
        + (f", the highest threshold reaching validation sensitivity {operating['target_sensitivity']:.2f}"
           if "target_sensitivity" in operating else "")
        + f". The grey zone is **[{low:.3f}, {high:.3f})**"
        + (f": {_zone_rule_words(metadata.grey_zone_rule)}" if metadata.grey_zone_rule else "")
        + f". A case inside it is flagged *indeterminate: needs a careful read*; "
        f"{evaluation['grey_zone_fraction']:.1%} of the test images fell in it. "
        f"Temperature {evaluation['temperature']:.3f}; all fixed on validation, never on the test split."
    )
    st.markdown(rule)

st.subheader("Site calibration")
site = reports.read_json("site_calibration")
if site is None:
    not_generated("The site-calibration report is", "python -m pneumo_model site evaluate")
else:
    st.markdown(site["protocol_plain"])
    rows = reports.site_calibration_rows(site, 200)
    if rows:
        st.markdown("At **200 local images**, on the remaining test images: median (5th-95th percentile) over the draws.")
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="content")
    st.markdown(f"**{site['spread_note']}**")
    st.markdown(reports.site_calibration_verdict(site))

# The generated reports shown as they are: (heading, reports/<name>.md, the command that writes it).
for heading, name, command in (
    ("Model comparison", "model_comparison", "python -m pneumo_model compare"),
    ("Validation under shift", "validation_stress", "python -m pneumo_model stress MODEL.keras ..."),
    ("Does cropping the diaphragm help?", "crop_evaluation", "python -m pneumo_model evaluate --crop auto"),
    ("Out-of-distribution check", "ood", "python -m pneumo_model ood evaluate"),
):
    st.subheader(heading)
    text = reports.read_markdown(name)
    if text is None:
        not_generated(f"`reports/{name}.md` is", command)
    else:
        st.markdown(text)

st.subheader("Known limitations and shortcuts")
if card is not None:
    for caveat in card["caveats"]:
        st.markdown(f"- {caveat}")
    st.markdown(f"**Shortcuts.** {card['shortcut_warning']}")
    for name, measured in card.get("shortcut_measured", {}).items():
        st.markdown(f"- `{name}`: {measured['summary']}")
    geometry = card.get("shortcut_geometry", {})
    if geometry.get("per_class"):
        st.dataframe(
            pd.DataFrame(geometry["per_class"]).T.rename_axis("class").reset_index(),
            hide_index=True,
            width="content",
        )
        st.caption(f"Original image sizes per class; source: {geometry['source']}.")
if evaluation is not None and "worst_errors" in evaluation.get("figures", {}):
    path = reports.figure(evaluation["figures"]["worst_errors"])
    if path is not None:
        with st.expander("The test images the model got most wrong"):
            drawing.show(path, width=640)
