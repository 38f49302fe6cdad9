"""The committed reports the Model card page shows, read as they are from ``reports/``."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pneumo_model.paths import REPORTS_DIR


def read_json(name: str, reports_dir: Path = REPORTS_DIR) -> dict | None:
    """``reports/<name>.json`` as a dict, or None when it has not been generated."""
    path = reports_dir / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def read_markdown(name: str, reports_dir: Path = REPORTS_DIR) -> str | None:
    """``reports/<name>.md`` as text, or None when it has not been generated."""
    path = reports_dir / f"{name}.md"
    return path.read_text() if path.is_file() else None


def figure(relative_path: str, reports_dir: Path = REPORTS_DIR) -> Path | None:
    """A figure named in a report (relative to ``reports/``), or None when the file is missing."""
    path = reports_dir / relative_path
    return path if path.is_file() else None


# The site-calibration report's figures, as the Model card names them (the app side does not import the lab's names).
SITE_FIGURES = (
    ("sensitivity", "sensitivity"),
    ("specificity", "specificity"),
    ("accuracy", "accuracy"),
    ("ece", "ECE (15 bins)"),
    ("grey_zone_share", "grey-zone share"),
    ("accuracy_outside_grey_zone", "accuracy outside the grey zone"),
)


def _spread_text(summary: dict) -> str:
    if summary.get("median") is None:
        return "n/a"
    return f"{summary['median']:.3f} ({summary['p5']:.3f}-{summary['p95']:.3f})"


def site_calibration_rows(report: dict, size: int = 200, prevalence: str = "split") -> list[dict]:
    """Shipped and site-calibrated figures side by side at one local-sample size, from
    ``reports/site_calibration.json``: one row per figure, each "median (5th-95th percentile)" over
    the draws, on the images the profiles were not fitted on. [] when the report has no such size."""
    results = report.get("results", {}).get(str(size))
    if results is None:
        return []
    block = results["prevalence"][prevalence]
    return [
        {"figure": name, "shipped operating point": _spread_text(block["shipped"][key]),
         "site profile": _spread_text(block["site"][key])}
        for key, name in SITE_FIGURES
    ]


def site_grey_zone_by_size(report: dict | None, prevalence: str = "split") -> list[dict]:
    """The grey-zone share of the site profiles in ``reports/site_calibration.json``, by the size of the
    local sample they were fitted on: ``{"size", "normal", "pneumonia", "median", "p5", "p95"}`` per size
    (the share of the films each profile was not fitted on), ascending; [] without the report."""
    rows = []
    for size, results in sorted((report or {}).get("results", {}).items(), key=lambda item: int(item[0])):
        share = results["prevalence"][prevalence]["site"]["grey_zone_share"]
        counts = report["config"]["local_counts"][size]
        if share.get("median") is not None:
            rows.append({"size": int(size), "normal": counts["normal"], "pneumonia": counts["pneumonia"],
                         "median": share["median"], "p5": share["p5"], "p95": share["p95"]})
    return rows


def site_calibration_verdict(report: dict) -> str:
    """'Must reach: 6 of 10 items met (missed: ...)', from the report's own checks."""
    rows = report.get("must_reach", [])
    missed = [f"{row['statistic']} {row['figure'].replace('_', ' ')} at {row['size']}" for row in rows if not row["met"]]
    text = f"Must reach: {len(rows) - len(missed)} of {len(rows)} items met"
    return text + (f" (missed: {'; '.join(missed)})." if missed else ".")


LABEL_FREE_POINTS = (("label_free", "label-free alignment"), ("labelled_200", "labelled profile, 200 films"), ("shipped", "shipped operating point"))


def label_free_rows(report: dict, key: str = "250|split") -> list[dict]:
    """Label-free alignment beside the labelled profile and the shipped point, from
    ``reports/site_label_free.json``: one row per figure, "median (5th-95th percentile)" on the
    films not drawn; [] when the report has no such setting."""
    block = report.get("results", {}).get(key)
    if block is None:
        return []
    return [
        {"figure": name, **{title: _spread_text(block["points"][point][figure]) for point, title in LABEL_FREE_POINTS}}
        for figure, name in SITE_FIGURES if figure in block["points"]["label_free"]
    ]


