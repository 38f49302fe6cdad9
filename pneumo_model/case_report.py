"""A one-page case report (PDF) of one call: for the record, and for demos.

The film, the call, the probability bar, for a film called pneumonia that the gate passed the
subtype pattern with its probability and caveat (nothing where it does not apply or is off), the
Grad-CAM overlay, the operating point, the model's
and the operating point's ids, the image's SHA-256 prefix and the disclaimer, drawn with
matplotlib on one A4 page. No identifiers: not the file name (this data set's names carry
patient numbers, a PACS export's may carry the patient id), no DICOM tag, none of the decoder's
notes (they may quote the file's own tags). The image is named only by its SHA-256, the key the
audit trail keeps, so a report can be matched to its record.
"""

from __future__ import annotations

import io
import textwrap
from datetime import datetime, timezone

import cv2
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

from .artifacts import ModelMetadata
from .ood import OUTSIDE, UNUSUAL, known_grade
from .operating_point import SHIPPED, OperatingPoint
from .prediction import Prediction
from .presentation import AMBER, BAR_AXIS_NOTE, DISCLAIMER, INDETERMINATE, INK, MUTED, call_sentence, call_word
from .presentation import PATTERN_CAVEAT, UNDETERMINED_BAND, draw_probability_bar, pattern_words

A4_INCHES = (8.27, 11.69)
# Pictures are embedded at most this many pixels a side: sharp on paper, a PDF of about 1 MB.
PICTURE_MAX_SIDE = 768
SHA_PREFIX_DIGITS = 16
ERROR_RED = "#B22222"
CITATION = (
    "Model trained on Kermany D, Zhang K, Goldbaum M (2018), Mendeley Data v2, doi:10.17632/rscbjbr9sj.2 "
    "(CC BY 4.0): paediatric (1-5 years) anterior-posterior chest X-rays from one hospital in Guangzhou."
)


def case_report_pdf(
    film: np.ndarray,
    heatmap_overlay: np.ndarray,
    prediction: Prediction,
    metadata: ModelMetadata,
    point: OperatingPoint,
    image_sha256: str,
    heatmap_title: str,
    heatmap_note: str,
    heatmap_legend: np.ndarray | None = None,
    created: datetime | None = None,
) -> bytes:
    """The case report of one call, as the bytes of a one-page PDF.

    Args:
        film: the screen copy of the image (``pneumo_model.display.screen_grey``), uint8 (h, w).
        heatmap_overlay: the Grad-CAM picture the Explain page first shows, uint8 (h, w, 3): the
            overlay on the fixed scale, or the film itself where that page draws no map (a weak one).
        prediction: the call; its ``info`` gives the image's size and format (its warnings are
            left out: they may quote the file's own tags).
        metadata: the model's metadata (its SHA-256 and description).
        point: the operating point that made the call (shipped or a site profile).
        image_sha256: the SHA-256 of the image's bytes (64 hex digits).
        heatmap_title: a few words under the heat map ("where the model looked", "no map: none raised
            the score much").
        heatmap_note: what the overlay's colours mean, as the Explain page says it.
        heatmap_legend: the overlay's colour bar, uint8 (h, w, 3), drawn under it; None: none.
        created: when the report is made (UTC); None: now.

    Returns:
        The PDF's bytes.

    Raises:
        ValueError: a picture is not uint8 of the right shape, the SHA-256 is not 64 hex digits,
            or the call was made by another operating point than ``point``.
    """
    _check_picture(film, "film", grey=True)
    _check_picture(heatmap_overlay, "heat-map overlay", grey=False)
    if heatmap_legend is not None:
        _check_picture(heatmap_legend, "heat-map legend", grey=False)
    if len(image_sha256) != 64 or any(char not in "0123456789abcdef" for char in image_sha256):
        raise ValueError("image_sha256 must be the 64 lower-case hex digits of the image's SHA-256.")
    if prediction.operating_point != point.id:
        raise ValueError(f"The call was made by operating point {prediction.operating_point}, not {point.id}.")
    created = (created or datetime.now(timezone.utc)).astimezone(timezone.utc)
    figure = report_figure(
        film, heatmap_overlay, prediction, metadata, point, image_sha256, heatmap_title, heatmap_note,
        heatmap_legend, created,
    )
    buffer = io.BytesIO()
    figure.savefig(
        buffer, format="pdf",
        metadata={"Title": "Case report", "Author": None, "Subject": None, "Keywords": None,
                  "Creator": "pneumo_model case report", "CreationDate": created},
    )
    return buffer.getvalue()


