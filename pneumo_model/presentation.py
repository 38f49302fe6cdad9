"""The call as a reader sees it: its words, the sentence under it, and the probability bar.

One spelling of the call for every face that shows one (the app's pages, the case report), so a
film is never "Pneumonia" on one page and "pneumonia" on the next.

The bar puts the image's calibrated probability of pneumonia on an axis from 0.001 to 0.999
with the threshold and the grey zone drawn on it. The axis is spaced by log-odds, not linearly:
the grey zone is by its rule symmetric around the threshold on the log-odds scale
(``docs/grey_zone_rule.md``), so it is drawn symmetric; a band that is narrow in probability near
0 or 1 (0.01 to 0.05, say) stays visible; and the probabilities that mean very different
confidence (0.001 and 0.05, which a linear bar puts a few pixels apart) are told apart. The ticks
are labelled in probability, and 0.5 is in the middle as on a linear bar.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from .operating_point import OperatingPoint
# matplotlib and the operating point (scipy) are imported where a bar is drawn: the app's banner,
# drawn before anything heavy is imported, reads the words of this module (``DISCLAIMER``).

DISCLAIMER = "Decision support for trained readers — not a medical device, not a diagnosis."
CALL_WORDS = {"normal": "Normal", "pneumonia": "Pneumonia"}
INDETERMINATE = "Indeterminate: needs a careful read"
INDETERMINATE_WORD = "indeterminate"
# What the bar's caption says about its axis (the page and the case report both print it).
BAR_AXIS_NOTE = (
    "The axis is spaced by log-odds: stretched near 0 and 1 so that 0.001, 0.01 and 0.05 are told "
    "apart; the ticks are probabilities, 0.5 in the middle."
)

BAR_LIMITS = (0.001, 0.999)
BAR_TICKS = (0.001, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999)
# Okabe-Ito orange: amber for "indeterminate", told apart from grey by any common colour vision.
AMBER = "#E69F00"
BAR_GREY = "#D9D9D9"
INK = "#1A1A1A"
MUTED = "#595959"


# The subtype pattern (docs/subtype_rule.md), in the words every face uses: a radiographic
# pattern, never a cause; what it is not is said one click away, wherever it is shown.
PATTERN_BAR_ENDS = ("bacterial-like", "viral-like")
UNDETERMINED_BAND = "undetermined"
# The value over the pattern's bar: not "this image", which the call's bar above says of pneumonia.
PATTERN_MARKER = "viral pattern"
PATTERN_KINDS = {"bacterial-like": "bacterial", "viral-like": "viral"}
PATTERN_CAVEAT = (
    "A radiographic pattern, not a cause. The radiograph alone cannot reliably tell bacterial from viral "
    "infection: bacterial infection was found in about half of children with only interstitial infiltrates "
    "and in most with alveolar ones (Virkki et al., Thorax 2002). The model learned from the hospital's "
    "diagnoses written on its training films, not from microbiology. Never a basis for a treatment decision, "
    "such as giving or withholding antibiotics."
)
PATTERN_PROBABILITY_LABEL = "probability of the viral pattern (calibrated)"


def pattern_words(pattern: str, strong: str = "") -> str:
    """The pattern in words: "looks more like the viral pneumonia films this model learned from",
    or "undetermined: between the two patterns".

    Args:
        pattern: one of ``subtype.PATTERNS``.
        strong: put around the deciding word ("**" for Markdown bold).

    Raises:
        ValueError: not a pattern a ``Prediction`` carries.
    """
    if pattern == UNDETERMINED_BAND:
        return f"{strong}undetermined{strong}: between the two patterns"
    if pattern not in PATTERN_KINDS:
        raise ValueError(f"A pattern is one of bacterial-like, viral-like, undetermined; got {pattern!r}.")
    return f"looks more like the {strong}{PATTERN_KINDS[pattern]}{strong} pneumonia films this model learned from"


def pattern_absent_reason(label: str, ood: bool | None) -> str:
    """Why a film that was called has no pattern: it was called normal, or the gate flagged it."""
    if ood is True:
        return "the out-of-distribution check flagged this image"
    if label == "normal":
        return "the call is normal; a pattern is only read on films called pneumonia"
    raise ValueError(f"A {label} call the gate did not flag has a pattern when the pattern is on.")


def call_word(label: str) -> str:
    """The call as every page and report writes it: ``"Normal"`` or ``"Pneumonia"``.

    Raises:
        ValueError: ``label`` is not a label a ``Prediction`` carries.
    """
    try:
        return CALL_WORDS[label]
    except KeyError:
        raise ValueError(f"A call is 'normal' or 'pneumonia'; got {label!r}.") from None


def call_sentence(probability: float, point: OperatingPoint) -> str:
    """One sentence in plain words on where the probability lies, for under the bar.

    Neutral on both sides (a normal call is never an all clear), and a warning inside the grey
    zone whichever side of the threshold the probability is on. The numbers are on the bar.
    """
    p = _checked(probability)
    if point.in_grey_zone(p):
        side = "above" if p >= point.threshold else "below"
        return (
            f"The model's probability lies near the operating point, {side} the threshold but inside the grey "
            "zone: read this film carefully."
        )
    if p >= point.grey_zone.high:
        return (
            "The model's probability lies above the grey zone: the model calls this film pneumonia. Weigh it with "
            "your own reading of the film."
        )
    return (
        "The model's probability lies below the grey zone: the model calls this film normal. That does not rule "
        "pneumonia out; weigh it with your own reading of the film."
    )


def _checked(probability: float) -> float:
    p = float(probability)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"A probability lies in [0, 1]; got {probability!r}.")
    return p


def _position(probability: float) -> float:
    """Where a probability sits on the bar's axis: its log-odds, clamped to the bar's ends."""
    from .operating_point import logit

    return logit(float(np.clip(probability, *BAR_LIMITS)))


def draw_probability_bar(ax: Axes, probability: float, point: OperatingPoint, font_size: float = 11.0) -> None:
    """Draws the bar into ``ax`` (which it takes over: limits, spines, ticks).

    From top to bottom: the image's probability (a marker and its value), the bar (grey, the
    grey zone amber, the threshold a black line, the ends named "normal" and "pneumonia"), the
    probability ticks, and a legend with the grey zone's edges and the threshold's value.

    Args:
        ax: an empty axes, about four times as wide as it is tall.
        probability: the image's calibrated probability of pneumonia, in [0, 1].
        point: the operating point that made the call (threshold and grey zone).
        font_size: of the labels, in points.

    Raises:
        ValueError: the probability is outside [0, 1].
    """
    band = (point.grey_zone.low, point.grey_zone.high)
    _draw_bar(ax, probability, point.threshold, band, ("normal", "pneumonia"), "grey zone", "this image", font_size)


def draw_pattern_bar(
    ax: Axes, probability: float, threshold: float, band: tuple[float, float], font_size: float = 11.0
) -> None:
    """Draws the subtype pattern's bar into ``ax``: the pneumonia bar's drawing on the calibrated
    probability of the viral pattern, from "bacterial-like" to "viral-like", its undetermined band
    amber and its threshold a black line (``docs/subtype_rule.md``: the band is symmetric around
    the threshold on the log-odds scale, as the grey zone is, so the same axis draws it symmetric).

    Args:
        ax: an empty axes, about four times as wide as it is tall.
        probability: the film's calibrated probability of the viral pattern, in [0, 1].
        threshold: at or above it the film leans viral (``SubtypeModel.threshold``).
        band: ``[low, high)`` of the undetermined band (``SubtypeModel.band``).
        font_size: of the labels, in points.

    Raises:
        ValueError: the probability is outside [0, 1].
    """
    _draw_bar(ax, probability, threshold, band, PATTERN_BAR_ENDS, UNDETERMINED_BAND, PATTERN_MARKER, font_size)


def _draw_bar(
    ax: Axes, probability: float, threshold_p: float, band: tuple[float, float], end_names: tuple[str, str],
    band_name: str, marker_name: str, font_size: float,
) -> None:
    """The one drawing of both bars (see ``draw_probability_bar``): ``end_names`` are the left and
    right ends' words, ``band_name`` the amber band's in the legend, ``marker_name`` the value's."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    p = _checked(probability)
    left, right = (_position(edge) for edge in BAR_LIMITS)
    here, threshold = _position(p), _position(threshold_p)
    low, high = (_position(edge) for edge in band)
    margin = 0.06 * (right - left)  # room for the end ticks' labels
    ax.set_xlim(left - margin, right + margin)
    ax.set_ylim(-2.45, 2.95)
    ax.set_axis_off()

    ax.add_patch(Rectangle((left, 0.0), right - left, 1.0, facecolor=BAR_GREY, edgecolor="none"))
    ax.add_patch(Rectangle((low, 0.0), high - low, 1.0, facecolor=AMBER, edgecolor="none"))
    inside = dict(fontsize=font_size * 0.85, color=MUTED, va="center")
    ends = [
        ax.text(left + 0.2, 0.5, end_names[0], ha="left", **inside),
        ax.text(right - 0.2, 0.5, end_names[1], ha="right", **inside),
    ]
    ax.plot([threshold, threshold], [-0.2, 1.1], color=INK, linewidth=2.5, solid_capstyle="butt")
    for tick in BAR_TICKS:
        x = _position(tick)
        ax.plot([x, x], [-0.2, 0.0], color=MUTED, linewidth=0.8)
        ax.text(x, -0.35, f"{tick:g}", ha="center", va="top", fontsize=font_size * 0.85, color=MUTED)

    ax.plot([here], [1.65], marker="v", markersize=font_size * 1.1, color=INK, linestyle="none")
    value = ax.text(
        here, 2.05, f"{marker_name}: {p:.3f}", va="bottom", ha="center", fontsize=font_size, color=INK, fontweight="bold"
    )
    _keep_inside(ax, value)
    legend = ax.legend(
        handles=[
            Patch(
                facecolor=AMBER, edgecolor="none",
                label=f"{band_name} {band[0]:.3f} to {band[1]:.3f}",
            ),
            Line2D(
                [], [], color=INK, marker="|", markersize=font_size * 1.2, markeredgewidth=2.5, linestyle="none",
                label=f"threshold {threshold_p:.3f}",
            ),
        ],
        loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=2, frameon=False, fontsize=font_size * 0.85,
        handlelength=1.2, handletextpad=0.5, columnspacing=1.5, borderaxespad=0.0,
    )
    for text in legend.get_texts():
        text.set_color(INK)
    _fit_legend(ax, legend)
    _hide_covered_ends(ax, ends, threshold, low, high)