def label_free_verdict(report: dict) -> str:
    """'Must reach: 7 of 9 items met (missed: ...)', from the label-free report's own checks."""
    rows = report.get("must_reach", [])
    where = {"split": "the split's prevalence", "low": "30 %"}
    missed = [f"{row['statistic']} {row['figure'].replace('_', ' ')} at {row['size']} films, {where[row['prevalence']]}" for row in rows if not row["met"]]
    text = f"Must reach: {len(rows) - len(missed)} of {len(rows)} items met"
    return text + (f" (missed: {'; '.join(missed)}; the rules were not retuned)." if missed else ".")


def stated_coverage_line(report: dict, size: int = 200) -> str | None:
    """How often a profile's own 95 % intervals held the figure later found on new images, in the
    test-split protocol at ``size`` local images, as one sentence; None when the report lacks it."""
    coverage = report.get("results", {}).get(str(size), {}).get("stated_coverage")
    if not coverage:
        return None
    shares = [entry["covered_share"] for entry in coverage.values()]
    return (
        f"Read the intervals as the least uncertainty there is: when the official test split played a site "
        f"(`reports/site_calibration.md`), a profile's own 95 % intervals from {size} local films held the figure "
        f"later found on the other films in only {min(shares):.0%}-{max(shares):.0%} of draws."
    )


# --- The Model card's names and tables: every model named by what it is, never by its hash --------

_SHORT_SHA = re.compile(r"\b[0-9a-f]{12}\b")
# The perturbations of reports/validation_stress.json in words, with their strengths from its config.
_STRESS_WORDS = {
    "plain": lambda config: "as they are",
    "narrow": lambda config: f"anatomy {1 - config['narrow']:.0%} narrower",
    "wide": lambda config: f"anatomy {config['wide'] - 1:.0%} wider",
    "swapped": lambda config: "shape cue reversed",
    "lower_crop": lambda config: f"lowest {1 - config['lower_crop_keep']:.0%} cut off",
    "low_resolution": lambda config: f"at {config['low_resolution']:.0%} resolution",
}
# The headline figures: (key in the reports, name on the card).
HEADLINE_FIGURES = (
    ("sensitivity", "sensitivity"),
    ("specificity", "specificity"),
    ("accuracy", "accuracy"),
    ("roc_auc", "ROC AUC"),
)
DASH = "—"


def _run_name(stress: dict | None, short_sha: str) -> str | None:
    """The training run a model file came from ('v7'): the folder the stress report read it from."""
    for key, model in (stress or {}).get("models", {}).items():
        if key.rsplit("@", 1)[-1] == short_sha:
            return Path(model["path"]).parent.name
    return None


def shipped_model_name(metadata, stress: dict | None = None) -> str:
    """'the shipped model (pneumonet, 128 px, v7)': architecture, input size and, where the stress
    report names the file's training run, that run."""
    parts = [metadata.description, f"{metadata.input_size} px", _run_name(stress, metadata.short_sha)]
    return "the shipped model (" + ", ".join(part for part in parts if part) + ")"


def candidate_names(stress: dict, metadata) -> dict[str, str]:
    """The stress report's model keys (``architecture@hash``) as names of their training runs:
    'v7 (shipped)', 'v2 (not shipped)'."""
    names = {}
    for key, model in stress.get("models", {}).items():
        run = Path(model["path"]).parent.name
        names[key] = f"{run} (shipped)" if key.rsplit("@", 1)[-1] == metadata.short_sha else f"{run} (not shipped)"
    return names