def report_figure(
    film: np.ndarray,
    heatmap_overlay: np.ndarray,
    prediction: Prediction,
    metadata: ModelMetadata,
    point: OperatingPoint,
    image_sha256: str,
    heatmap_title: str,
    heatmap_note: str,
    heatmap_legend: np.ndarray | None,
    created: datetime,
) -> Figure:
    """The report's page as a matplotlib figure (``case_report_pdf`` checks the arguments first).

    From the top: title, disclaimer, the gate's warning (a flagged image), the call, the bar and its
    sentence, the two pictures side by side (as large as the rest of the page leaves room for),
    what the heat map's colours mean, the facts, and the small print.
    """
    figure = Figure(figsize=A4_INCHES)
    write = _Writer(figure)
    write.title(
        "Case report: one chest X-ray, the model's second opinion",
        f"Pneumonia X-ray review · made {created:%Y-%m-%d %H:%M} UTC",
    )
    write.box(f"{DISCLAIMER} {_who_it_is_for()}", edge=AMBER, fill="#FFF4DB")
    grade = _grade(prediction)
    if grade == UNUSUAL:
        write.box(
            f"Unusual for the films this model was trained on: read with care (out-of-distribution score "
            f"{prediction.ood_score:.2f}, near the gate's cut at 1; docs/ood_grades.md).",
            edge=AMBER, fill="#FFF4DB",
        )
    if grade == OUTSIDE:
        write.box(
            f"The out-of-distribution gate flagged this image (score {prediction.ood_score:.2f}, far above its cut at 1): "
            "it does not look like a frontal chest X-ray of the kind the model was trained on, and the model's "
            "output is not meaningful. It is reported only because the reader asked to see it.",
            edge=ERROR_RED, fill="#FBE9E9",
        )
    headline = f"Call: {call_word(prediction.label)}" + (f"  ·  {INDETERMINATE}" if prediction.grey_zone else "")
    write.paragraph(headline, size=14, weight="bold", gap=0.05)
    write.paragraph(f"Probability of pneumonia (calibrated): {prediction.probability:.3f}", size=11, gap=0.0)
    write.bar(prediction.probability, point)
    write.paragraph(call_sentence(prediction.probability, point), size=10, gap=0.03)
    write.paragraph(f"{BAR_AXIS_NOTE} Amber: the grey zone; black line: the threshold.", size=7.5, color=MUTED)
    if prediction.subtype is not None:
        write.paragraph(pattern_line(prediction), size=10, gap=0.02)
        write.paragraph(PATTERN_CAVEAT, size=7.5, color=MUTED)

    info = prediction.info
    site = "none: the operating point shipped with the model" if point.kind == SHIPPED else point.id
    facts = [
        ("Image", f"SHA-256 {image_sha256[:SHA_PREFIX_DIGITS]}… (its first {SHA_PREFIX_DIGITS} hex digits; the "
         f"audit trail keeps all 64); {info.width} x {info.height} px, {info.bit_depth}-bit {info.format}"),
        ("Model", f"{metadata.short_sha} ({metadata.description}), input {metadata.input_size} x {metadata.input_size} px"),
        ("Operating point", f"{point.description}; id {point.id}; {_calibration(point)}"),
        ("Threshold", f"pneumonia at probability ≥ {point.threshold:.3f}; grey zone [{point.grey_zone.low:.3f}, "
         f"{point.grey_zone.high:.3f}), where the call is indeterminate"),
        ("Site profile", site),
        ("Gate", _gate(prediction)),
    ]
    footer = (
        "The report names the image only by its SHA-256: no file name, no patient identifier, no DICOM tag. "
        f"{CITATION}"
    )
    heatmap_words = f"Grad-CAM (right): {heatmap_note}"
    below = write.height_of(heatmap_words, 8) + 0.12 + write.facts_height(facts) + 0.2 + write.height_of(footer, 7)
    write.pictures(
        [(film, "The image"), (heatmap_overlay, f"Grad-CAM: {heatmap_title}")],
        legend=heatmap_legend, height=write.room_left() - below,
    )
    write.paragraph(heatmap_words, size=8)
    write.facts(facts)
    write.footer(footer, size=7)
    return figure


