"""Site calibration: fit this model's operating point (recalibration, threshold for a target
sensitivity, grey zone) on a labelled local sample, see its out-of-fold figures, the sample's ROC
and the threshold explorer, and download the profile. Nothing here activates it."""

import streamlit as st

from ui import frame

model = frame.render("Site calibration")  # first: the banner shows while the imports below load

from pneumo_model import site  # noqa: E402
from pneumo_model.errors import PneumoError, SiteInputError  # noqa: E402
from ui import drawing, reports, resources, site_page, state  # noqa: E402
from ui.markup import plain  # noqa: E402

active = model.operating_point
ACTIVE = "Active now, on this sample"
IMAGE_MB = state.IMAGE_UPLOAD_MB
ZIP_MB = st.get_option("server.maxUploadSize")


def refusal(error: PneumoError) -> None:
    """A refusal as plain text, one listed problem a line (the package lists every problem)."""
    st.error("  \n".join(plain(line) for line in str(error).splitlines()), icon=":material/block:")


def label_free_section() -> None:
    """"Without labels": align on the trail's last films or on uploaded unlabelled films (``site align``'s rules)."""
    from pneumo_model import alignment
    from pneumo_model.audit import AuditError
    from ui import audit, label_free

    st.markdown("##### Without labels")
    st.markdown(
        "Most departments have no confirmed diagnoses when they start, but within a day or two they have a few "
        "hundred films the tool has already scored. **Label-free alignment** maps the distribution of your films' "
        "scores onto the validation films' scores (a monotone quantile mapping: it never changes which film scores "
        "higher), at a share of pneumonia estimated from the films themselves, and keeps the validated threshold "
        f"and grey zone. At least {alignment.MIN_FILMS} distinct films; the rules are in `docs/label_free_rules.md`. "
        "**A profile fitted on labelled films stays the better evidence**; an aligned profile is provisional until "
        "`python -m pneumo_model site check` on labelled films confirms it."
    )
    source = st.radio(
        "Films", ["The audit trail's last films", "Upload unlabelled films"], horizontal=True, key="align_source"
    )
    result = st.session_state.get("align_result")
    if result is not None and result["key"][0] != ("trail" if source.startswith("The audit trail") else "upload"):
        result = None  # the other source's films
    if source.startswith("The audit trail"):
        last = st.number_input(
            "How many of the trail's last distinct films", min_value=alignment.MIN_FILMS, value=label_free.DEFAULT_LAST,
            step=50, key="align_last",
        )
        if st.button("Align on the trail's films", key="align_trail", icon=":material/tune:"):
            bar = st.progress(0.0, text="Reading the audit trail...")
            points = {point.id: (point.scale, point.offset) for point in (model.operating_point,) if point.mapping is None}
            try:
                scores = alignment.scores_from_audit(audit.audit_path(), model.metadata.model_sha256, points, last=int(last))
            except AuditError as error:
                bar.empty()
                refusal(error)
                return
            bar.progress(1.0, text=f"Read {scores.files_in} films")
            result = {"key": ("trail", int(last)), "scores": scores}
            bar.empty()
    else:
        uploads = st.file_uploader(
            f"Unlabelled films ({state.UPLOAD_FORMATS})", type=state.UPLOAD_TYPES, accept_multiple_files=True,
            key="align_files", max_upload_size=IMAGE_MB,
        )
        if not uploads:
            st.info(f"Upload at least {alignment.MIN_FILMS} of your films, or use the audit trail's.", icon=":material/upload:")
            return
        key = ("upload", site_page.content_key("align", [(file.name, digest) for file, digest in zip(uploads, site_page.upload_digests(uploads, st.session_state.setdefault("align_digests", {})))]))
        if result is None or result["key"] != key:
            bar = st.progress(0.0, text="Scoring your films...")
            try:
                scores = label_free.score_uploads(
                    model, [(file.name, file.getvalue()) for file in uploads],
                    progress=lambda done, total: bar.progress(done / total, text=f"Scored {done} of {total} films"),
                    decode_slot=resources.decode_slot,
                )
            except PneumoError as error:
                bar.empty()
                refusal(error)
                return
            bar.empty()
            result = {"key": key, "scores": scores}
    if result is None:
        return
    if "profile" not in result and "refused" not in result:
        try:
            reference = resources.validation_reference()
            result["profile"] = alignment.align(model.metadata, reference, result["scores"])
        except alignment.AlignmentRefused as refused:
            result["refused"] = refused
        except PneumoError as error:
            refusal(error)
            return
    st.session_state["align_result"] = result
    scores = result["scores"]
    st.markdown(plain(label_free.counts_line(scores)))
    if "refused" in result:
        st.error(label_free.refusal_text(result["refused"]), icon=":material/block:")
        return
    profile = result["profile"]
    low, high = profile.prevalence_interval
    numbers = st.columns(3)
    numbers[0].metric(
        "Estimated share of pneumonia", f"{profile.estimated_prevalence:.0%}", help=f"Without labels; 90 % bootstrap range {low:.0%}–{high:.0%}."
    )
    numbers[1].metric("Threshold (validated, kept)", site_page.probability(profile.threshold))
    numbers[2].metric("Threshold moved by", f"{profile.threshold_move:+.2f} log-odds", help="How far your films' scores sit from validation's at the threshold.")
    st.markdown(
        f"Estimated share of pneumonia among these films: **{profile.estimated_prevalence:.0%}** (bootstrap range "
        f"{low:.0%}–{high:.0%}), estimated without any label. The probability the app would show is the shipped "
        "calibration read through this alignment; the threshold and the grey zone "
        f"[{site_page.probability(profile.grey_zone[0])}, {site_page.probability(profile.grey_zone[1])}) are the validated ones."
    )
    drawing.show(label_free.alignment_picture(resources.validation_reference(), scores.logits, profile))
    st.caption("Your films' scores before (dotted) and after (green) the alignment, against the validation films' (grey).")
    evaluation = reports.read_json("site_label_free")
    table = label_free.expected_table(evaluation)
    if table is not None:
        st.markdown("**What to expect: the official test split playing a new site** (`reports/site_label_free.md`)")
        st.dataframe(table, hide_index=True)
        st.caption(
            "Median (5th–95th percentile) over seeded draws, on the films not drawn; one hospital's data: a real site may "
            f"land outside these ranges. {reports.label_free_verdict(evaluation)}"
        )
    st.download_button(
        "Download the label-free profile (JSON)", profile.to_json(), file_name=f"site_profile_label_free_{profile.id[:8]}.json",
        mime="application/json", on_click="ignore", icon=":material/download:", key="align_download",
    )
    st.info(
        "**Downloading activates nothing.** Activating is an administrator's act: put the file on the server, set "
        f"`PNEUMO_SITE=/path/to/site_profile_label_free_{profile.id[:8]}.json` for the app's server process and restart it. "
        "Every page's banner then says that a provisional, label-free profile is active. Confirm it with "
        f"`python -m pneumo_model site check site_profile_label_free_{profile.id[:8]}.json --folder DIR` on labelled films.",
        icon=":material/admin_panel_settings:",
    )