def named(markdown: str, metadata, name: str) -> str:
    """A generated report's Markdown with the shipped model's hash replaced by ``name`` and its
    headings dropped (the card gives each section one heading of its own)."""
    lines = [line for line in markdown.splitlines() if not line.lstrip().startswith("#")]
    # Each line outside a table its own paragraph, as the report's lines are meant (Markdown would join them).
    text = "".join(
        line + ("\n" if line.startswith("|") and next_line.startswith("|") else "\n\n")
        for line, next_line in zip(lines, [*lines[1:], ""])
    ).strip()

    def replace(match: re.Match) -> str:
        return name[0].upper() + name[1:] if match.group(1)[0] == "M" else name

    pattern = rf"([Mm]odel) `{re.escape(metadata.short_sha)}`(?: \({re.escape(metadata.description)}\))?"
    return re.sub(pattern, replace, text)


def short_hashes(text: str) -> list[str]:
    """Every 12-hex-digit hash in ``text`` (the card names models instead; the tests look for these)."""
    return _SHORT_SHA.findall(text)


def _value_and_interval(value: float | None, interval) -> str:
    if value is None:
        return DASH
    if interval and interval[0] is not None:
        return f"{value:.3f} ({interval[0]:.3f}-{interval[1]:.3f})"
    return f"{value:.3f}"


def headline_rows(evaluation: dict, site: dict | None, card: dict | None, size: int = 200) -> list[dict]:
    """The first screen's table: the shipped operating point on the official test split (95 % CI),
    a site profile fitted on ``size`` local films (median, 5th-95th percentile over the draws, on
    the films it was not fitted on) and the published Kermany 2018 figures, one row per figure."""
    block = (site or {}).get("results", {}).get(str(size), {}).get("prevalence", {}).get("split", {}).get("site", {})
    published = ((card or {}).get("published_reference") or {}).get("figures", {})
    rows = []
    for key, name in HEADLINE_FIGURES:
        rows.append({
            "figure": name,
            "shipped": _value_and_interval(evaluation["image"].get(key), evaluation.get("image_ci95", {}).get(key)),
            "site": _spread_text(block[key]) if key in block else DASH,
            "published": f"{published[key]:.3f}" if key in published else DASH,
        })
    zone = block.get("grey_zone_share")
    rows.append({
        "figure": "indeterminate",
        "shipped": f"{evaluation['grey_zone_fraction']:.1%}",
        "site": DASH if zone is None or zone.get("median") is None
        else f"{zone['median']:.1%} ({zone['p5']:.1%}-{zone['p95']:.1%})",
        "published": DASH,
    })
    return rows


def unbroken(text: str) -> str:
    """``text`` that a browser keeps on one line: no-break spaces and hyphens (a table cell such as
    '0.992 (0.982-1.000)' then holds its width, and a long column name beside it wraps instead)."""
    return str(text).replace(" ", "\u00a0").replace("-", "\u2011")


def site_column_name(size: int = 200) -> str:
    """The headline's site column, named for what it is: a simulation on the test split, not a local validation."""
    return f"What a site can expect: simulated on the official test split, profiles fitted on {size} films"


def reliability_lines(reliability: dict | None) -> list[str]:
    """What the reliability diagram's counts say, in words, from ``model_card.json``'s ``reliability`` entry
    of one split (films per bin, computed from the committed predictions by ``python -m pneumo_model card``);
    [] without it."""
    if not reliability:
        return []
    bins = reliability["bins"]
    films = [b["films"] for b in bins]
    sparse = reliability["sparse_bin_films"]
    ends = films[0] + films[-1]
    middle = [count for count in films[1:-1]]
    few = [count for count in middle if count < sparse]
    return [
        f"Films per bin, from the lowest probability to the highest: {', '.join(str(count) for count in films)} "
        f"({reliability['films']} in all).",
        f"{ends} of the {reliability['films']} films ({ends / reliability['films']:.0%}) lie in the two end bins "
        f"(below {bins[0]['high']:.3f} and from {bins[-1]['low']:.3f}), where the diagram is well measured. The "
        f"{len(middle)} bins between hold {sum(middle)} films, {len(few)} of them fewer than {sparse} films each (pale bars): "
        "one film more or less moves such a bin's rate by a tenth or more, so a bar far from the diagonal there is "
        "within chance (see its 95 % interval), not by itself a sign of miscalibration.",
    ]


