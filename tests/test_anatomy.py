"""Where the Grad-CAM heat lies on the anatomy (issue 23): the regions built from the diaphragm
finder's two lungs, the shares per region, the words, the outline-failure paths, real films, and
the Explain page's wording."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from pneumo_model.crop import DiaphragmResult, find_diaphragm
from pneumo_model.errors import ConfigError, ModelFileError
from pneumo_model.paths import DEFAULT_MODEL_PATH, REPO_ROOT
from pneumo_model.thorax import (
    MOSTLY_OUTSIDE,
    OUTSIDE_MESSAGE,
    REGIONS,
    AttentionRule,
    ThoraxMask,
    anatomy_map,
    attention_inside,
    attention_path,
    attention_regions,
    regions_sentence,
)

SHA = "ab" * 32
SCALE_ID = "0123456789ab"
SIZE = 224  # the diaphragm finder's working copy


def ellipse(centre_x: float, centre_y: float, half_width: float, half_height: float, size: int = SIZE) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    return ((x - centre_x) / half_width) ** 2 + ((y - centre_y) / half_height) ** 2 < 1.0


def two_lungs(found: bool = True, count: int = 2, apex: float = 0.2, base: float = 0.7) -> DiaphragmResult:
    """A finder's result with lungs as ellipses from ``apex`` to ``base`` (fractions of the height;
    the domes 4 % above the base), on a 400 x 300 image; ``count`` lungs kept."""
    half_height = (base - apex) / 2
    masks = (ellipse(0.3, apex + half_height, 0.12, half_height), ellipse(0.7, apex + half_height, 0.12, half_height))[:count]
    domes = ((base - 0.04) * SIZE, (base - 0.04) * SIZE)[:count]
    return DiaphragmResult(
        found, 200 if found else None, (0, 0, 400, 220) if found else None,
        "Outlined both lungs." if found else "The lung outline ends at 40 % of the image height, too high for the "
        "diaphragm (the lung bases may be hazy or consolidated). Draw the crop box by hand.",
        count, (), 400, 300, masks, domes,
    )


def whole_body(width: int = 400, height: int = 300, outside_top_rows: int = 0) -> ThoraxMask:
    work = np.ones((256, 256), bool)
    work[:outside_top_rows] = False
    work.setflags(write=False)
    return ThoraxMask(True, "test body", work, width, height, float(work.mean()))


def spot(centre_x: float, centre_y: float, sigma: float = 0.03, size: int = 128) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    return np.exp(-((x - centre_x) ** 2 + (y - centre_y) ** 2) / (2 * sigma**2)).astype(np.float32)


# --------------------------------------------------------------------------------------------- the regions


def test_the_regions_are_the_lungs_between_them_below_the_diaphragm_and_the_rest():
    regions = anatomy_map(two_lungs())
    assert regions.found and regions.labels.shape == (SIZE, SIZE)

    def at(x: float, y: float) -> str:
        return REGIONS[int(regions.labels[int(y * SIZE), int(x * SIZE)])]

    assert at(0.3, 0.45) == at(0.7, 0.45) == "lungs"
    assert at(0.5, 0.45) == "heart"  # between the lungs, above the diaphragm
    assert at(0.5, 0.85) == at(0.3, 0.85) == at(0.05, 0.9) == "below"
    assert at(0.5, 0.05) == "elsewhere"  # the neck, above the apices
    assert at(0.05, 0.45) == "elsewhere"  # the chest wall beside a lung
    assert not regions.labels.flags.writeable


def test_a_lung_outline_with_a_bite_out_of_it_is_filled_back_into_the_lung_field():
    result = two_lungs()
    bitten = result.lung_masks[0].copy()
    bitten[int(0.40 * SIZE) : int(0.50 * SIZE), int(0.25 * SIZE) : int(0.30 * SIZE)] = False  # a bright patch inside
    regions = anatomy_map(dataclasses.replace(result, lung_masks=(bitten, result.lung_masks[1])))
    assert REGIONS[int(regions.labels[int(0.45 * SIZE), int(0.27 * SIZE)])] == "lungs"


def test_the_shares_split_the_heat_inside_the_body_and_add_up_to_one():
    regions, body = anatomy_map(two_lungs()), whole_body(outside_top_rows=30)
    heat = spot(0.5, 0.9) + 0.5 * spot(0.3, 0.45) + 0.25 * spot(0.5, 0.02, sigma=0.02)
    shares = attention_regions(heat, body, regions)
    assert set(shares) == set(REGIONS)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["below"] > shares["lungs"] > shares["outside"] > 0.05
    assert 1.0 - shares["outside"] == pytest.approx(attention_inside(heat, body), abs=1e-6)
    assert attention_regions(spot(0.5, 0.88, sigma=0.02), body, regions)["below"] > 0.95
    assert attention_regions(spot(0.7, 0.45, sigma=0.02), body, regions)["lungs"] > 0.95
    assert attention_regions(spot(0.5, 0.5, sigma=0.015), body, regions)["heart"] > 0.95


def test_heat_on_a_marker_counts_as_outside_the_body_as_in_the_share_inside():
    regions, body = anatomy_map(two_lungs()), whole_body()
    markers = np.zeros((300, 400), bool)
    markers[int(0.40 * 300) : int(0.50 * 300), int(0.65 * 400) : int(0.75 * 400)] = True  # a letter over the lung
    shares = attention_regions(spot(0.7, 0.45, sigma=0.02), body, regions, markers)
    assert shares["outside"] > 0.9 and shares["lungs"] < 0.1


def test_no_shares_without_heat_a_body_or_both_lungs():
    regions, body = anatomy_map(two_lungs()), whole_body()
    assert attention_regions(np.zeros((128, 128), np.float32), body, regions) is None
    assert attention_regions(spot(0.5, 0.5), ThoraxMask(False, "no body", None, 400, 300), regions) is None
    assert attention_regions(spot(0.5, 0.5), body, anatomy_map(two_lungs(count=1))) is None
    with pytest.raises(ConfigError):
        attention_regions(np.full((8, 8), -1.0), body, regions)


@pytest.mark.parametrize(
    "result, words",
    [
        (two_lungs(count=1), "one lung only was found"),
        (two_lungs(count=0), "no lung field was found"),
        (two_lungs(found=False), "too high for the diaphragm (the lung bases may be hazy or consolidated)"),
        (two_lungs(apex=0.45, base=0.9), "to their apex"),
        (two_lungs(apex=0.3, base=0.55), "down to their base on this film (one outline spans only 25 % of"),
    ],
    ids=["one lung", "none", "hazy base", "outline short of its apex", "outline short of its base"],
)
def test_where_the_outline_fails_the_heat_is_not_placed_and_the_reason_says_why(result, words):
    regions = anatomy_map(result)
    assert not regions.found and regions.labels is None
    assert words in regions.reason and "so the heat is not placed on the anatomy" in regions.reason
    with pytest.raises(ConfigError, match="No lung outline"):
        regions.fractions(128, 128)


def test_a_crop_keeps_the_whole_images_regions_inside_its_box():
    regions = anatomy_map(two_lungs())
    top = regions.crop((0, 0, 400, 195))  # the top 65 %: the diaphragm cut off
    assert top.found and (top.width, top.height) == (400, 195)
    shares = attention_regions(spot(0.7, 0.6, sigma=0.02), whole_body(400, 195), top)
    assert shares["lungs"] > 0.9
    assert not regions.crop((0, 0, 400, 195)).labels.flags.writeable
    assert not anatomy_map(two_lungs(count=1)).crop((0, 0, 400, 195)).found
    with pytest.raises(ConfigError):
        regions.crop((0, 0, 500, 195))


def test_the_diaphragm_finder_exposes_the_lungs_it_outlined_and_its_results_stay(synthetic_chest_film):
    result = find_diaphragm(synthetic_chest_film)
    assert result.found and result.lung_count == 2
    assert len(result.lung_masks) == len(result.dome_rows) == len(result.lung_boxes) == 2
    for mask, dome, box in zip(result.lung_masks, result.dome_rows, result.lung_boxes):
        assert mask.shape == (SIZE, SIZE) and mask.dtype == bool and not mask.flags.writeable
        rows = np.flatnonzero(mask.any(axis=1))
        assert rows[0] <= dome <= rows[-1]
        height = synthetic_chest_film.shape[0]
        assert box[1] == int(np.floor(rows[0] * height / SIZE))  # the box is the mask's, as before
    assert result == dataclasses.replace(result, lung_masks=())  # the masks play no part in equality
    assert anatomy_map(result).found


@pytest.fixture
def synthetic_chest_film() -> np.ndarray:
    from test_crop import synthetic_chest

    return synthetic_chest(300, 400)


# --------------------------------------------------------------------------------------------- the words


def rule(**changes) -> AttentionRule:
    fields = dict(model_sha256=SHA, mostly_outside=MOSTLY_OUTSIDE, unusual=0.943, validation_median=0.983,
                  heatmap_scale_id=SCALE_ID, facts={"split": "validation"}, lungs_unusual=0.12, lungs_median=0.35)
    return AttentionRule(**{**fields, **changes})


def shares(lungs=0.0, heart=0.0, below=0.0, elsewhere=0.0, outside=0.0) -> dict[str, float]:
    return {"lungs": lungs, "heart": heart, "below": below, "elsewhere": elsewhere, "outside": outside}


def test_the_sentence_names_the_regions_that_hold_most_of_the_heat_then_the_rest():
    text, named = regions_sentence(shares(lungs=0.14, heart=0.25, below=0.61))
    assert named == ("below",)
    assert text == "Most of the heat lies below the diaphragm (61 %); 25 % over the heart and mediastinum, 14 % over the lung fields."
    text, named = regions_sentence(shares(lungs=0.30, heart=0.40, below=0.25, outside=0.05))
    assert named == ("heart", "lungs")  # 40 % is not most: the next region is named with it
    assert text.startswith("Most of the heat lies over the heart and mediastinum (40 %) and over the lung fields (30 %); ")
    assert "25 % below the diaphragm, 5 % outside the body." in text
    text, _ = regions_sentence(shares(lungs=0.0, below=1.0))
    assert text == "Most of the heat lies below the diaphragm (100 %); 0 % over the lung fields."  # the lungs always


def test_little_heat_over_the_lungs_warns_and_names_where_the_call_may_rest():
    check = rule().check(0.98, 0.0, regions=shares(lungs=0.05, heart=0.25, below=0.68, outside=0.02))
    assert check.level == "off_lungs" and check.warns
    assert "only 5 % lies over the lung fields (19 validation films in 20 had at least 12 %)" in check.message
    assert "Most of the heat lies below the diaphragm (68 %)" in check.message
    assert "What raised the pneumonia score lies mostly outside the lung fields, below the diaphragm: read" in check.message
    assert "5 % over the lung fields" not in check.message  # the lung fields' share is said once


def test_a_usual_share_over_the_lungs_is_said_in_a_caption_with_the_validation_median():
    check = rule().check(0.98, 0.0, regions=shares(lungs=0.40, heart=0.35, below=0.23, outside=0.02))
    assert check.level == "inside" and not check.warns
    assert check.message.startswith("Most of the heat lies over the lung fields (40 %) and over the heart and mediastinum (35 %)")
    assert "The median over the lung fields on validation films: 35 %." in check.message
    assert "may still be the heart or the diaphragm" not in check.message  # no longer left to guess


def test_mostly_outside_the_body_still_comes_first_with_the_regions():
    check = rule().check(0.3, 0.0, regions=shares(lungs=0.05, heart=0.1, below=0.15, outside=0.7))
    assert check.level == "outside" and check.message.startswith(OUTSIDE_MESSAGE)
    assert "Most of the heat lies outside the body (70 %)" in check.message


def test_when_the_lungs_are_not_outlined_the_words_say_so_and_give_the_share_inside():
    reason = anatomy_map(two_lungs(count=1)).reason
    check = rule().check(0.98, 0.0, anatomy_reason=reason)
    assert check.level == "inside" and check.regions is None
    assert check.message.startswith("The lungs could not both be outlined on this film (one lung only was found")
    assert "98 % of the Grad-CAM heat lies inside the body's outline." in check.message
    assert "Most of the heat" not in check.message


def test_a_cut_off_file_without_the_anatomy_cut_offs_keeps_the_old_words(tmp_path):
    old = rule(lungs_unusual=None, lungs_median=None)
    assert not old.places_on_anatomy
    check = old.check(0.98, 0.0, regions=shares(lungs=0.05, below=0.93, outside=0.02))
    assert check.level == "inside" and "Most of the heat" not in check.message and check.regions is None
    path = tmp_path / "m.attention.json"
    data = old.to_dict()
    data["schema_version"] = 1
    for key in ("lungs_unusual", "lungs_median"):
        data.pop(key)
    path.write_text(json.dumps(data))
    assert not AttentionRule.load(path, SHA, SCALE_ID).places_on_anatomy
    rule().save(path)
    loaded = AttentionRule.load(path, SHA, SCALE_ID)
    assert (loaded.lungs_unusual, loaded.lungs_median) == (0.12, 0.35)
    path.write_text(json.dumps({**rule().to_dict(), "lungs_unusual": 3.0}))
    with pytest.raises(ModelFileError, match="outside"):
        AttentionRule.load(path, SHA)


# --------------------------------------------------------------------------------------------- real films

TRAIN = "chest_xray_224/train"  # training films (the validation split is drawn from them); never the test split
HEAT_BELOW = f"{TRAIN}/PNEUMONIA/person469_virus_965.jpeg"  # heat below the diaphragm and on the heart
OFF_LUNGS = f"{TRAIN}/PNEUMONIA/person432_virus_881.jpeg"  # heat below the diaphragm, little over the lungs
HAZY_BASE = f"{TRAIN}/PNEUMONIA/person1469_bacteria_3827.jpeg"  # the lung outlines stop above the bases
ONE_LUNG = f"{TRAIN}/PNEUMONIA/person1000_bacteria_2931.jpeg"  # the finder outlines one lung only
BOTH_LUNGS = f"{TRAIN}/NORMAL/IM-0115-0001.jpeg"


def real(name: str):
    from pneumo_model.data import DEFAULT_DATA_DIR
    from pneumo_model.pipeline import DecodedImage

    path = DEFAULT_DATA_DIR.parent / name
    if not path.is_file():
        pytest.skip(f"{path} is not here")
    return DecodedImage.decode(path)


def real_check(name: str):
    """A training film's attention check, as the app makes it: the committed rule, the model's raw
    Grad-CAM, the body's outline and markers, and the regions from the diaphragm finder."""
    from pneumo_model.crop import find_markers
    from pneumo_model.explain import GradCam, HeatmapScale, heatmap_scale_path
    from pneumo_model.prediction import Predictor
    from pneumo_model.thorax import attention_on_markers, thorax_mask

    image = real(name)
    predictor = Predictor.from_file()
    scale = HeatmapScale.load(heatmap_scale_path(DEFAULT_MODEL_PATH), predictor.metadata.model_sha256)
    rule = AttentionRule.load(attention_path(DEFAULT_MODEL_PATH), predictor.metadata.model_sha256, scale.id)
    heat = GradCam(predictor.model, predictor.metadata.gradcam_layer).raw(image.model_input(predictor.input_size))
    markers = find_markers(image.pixels).mask
    body = thorax_mask(image.pixels, markers=markers)
    regions = anatomy_map(find_diaphragm(image.pixels))
    return rule.check(
        attention_inside(heat, body, markers), attention_on_markers(heat, markers), scale.is_weak(heat),
        regions=attention_regions(heat, body, regions, markers), anatomy_reason="" if regions.found else regions.reason,
    ), rule


