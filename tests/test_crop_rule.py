"""The rescore rule (docs/crop_rule.md): which crops are refused and why, the original films'
proportions, the squashed-film warning, "just past the grey zone's edge", the ``crop`` command's
refusal JSON, and the committed crop-boxes report against issue 23's targets."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from helpers import FULLRES_DIR, encode, same_report
from test_crop import synthetic_chest
from pneumo_model.artifacts import REPO_ROOT
from pneumo_model.cli import main
from pneumo_model.crop import (
    JUST_PAST_LOGIT,
    RescoreRule,
    check_rescore,
    find_diaphragm,
    just_past_grey_zone,
    lung_boxes_to_keep,
    lung_share_kept,
    relative_aspect,
)
from pneumo_model.errors import ConfigError
from pneumo_model.operating_point import logit
from pneumo_model.pipeline import DecodedImage
from pneumo_model.preprocessing import ORIGINAL_FILMS, FilmAspect, aspect_warning

BOXES_REPORT = REPO_ROOT / "reports" / "crop_boxes.json"
SIDE = 224


@pytest.fixture(scope="module")
def chest():
    """A synthetic 224 px chest whose two lungs ``find_diaphragm`` outlines, and that outline."""
    pixels = synthetic_chest(SIDE, SIDE, dome=0.7)
    lungs = find_diaphragm(pixels)
    assert lungs.found and lungs.lung_count == 2, lungs.reason
    return pixels, lungs


# ----------------------------------------------------------------------------- the rule


@pytest.mark.parametrize(
    "box", [(0, 0, SIDE, 56), (0, 84, SIDE, 140), (0, 168, SIDE, SIDE)], ids=["top", "middle", "bottom"]
)
def test_a_25_percent_strip_is_refused_as_a_squashed_shape(chest, box):
    _, lungs = chest
    reason = check_rescore(box, SIDE, SIDE, lungs)
    assert reason is not None and "wide, short strip" in reason and "squashed" in reason
    assert "keeps 25% of the film's height and 100% of its width" in reason


@pytest.mark.parametrize("box", [(0, 0, SIDE // 2, SIDE), (SIDE // 2, 0, SIDE, SIDE)], ids=["left", "right"])
def test_a_half_is_refused(chest, box):
    _, lungs = chest
    reason = check_rescore(box, SIDE, SIDE, lungs)
    assert reason is not None and "tall, narrow strip" in reason


def test_the_suggested_crop_and_no_crop_are_rescored(chest):
    _, lungs = chest
    assert check_rescore(lungs.box, SIDE, SIDE, lungs) is None
    assert check_rescore(None, SIDE, SIDE, lungs) is None  # markers painted out only: the film keeps its shape
    assert check_rescore((0, 0, SIDE, SIDE), SIDE, SIDE, lungs) is None


def test_a_box_of_film_proportions_that_cuts_a_lung_sideways_is_refused(chest):
    _, lungs = chest
    left = min(box[0] for box in lungs.lung_boxes)
    lung_width = min(box[2] - box[0] for box in lungs.lung_boxes)
    box = (left + lung_width // 4, 0, SIDE, SIDE)  # a quarter of a lung's width cut away; proportions allowed
    low, high = RescoreRule().aspect_range()
    assert low <= relative_aspect(box, SIDE, SIDE) <= high
    assert lung_share_kept(box, lungs)[0] < RescoreRule().lung_width_keep
    reason = check_rescore(box, SIDE, SIDE, lungs)
    assert reason is not None and "cuts into a lung field" in reason and "Keep both lungs" in reason
    # The same box is allowed when the rule asks for less of each lung: it is the lungs, not the shape.
    assert check_rescore(box, SIDE, SIDE, lungs, RescoreRule(lung_width_keep=0.5)) is None


def test_the_lungs_height_share_is_looser_than_the_width_share(chest):
    _, lungs = chest
    bottom = max(box[3] for box in lungs.lung_boxes)
    top = min(box[1] for box in lungs.lung_boxes)
    height = bottom - top
    kept_70 = (0, 0, SIDE, top + int(0.7 * height))  # 70 % of each lung's height: allowed
    kept_40 = (0, 0, SIDE, top + int(0.4 * height))
    assert check_rescore(kept_70, SIDE, SIDE, lungs) is None
    assert check_rescore(kept_40, SIDE, SIDE, lungs) is not None


def test_one_outlined_lung_stands_for_both_by_its_mirror_image(chest):
    _, lungs = chest
    right = max(lungs.lung_boxes, key=lambda box: box[0])
    one = dataclasses.replace(lungs, lung_boxes=(right,), lung_count=1)
    x0, y0, x1, y1 = right
    assert lung_boxes_to_keep(one) == (right, (SIDE - x1, y0, SIDE - x0, y1))
    # Cutting the left side is refused although the left lung was not outlined.
    assert check_rescore((SIDE - x1 + (x1 - x0) // 3, 0, SIDE, SIDE), SIDE, SIDE, one) is not None


def test_without_a_lung_outline_the_whole_film_stands_for_the_lungs():
    flat = find_diaphragm(np.full((SIDE, SIDE), 128, np.uint8))
    assert flat.lung_count == 0 and lung_share_kept((0, 0, SIDE, SIDE), flat) is None
    assert check_rescore((0, 0, SIDE, 180), SIDE, SIDE, flat) is None  # 100 % of the width, 80 % of the height
    reason = check_rescore((0, 0, 180, SIDE), SIDE, SIDE, flat)  # 80 % of the width
    assert reason is not None and "could not be outlined" in reason and "Enlarge the box" in reason


def test_the_relative_aspect_is_the_same_for_a_full_size_film_and_its_square_copy():
    # A 1200 x 1600 film and its 224 px copy: the same crop, in each one's pixels, is the same model input.
    full, square = (0, 0, 1600, 900), (0, 0, 224, 168)
    assert relative_aspect(full, 1600, 1200) == pytest.approx(relative_aspect(square, 224, 224))
    rule = RescoreRule()
    assert (check_rescore(full, 1600, 1200, None, rule) is None) == (check_rescore(square, 224, 224, None, rule) is None)


def test_the_rule_refuses_settings_that_cannot_work():
    with pytest.raises(ConfigError, match="lung_width_keep"):
        RescoreRule(lung_width_keep=1.5)
    with pytest.raises(ConfigError, match="aspect_margin"):
        RescoreRule(aspect_margin=0.9)
    low, high = RescoreRule().aspect_range()
    assert low == pytest.approx(1 / high) and high == pytest.approx(ORIGINAL_FILMS.spread * 1.1)


# ----------------------------------------------------------------------------- rescoring and the CLI


def test_rescore_refuses_a_strip_with_nothing_after(tiny_model):
    from pneumo_model.prediction import Predictor

    predictor = Predictor.from_file(tiny_model)
    image = DecodedImage.decode(encode(synthetic_chest(128, 128)))
    result = predictor.rescore(image, (0, 0, 128, 32))
    assert result.refused and "squashed" in result.reason
    assert result.probability_before == pytest.approx(predictor.call(image).probability)
    assert not result.label_changed and not result.call_changed and result.reading_after is None
    record = result.to_dict()
    assert record["refused"] is True and record["reason"] == result.reason
    after = {key: value for key, value in record.items() if key.endswith("_after")}
    assert set(after) >= {"probability_after", "label_after", "grey_zone_after", "reading_after", "ood_after", "ood_score_after"}
    assert all(value is None for value in after.values()) and record["delta"] is None
    # A box the rule allows is rescored as before.
    suggested = find_diaphragm(image.pixels).box
    allowed = predictor.rescore(image, suggested)
    assert not allowed.refused and allowed.reason is None and allowed.probability_after is not None
    assert allowed.probability_after == pytest.approx(predictor.call_on_crop(image, suggested).probability, abs=1e-6)
    assert Predictor.rescore_refusal(image, (0, 0, 128, 32)) == result.reason
    with pytest.raises(ConfigError):  # a box that does not fit is an error, not a refusal
        Predictor.rescore_refusal(image, (0, 0, 500, 32))


def test_crop_command_refuses_a_strip_with_exit_0_and_null_after_fields(tiny_model, tmp_path, capsys):
    film = tmp_path / "chest.png"
    film.write_bytes(encode(synthetic_chest(128, 128)))
    code = main(["crop", str(film), "--box", "0,0,128,32", "--model", str(tiny_model)])
    record = json.loads(capsys.readouterr().out)
    assert code == 0 and record["refused"] is True and "squashed" in record["reason"]
    assert record["box"] == [0, 0, 128, 32] and record["box_source"] == "given" and record["probability_before"] is not None
    assert all(record[key] is None for key in record if key.endswith("_after")) and record["delta"] is None
    code = main(["crop", str(film), "--model", str(tiny_model)])  # the automatic crop: allowed
    record = json.loads(capsys.readouterr().out)
    assert code == 0 and record["refused"] is False and record["probability_after"] is not None
    assert record["box_source"] == "automatic" and record["reason"] == record["box_reason"]


# ----------------------------------------------------------------------------- the films' proportions


@pytest.mark.data
def test_the_original_films_range_is_the_48_originals():
    ratios = []
    for path in sorted(FULLRES_DIR.rglob("*.jpeg")):
        with Image.open(path) as image:
            ratios.append(image.height / image.width)
    assert len(ratios) == 48
    assert ORIGINAL_FILMS.low <= min(ratios) < ORIGINAL_FILMS.low + 0.001
    assert ORIGINAL_FILMS.high - 0.001 < max(ratios) <= ORIGINAL_FILMS.high
    assert all(aspect_warning(round(1000 / r), 1000) is None for r in ratios)  # no original is called squashed


def test_a_square_copy_is_not_squashed_a_film_at_a_third_of_its_width_is():
    assert aspect_warning(224, 224) is None  # the data set's own copies
    narrow = aspect_warning(400, 900)  # a 1200 x 900 film squashed to a third of its width
    assert narrow is not None and "tall and narrow" in narrow and "squashed" in narrow
    wide = aspect_warning(1000, 300)
    assert wide is not None and "wide and short" in wide
    low, high = FilmAspect().widened(FilmAspect().squashed)
    assert aspect_warning(1000, round(1000 * low) + 1) is None and aspect_warning(1000, round(1000 * high) - 1) is None


def test_a_squashed_film_is_decoded_with_the_warning_and_predict_carries_it(tiny_model, tmp_path, capsys):
    pixels = synthetic_chest(300, 96)
    image = DecodedImage.decode(encode(pixels))
    assert any("squashed" in warning for warning in image.info.warnings)
    assert not any("squashed" in w for w in DecodedImage.decode(encode(synthetic_chest(96, 96))).info.warnings)
    film = tmp_path / "narrow.png"
    film.write_bytes(encode(pixels))
    assert main(["predict", str(film), "--model", str(tiny_model)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert any("squashed" in warning for warning in record["warnings"])


# ----------------------------------------------------------------------------- just past the grey zone's edge


def test_just_past_the_grey_zone_is_within_a_quarter_logit_of_its_edge():
    low, high = 0.057, 0.625  # the shipped grey zone
    assert just_past_grey_zone(0.635, low, high)  # the 0.434 -> 0.635
    assert just_past_grey_zone(0.625, low, high)
    assert not just_past_grey_zone(0.70, low, high) and not just_past_grey_zone(0.5, low, high)
    assert just_past_grey_zone(0.05, low, high) and not just_past_grey_zone(0.03, low, high)
    edge = 1 / (1 + np.exp(-(logit(high) + JUST_PAST_LOGIT)))
    assert just_past_grey_zone(edge - 1e-6, low, high) and not just_past_grey_zone(edge + 1e-6, low, high)


# ----------------------------------------------------------------------------- the committed report


def test_committed_crop_boxes_report_meets_the_targets():
    from pneumo_model.lab.crop_boxes import KINDS, MAX_MANUFACTURED, MAX_REFUSED, boxes_markdown

    report = json.loads(BOXES_REPORT.read_text())
    assert report["split"] == "test" and report["films"] == 624
    assert report["rule"] == json.loads(json.dumps(dataclasses.asdict(RescoreRule())))  # the rule in force
    kinds = report["kinds"]
    everything = kinds["all"]
    assert everything["pairs"] == sum(kinds[kind]["pairs"] for kind in KINDS)
    assert everything["manufactured_share"] <= MAX_MANUFACTURED and everything["lost_share"] <= MAX_MANUFACTURED
    assert kinds["auto"]["refused_share"] <= MAX_REFUSED
    assert kinds["boxes_keeping_both_lungs"]["refused_share"] <= MAX_REFUSED
    for kind in ("strip_top", "strip_middle", "strip_bottom", "half_left", "half_right"):
        assert kinds[kind]["pairs"] == 624 and kinds[kind]["confident_pneumonia_after"] == 0
    assert kinds["random"]["pairs"] == 5 * 624
    assert (REPO_ROOT / "reports" / "crop_boxes.md").read_text() == boxes_markdown(report)


@pytest.mark.data
@pytest.mark.shipped_model
def test_committed_crop_boxes_report_is_what_the_command_gives(tmp_path):
    # About a minute on the 2-core CPU (11 boxes on each of 624 films). It logs its test-split use
    # in tmp_path, not in reports/.
    argv = ["evaluate", "--crop", "boxes", "--reports", str(tmp_path)]
    assert main(argv) == 0
    fresh = json.loads((tmp_path / "crop_boxes.json").read_text())
    same_report(json.loads(BOXES_REPORT.read_text()), fresh)