def pattern_line(prediction: Prediction) -> str:
    """The subtype pattern in one line: its name, what it means, its probability of the viral pattern.

    Raises:
        ValueError: the prediction has no pattern (a normal call, a flagged film, the pattern off).
    """
    if prediction.subtype is None or prediction.subtype_probability is None:
        raise ValueError("This call has no subtype pattern: the line is only written for one that has.")
    meaning = "between the two patterns" if prediction.subtype == UNDETERMINED_BAND else pattern_words(prediction.subtype)
    return (
        f"Radiographic pattern: {prediction.subtype}, {meaning} (probability of the viral pattern "
        f"{prediction.subtype_probability:.2f}, calibrated)."
    )


def _who_it_is_for() -> str:
    return (
        "The model saw this image only: no history, no examination, no earlier films. Its output is a second "
        "opinion for a qualified reader, who makes the call."
    )


def _calibration(point: OperatingPoint) -> str:
    if point.kind == SHIPPED:
        return f"calibrated by temperature scaling (T = {1.0 / point.scale:.3f}) on validation data"
    if point.mapping is not None:
        return (
            f"temperature scaling (T = {1.0 / point.scale:.3f}) on validation data, after a label-free alignment to the "
            "site's unlabelled films (provisional)"
        )
    return f"recalibrated on the site's own labelled images (log-odds x {point.scale:.3f} {point.offset:+.3f})"


def _gate(prediction: Prediction) -> str:
    if prediction.ood is None:
        return "this model has no out-of-distribution check"
    verdict = {
        OUTSIDE: "outside: the output is not meaningful",
        UNUSUAL: "unusual for the training films: read with care",
    }.get(_grade(prediction), "in distribution")
    return f"out-of-distribution score {prediction.ood_score:.2f} (the gate's cut is 1): {verdict}"


def _grade(prediction: Prediction) -> str | None:
    return known_grade(prediction.ood_grade, prediction.ood_score)


def _check_picture(picture: np.ndarray, name: str, grey: bool) -> None:
    shape_ok = picture.ndim == 2 if grey else (picture.ndim == 3 and picture.shape[2] == 3)
    if picture.dtype != np.uint8 or not shape_ok or min(picture.shape[:2]) < 2:
        wanted = "(h, w)" if grey else "(h, w, 3)"
        raise ValueError(f"The {name} must be a uint8 {wanted} picture; got {picture.dtype} {picture.shape}.")


def _for_paper(picture: np.ndarray) -> np.ndarray:
    """At most ``PICTURE_MAX_SIDE`` a side (area-averaged), never enlarged."""
    height, width = picture.shape[:2]
    scale = PICTURE_MAX_SIDE / max(height, width)
    if scale >= 1.0:
        return picture
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(picture, size, interpolation=cv2.INTER_AREA)