def false_calls_line(evaluation: dict) -> str:
    """The shipped model's errors on the official test split, in films, for the first screen."""
    confusion = evaluation["image"]["confusion"]
    normal, pneumonia = confusion["tn"] + confusion["fp"], confusion["tp"] + confusion["fn"]
    return (
        f"**Over-calls normals.** {confusion['fp']} of {normal} normal test films called pneumonia; "
        f"{confusion['fn']} of {pneumonia} pneumonias missed."
    )


def stress_tables(stress: dict, metadata) -> dict[str, list[dict]]:
    """Validation under shift, per figure (AUC, sensitivity, specificity): one row per candidate
    model, named, one column per perturbation in words."""
    names = candidate_names(stress, metadata)
    words = {key: describe(stress["config"]) for key, describe in _STRESS_WORDS.items()}
    tables = {}
    for figure, title in (("roc_auc", "ROC AUC"), ("sensitivity", "sensitivity"), ("specificity", "specificity")):
        tables[title] = [
            {"model": names[key], **{words.get(name, name): f"{result[figure]:.3f}" for name, result in results.items()}}
            for key, results in stress["results"].items()
        ]
    return tables


def drift_rows(stress: dict, metadata) -> list[dict]:
    """Drift inside official train: one row per acquisition group (with its number of validation
    images), one column per candidate model (the share it got right), on plain validation images."""
    names = candidate_names(stress, metadata)
    groups: dict[str, dict] = {}
    for key, by_group in stress.get("acquisition_drift", {}).items():
        for group, counts in by_group.items():
            row = groups.setdefault(group, {"group": group, "images": str(counts["n"])})
            row[names[key]] = f"{counts['rate']:.3f}"
    return list(groups.values())


def comparison_rows(
    comparison: dict, evaluation: dict | None, metadata, shipped_name: str, parameters: int | None = None
) -> list[dict]:
    """The model comparison, the shipped model first (for reference: it was trained longer, at its own
    input size) and every comparison run named as one: 'pneumonet at 96 px: comparison run, not the
    shipped model'. Figures as text; a dash where a report has none."""
    def figure(block: dict | None, key: str) -> str:
        value = (block or {}).get(key)
        return DASH if value is None else f"{value:.3f}"

    size = comparison.get("input_size")
    rows = [{
        "model": shipped_name[0].upper() + shipped_name[1:],
        "parameters": DASH if parameters is None else f"{parameters:,}",
        "training s": f"{metadata.training_seconds:.0f}" if metadata.training_seconds else DASH,
        "val AUC": figure(metadata.validation, "roc_auc"),
        **{f"test {name}": figure((evaluation or {}).get("image"), key)
           for key, name in (("accuracy", "acc"), ("sensitivity", "sens"), ("specificity", "spec"), ("roc_auc", "AUC"))},
    }]
    for row in comparison.get("rows", []):
        rows.append({
            "model": f"{row['variant']} at {size} px: comparison run, not the shipped model",
            "parameters": f"{row['parameters']:,}",
            "training s": f"{row['training_seconds']:.0f}",
            "val AUC": figure(row.get("validation"), "roc_auc"),
            **{f"test {name}": figure(row.get("test"), key)
               for key, name in (("accuracy", "acc"), ("sensitivity", "sens"), ("specificity", "spec"), ("roc_auc", "AUC"))},
        })
    return rows


def other_model_reports(metadata, named_reports: dict[str, dict | None]) -> list[str]:
    """The names of the reports (``{name: report}``) that describe another model file than the one
    loaded: regenerated for an older model, or never. Reports with no model hash are left out."""
    return [
        name for name, report in named_reports.items()
        if report is not None and report.get("model_sha256") not in (None, metadata.model_sha256)
    ]


# --- Where the model looks (issue 14: attention outside the body) -------------------------------


