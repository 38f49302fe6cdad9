"""Explain, under the pneumonia maps: the radiographic pattern's own Grad-CAM (issue 27).

For a film given a pattern (``Prediction.subtype``, docs/subtype_rule.md), where the subtype
network looked for the pattern it reports: for "viral-like" the map of its viral logit, for
"bacterial-like" the map of the negative of that logit (the regions that pushed towards the
bacterial pattern). Drawn on its own fixed scale (``<model>.subtype.cam.json``, fitted on
validation pneumonia films by docs/heatmap_scale.md), never on the pneumonia map's. No map, and
one short line why, when the film has no pattern (called normal, flagged by the gate, the pattern
off) or an undetermined one, or when the scale cannot be used.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from pneumo_model.errors import ConfigError, PneumoError
from pneumo_model.explain import PATTERN_TOP_WORDS, pattern_bar_words
from pneumo_model.prediction import Prediction, Predictor
from pneumo_model.subtype import BACTERIAL_LIKE, SETTING, UNDETERMINED, VIRAL_LIKE, enabled

from . import drawing, frame, resources

TITLE = "Radiographic pattern map (bacterial-like / viral-like): not the pneumonia map"
# Which logit a pattern's map is of: the viral logit, or its negative (docs/heatmap_scale.md).
SIGNS = {VIRAL_LIKE: 1, BACTERIAL_LIKE: -1}
CAVEAT = (
    "The pattern says which films this second network's output resembles: the bacterial or the viral pneumonia films "
    "it learned from. It is a second look for the reader, **never a cause and never a treatment decision**. The "
    "radiograph alone cannot reliably tell bacterial from viral infection: bacterial infection is found in about "
    "half of children with only interstitial infiltrates and in most with alveolar ones (Virkki et al., Thorax "
    "2002). The training labels are the hospital's diagnoses, not microbiology."
)
WHAT_IT_SHOWS = {
    VIRAL_LIKE: "Brighter = raised the subtype network's viral score more",
    BACTERIAL_LIKE: "Brighter = pushed more towards the bacterial pattern (lowered the subtype network's viral score: "
    "the map of its negative viral logit)",
}


def absent_reason(prediction: Prediction, model: Predictor) -> str | None:
    """Why no pattern map is drawn for this call, in one short line; None when one is."""
    if model.subtype is None:
        try:
            on = enabled()
        except ConfigError:
            on = False
        if not on:
            return f"Pattern map: off. The radiographic pattern is not computed on this server ({SETTING} is not 1)."
        return "Pattern map: off. The model has no subtype network beside it."
    if prediction.label != "pneumonia":
        return "Pattern map: not applicable. The film is called normal; a pattern is given only for a film called pneumonia."
    if prediction.ood:
        return "Pattern map: not applicable. The out-of-distribution gate flags this image, so no pattern is given."
    if prediction.subtype is None:
        return "Pattern map: not applicable. No pattern was computed for this call."
    if prediction.subtype == UNDETERMINED:
        low, high = model.subtype.band
        return (
            f"Pattern map: none. The pattern is undetermined (probability of the viral pattern "
            f"{prediction.subtype_probability:.2f}, inside the band {low:.2f}-{high:.2f}), so no side is drawn."
        )
    return None


def show(image: resources.Image, prediction: Prediction, display: np.ndarray, opacity: float) -> None:
    """The section: its title, then the pattern's map beside its words, or the one line why not."""
    st.markdown(f"#### {TITLE}")
    model = resources.predictor()
    reason = absent_reason(prediction, model)
    if reason is not None:
        st.caption(reason)
        return
    try:
        scale = resources.subtype_heatmap_scale()
    except PneumoError as error:
        st.caption(f"Pattern map: not drawn. {error}")
        return
    pattern = prediction.subtype
    raw = frame.computed(
        lambda: resources.subtype_heatmap(image, SIGNS[pattern]), image.name, busy="Computing the pattern map..."
    )
    side = "viral" if pattern == VIRAL_LIKE else "bacterial"
    picture, words = st.columns([1, 2])
    with picture:
        peak = scale.peak(raw)
        drawing.fixed_scale_map(
            display, raw, scale, opacity,
            caption=f"Pattern map, {pattern}: where the subtype network looked, not where the infection is. "
            f"{WHAT_IT_SHOWS[pattern]}; this image's peak {peak:.2f}. {pattern_bar_words(scale)}",
            bar_words=pattern_bar_words(scale),
            weak_words=f"**Pattern map: no region pushed towards the {side} pattern much.** Peak {peak:.2f}, below "
            f"the {scale.weak_fraction:.2f} that 95 % of validation films of the other pattern stay under, so no map "
            "is drawn. The pattern stands as given: no single region carries it.",
            key=f"weak_pattern_map_{image.digest[:16]}",
            top_words=PATTERN_TOP_WORDS,
        )
    with words:
        low, high = model.subtype.band
        st.markdown(
            f"**Pattern: {pattern}** (probability of the viral pattern **{prediction.subtype_probability:.2f}**; "
            f"undetermined between {low:.2f} and {high:.2f}). It looks more like the "
            f"{side} pneumonia films the subtype network learned from."
        )
        st.markdown(
            "The pattern map is the **second network's**, on its own scale: the pneumonia map above shows where the "
            "pneumonia call came from, this one where the pattern came from; their colours are not comparable."
        )
        with st.expander("Why the pattern is not a cause"):
            st.markdown(CAVEAT)