class _Writer:
    """Lays the report out from the top of the page down; every length is in inches."""

    MARGIN = 0.7
    LABEL_WIDTH = 1.2
    EM_PER_CHAR = 0.52  # DejaVu Sans, on average: how many characters a line holds
    LEADING = 1.3

    def __init__(self, figure: Figure):
        self.figure = figure
        self.width, self.height = figure.get_size_inches()
        self.text_width = self.width - 2 * self.MARGIN
        self.top = self.MARGIN  # from the top edge of the page

    def _box(self, left: float, top: float, width: float, height: float) -> tuple[float, float, float, float]:
        """An axes rectangle in figure fractions (``top`` from the page's top edge)."""
        return (left / self.width, 1.0 - (top + height) / self.height, width / self.width, height / self.height)

    def _text(self, left: float, top: float, text: str, size: float, **style) -> None:
        self.figure.text(
            left / self.width, 1.0 - top / self.height, text, fontsize=size, va="top", linespacing=self.LEADING,
            **{"color": INK, **style},
        )

    def _lines(self, text: str, size: float, width: float | None = None) -> list[str]:
        width = self.text_width if width is None else width
        return textwrap.wrap(text, width=max(10, int(width * 72 / (size * self.EM_PER_CHAR))))

    def _line_height(self, size: float) -> float:
        return size / 72 * self.LEADING

    def height_of(self, text: str, size: float, width: float | None = None) -> float:
        return len(self._lines(text, size, width)) * self._line_height(size)

    def room_left(self) -> float:
        """From here to the bottom margin."""
        return self.height - self.MARGIN - self.top

    def title(self, text: str, note: str) -> None:
        self._text(self.MARGIN, self.top, text, 14, fontweight="bold")
        self.top += self._line_height(14)
        self._text(self.MARGIN, self.top, note, 8, color=MUTED)
        self.top += self._line_height(8) + 0.12

    def paragraph(self, text: str, size: float = 10, color: str = INK, weight: str = "normal", gap: float = 0.12) -> None:
        self._text(self.MARGIN, self.top, "\n".join(self._lines(text, size)), size, color=color, fontweight=weight)
        self.top += self.height_of(text, size) + gap

    def box(self, text: str, edge: str, fill: str, size: float = 9.5) -> None:
        """Text in a coloured frame across the page."""
        pad = 0.12
        lines = self._lines(text, size, self.text_width - 2 * pad)
        height = len(lines) * self._line_height(size) + 2 * pad
        self.figure.patches.append(
            FancyBboxPatch(
                self._box(self.MARGIN, self.top, self.text_width, height)[:2], self.text_width / self.width,
                height / self.height, boxstyle="round,pad=0,rounding_size=0.005", transform=self.figure.transFigure,
                facecolor=fill, edgecolor=edge, linewidth=1.2, figure=self.figure,
            )
        )
        self._text(self.MARGIN + pad, self.top + pad, "\n".join(lines), size)
        self.top += height + 0.15

    def bar(self, probability: float, point: OperatingPoint, height: float = 1.15) -> None:
        ax = self.figure.add_axes(self._box(self.MARGIN, self.top, self.text_width, height))
        draw_probability_bar(ax, probability, point, font_size=10)
        self.top += height + 0.05

    def pictures(self, pictures: list[tuple[np.ndarray, str]], legend: np.ndarray | None, height: float) -> None:
        """Pictures side by side, each with a one-line caption, the last with ``legend`` (a colour bar)
        under it; square cells as large as ``height`` and the page's width allow.

        Raises:
            ValueError: ``height`` leaves the pictures less than 1.5 in (a layout mistake).
        """
        gap, size = 0.35, 8.5
        column = (self.text_width - gap * (len(pictures) - 1)) / len(pictures)
        legend_height = 0.0 if legend is None else column * 0.8 * legend.shape[0] / legend.shape[1]
        side = min(column, height - legend_height - self._line_height(size) - 0.1)
        if side < 1.5:
            raise ValueError(f"The report's text leaves {side:.2f} in for its pictures; they need 1.5.")
        for index, (picture, caption) in enumerate(pictures):
            left = self.MARGIN + index * (column + gap)
            ax = self.figure.add_axes(self._box(left, self.top, column, side))
            shown = _for_paper(picture)
            ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None, vmin=0, vmax=255, interpolation="antialiased")
            ax.set_axis_off()
            self._text(left + column / 2, self.top + side + 0.05, caption, size, ha="center")
        if legend is not None:
            left = self.MARGIN + (len(pictures) - 1) * (column + gap) + column * 0.1
            top = self.top + side + self._line_height(size) + 0.08
            legend_ax = self.figure.add_axes(self._box(left, top, column * 0.8, legend_height))
            legend_ax.imshow(legend, interpolation="antialiased")
            legend_ax.set_axis_off()
        self.top += side + self._line_height(size) + legend_height + 0.2

    def facts_height(self, rows: list[tuple[str, str]], size: float = 8.5) -> float:
        value_width = self.text_width - self.LABEL_WIDTH
        return sum(self.height_of(value, size, value_width) + 0.05 for _, value in rows)

    def facts(self, rows: list[tuple[str, str]], size: float = 8.5) -> None:
        """Label and value rows, the values wrapped beside their labels."""
        value_width = self.text_width - self.LABEL_WIDTH
        for label, value in rows:
            self._text(self.MARGIN, self.top, label, size, fontweight="bold")
            self._text(self.MARGIN + self.LABEL_WIDTH, self.top, "\n".join(self._lines(value, size, value_width)), size)
            self.top += self.height_of(value, size, value_width) + 0.05

    def footer(self, text: str, size: float = 7) -> None:
        """Small print ending at the bottom margin."""
        lines = self._lines(text, size)
        self._text(self.MARGIN, self.height - self.MARGIN - len(lines) * self._line_height(size), "\n".join(lines),
                   size, color=MUTED)
