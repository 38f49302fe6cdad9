"""The README and docs/ stay true: the README short, its headline figures the committed reports', its
links alive, its test command what CI runs, and docs/architecture.md's module map naming every module.

Pure file reads: no model, no data, no browser (part of the inner loop, docs/testing.md)."""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
README = REPO_ROOT / "README.md"
ARCHITECTURE = REPO_ROOT / "docs" / "architecture.md"
README_MAX_LINES = 200  # issue 26: a newcomer reads it in one sitting; the detail lives in docs/
# The folders whose every module the map must name (tests/ is described as a folder, not module by module).
MAPPED = ("pneumo_model", "pneumo_model/lab", "ui", "pages", "tools")


def block(text: str, name: str) -> str:
    return text.split(f"<!-- {name}:start -->\n", 1)[1].split(f"<!-- {name}:end -->", 1)[0]


def _spread(summary: dict | None) -> str:
    if not summary or summary.get("median") is None:
        return "—"
    return f"{summary['median']:.3f} ({summary['p5']:.3f}-{summary['p95']:.3f})"


def headline_table(reports: Path = REPO_ROOT / "reports") -> str:
    """The README's headline table, made from the committed reports: the shipped model on the official
    test split (95 % CI), a site profile fitted on 200 labelled films and a label-free alignment on 250
    unlabelled ones (both simulated on the test split: median, 5th-95th percentile over the draws), and
    Kermany 2018's published figures."""
    evaluation = json.loads((reports / "evaluation.json").read_text())
    site = json.loads((reports / "site_calibration.json").read_text())["results"]["200"]["prevalence"]["split"]["site"]
    label_free = json.loads((reports / "site_label_free.json").read_text())["results"]["250|split"]["points"]["label_free"]
    published = json.loads((reports / "model_card.json").read_text())["published_reference"]
    lines = [
        f"| figure | shipped model, official test split ({evaluation['image']['n']} films; 95 % CI) "
        "| site-calibrated: profile fitted on 200 labelled local films (simulated) "
        f"| label-free: aligned on 250 unlabelled local films (simulated) | {published['name']} |",
        "|---|---|---|---|---|",
    ]
    for key, name in (("sensitivity", "sensitivity"), ("specificity", "specificity"), ("accuracy", "accuracy"),
                      ("roc_auc", "ROC AUC"), ("grey_zone_share", "share in the grey zone (indeterminate)")):
        if key == "grey_zone_share":
            shipped = f"{evaluation['grey_zone_fraction']:.3f}"
        else:
            low, high = evaluation["image_ci95"][key]
            shipped = f"{evaluation['image'][key]:.3f} ({low:.3f}-{high:.3f})"
        reference = published["figures"].get(key)
        lines.append(f"| {name} | {shipped} | {_spread(site.get(key))} | {_spread(label_free.get(key))} "
                     f"| {'—' if reference is None else f'{reference:.3f}'} |")
    return "\n".join(lines) + "\n"


def test_the_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail to docs/"


def test_the_readme_headline_is_the_committed_reports():
    copy = block(README.read_text(), "headline")
    table = headline_table()
    assert copy == table, f"README's headline table differs from the committed reports; replace it with:\n{table}"
    # The sentences under it quote the shipped model's specificity and its count of normal films.
    evaluation = json.loads((REPO_ROOT / "reports" / "evaluation.json").read_text())
    confusion = evaluation["image"]["confusion"]
    readme = " ".join(README.read_text().split())
    assert f"{evaluation['image']['specificity']:.3f} against 0.85" in readme
    assert f"{confusion['tn']} of {confusion['tn'] + confusion['fp']} normal films called normal" in readme
    site = json.loads((REPO_ROOT / "reports" / "site_calibration.json").read_text())
    label_free = json.loads((REPO_ROOT / "reports" / "site_label_free.json").read_text())
    assert site["config"]["draws"] == label_free["results"]["250|split"]["draws"]
    assert f"over {site['config']['draws']} draws" in readme
    assert sum(not row["met"] for row in site["must_reach"]) == 1, "the README says the site figures miss one item"
    # The subtype pattern's sentence quotes its committed report.
    subtype = json.loads((REPO_ROOT / "reports" / "subtype_evaluation.json").read_text())
    m, ci = subtype["metrics"], subtype["intervals"]["roc_auc"]
    assert f"{m['n']} pneumonia films: AUC {m['roc_auc']:.3f} (95 % CI {ci[0]:.3f}-{ci[1]:.3f})" in readme
    assert f"{100 * m['undetermined_fraction']:.1f} % undetermined, viral recall {m['viral_recall_outside_band']:.3f}" in readme
    assert f"AUC {subtype['kermany_2018']['roc_auc']:.3f}, chosen on the test split" in readme


def test_the_readme_test_command_is_what_ci_runs():
    # .ci/run's last line, with pip's -q (CI's log needs no progress lines) the only difference allowed.
    ci = (REPO_ROOT / ".ci" / "run").read_text().strip().splitlines()[-1].replace("pip install -q ", "pip install ")
    readme = README.read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", readme, re.DOTALL)
    assert ci in commands, f"the README's quick start no longer shows .ci/run's command: {ci}"
    assert "python3.11 -m venv .venv && .venv/bin/pip install -r requirements.txt && .venv/bin/streamlit run app.py" in commands


def test_every_local_link_in_the_readme_and_docs_leads_somewhere():
    for page in [README, *sorted((REPO_ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            path = target.split("#", 1)[0]
            if path:
                assert (page.parent / path).exists(), f"{page.relative_to(REPO_ROOT)} links to {target}, which does not exist"


def _modules() -> set[str]:
    found = {"app.py"}
    for folder in MAPPED:
        found |= {path.relative_to(REPO_ROOT).as_posix() for path in (REPO_ROOT / folder).glob("*.py")}
    return found


def test_the_module_map_names_every_module_and_no_other():
    entries = re.findall(r"^\| `([^`]+\.py)` \|", block(ARCHITECTURE.read_text(), "module-map"), re.MULTILINE)
    assert len(entries) == len(set(entries)), "a module is named twice in the map"
    missing = sorted(_modules() - set(entries))
    stale = sorted(set(entries) - _modules())
    assert not missing, f"docs/architecture.md's module map leaves out {missing}: add one line each"
    assert not stale, f"docs/architecture.md's module map names modules that do not exist: {stale}"

