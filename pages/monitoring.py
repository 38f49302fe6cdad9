"""Monitoring, for administrators: has the stream of films this app scores changed? The audit
trail's distinct films in windows, each compared with a baseline by the rule of
docs/monitor_rule.md, drawn over time, and an alert said in plain words with what to do."""

import streamlit as st

from ui import frame

model = frame.render("Monitoring")  # first: the banner shows while the imports below load

from pneumo_model import monitor  # noqa: E402
from ui import audit, drawing, monitor_page, resources  # noqa: E402
from ui.markup import plain  # noqa: E402

st.markdown(
    "Every film this app or the command line scores lands in the audit trail. Here its distinct films, in the "
    "order they were first scored, are cut into **windows** and each is compared with a **baseline**: the active "
    "label-free site profile's own sample when there is one, else the trail's first window. A change of the "
    "films (a scanner software update, a new detector, another processing) moves the scores of normal-looking "
    "films or makes the out-of-distribution check flag more; more sick children change the mix but not where "
    "the films lie. The rule was fixed on validation films before use (`docs/monitor_rule.md`), to alert in at "
    "most 1 window in 100 when nothing changed (measured in `reports/monitor_rule.md`)."
)
window = st.number_input(
    "Films per window", min_value=monitor.MIN_WINDOW, max_value=1000, value=monitor.DEFAULT_WINDOW, step=10,
    key="monitor_window",
    help="The rule was fixed for windows of 50 to 200 films; smaller windows see only large changes.",
)
try:
    with st.spinner("Reading the audit trail..."):
        result = monitor_page.report(model, audit.audit_path(), int(window), resources.site_profile_path())
except monitor.MonitorError as error:
    message = plain(audit.screen_message(error))
    if not audit.audit_path().is_file():
        st.info(
            "Nothing to monitor yet: no film has been recorded in the audit trail. Films are recorded when they are "
            "shown on the other pages or scored with `--audit`.",
            icon=":material/monitoring:",
        )
    else:
        st.info(message, icon=":material/monitoring:")
    st.stop()

headline, reasons, actions = monitor_page.alert_words(result)  # the package's own words and numbers
if result["alert"]:
    st.error(headline + "\n" + "\n".join(f"- {reason[0].upper()}{reason[1:]}." for reason in reasons), icon=":material/warning:")
    st.markdown("**What to do**\n" + "\n".join(f"{number}. {action}" for number, action in enumerate(actions, start=1)))
elif result["windows"]:
    st.success(headline, icon=":material/check_circle:")
else:  # a site sample as baseline and no film scored yet
    st.info(headline, icon=":material/monitoring:")
    st.stop()

baseline = result["baseline"]
left, middle, right = st.columns(3)
left.metric("Distinct films", result["films"])
middle.metric("Windows", f"{sum(row['full'] for row in result['windows'])} full")
right.metric("Baseline: sick children (estimate)", f"{baseline['estimated_prevalence']:.0%}")
st.caption(
    f"Baseline: {plain(baseline['description'])}. "
    + (f"{result['left_out']} old record(s) left out: their raw score cannot be recovered exactly. " if result["left_out"] else "")
    + "The share of sick children is estimated without labels from the validation calibration (EM prior "
    "adjustment); at a new site it is biased the same way in every window, so read it against the baseline."
)
drawing.show(monitor_page.windows_picture(result), width="stretch")
st.markdown("##### The windows, newest first")
st.dataframe(
    monitor_page.windows_table(result),
    hide_index=True,
    column_config={
        "called pneumonia": st.column_config.NumberColumn(format="percent"),
        "grey zone": st.column_config.NumberColumn(format="percent"),
        "flagged": st.column_config.NumberColumn("flagged (not like training)", format="percent"),
        "shift": st.column_config.NumberColumn(format="%.2f", help="Kolmogorov-Smirnov distance to the baseline's scores"),
        "why": st.column_config.TextColumn(width="large"),
    },
)
