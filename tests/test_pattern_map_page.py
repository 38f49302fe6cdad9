"""The Explain page's radiographic pattern map (issue 27), run headless with ``AppTest`` on the shipped
model and its subtype network: drawn for a film called pneumonia, on its own scale, of the viral
logit or of its negative as the pattern says; absent, with one line why, for a film called normal
and when the pattern is off."""

from __future__ import annotations

import re

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from pneumo_model.artifacts import REPO_ROOT
from pneumo_model.bundle import SUBTYPE_HEATMAP_SCALE, subtype_heatmap_scale_path
from pneumo_model.explain import GradCam, HeatmapScale
from pneumo_model.paths import DEFAULT_MODEL_PATH
from pneumo_model.pipeline import DecodedImage
from pneumo_model.prediction import Predictor
from ui import pattern_map, state

pytestmark = pytest.mark.shipped_model

VIRAL_FILM, BACTERIAL_FILM, NORMAL_FILM = "person10_virus_35.jpeg", "person100_bacteria_475.jpeg", "IM-0003-0001.jpeg"


def explain(name: str) -> AppTest:
    app = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=180).run()
    app.button(key=f"sample-{name}").click().run()
    app.switch_page("pages/explain.py").run()
    assert not app.exception, app.exception
    return app


def shown(markdown: str) -> str:
    return re.sub(r"\\(.)", r"\1", markdown.replace("\u2060", ""))


def captions(app: AppTest) -> list[str]:
    return [shown(caption) for image in app.image for caption in image.captions]


def lines(app: AppTest) -> str:
    return "\n".join(shown(str(element.value)) for element in [*app.caption, *app.markdown])


@pytest.fixture
def pattern(monkeypatch, request):
    """The server's setting (the parameter: "1" on, "0" off), with a fresh model cache either side."""
    monkeypatch.setenv("PNEUMO_SUBTYPE", request.param)
    st.cache_resource.clear()
    yield request.param
    st.cache_resource.clear()


@pytest.mark.parametrize("pattern", ["1"], indirect=True)
@pytest.mark.parametrize("name", [VIRAL_FILM, BACTERIAL_FILM])
def test_a_pneumonia_call_gets_the_patterns_own_map_on_its_own_scale(pattern, name):
    model = Predictor.from_file(subtype=True)
    decoded = DecodedImage.decode((state.SAMPLES_DIR / name).read_bytes(), whole=True)
    call = model.call(decoded)
    assert call.label == "pneumonia" and call.subtype is not None
    app = explain(name)
    assert pattern_map.TITLE in lines(app)
    reason = pattern_map.absent_reason(call, model)
    drawn = [caption for caption in captions(app) if caption.startswith("Pattern map, ")]
    if reason is not None:  # undetermined: no map, the one line says why
        assert call.subtype == "undetermined" and reason in lines(app) and not drawn
        return
    # The map is of the viral logit for "viral-like", of its negative for "bacterial-like", on the subtype scale.
    scale = HeatmapScale.load(subtype_heatmap_scale_path(DEFAULT_MODEL_PATH), model.subtype.metadata.model_sha256, SUBTYPE_HEATMAP_SCALE)
    sign = 1 if call.subtype == "viral-like" else -1
    raw = GradCam(model.subtype.model, model.subtype.metadata.gradcam_layer, sign=sign).raw(decoded.model_input(model.input_size))
    peak = f"this image's peak {scale.peak(raw):.2f}"
    if scale.is_weak(raw):
        assert "Pattern map: no region pushed towards" in "\n".join(shown(info.value) for info in app.info)
        assert not drawn
        return
    (caption,) = drawn
    assert caption.startswith(f"Pattern map, {call.subtype}:") and peak in caption
    assert ("negative viral logit" in caption) == (sign == -1)
    assert f"**Pattern: {call.subtype}** (probability of the viral pattern **{call.subtype_probability:.2f}**" in "\n".join(
        m.value for m in app.markdown
    )
    assert any(expander.label == "Why the pattern is not a cause" for expander in app.expander)
    # The pneumonia map is still there, on its own scale and with its own words.
    assert any(c.startswith("Grad-CAM: ") for c in captions(app))


@pytest.mark.parametrize("pattern", ["1"], indirect=True)
def test_a_normal_call_gets_no_pattern_map_and_one_line_why(pattern):
    app = explain(NORMAL_FILM)
    assert "Pattern map: not applicable. The film is called normal" in lines(app)
    assert not [caption for caption in captions(app) if caption.startswith("Pattern map")]
    assert any(c.startswith("Grad-CAM: ") or "Grad-CAM" in c for c in captions(app))


@pytest.mark.parametrize("pattern", ["0"], indirect=True)
def test_with_the_pattern_off_a_pneumonia_call_gets_no_map_and_says_it_is_off(pattern):
    app = explain(VIRAL_FILM)
    assert "Pattern map: off. The radiographic pattern is not computed on this server (PNEUMO_SUBTYPE is not 1)." in lines(app)
    assert not [caption for caption in captions(app) if caption.startswith("Pattern map")]
