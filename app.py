"""Streamlit entry point: ``streamlit run app.py``.

The frame every page shares (intended-use banner, model SHA, sidebar with the demo images)
and the navigation. The page scripts are in ``app_pages/``: a folder named ``pages/`` would make
Streamlit run a fresh server's first request as an old-style multipage app, which can show a
page without this frame. All model work is in ``pneumo_model``.
"""

from pathlib import Path

import streamlit as st

from ui import frame

# A local file: a ":material/...:" page icon makes every browser fetch it from fonts.gstatic.com,
# and no request may leave the hospital's network.
FAVICON = Path(__file__).resolve().parent / "assets" / "favicon.png"
st.set_page_config(page_title="Pneumonia X-ray review", page_icon=str(FAVICON), layout="wide")

page = st.navigation(
    [
        st.Page("app_pages/review.py", title="Review", icon=":material/radiology:", default=True),
        st.Page("app_pages/explain.py", title="Explain", icon=":material/visibility:"),
        st.Page("app_pages/crop.py", title="Crop & rescore", icon=":material/crop:"),
        st.Page("app_pages/worklist.py", title="Worklist", icon=":material/format_list_numbered:"),
        st.Page("app_pages/trail.py", title="Audit trail", icon=":material/history:"),
        st.Page("app_pages/model_card.py", title="Model card", icon=":material/description:"),
    ]
)
frame.render()
page.run()