st.markdown(
    "Fit this model's **operating point** to your hospital's films: a recalibrated probability, a "
    "threshold for the sensitivity you choose, and a grey zone, all from a labelled sample of your own "
    "images, by the rules fixed in `docs/site_calibration_rules.md`. The model itself is unchanged."
)
st.info(
    f"**Nothing on this page changes how the app calls films.** Active operating point now: "
    f"**{plain(active.description)}** (`{active.short_id}`, pneumonia at probability ≥ {active.threshold:.3f}).",
    icon=":material/info:",
)

evidence = st.radio(
    "What do you have?",
    ["Labelled films (the better evidence)", "Without labels (provisional)"],
    horizontal=True,
    key="site_evidence",
    help="A profile fitted on labelled films is the better evidence; without labels, the alignment is provisional "
    "until `site check` on labelled films confirms it.",
)
if evidence.startswith("Without labels"):
    label_free_section()
    st.stop()

st.markdown("##### 1 · Your labelled sample")
st.markdown(
    f"Accepted layouts (images in PNG, JPEG, BMP, TIFF or DICOM, at most {IMAGE_MB} MB each):\n"
    "- **one zip with folders `NORMAL/` and `PNEUMONIA/`**, at any depth (`site/NORMAL/0001.dcm`); "
    "files outside such folders are ignored;\n"
    "- **one zip with a `labels.csv`** of two columns `file,label`: `file` is the image's path inside the "
    "zip, relative to the CSV; `label` is `normal` or `pneumonia` (a `labels.csv` wins over folders);\n"
    "- **the images themselves plus a `file,label` CSV**: `file` is each uploaded image's file name.\n\n"
    f"At least {site.MIN_PER_CLASS} images of each class, {site.WARN_PER_CLASS} or more to narrow the "
    f"uncertainty; a zip up to {ZIP_MB} MB. Draw the sample as films come at your site: its share of "
    "pneumonia shapes the calibration."
)
packing = st.radio(
    "How is the sample packed?", ["One zip", "Images plus a labels CSV"], horizontal=True, key="site_packing"
)
digests = st.session_state.setdefault("site_digests", {})
if packing == "One zip":
    archive = st.file_uploader("Labelled zip", type=["zip"], key="site_zip")
    uploads = [archive] if archive is not None else []
    ready = archive is not None