def attention_lines(report: dict) -> list[str]:
    """The attention report (``reports/attention.json``) in a reader's words, every number from it."""
    test = report["test"]
    groups = test["groups"]
    every, correct, wrong = groups["all"], groups["correct"], groups["wrong"]

    def share(block: dict) -> str:
        inside = block["share_inside"]
        return "no map to judge" if inside["median"] is None else f"{100 * inside['median']:.1f} %"

    spread = every["share_inside"]
    quartiles = (
        f" (half of the maps between {100 * spread['q1']:.1f} % and {100 * spread['q3']:.1f} %)"
        if spread["median"] is not None else ""
    )
    return [
        "Is the model reading the chest? For each film, the share of its Grad-CAM heat that falls inside the "
        "patient's body outline rather than on the corners, burned-in letters and markers or the image border "
        "(`assets/annotations/thorax.md`: the outline was checked by eye on 36 films of the official training split, none of the test split). The Explain and Crop "
        "pages show that share under the heat map and warn when most of the heat lies outside the chest.",
        f"On the official test split ({test['n_images']} films), {every['n']} maps were strong enough to judge: a median "
        f"{share(every)} of their heat lay inside the body{quartiles}; {share(correct)} for the {correct['n']} correct "
        f"calls, {share(wrong)} for the {wrong['n']} wrong ones. The warning (*the model's attention is mostly outside "
        f"the chest*) fired on {every['warned']} of them ({correct['warned']} correct, {wrong['warned']} wrong calls); "
        f"the milder note (more outside than on 19 validation films in 20) on {every['noted']}. The other "
        f"{test['left_out']['weak']} maps ({test['weak_by_class']['normal']} of them normal films) were too weak to "
        "judge: no region raised the pneumonia score much.",
        *anatomy_lines(report),
    ]


def anatomy_lines(report: dict) -> list[str]:
    """Where the heat lies inside the body (amendment 2 of ``docs/attention_rule.md``), every number
    from the report; the old limit in words for a report made before it."""
    anatomy = report["test"].get("anatomy")
    if not anatomy or report.get("lungs_unusual") is None:
        return [
            "What this cannot show: a shortcut inside the body. The outline separates the chest from the corners and "
            "the letters; it cannot tell the lungs from the heart, the diaphragm or the body's overall shape, which "
            "this data set's models are known to lean on (see the limitations above)."
        ]
    every = anatomy["groups"]["all"]
    shares = every["shares"]

    def median(region: str) -> str:
        value = shares[region]["median"]
        return "n/a" if value is None else f"{100 * value:.0f} %"

    return [
        "Inside the body, the pages place the heat on the anatomy where the diaphragm finder outlines both lungs: on "
        f"{every['n_placed']} of the {every['n_judged']} test maps strong enough to judge. There a median {median('lungs')} "
        f"of the heat lay over the lung fields, {median('heart')} over the heart and mediastinum and {median('below')} "
        f"below the diaphragm; the warning (*the model's heat is not on the lungs*, under "
        f"{100 * report['lungs_unusual']:.0f} % over the lung fields, the 5th percentile on validation) fired on "
        f"{every.get('off_lungs', 0)}. On the other maps the lungs could not both be outlined (most often one lung's "
        "base is hazy, as in pneumonia), and the pages say the heat is not placed rather than guess."
    ]


def show_where_the_model_looks(metadata, name: str, reports_dir: Path = REPORTS_DIR) -> None:
    """The Model card's "Where the model looks" section: the attention report in words, its
    figure, table and the thorax check's contact sheet folded away; or how to make it."""
    import streamlit as st

    from . import drawing

    st.markdown("#### Where the model looks")
    report = read_json("attention", reports_dir)
    if report is None:
        st.info("The attention report is not yet generated (`python -m pneumo_model attention --test`).",
                icon=":material/hourglass_empty:")
        return
    if report.get("model_sha256") != metadata.model_sha256:
        st.warning("The attention report describes another model file; regenerate it with "
                   "`python -m pneumo_model attention --test`.", icon=":material/warning:")
    for line in attention_lines(report):
        st.markdown(line)
    with st.expander("How the share inside the body was measured, and the check of the outline"):
        text = read_markdown("attention", reports_dir)
        if text:
            st.markdown(named(text, metadata, name))
        path = figure(report.get("figures", {}).get("share", ""), reports_dir)
        if path is not None:
            drawing.show(path, caption="Share of the heat inside the body's outline, correct and wrong calls "
                         "(maps strong enough to judge).", width=640)
        sheet = figure("figures/thorax_check.jpg", reports_dir)
        if sheet is not None:
            drawing.show(sheet, caption="The body's outline (white; outside dimmed) on the 36 films it was checked on "
                         "by eye, with each verdict.", width=900)


