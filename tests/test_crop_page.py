"""The Crop & rescore page under the rescore rule (docs/crop_rule.md): a strip is refused in plain
words, with no call after, no "The call changes" and nothing recorded as a call; a call that
leaves the grey zone by a hair says so; a valid rescore that changes the call still says it."""

from __future__ import annotations

import pytest

from pneumo_model.data import DEFAULT_DATA_DIR
from pneumo_model.pipeline import DecodedImage
from test_app import (
    chosen,
    crop_sliders,
    metric_values,
    open_page,
    pick_sample,
    rescored_with_box,
    sample_bytes,
    start,
    texts,
    trail_rows,
)
from ui import resources, state

NORMAL = "IM-0001-0001.jpeg"


def page_text(app) -> str:
    return "\n".join(texts(elements) for elements in (app.error, app.warning, app.info, app.markdown, app.caption))


def with_box(app, box):
    rows, columns = crop_sliders(app)
    rows.set_value((box[1], box[3]))
    columns.set_value((box[0], box[2]))
    app.run()
    assert not app.exception, app.exception
    return app


@pytest.mark.parametrize("box", [(0, 0, 224, 56), (0, 84, 224, 140), (0, 168, 224, 224), (0, 0, 112, 224)])
def test_a_strip_or_a_half_is_refused_in_plain_words_with_no_call_after(audit_db, box):
    app = open_page(pick_sample(start(), NORMAL), "pages/crop.py")
    recorded = len(trail_rows(audit_db))  # the whole image and the suggested crop, as before
    with_box(app, box)
    shown = page_text(app)
    assert "This box is not rescored." in texts(app.error)
    assert "squashed into the model's square input" in texts(app.error)
    assert "The whole image's call stands" in shown and "Keep both lungs" in shown
    assert "The call changes" not in shown and "swayed" not in shown
    assert "After" not in metric_values(app)  # no probability after, no call after
    assert not [caption for image in app.image for caption in image.captions if caption.startswith("After")]
    assert len(trail_rows(audit_db)) == recorded  # the refused box is not a call on the record
    assert not box_key_recorded(audit_db, box)


def box_key_recorded(audit_db, box) -> bool:
    return "[" + ", ".join(map(str, box)) + "]" in [row["crop_box"] for row in trail_rows(audit_db)]


def test_a_box_that_cuts_a_lung_sideways_is_refused(audit_db):
    # The example: this normal film without its right third read confident pneumonia.
    box = (14, 0, 168, 224)
    image = resources.decoded(chosen(sample_bytes(NORMAL)))
    assert resources.predictor().rescore(image, box).refused
    app = with_box(open_page(pick_sample(start(), NORMAL), "pages/crop.py"), box)
    assert "This box is not rescored." in texts(app.error) and "The call changes" not in page_text(app)
    assert not box_key_recorded(audit_db, box)


def test_leaving_the_grey_zone_by_a_hair_is_just_past_its_edge():
    name, box = "NORMAL2-IM-0019-0001.jpeg", (12, 0, 212, 168)
    result = resources.predictor().rescore(resources.decoded(chosen(sample_bytes(name))), box)
    zone = resources.predictor().grey_zone
    assert not result.refused and result.grey_zone_before and not result.grey_zone_after
    assert zone.high <= result.probability_after < 0.682  # past the upper edge, by less than a quarter logit
    app = rescored_with_box(name, box)
    shown = page_text(app)
    assert "Just past the grey zone's edge after the crop." in texts(app.warning)
    assert "just past the grey zone's edge, on the pneumonia side" in texts(app.markdown)
    assert "→ **Pneumonia**" not in texts(app.markdown)
    assert "The call changes" not in shown and metric_values(app)["After"] == f"{result.probability_after:.3f}"


@pytest.mark.data
def test_a_valid_rescore_that_changes_the_call_still_says_so():
    # Found on validation (train files): a box the rule allows, and the call goes from confident normal
    # to confident pneumonia; the page must not hide it.
    path = DEFAULT_DATA_DIR / "train" / "NORMAL" / "NORMAL2-IM-0575-0001.jpeg"
    box = (28, 20, 199, 171)
    result = resources.predictor().rescore(DecodedImage.decode(path), box)
    assert not result.refused and result.call_changed and not result.ood_after
    app = start()
    app.session_state["chosen_image"] = state.ChosenImage(path.name, path.read_bytes(), "upload")
    with_box(open_page(app, "pages/crop.py"), box)
    assert "The call changes with the crop:** normal before, pneumonia after" in texts(app.warning)
    assert "not rescored" not in texts(app.error)

