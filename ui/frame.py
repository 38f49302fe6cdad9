"""The frame every page shares: the intended-use banner, the model's short SHA, the sidebar with
the menu, the chosen image and the demo images; and the two steps every page repeats.

Streamlit's classic multipage app: ``app.py`` (Review) and the scripts in ``pages/``, each of
which calls ``render`` first, so every page, however it is reached (a deep link, a bookmark, the
first request to a fresh server), shows the disclaimer. The menu is drawn here with
``st.page_link`` (``client.showSidebarNavigation = false``), with titles and icons.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, TypeVar

import streamlit as st
from streamlit.errors import StreamlitPageNotFoundError

from pneumo_model import presentation
from pneumo_model.dicom import is_population_note, population_note
from pneumo_model.errors import PneumoError
from pneumo_model.ood import OUTSIDE, UNUSUAL, known_grade
from pneumo_model.paths import REPO_ROOT

from . import access, server_log, state
from .markup import plain

# First paint: every page imports this module and calls ``render`` before anything else, so the
# banner and the page's layout are on screen before the model's libraries are imported (seconds on
# a cold server). Only light modules are imported here; the access check, the audit trail and the
# model (``resources``, which imports ONNX Runtime) are imported where they are first used.
if TYPE_CHECKING:
    from pneumo_model.prediction import Prediction, Predictor

T = TypeVar("T")
APP_TITLE = "Pneumonia X-ray review"
# A local file: a ":material/...:" page icon makes every browser fetch it from fonts.gstatic.com,
# and no request may leave the hospital's network.
FAVICON = REPO_ROOT / "assets" / "favicon.png"


class Page(NamedTuple):
    script: str  # relative to app.py's folder, as st.page_link and AppTest.switch_page take it
    title: str
    icon: str


PAGES = (
    Page("app.py", "Review", ":material/radiology:"),
    Page("pages/explain.py", "Explain", ":material/visibility:"),
    Page("pages/crop.py", "Crop & rescore", ":material/crop:"),
    Page("pages/worklist.py", "Worklist", ":material/format_list_numbered:"),
    Page("pages/trail.py", "Audit trail", ":material/history:"),
    Page("pages/model_card.py", "Model card", ":material/description:"),
    Page("pages/site.py", "Site calibration", ":material/tune:"),
    Page("pages/monitoring.py", "Monitoring", ":material/monitoring:"),
)

DISCLAIMER = presentation.DISCLAIMER  # the case report prints the same words
HEATMAP_CAVEAT = "shows where the model looked, not where the lesion is"
LOADING_MESSAGE = "Loading the model (once per server start; a few seconds)..."
OOD_MESSAGE = (
    "**This does not look like a frontal chest X-ray; the model's output is not meaningful.** "
    "It is unlike the paediatric chest films the model was trained on (a photo, another body part "
    "or modality, a rotated, inverted or tightly cropped film...)."
)
# The gate's middle grade (docs/ood_grades.md): near its cut on either side, the call is shown with this.
UNUSUAL_MESSAGE = (
    "**Unusual for the films this model was trained on: read with care.** It lies near the edge of the chest "
    "films the model knows (a tilted, blurred, unusually exposed or positioned film can); weigh the call against "
    "the film itself."
)
# The gate's top grade on a film whose header gives an age outside the trained population: a chest
# X-ray from another population, not "not a chest X-ray".
POPULATION_OUTSIDE_MESSAGE = (
    "**Far from the films this model was trained on; the model's output is not meaningful.** "
    "Its header gives an age outside the trained population (see the note below), which can explain it."
)


def show_error(error: PneumoError, file_name: str | None = None) -> None:
    """A package error as a plain message (its text already says what to do), never a traceback.

    The message may quote the file (a DICOM tag, a decoder's words) and the name is the user's,
    so both are shown as text, never as Markdown.
    """
    prefix = f"**{plain(file_name)}** cannot be used. " if file_name else ""
    st.error(prefix + plain(error), icon=":material/error:")


def show_warnings(warnings) -> None:
    """The decoder's notes on an image (they may quote the file's own tags), as plain text. The
    population note is left out: ``shown_call`` draws it above the call."""
    for warning in warnings:
        if not is_population_note(warning):
            st.info(plain(warning), icon=":material/info:")


def show_population_note(prediction: Prediction) -> None:
    """The note for a film whose DICOM header gives an age outside the trained population, if any."""
    for warning in prediction.info.warnings:
        if is_population_note(warning):
            st.warning(plain(warning), icon=":material/person_alert:")


def ood_grade(prediction: Prediction) -> str | None:
    """The prediction's gate grade (``ood.OOD_GRADES``); the single cut at 1 for one made without grades."""
    return known_grade(prediction.ood_grade, prediction.ood_score)