else:
    left, right = st.columns([1, 2])
    labels_csv = left.file_uploader("Labels CSV (file,label)", type=["csv"], key="site_csv")
    images = right.file_uploader(
        f"Images ({state.UPLOAD_FORMATS})",
        type=state.UPLOAD_TYPES,
        accept_multiple_files=True,
        key="site_images",
        max_upload_size=IMAGE_MB,  # the browser refuses a larger image before sending it
    )
    uploads = ([labels_csv] if labels_csv is not None else []) + list(images or [])
    ready = labels_csv is not None and bool(images)
if not ready:
    st.info("Upload a labelled sample to fit a site profile.", icon=":material/upload:")
    st.stop()

if state.note_uploads():
    st.rerun()  # once per session: the menu's links must carry the new upload mark

# Scored once per upload content: a slider, a rerun or the same files uploaded again reuse it.
hashes = site_page.upload_digests(uploads, digests)
roles = ["archive"] if packing == "One zip" else ["labels"] + [image.name for image in images]
key = site_page.content_key(packing, list(zip(roles, hashes)))
scored = st.session_state.get("site_scored")
if scored is None or scored["key"] != key:
    bar = st.progress(0.0, text="Reading the labelled sample...")
    try:
        if packing == "One zip":
            files, unused = site.read_labelled_zip(archive.getvalue()), []
        else:
            files, unused = site_page.files_from_csv(labels_csv.getvalue(), [(image.name, image.getvalue()) for image in images])
        sample = site_page.score(
            model,
            files,
            progress=lambda done, total: bar.progress(done / total, text=f"Scored {done} of {total} images"),
            decode_slot=resources.decode_slot,
        )
        scored = {"key": key, "sample": sample, "unused": unused, "refusal": None}
    except SiteInputError as error:
        scored = {"key": key, "sample": None, "unused": [], "refusal": error}
    except PneumoError as error:  # the server was busy: not kept, the next run tries again
        bar.empty()
        refusal(error)
        st.stop()
    bar.empty()
    st.session_state["site_scored"] = scored
    st.session_state["site_profiles"] = {}
if scored["refusal"] is not None:
    refusal(scored["refusal"])
    st.stop()
sample = scored["sample"]

counts = st.columns(4)
counts[0].metric("Normal images used", sample.n_normal)
counts[1].metric("Pneumonia images used", sample.n_pneumonia)
counts[2].metric("Excluded by the gate", len(sample.excluded))
counts[3].metric("Duplicates counted once", len(sample.merged))
for warning in sample.warnings:
    st.warning(plain(warning), icon=":material/warning:")
if sample.excluded:
    with st.expander(f"Excluded images ({len(sample.excluded)})", expanded=len(sample.excluded) <= 5):
        st.markdown("  \n".join(f"**{plain(name)}**: {plain(reason)}" for name, reason in sample.excluded))
if sample.merged:
    with st.expander(f"Duplicates counted once ({len(sample.merged)})"):
        st.markdown("  \n".join(f"**{plain(name)}** is the same image as **{plain(first)}**" for name, first in sample.merged))