def _fit_legend(ax: Axes, legend) -> None:
    """Shrinks the legend's words until the legend fits the axes' width (the pattern bar's
    "undetermined 0.306 to 0.569" is longer than "grey zone 0.057 to 0.625"); at most to 70 %."""
    edges = ax.get_window_extent()
    texts = legend.get_texts()
    size = texts[0].get_fontsize()
    for step in range(1, 7):
        if legend.get_window_extent().width <= edges.width:
            return
        for text in texts:
            text.set_fontsize(size * (1 - 0.05 * step))


def _keep_inside(ax: Axes, label) -> None:
    """Moves a centred label that would stick out of the axes to lie along its nearer edge."""
    box, edges = label.get_window_extent(), ax.get_window_extent()
    x_min, x_max = ax.get_xlim()
    _, y = label.get_position()
    if box.x0 < edges.x0:
        label.set_horizontalalignment("left")
        label.set_position((x_min, y))
    elif box.x1 > edges.x1:
        label.set_horizontalalignment("right")
        label.set_position((x_max, y))


def _hide_covered_ends(ax: Axes, ends, threshold: float, low: float, high: float) -> None:
    """Hides an end's name where the grey zone or the threshold reaches it (a band at an end of the
    bar), so that no word sits on the amber or is cut by the line."""
    to_data = ax.transData.inverted()
    for end in ends:
        box = end.get_window_extent().transformed(to_data)  # the figure's own renderer, any backend
        if box.x1 > min(low, threshold) and box.x0 < max(high, threshold):
            end.set_visible(False)