def ood_gate(prediction: Prediction, key: str, message: str = OOD_MESSAGE) -> bool:
    """Shows the out-of-distribution verdict in graded words; returns whether the model's output may be shown.

    ``outside`` gets ``message`` (on a film whose header gives an age outside the trained
    population, words that say so instead of the default "does not look like a chest X-ray"),
    and its call stays hidden unless the user ticks the box (``key`` makes the box per page and
    image); ``unusual`` gets a note and the call; ``in_distribution`` nothing.
    """
    if prediction.ood is None:
        st.caption("This model has no out-of-distribution check; make sure the image is a frontal chest X-ray.")
        return True
    grade = ood_grade(prediction)
    score = f"(Out-of-distribution score {prediction.ood_score:.2f}; the gate's cut is 1.)"
    if grade == UNUSUAL:
        st.warning(f"{UNUSUAL_MESSAGE} {score}", icon=":material/visibility:")
        return True
    if grade != OUTSIDE:
        return True
    if message == OOD_MESSAGE and population_note(prediction.info.age_years) is not None:
        message = POPULATION_OUTSIDE_MESSAGE
    st.error(f"{message} {score}", icon=":material/block:")
    return st.checkbox("Show the model's output anyway", key=f"show_ood_{key}", value=False)


def operating_point_line(model: Predictor) -> str:
    """'as shipped: fixed on validation data from one paediatric hospital' or 'site profile 3f2a… fitted
    on 200 local images on 2026-12-02', with its threshold: what every call on the page is made with."""
    point = model.operating_point
    return f"{point.description} (threshold {point.threshold:.3f}, id `{point.short_id}`)"


def operating_point_purpose(model: Predictor) -> str:
    """What the threshold was set for, in words: 'set for sensitivity 0.97 on validation data from the
    training hospital' or 'set for sensitivity 0.97 on this site's 200 labelled images (site profile 3f2a…)'."""
    point = model.operating_point
    if point.kind in ("shipped", "label-free"):
        target = model.metadata.train_config.get("operating", {}).get("target_sensitivity")
        aim = f"set for sensitivity {target:.2f} " if target is not None else "set "
        if point.kind == "label-free":
            return aim + (
                "on validation data from the training hospital, and read through a label-free alignment to this site's "
                f"unlabelled films (site profile {point.short_id}…; provisional until `site check` on labelled films confirms it)"
            )
        return aim + "on validation data from the training hospital"
    from . import resources

    profile = resources.site_profile()
    return (
        f"set for sensitivity {profile.target_sensitivity:.2f} on this site's {profile.n_normal + profile.n_pneumonia} "
        f"labelled images (site profile {point.short_id}…)"
    )


def render(title: str) -> Predictor:
    """Draws the frame of the page named ``title`` (one of ``PAGES``): page settings, banner, sidebar.

    The first call of every page, made before the page imports anything heavy (see the note at the
    top of this module). On a cold server, what needs no model is drawn first (the banner with the
    intended use, the page's title and the menu), then a "Loading the model..." note while the model
    loads; the banner is then completed with the model's id and operating point. Stops the page with
    a plain error when the model cannot load, and with a plain refusal when this browser may not see
    the page (``ui.access``).
    """
    (page,) = [page for page in PAGES if page.title == title]
    st.set_page_config(page_title=f"{page.title} · {APP_TITLE}", page_icon=str(FAVICON), layout="wide")
    server_log.install()
    access.gate(page.title)  # a refused browser sees the refusal alone: no banner, no menu
    _connection_watch()
    banner = st.empty()
    cold = not _load_state()
    if cold:  # later runs draw the finished banner at once, so it never flickers
        banner.warning(DISCLAIMER, icon=":material/medical_information:")
    else:
        model = _predictor(banner)
    st.subheader(page.title, anchor=False)
    _menu()
    lost = state.lost_uploads()  # before a cold server's model load: a restarted server says so at once
    if lost is not None:
        st.warning(lost, icon=":material/cloud_off:")
    if cold:
        loading = st.empty()
        loading.info(LOADING_MESSAGE, icon=":material/hourglass_top:")
        try:
            model = _predictor(banner)
        finally:
            loading.empty()
    _sidebar(model)
    _keep_heap_frozen()
    return model