if scored["unused"]:
    st.warning(
        f"{len(scored['unused'])} uploaded image(s) are not named in the CSV and were not used: "
        + ", ".join(f"**{plain(name)}**" for name in scored["unused"]),
        icon=":material/warning:",
    )

st.markdown("##### 2 · The fitted operating point")
target = st.select_slider(
    "Target sensitivity",
    options=site_page.TARGETS,
    value=site.DEFAULT_TARGET_SENSITIVITY,
    format_func=lambda value: f"{value:.2f}",
    key="site_target",
    help="The threshold is set so that, on new films like these, at least this share of pneumonia films is expected to be called pneumonia.",
)
profiles = st.session_state.setdefault("site_profiles", {})
if target not in profiles:
    profiles[target] = frame.computed(lambda: site.fit_profile(sample, target))
profile = profiles[target]
low, high = (site_page.probability(edge) for edge in profile.grey_zone)
threshold = site_page.probability(profile.threshold)
calibration = profile.calibration
losses = calibration["cv_log_loss"]

numbers = st.columns([1, 1.4, 1])
numbers[0].metric("Threshold", threshold, help=f"On {site_page.AXIS}, the page's one axis.")
numbers[1].metric("Grey zone", f"[{low}, {high})", help=f"On {site_page.AXIS}, the page's one axis.")
numbers[2].metric("Recalibration", "Platt scaling" if calibration["method"] == "platt" else "Temperature")
st.markdown(site_page.axis_line(profile, active))
rank = profile.rule["conformal_rank"]
lowest = "lowest" if rank == 1 else f"{site_page.ordinal(rank)} lowest"
method = {"platt": "Platt scaling", "temperature": "temperature scaling"}
other = next(name for name in losses if name != calibration["method"])
st.markdown(
    f"- **Threshold {threshold}:** a film is called pneumonia when its recalibrated probability is at least "
    f"{threshold}. It is the probability of the {lowest} of your {profile.n_pneumonia} pneumonia films, "
    f"chosen so that new films like these are expected to be called with a sensitivity of at least {target:.2f} "
    "(split-conformal rule): the target is what the rule aims at on new films; what it achieves is in the "
    "figures below.\n"
    f"- **Grey zone [{low}, {high}):** a film scoring in it still gets a call, flagged *indeterminate: "
    "needs a careful read*: your sample says such a call is wrong at least one time in ten. Outside it, "
    "each call's estimated risk of being wrong is below one in ten.\n"
    f"- **Recalibration: {method[calibration['method']]}**, chosen over {method[other]} because it "
    f"predicted held-out images better (cross-validated log loss {losses[calibration['method']]:.3f} against "
    f"{losses[other]:.3f}). The probabilities hold for a case mix like this sample's "
    f"({profile.prevalence:.0%} pneumonia)."
)
coverage = reports.read_json("site_calibration")
cost = site.small_sample_cost(sample.raw_logits, sample.labels, site_page.calibration_of(profile), target)
cost_lines = site_page.band_cost_lines(cost, profile, reports.site_grey_zone_by_size(coverage))
st.markdown(
    f"**The grey zone and the sample's size ({sample.n_normal + sample.n_pneumonia} films).** {cost_lines[0]}\n"
    + "\n".join(f"- {line}" for line in cost_lines[1:])
)
sensitivity = profile.figures["sensitivity"]
if sensitivity["value"] < target:
    st.warning(
        f"Out of fold, the sensitivity reached is {sensitivity['value']:.3f} (95 % interval "
        f"{sensitivity['low']:.3f}–{sensitivity['high']:.3f}), below the target {target:.2f}: the target is what "
        "the rule aims at, this is what your sample supports. More pneumonia films would make both surer.",
        icon=":material/warning:",
    )