@pytest.mark.data
def test_on_real_films_the_regions_are_found_only_where_both_lungs_are_outlined():
    both = anatomy_map(find_diaphragm(real(BOTH_LUNGS).pixels))
    assert both.found, both.reason
    shares = {name: float((both.labels == index).mean()) for index, name in enumerate(REGIONS[:4])}
    assert 0.15 < shares["lungs"] < 0.5 and 0.05 < shares["heart"] < 0.3 and 0.05 < shares["below"] < 0.4
    left, right = both.labels[:, : SIZE // 2], both.labels[:, SIZE // 2 :]
    assert (left == 0).mean() == pytest.approx((right == 0).mean(), abs=0.08)  # a lung on each side
    one = anatomy_map(find_diaphragm(real(ONE_LUNG).pixels))
    assert not one.found and "one lung only" in one.reason


@pytest.mark.data
@pytest.mark.shipped_model
def test_a_real_film_with_its_heat_below_the_diaphragm_and_on_the_heart_is_said_so():
    check, rule = real_check(HEAT_BELOW)
    assert check.regions is not None and rule.places_on_anatomy
    first, second = sorted(check.regions, key=check.regions.get, reverse=True)[:2]
    assert (first, second) == ("below", "heart")
    assert check.message.startswith("Most of the heat lies below the diaphragm (")
    assert ") and over the heart and mediastinum (" in check.message
    assert check.level == "inside" and check.regions["lungs"] >= rule.lungs_unusual


@pytest.mark.data
@pytest.mark.shipped_model
def test_a_real_film_with_little_heat_over_the_lungs_is_warned():
    check, rule = real_check(OFF_LUNGS)
    assert check.regions["lungs"] < rule.lungs_unusual and max(check.regions, key=check.regions.get) == "below"
    assert check.level == "off_lungs" and check.warns
    assert "Most of the heat lies below the diaphragm (" in check.message
    assert "lies mostly outside the lung fields, below the diaphragm: read the lung fields yourself." in check.message


@pytest.mark.data
@pytest.mark.shipped_model
@pytest.mark.parametrize("name, words", [
    (ONE_LUNG, "The lungs could not both be outlined on this film (one lung only was found"),
    (HAZY_BASE, "The lungs could not both be outlined down to their base on this film (one outline spans only"),
], ids=["one lung", "hazy base"])
def test_a_real_film_whose_lungs_are_not_both_outlined_is_not_placed_on_the_anatomy(name, words):
    check, _ = real_check(name)
    assert check.regions is None and check.level == "inside"
    assert check.message.startswith(words) and "so the heat is not placed on the anatomy" in check.message
    assert "of the Grad-CAM heat lies inside the body's outline" in check.message
    assert "Most of the heat" not in check.message


# --------------------------------------------------------------------------------------------- the page


def page_words(app: AppTest) -> str:
    parts = [str(element.value) for kind in ("warning", "info", "caption") for element in getattr(app, kind)]
    return "\n".join(parts).replace("\\", "")


def show_on_explain(app: AppTest, name: str) -> str:
    from pneumo_model.data import DEFAULT_DATA_DIR

    app.switch_page("app.py").run()
    data = (DEFAULT_DATA_DIR.parent / name).read_bytes()
    app.file_uploader(key="review_upload").set_value((name.rsplit("/", 1)[-1], data, "image/jpeg")).run()
    app.switch_page("pages/explain.py").run()
    assert not app.exception, app.exception
    return page_words(app)


@pytest.mark.data
@pytest.mark.shipped_model
def test_the_explain_and_crop_pages_say_where_the_heat_lies_in_anatomical_words():
    for name in (HEAT_BELOW, OFF_LUNGS, HAZY_BASE):
        real(name)  # skips without the data
    app = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=180).run()

    words = show_on_explain(app, HEAT_BELOW)
    captions = [c.value for c in app.caption if "Most of the heat lies" in c.value]
    assert len(captions) == 1 and not any("Most of the heat" in w.value for w in app.warning), words
    assert captions[0].startswith("Most of the heat lies below the diaphragm (")
    assert ") and over the heart and mediastinum (" in captions[0] and "over the lung fields" in captions[0]
    assert any(e.label == "The body's outline and the regions this was measured against" for e in app.expander)

    app.switch_page("pages/crop.py").run()
    app.radio(key="crop_edit").set_value("Paint out markers").run()  # the whole image, as on Explain
    assert not app.exception, app.exception
    assert any(c.value.startswith("Most of the heat lies below the diaphragm (") for c in app.caption), page_words(app)

    show_on_explain(app, OFF_LUNGS)
    warnings = [w.value for w in app.warning if "not on the lungs" in w.value]
    assert len(warnings) == 1, page_words(app)
    assert "Most of the heat lies below the diaphragm (" in warnings[0]
    assert "lies over the lung fields (19 validation films in 20 had at least" in warnings[0]

    words = show_on_explain(app, HAZY_BASE)
    assert "The lungs could not both be outlined down to their base on this film" in words
    assert "so the heat is not placed on the anatomy" in words and "Most of the heat lies" not in words
    assert any(e.label == "The body's outline this was measured against" for e in app.expander)