# A tab whose server restarted reconnects by itself (Streamlit retries every few seconds) to a new,
# empty session, and by default keeps showing the old page without running it: a form on it looks
# alive, and a press inside a fragment (the verdict form) is dropped by the new session, which
# knows no such fragment. Streamlit's client runs the page again on reconnecting when the page has
# a fragment that reruns itself on a timer; this empty one is there for that, so the new session
# draws the page at once, with the restart notice (``state.lost_uploads``) where work was lost.
CONNECTION_WATCH_S = 60.0


@st.fragment(run_every=CONNECTION_WATCH_S)
def _connection_watch() -> None:
    """Draws nothing; its timer makes a reconnected tab run its page again (see above)."""


@st.cache_resource(show_spinner=False)
def _load_state() -> dict:
    """Process-wide: holds ``"loaded": True`` once this server has loaded the model."""
    return {}


def _predictor(banner) -> Predictor:
    """The model (``resources.predictor``) with the banner completed, or a plain error and a stop."""
    from . import resources  # it imports TensorFlow: after the first paint

    try:
        model = resources.predictor()
    except PneumoError as error:
        show_error(error)
        st.stop()
    _load_state()["loaded"] = True
    banner.warning(
        f"{DISCLAIMER} Model `{model.metadata.short_sha}` ({model.metadata.description}); "
        f"operating point {operating_point_line(model)}. {label_free_words(model)}{access.mode_words()}",
        icon=":material/medical_information:",
    )
    return model


def _keep_heap_frozen() -> None:
    """Keeps the heap frozen (``_freeze_heap``) as the pages import what they use; called at every
    page run, once the page's frame is drawn.

    The first page of a cold server freezes it without a collection (on a fresh server one found
    about 130 unreachable objects, for 0.1-0.2 s of a 2-core machine, just when the reader's first
    click comes in). Libraries are imported where they are first used (the probability bar's
    matplotlib by the first call, once the call is drawn; pandas by the trail), so a later run that
    finds modules imported since the last freeze freezes again, with a collection: a few times per
    server, at the start of a run, never in the middle of one and never from another thread
    (docs/onnx.md: a cold server's first call).
    """
    state = _load_state()
    modules = len(sys.modules)
    if not state.get("frozen"):
        _freeze_heap(collect=False)
        state.update(frozen=True, modules=modules)
    elif state.get("modules") != modules:
        state["modules"] = modules  # read first: a module imported meanwhile is seen next time
        _freeze_heap()


def _freeze_heap(collect: bool = True) -> None:
    """Leaves the libraries and the model, loaded once per server, out of every later garbage
    collection (``gc.freeze``).

    Streamlit collects garbage after every run (``runner.postScriptGC``), and Python's own
    collections come as often: with the model's libraries loaded, a full collection walks
    millions of long-lived objects and holds the interpreter for 0.4-0.9 s, during which no message
    reaches a browser. A verdict's confirmation, a fragment's run of 50 ms, waited for it. Frozen,
    those objects are never freed (they live as long as the server anyway) and a collection walks
    only what the sessions made since (docs/review_result_and_verdict.md).
    """
    import gc

    if collect:  # what is garbage now is not kept for ever
        gc.collect()
    gc.freeze()


LABEL_FREE_BANNER = (
    "**A label-free site profile is active: provisional.** Its threshold was aligned to this site's films without "
    "any diagnosis; it holds only until `python -m pneumo_model site check` on labelled films confirms it. A labelled "
    "profile (`site fit`) is the better evidence. "
)


def label_free_words(model: Predictor) -> str:
    """The banner's sentence when the active operating point is a label-free profile; empty otherwise."""
    return LABEL_FREE_BANNER if model.operating_point.kind == "label-free" else ""


