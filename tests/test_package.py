"""The installable package (pyproject.toml): its dependency lists, its contents, and `pneumo` from any folder.

The slow test (mark ``install``) builds the wheel from a copy of the repository's files, installs it into a
fresh virtual environment and runs the console command from another folder: the shipped model and its side
files must come with the package, never from the repository or the working directory. No network: the
wheel is built without build isolation (setuptools from this venv) and installed without its
dependencies, which the fresh venv reads from this venv's site-packages.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from pneumo_model.paths import DEFAULT_MODEL_PATH, REPO_ROOT

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
SHIPPED_MODEL = REPO_ROOT / "assets" / "model"
DEMO_FILM = REPO_ROOT / "assets" / "samples" / "person100_bacteria_475.jpeg"


def pins(name: str) -> list[str]:
    """The requirement lines of a requirements file, without comments or blank lines."""
    lines = (line.split("#")[0].strip() for line in (REPO_ROOT / name).read_text().splitlines())
    return [line for line in lines if line]


def test_the_dependencies_are_the_run_time_pins_without_tensorflow():
    project = PYPROJECT["project"]
    assert project["dependencies"] == pins("requirements-serve.txt")
    assert not any(pin.startswith(("tensorflow", "keras", "tf2onnx", "onnx=")) for pin in project["dependencies"])
    assert project["requires-python"] == ">=3.11"


def test_the_extras_and_the_dependencies_are_requirements_txt_exactly_once():
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    assert {pin.split("==")[0] for pin in extras["lab"]} == {"tensorflow-cpu", "keras", "tf2onnx", "onnx"}
    assert {"pytest", "playwright", "ruff"} <= {pin.split("==")[0] for pin in extras["test"]}
    together = project["dependencies"] + extras["lab"] + extras["test"]
    assert sorted(together) == sorted(pins("requirements.txt"))  # same pins, none in two lists


def test_the_console_command_is_the_cli_and_the_version_the_packages():
    import pneumo_model
    from pneumo_model import cli

    assert PYPROJECT["project"]["scripts"] == {"pneumo": "pneumo_model.cli:main"} and callable(cli.main)
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "pneumo_model.__version__"}
    assert pneumo_model.__version__


def test_the_build_lists_every_subpackage_and_maps_the_shipped_model_in():
    setuptools = PYPROJECT["tool"]["setuptools"]
    folders = {
        ".".join(path.parent.relative_to(REPO_ROOT).parts)
        for path in (REPO_ROOT / "pneumo_model").rglob("__init__.py")
        if "__pycache__" not in path.parts
    }
    assert set(setuptools["packages"]) == folders | {"pneumo_model.shipped_model"}
    assert (REPO_ROOT / setuptools["package-dir"]["pneumo_model.shipped_model"]).resolve() == SHIPPED_MODEL.resolve()
    assert setuptools["package-data"]["pneumo_model.shipped_model"] == ["pneumonet.*"]
    # In the repository the model is the owner's assets/model (no shipped_model folder in the package).
    assert DEFAULT_MODEL_PATH.parent.resolve() == SHIPPED_MODEL.resolve()


def _build_wheel(tmp_path: Path) -> Path:
    """The wheel, built from a copy of what pyproject.toml needs (the build writes build/ and *.egg-info)."""
    source = tmp_path / "source"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO_ROOT / "pneumo_model", source / "pneumo_model", ignore=skip)
    shutil.copytree(SHIPPED_MODEL, source / "assets" / "model")
    for name in ("pyproject.toml", PYPROJECT["project"]["readme"]):
        shutil.copy(REPO_ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(wheels), str(source)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    (wheel,) = wheels.glob("pneumo_model-*.whl")
    return wheel


def _fresh_venv(root: Path) -> Path:
    """A new venv without pip whose site-packages also reads this venv's (the dependencies, and pip)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    (site,) = root.glob("lib/python3.*/site-packages")
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "shared_dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    return site