# --------------------------------------------------------------------------------------------- the report


def test_the_report_gives_the_shares_per_region_and_why_maps_were_not_placed():
    from pneumo_model.lab.attention import ImageAttention, anatomy_markdown, summary

    def image(label: int, lungs: float | None, below: float = 0.0, reason: str = "") -> ImageAttention:
        regions = None if lungs is None else shares(lungs=lungs, heart=1.0 - lungs - below, below=below)
        return ImageAttention(f"f{label}{lungs}{below}.jpeg", label, 0.9, 1, False, False, 1.0, 0.0, True, False, 0,
                              regions, reason)

    results = [image(1, 0.5), image(1, 0.05, below=0.9), image(0, 0.3, below=0.1),
               image(1, None, reason=anatomy_map(two_lungs(count=1)).reason)]
    facts = summary(results, rule())
    every = facts["anatomy"]["groups"]["all"]
    assert (every["n_judged"], every["n_placed"], every["off_lungs"]) == (4, 3, 1)
    assert every["largest_region"]["below"] == 1 and every["largest_region"]["lungs"] == 1
    assert every["shares"]["lungs"]["median"] == pytest.approx(0.3)
    assert facts["anatomy"]["not_placed"] == {"one lung only": 1}
    report = {"test": facts, "lungs_unusual": 0.12, "lungs_median": 0.35,
              "validation": {"anatomy": {"n_placed": 200, "off_lungs": 10}}}
    text = "\n".join(anatomy_markdown(report))
    assert "that was so for 3 of the 4 judged maps. Not placed: one lung only 1." in text
    assert "| lung fields | 30.0 % (17.5-40.0 %) |" in text
    assert "| warning *not on the lungs* (under 12.0 % over the lung fields) | 1 (33 %) |" in text
    assert "on validation it fired on 10 of 200 placed maps" in text
    assert anatomy_markdown({"test": {}, "lungs_unusual": None}) == []


def test_the_model_card_gives_the_anatomy_figures_from_the_report_or_the_old_limit():
    from ui import reports

    placed = {"n_judged": 436, "n_placed": 150, "off_lungs": 7,
              "shares": {name: {"median": value} for name, value in zip(REGIONS, (0.36, 0.38, 0.1, 0.12, 0.01))}}
    report = {"lungs_unusual": 0.228, "test": {"anatomy": {"groups": {"all": placed}}}}
    text = " ".join(reports.anatomy_lines(report))
    assert "on 150 of the 436 test maps strong enough to judge" in text
    assert "a median 36 % of the heat lay over the lung fields, 38 % over the heart and mediastinum and 10 % below" in text
    assert "under 23 % over the lung fields, the 5th percentile on validation) fired on 7" in text
    assert "What this cannot show" in " ".join(reports.anatomy_lines({"test": {}}))
