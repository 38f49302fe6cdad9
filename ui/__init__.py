"""What the Streamlit pages share: the cached model and explanations, the chosen image, the frame.

No model work lives here: every prediction, heat map and report figure comes from
``pneumo_model``; this package only caches, holds session state and draws.
"""
