"""The call on screen: its one spelling, the probability bar, the sentence under it, what the
numbers mean, and the case report's download.

Every page that words a call uses ``call_word`` (``pneumo_model.presentation``), so a film is
"Pneumonia" or "Normal" everywhere. Colours are neutral for either call (no green, nothing that
reads "all clear"); amber is kept for "indeterminate".
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from pneumo_model import presentation
from pneumo_model.case_report import SHA_PREFIX_DIGITS, case_report_pdf
from pneumo_model.explain import GRADCAM_BAR_WORDS, gradcam_colour_bar
from pneumo_model.operating_point import LABEL_FREE, SHIPPED
from pneumo_model.prediction import Prediction, Predictor
from pneumo_model.subtype import SubtypeModel

from . import drawing, frame, resources, state

LABEL_FREE_PROBABILITY = (
    "The shipped calibration (temperature-scaled on validation data from the training hospital), read through the "
    "label-free alignment: this site's score distribution mapped onto validation's, without labels (provisional)."
)
INDETERMINATE = presentation.INDETERMINATE
PROBABILITY_LABEL = "Probability of pneumonia (calibrated)"
HELP_TITLE = "What these numbers mean"
PATTERN_TITLE = "Pattern"
PATTERN_INDETERMINATE = "The call itself is indeterminate"
PATTERN_CAVEAT_TITLE = "A pattern, not a cause: read before use"
# The pattern's bar is smaller than the call's (about 380 px in Review's column at 1366 x 768): the call is the headline.
PATTERN_BAR_WIDTH = 320
REPORT_LABEL = "Download the case report (PDF)"
REPORT_BUSY = "Preparing the case report (PDF)..."
# The Explain page's default opacity: the report shows the overlay a reader first sees there.
REPORT_OVERLAY_ALPHA = 0.4


CALLS = ("normal", "pneumonia")  # the labels a call can have (a worklist row may read "hidden" instead)


def call_word(label: str) -> str:
    """The call as every page writes it: "Normal" or "Pneumonia"."""
    return presentation.call_word(label)


def show_call(result: Prediction, model: Predictor) -> None:
    """The call at a glance: the call, the probability, the bar, one sentence, and the help."""
    point = model.operating_point
    flag = f" · {presentation.INDETERMINATE_WORD}" if result.grey_zone else ""
    st.markdown(f"#### Call: **{call_word(result.label)}**{flag}")
    st.metric(
        PROBABILITY_LABEL,
        f"{result.probability:.3f}",
        help=(
            "Temperature-scaled on validation data from the training hospital."
            if point.kind == SHIPPED
            else LABEL_FREE_PROBABILITY if point.kind == LABEL_FREE
            else "Recalibrated on this site's own labelled images (the site profile)."
        ),
    )
    # Without a caption: the sentence belongs right under the bar; what its axis means follows it.
    with st.container(key="probability_bar"):
        drawing.show(presentation.probability_bar(result.probability, point))
    sentence = presentation.call_sentence(result.probability, point)
    if result.grey_zone:
        st.warning(f"**{INDETERMINATE}.** {sentence}", icon=":material/help:")
    else:
        st.markdown(sentence)
    st.caption(
        f"{presentation.BAR_AXIS_NOTE} Operating point: pneumonia at probability ≥ {result.threshold:.3f}; "
        f"{frame.operating_point_purpose(model)}."
    )
    with st.expander(HELP_TITLE, icon=":material/info:"):
        st.markdown(numbers_help(model))
    show_pattern(result, model.subtype, "review")


def show_pattern(
    result: Prediction, subtype: SubtypeModel | None, key: str, bar_width: int | str = PATTERN_BAR_WIDTH,
    title: str = PATTERN_TITLE,
) -> None:
    """The subtype pattern under a call that is shown: in words, with its own bar, the caveat one click away.

    A boxed, smaller block under the call, never a heading of its own: the call stays the headline.
    For a film called normal or flagged by the gate, one grey line says why there is no pattern (a
    reader who knows the feature would otherwise wonder); with the pattern off (``PNEUMO_SUBTYPE``,
    or no subtype network beside the model), nothing at all: a line on every film about a feature
    that is off would be noise.

    Args:
        result: the call shown above (``Prediction``), with its ``subtype`` fields.
        subtype: the subtype network that gave it (``Predictor.subtype``: the band and threshold to draw);
            None when the pattern is off.
        key: what makes the block's key this page's (``<key>_pattern``; a browser finds it by it).
        bar_width: screen pixels the bar is shown at ("stretch": the column's width).
        title: what the block's first words call it ("Pattern after the crop" on Crop & rescore).
    """
    if subtype is None:
        return
    if result.subtype is None:
        if not result.subtype_applies:  # one that applies always has one from ``subtype``: nothing to say otherwise
            st.caption(f"{title}: not applicable ({presentation.pattern_absent_reason(result.label, result.ood)}).")
        return
    with st.container(border=True, key=f"{key}_pattern"):
        words = presentation.pattern_words(result.subtype, strong="**")
        st.markdown(f"**{title}:** {words}.")
        if result.grey_zone:
            st.caption(
                f"{PATTERN_INDETERMINATE}: the pattern is read as if the film had pneumonia. Weigh it only if "
                "your own reading finds pneumonia."
            )
        bar = presentation.pattern_bar(result.subtype_probability, subtype.threshold, subtype.band)
        drawing.show(bar, width=bar_width)
        low, high = subtype.band
        st.caption(
            f"{presentation.PATTERN_PROBABILITY_LABEL[0].upper()}{presentation.PATTERN_PROBABILITY_LABEL[1:]}: "
            f"{result.subtype_probability:.3f}. Bacterial-like below {low:.3f}, viral-like from {high:.3f}, "
            f"undetermined in between (amber; the black line is the threshold {subtype.threshold:.3f}), all fixed on "
            "validation films from the training hospital."
        )
        with st.expander(PATTERN_CAVEAT_TITLE, icon=":material/info:"):
            st.markdown(presentation.PATTERN_CAVEAT)


def numbers_help(model: Predictor) -> str:
    """What the probability, the threshold and the grey zone mean, with this operating point's numbers."""
    point = model.operating_point
    low, high = point.grey_zone.low, point.grey_zone.high
    if point.kind in (SHIPPED, LABEL_FREE):
        where = "validation films from the training hospital"
        if point.kind == LABEL_FREE:
            where += (
                ", read through a label-free alignment: this site's unlabelled films' scores were mapped onto the "
                "validation films' scores (at a prevalence estimated from the films themselves), so the probability, "
                "the threshold and the grey zone are the validated ones on the aligned scale. It is provisional until "
                "`site check` on labelled films confirms it"
            )
        rule = model.metadata.grey_zone_rule
        parameters = rule.get("parameters", {})
        share = rule.get("validation_shares", {}).get("in_band")
        zone = (
            f"The band is as wide as the model's own instability (`{rule.get('document', 'docs/grey_zone_rule.md')}`): "
            f"under {len(parameters.get('perturbations', ()))} ordinary changes of acquisition (exposure, contrast, "
            f"a small tilt or zoom, lower resolution, JPEG), {parameters.get('percentile', float('nan')):g} % of the "
            f"validation films moved by at most {rule.get('w', float('nan')):.2f} on the log-odds scale, and the band "
            "reaches that far either side of the threshold: a film inside it could have been called the other way."
            + (f" {share:.1%} of the validation films fell inside it." if share is not None else "")
        )
    else:
        profile = resources.site_profile()
        where = f"this site's {profile.n_normal + profile.n_pneumonia} labelled films"
        share = profile.figures.get("grey_zone_share", {}).get("value")
        zone = "It was fitted with the site profile by the rules in `docs/site_calibration_rules.md`." + (
            f" Out of fold, {share:.1%} of this site's films fell inside it." if share is not None else ""
        )
    return "\n".join(
        [
            f"- **The probability** (of pneumonia): the model's estimate, calibrated on {where}: among films like "
            "those given about this probability, about that share had pneumonia. It holds for paediatric "
            "frontal films like the training ones, and the model saw nothing but this image.",
            f"- **Threshold {point.threshold:.3f}**: at or above it the call is pneumonia, below it normal; "
            f"{frame.operating_point_purpose(model)}. A normal call does not rule pneumonia out: at that "
            "sensitivity some pneumonia films are still called normal.",
            f"- **Grey zone [{low:.3f}, {high:.3f})** (amber on the bar): the call is indeterminate inside it "
            f"and needs a careful read, whichever side of the threshold it falls. {zone}",
            f"- **The bar**: {presentation.BAR_AXIS_NOTE[0].lower()}{presentation.BAR_AXIS_NOTE[1:]} The black line "
            "is the threshold, the triangle this image.",
            "- The Model card has the figures on the official test split, and what the model is known to get wrong.",
        ]
    )


def case_report_download(image: state.ChosenImage, result: Prediction, model: Predictor, key: str) -> None:
    """The case report's download button (the report is made once per image and operating point).

    The report is made before the button can be drawn, so a page calls this last: its call and
    its pictures are on screen while the report is made, under a busy note.
    """
    point = model.operating_point

    def make() -> bytes:
        film = resources.display_pixels(image)
        picture, legend, title, note = report_heatmap(image, film)
        return case_report_pdf(
            film, picture, result, model.metadata, point, image.digest,
            heatmap_title=title, heatmap_note=note, heatmap_legend=legend,
        )

    report = frame.computed(
        lambda: resources.cache().get_or_compute(("case_report", image.digest, point.id, resources.heatmap_scale().id), make), image.name,
        busy=REPORT_BUSY,
    )
    st.download_button(
        REPORT_LABEL,
        data=report,
        file_name=f"case_report_{image.digest[:SHA_PREFIX_DIGITS]}.pdf",
        mime="application/pdf",
        icon=":material/picture_as_pdf:",
        key=f"{key}_case_report",
        on_click="ignore",
        help="One page: the image, the call, the probability bar, the Grad-CAM heat map and the operating point. "
        "No file name and no patient identifier: the image is named by its SHA-256 only.",
    )


def report_heatmap(image: state.ChosenImage, film: np.ndarray) -> tuple[np.ndarray, np.ndarray, str, str]:
    """The Grad-CAM picture, colour bar, title and words for the report, as the Explain page first shows
    them: on the fixed scale at its default opacity, and no map drawn where it is weak.

    Raises:
        ModelFileError: the heat-map scale cannot be used (``resources.heatmap_scale``).
    """
    scale = resources.heatmap_scale()
    raw = resources.gradcam_heatmap(image)
    peak = scale.peak(raw)
    legend = gradcam_colour_bar(scale, REPORT_OVERLAY_ALPHA, peak=peak)
    if scale.is_weak(raw):
        picture = np.repeat(film[:, :, np.newaxis], 3, axis=2)  # (h, w, 3) uint8: the film, no map
        title = "no map drawn (a weak one)"
        note = (
            f"no map drawn: no region raised the pneumonia score much (peak {peak:.2f} on the fixed scale, below "
            f"{scale.weak_fraction:.2f}, the level 95 % of normal validation films stay under)."
        )
    else:
        picture = scale.overlay(film, raw, alpha=REPORT_OVERLAY_ALPHA)  # as Explain draws it
        title = "where the model looked"
        note = (
            f"{frame.HEATMAP_CAVEAT}. Brighter = raised the pneumonia score more, on the same scale for every "
            f"image (this image's peak {peak:.2f})."
        )
    return picture, legend, title, f"{note} {GRADCAM_BAR_WORDS}"
