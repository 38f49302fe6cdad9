"""The lab side: what makes, compares and measures models, never loaded by the app.

Training (``training``, ``models``, ``augmentation``), evaluation on the test split
(``evaluation``, ``metrics``), validation under deliberate shifts (``stress``, ``shifts``), the
architecture comparison (``comparison``), the benchmark (``bench``), the model card's facts
(``model_card``), the out-of-distribution gate's fitting and test corpus (``ood_fit``,
``ood_corpus``), the shipped grey zone's rule (``grey_zone``) and the site-calibration protocol
on the test split (``site_evaluation``). Imports go one way: the lab imports the app side (``pneumo_model``), never the
reverse (a test checks it in a fresh interpreter).
"""