def _link(page: Page, label: str | None = None) -> None:
    try:
        # The links carry the tab's upload mark: after a server restart the old page's links are
        # still on screen, and the first click on one must still learn that the files are gone.
        st.page_link(page.script, label=label or page.title, icon=page.icon, query_params=state.upload_mark())
    except StreamlitPageNotFoundError:
        # Only where a page script is run as the app itself (``AppTest.from_file`` on one page):
        # links resolve against app.py, which is then not the entry point (served, it always is).
        pass


def _menu() -> None:
    with st.sidebar:
        for page in PAGES:
            if access.may_see(page.title):
                _link(page)
        access.sidebar()
        st.divider()


def _sidebar(model: Predictor) -> None:
    """The sidebar under the menu: the chosen image, the demo images and the model's ids."""
    with st.sidebar:
        image = state.chosen()
        if image is None:
            st.caption("No image chosen yet.")
        else:
            source = {"sample": "demo image", "pacs": "from the PACS"}.get(image.source, "uploaded")
            st.caption(f"Chosen image: **{plain(image.name)}** ({source})")
        # Always drawn open: an expander whose ``expanded`` changed between runs was drawn anew, closed,
        # so the list shut after the first pick. Now it stays as the user left it.
        with st.expander("Demo images (one click loads)", expanded=True):
            for sample in state.samples():
                chosen = image is not None and image.source == "sample" and image.name == sample.path.name
                st.button(
                    sample.title,
                    key=f"sample-{sample.path.name}",
                    on_click=state.choose_sample,
                    args=(sample.path,),
                    width="stretch",
                    # A tick, not the theme's primary colour: a red button beside a call would read as an alarm.
                    icon=":material/check:" if chosen else None,
                )
            st.caption(
                "From the Kermany 2018 test split, CC BY 4.0 (see the Model card): the data set's 224 x 224 px "
                "copies, not the original films."
            )
        st.caption(f"{DISCLAIMER}  \nModel `{model.metadata.short_sha}`, operating point `{model.operating_point.short_id}`")


def require_image() -> state.ChosenImage:
    """The chosen image, or an explanation and a stop when there is none."""
    image = state.chosen()
    if image is None:
        st.info(
            "No image chosen. Upload one on the Review page, or pick a demo image in the sidebar.",
            icon=":material/image:",
        )
        _link(PAGES[0], "Go to Review")
        st.stop()
    return image


def computed(compute: Callable[[], T], file_name: str | None = None, busy: str | None = None) -> T:
    """``compute()``, or the package's plain error (naming ``file_name``) and a stop of the page.

    With ``busy``, that note is on the page while ``compute()`` runs (from its first moment:
    ``st.spinner`` waits half a second before it shows). A cached result comes back at once, and
    Streamlit then usually sends the note and its removal in one message, so nothing flickers.
    """
    note = st.empty()
    if busy is not None:
        note.info(busy, icon=":material/hourglass_top:")
    try:
        return compute()
    except PneumoError as error:
        note.empty()
        show_error(error, file_name)
        st.stop()
    finally:
        note.empty()


def shown_call(
    image: state.ChosenImage,
    prediction: Prediction,
    key: str,
    crop_box: tuple[int, ...] | None = None,
    message: str = OOD_MESSAGE,
    markers_masked: bool = False,
) -> tuple[bool, int | None]:
    """The audit rule for a call a page is about to show, in one place.

    Records the result (once per session), applies the out-of-distribution gate in graded words,
    records a reveal when the user asks to see a call the gate hid, and, for the whole image,
    draws the population note (a header age outside the trained population) above the call.

    Args:
        image: the image the call is about.
        prediction: the call.
        key: what makes the gate's checkbox this page's and this image's (and this crop's).
        crop_box: the crop the call was made on, None for the whole image.
        message: what the gate says when it flags the image.
        markers_masked: the call was made with the burned-in markers painted out.

    Returns:
        ``(may_show, result_id)``: whether the call may be shown, and its audit record (None
        when recording failed, which the page has then said).
    """
    from . import audit

    result_id = audit.record_shown(image.digest, prediction, crop_box=crop_box, markers_masked=markers_masked)
    may_show = ood_gate(prediction, f"{key}_{image.digest[:16]}", message)
    if may_show and ood_grade(prediction) == OUTSIDE:  # only a hidden call is revealed
        audit.note_reveal(result_id)
    if crop_box is None and not markers_masked:  # once per page: an edit of the image has the same header
        show_population_note(prediction)
    return may_show, result_id