st.markdown("**What to expect on new films: out-of-fold figures**")
st.table(site_page.figures_table(profile, site_page.active_figures(sample, active), ACTIVE).set_index(""))
st.markdown(
    "Every figure of the fitted profile is **out of fold**: each image was called by a profile fitted on "
    f"the other four fifths of the sample, never on itself ({site.FOLDS} stratified folds); the ranges are "
    "95 % Wilson intervals. The last column is the active operating point on the same images (it was not "
    "fitted on them). How uncertain the figures are:\n"
    + "\n".join(f"- {plain(line)}" for line in site_page.uncertainty_lines(profile))
)
coverage_line = None if coverage is None else reports.stated_coverage_line(coverage)
if coverage_line is not None:
    st.caption(coverage_line)

st.markdown("##### 3 · Threshold explorer (in sample)")
st.caption(
    "What other targets would do on this sample itself, as WHO's CAD calibration toolkit shows it: the "
    "trade-off between sensitivity, specificity, the share of films called pneumonia (the readers' workload) "
    "and the share left in the grey zone. Each row's threshold comes from the same rule as the fitted profile's, "
    "so the row of your target is the fitted profile (highlighted); each row has its own grey zone, by the same "
    f"rule, and its share of films is counted in that band. The rule's band is [{', '.join(map(site_page.probability, cost.chow_band))}) "
    "for any threshold well inside it, so such rows share it; it stretches only around a threshold near or beyond "
    "its edges. These in-sample numbers are optimistic (a row's "
    "sensitivity reaches its target by construction); judge a profile by the out-of-fold figures above. "
    f"Thresholds and bands on {site_page.AXIS}, as everywhere on this page."
)
rows = site_page.explorer_rows(sample, profile)
roc_column, explorer_column = st.columns([4.4, 5.6])
drawing.show(site_page.roc_picture(sample, profile, active, "active now"), where=roc_column)
drawing.show(site_page.explorer_picture(rows, profile, active), where=explorer_column)
table = site_page.explorer_table(sample, profile)
st.dataframe(
    table.style.apply(lambda row: ["background-color: #fbe3d3; font-weight: bold" if row["fitted"] else "" for _ in row], axis=1),
    hide_index=True,
    column_order=["target", "rank", "threshold", "sensitivity", "specificity", "called_pneumonia", "grey_zone", "grey_zone_share"],
    column_config={
        "target": st.column_config.NumberColumn(
            "target sensitivity", format="%.2f", help="What the rule aims at on new films: the slider's value for the fitted profile"
        ),
        "rank": st.column_config.TextColumn(
            "threshold at", help="The pneumonia film of your sample whose probability the rule takes as the threshold"
        ),
        "threshold": st.column_config.NumberColumn("threshold", format="%.3f", help=f"On {site_page.AXIS}"),
        "sensitivity": st.column_config.NumberColumn(
            "sensitivity achieved", format="%.3f", help="The share of this sample's pneumonia films at or above the threshold (in sample)"
        ),
        "specificity": st.column_config.NumberColumn("specificity achieved", format="%.3f", help="In sample"),
        "called_pneumonia": st.column_config.NumberColumn(
            "called pneumonia", format="%.3f", help="The share of the sample's films called pneumonia: the readers' workload"
        ),
        "grey_zone": st.column_config.TextColumn("its grey zone", help="The band the rules put around this row's threshold"),
        "grey_zone_share": st.column_config.NumberColumn(
            "films in its grey zone", format="%.3f", help="The share of the sample's films inside this row's own grey zone"
        ),
    },
)
st.caption(f"Highlighted: the fitted profile, target {target:.2f}.")

st.markdown("##### 4 · Download, and who activates it")
st.download_button(
    "Download the site profile (JSON)",
    profile.to_json(),
    file_name=f"site_profile_{profile.id[:8]}.json",
    mime="application/json",
    on_click="ignore",
    icon=":material/download:",
)
st.info(
    f"**Downloading activates nothing**, for you or anyone. Using a site profile for every user is an "
    f"administrator's act: put the file on the server, set `PNEUMO_SITE=/path/to/site_profile_{profile.id[:8]}.json` "
    "for the app's server process and restart it. Check it first on a fresh labelled sample with "
    f"`python -m pneumo_model site check site_profile_{profile.id[:8]}.json --folder DIR`. "
    f"Active now: **{plain(active.description)}** (`{active.short_id}`).",
    icon=":material/admin_panel_settings:",
)