# The radiographic pattern's test figures on the card (``model_card.json``'s "subtype" section), in
# its report's key names, and the names Kermany 2018's may carry: their sensitivity is for bacterial
# as the positive class, their specificity is viral recall.
SUBTYPE_FIGURES = (
    ("roc_auc", "AUC (all films)", ("roc_auc", "auc")),
    ("accuracy", "accuracy (all films)", ("accuracy",)),
    ("viral_recall", "viral recall (all films)", ("viral_recall", "specificity")),
    ("bacterial_recall", "bacterial recall (all films)", ("bacterial_recall", "sensitivity")),
    ("undetermined_fraction", "undetermined share", ()),
    ("accuracy_outside_band", "accuracy outside the undetermined band", ()),
    ("viral_recall_outside_band", "viral recall outside the undetermined band", ()),
    ("viral_recall_undetermined_as_miss", "viral recall, undetermined counted as misses", ()),
)


def _share_and_interval(value: float, interval) -> str:
    if interval and interval[0] is not None:
        return f"{value:.1%} ({interval[0]:.1%}-{interval[1]:.1%})"
    return f"{value:.1%}"


def subtype_rows(section: dict) -> list[dict]:
    """The pattern's test figures beside Kermany 2018's, one row per figure (``DASH`` where a report
    has no such figure), from the card's "subtype" section; [] before the test run."""
    test = section.get("test")
    if not test:
        return []
    kermany = section.get("kermany_2018") or {}
    rows = []
    for key, name, published_keys in SUBTYPE_FIGURES:
        value = test["metrics"].get(key)
        interval = test.get("intervals", {}).get(key)
        published = next((kermany[k] for k in published_keys if isinstance(kermany.get(k), (int, float))), None)
        share = "fraction" in key
        rows.append({
            "figure": name,
            "ours": DASH if value is None else (_share_and_interval(value, interval) if share else _value_and_interval(value, interval)),
            "published": DASH if published is None else f"{published:.3f}",
        })
    return rows


def subtype_status(section: dict, running: bool) -> str:
    """Whether the pattern is on by default and on this server, and, when it ships off, why."""
    setting = section.get("setting", "PNEUMO_SUBTYPE")
    here = "on" if running else "off"
    if section.get("enabled_by_default"):
        met = (section.get("test") or {}).get("must_reach_met") is True
        return (
            "**On by default**"
            + (": it met the must-reach bar fixed before the test run (`docs/subtype_rule.md`)" if met else "")
            + f"; on this server: **{here}** (`{setting}=0` turns it off)."
        )
    test = section.get("test")
    if test is None:
        why = "it has not been scored on the test split yet."
    elif test.get("must_reach_met") is False:
        metrics = test["metrics"]
        figures = ", ".join(
            f"{name} {metrics[key]:.3f}" for key, name in (
                ("roc_auc", "AUC"), ("viral_recall_outside_band", "viral recall outside the undetermined band"),
            ) if metrics.get(key) is not None
        )
        why = (
            "it missed the must-reach bar fixed before the test run (`docs/subtype_rule.md`)"
            + (f": {figures}." if figures else ".")
        )
    else:
        why = None
    return f"**Off by default** (`{setting}=1` turns it on); on this server: **{here}**." + (
        f" Off because {why}" if why else ""
    )