@pytest.mark.install
@pytest.mark.shipped_model
def test_pip_install_gives_pneumo_predict_from_any_folder_with_no_setting(tmp_path, capsys):
    from pneumo_model.cli import main

    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    package = {
        path.relative_to(REPO_ROOT).as_posix()
        for path in (REPO_ROOT / "pneumo_model").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert package <= names  # every module, the lab's too
    model_files = {f"pneumo_model/shipped_model/{path.name}" for path in SHIPPED_MODEL.iterdir()}
    assert {f"pneumo_model/shipped_model/{DEFAULT_MODEL_PATH.name}"} < model_files <= names

    venv = tmp_path / "venv"
    site = _fresh_venv(venv)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    elsewhere = tmp_path / "elsewhere"  # neither the repository nor the package's folder
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PNEUMO_DATA")}

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(argv, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)

    where = run(str(venv / "bin" / "python"), "-c", "import pneumo_model.paths as p; print(p.DEFAULT_MODEL_PATH)")
    assert Path(where.stdout.strip()) == site / "pneumo_model" / "shipped_model" / DEFAULT_MODEL_PATH.name, where.stderr

    predicted = run(str(venv / "bin" / "pneumo"), "predict", str(DEMO_FILM))
    assert predicted.returncode == 0, predicted.stderr
    assert main(["predict", str(DEMO_FILM)]) == 0  # the repository's package on the repository's model
    assert json.loads(predicted.stdout) == json.loads(capsys.readouterr().out)

    # The side files came too: explain reads the heat-map scale beside the model.
    explained = run(str(venv / "bin" / "pneumo"), "explain", str(DEMO_FILM), "--out", "overlay.png")
    assert explained.returncode == 0, explained.stderr
    assert (elsewhere / "overlay.png").is_file()
    usage = run(str(venv / "bin" / "pneumo"), "--help")
    assert usage.returncode == 0 and usage.stdout.startswith("usage: pneumo ")


# --------------------------------------------------------------------------------------------
# The lazy export list and its documented use

INSTALL_DOC = REPO_ROOT / "docs" / "install.md"


def python_example() -> str:
    """The code block of docs/install.md's "From Python" section."""
    section = INSTALL_DOC.read_text().split("## From Python", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_package_exports_resolve_lazily_none_from_the_lab_each_documented():
    import pneumo_model

    code = "import sys, pneumo_model; print(sorted(m for m in sys.modules if m.startswith('pneumo_model')))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "['pneumo_model']"  # importing the package loads none of its modules
    documented = INSTALL_DOC.read_text().split("## From Python", 1)[1].split("```", 1)[0]
    for name in pneumo_model.__all__:
        module = pneumo_model._EXPORTS[name]
        assert not module.startswith("lab"), name
        assert getattr(pneumo_model, name) is getattr(importlib.import_module(f"pneumo_model.{module}"), name)
        assert f"`{name}`" in documented, f"{name} is exported but docs/install.md does not name it"
    with pytest.raises(AttributeError, match="no attribute 'train'"):
        pneumo_model.train  # noqa: B018 - the lab's names are no longer at the top


@pytest.mark.shipped_model
def test_the_documented_python_example_prints_what_pneumo_predict_prints(tmp_path, monkeypatch, capsys):
    from pneumo_model.audit import AuditTrail
    from pneumo_model.cli import main
    from pneumo_model.paths import bytes_sha256

    monkeypatch.chdir(tmp_path)
    example = python_example().replace('"film.jpeg"', repr(str(DEMO_FILM)))
    exec(compile(example, str(INSTALL_DOC), "exec"), {})
    printed = capsys.readouterr().out
    assert main(["predict", str(DEMO_FILM)]) == 0
    assert ast.literal_eval(printed) == json.loads(capsys.readouterr().out)  # a dict's repr: the same object
    (row,) = AuditTrail(tmp_path / "audit.sqlite3").trail()
    assert row["image_sha256"] == bytes_sha256(DEMO_FILM.read_bytes()) and row["source"] == "cli"