# Every page run draws the call's bar and the pattern's (about 70 ms each with matplotlib on a 2-core
# machine); the same film at the same operating point gives the same picture, so it is drawn once.
@functools.lru_cache(maxsize=256)
def probability_bar(
    probability: float, point: OperatingPoint, width_in: float = 3.6, dpi: int = 200, font_size: float = 12.0
) -> np.ndarray:
    """The bar as a picture for a page: (height, width, 3) uint8 RGB on white.

    Args:
        probability: the image's calibrated probability of pneumonia, in [0, 1].
        point: the operating point that made the call.
        width_in: the figure's width in inches (its height is a fixed fraction of it).
        dpi: pixels per inch; drawn at about twice the size it is shown, so it stays sharp.
        font_size: of the image's value, in points (the other labels are a little smaller).
    """
    return _bar_picture(lambda ax: draw_probability_bar(ax, probability, point, font_size), width_in, dpi)


@functools.lru_cache(maxsize=256)
def pattern_bar(
    probability: float, threshold: float, band: tuple[float, float], width_in: float = 3.6, dpi: int = 200,
    font_size: float = 12.0,
) -> np.ndarray:
    """The subtype pattern's bar (``draw_pattern_bar``) as a picture for a page: (height, width, 3)
    uint8 RGB on white, the same size and look as ``probability_bar``'s for the same arguments."""
    return _bar_picture(lambda ax: draw_pattern_bar(ax, probability, threshold, band, font_size), width_in, dpi)


def _bar_picture(draw, width_in: float, dpi: int) -> np.ndarray:
    """What ``draw(ax)`` draws, on a figure about 2.8 times as wide as it is tall, as RGB pixels."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, width_in * 0.36), dpi=dpi)
    canvas = FigureCanvasAgg(figure)
    ax = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    draw(ax)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[:, :, :3].copy()  # (h, w, 3) uint8
    pixels.flags.writeable = False  # cached and shared (``probability_bar``, ``pattern_bar``)
    return pixels
