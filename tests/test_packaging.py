"""LMSeg as an installed package: declared dependencies match the imports, and a wheel installed in
a fresh virtual environment runs the API, the demo and prompt_gen from another folder."""
from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CODE = ["lmseg/*.py", "prompt_gen/*.py", "demo/*.py", "tools/*.py", "train_net.py", "datasets/*.py"]
LOCAL = {"lmseg", "prompt_gen", "tests", "_common"}  # _common: datasets/_common.py, beside its scripts
# detectron2 has no official PyPI package, so pyproject.toml leaves it out on purpose (see its
# comment); tools/setup_env.sh installs it without its own requirements, which is why fvcore and
# torchvision, imported by detectron2 rather than by LMSeg's code, are declared.
UNDECLARED_ON_PURPOSE = {"detectron2"}
DECLARED_FOR_DETECTRON2 = {"fvcore", "torchvision"}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def declared():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = {_name(r) for r in project["dependencies"]}
    for extra in project.get("optional-dependencies", {}).values():
        names |= {_name(r) for r in extra}
    return names


def imported():
    """Top-level third-party modules the code imports -> the files that import them."""
    files = subprocess.run(["git", "ls-files", *CODE], cwd=REPO, capture_output=True, text=True, check=True)
    modules = {}
    for file in files.stdout.split():
        for node in ast.walk(ast.parse((REPO / file).read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if top not in sys.stdlib_module_names and top not in LOCAL:
                    modules.setdefault(top, set()).add(file)
    return modules


def test_every_imported_library_is_declared_and_every_declared_one_is_used():
    distributions = importlib.metadata.packages_distributions()
    wanted = declared()
    undeclared, used = [], set()
    for module, files in sorted(imported().items()):
        if module in UNDECLARED_ON_PURPOSE:
            continue
        names = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if names & wanted:
            used |= names & wanted
        else:
            undeclared.append(f"{module} (imported by {', '.join(sorted(files))})")
    assert not undeclared, "imported but not declared in pyproject.toml: " + "; ".join(undeclared)
    unused = wanted - used - DECLARED_FOR_DETECTRON2 - {"pytest"}
    assert not unused, f"declared in pyproject.toml but imported nowhere: {sorted(unused)}"


def test_the_dependency_check_sees_a_missing_declaration(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "declared", lambda: {"torch"})
    with pytest.raises(AssertionError, match="imported but not declared.*numpy"):
        test_every_imported_library_is_declared_and_every_declared_one_is_used()


@pytest.mark.slow
def test_the_wheel_installs_and_runs_from_another_folder(tmp_path):
    # Built from a copy of the checkout's tracked files, as a fresh clone has them: building in the
    # checkout would reuse its build/ folder, whose stale files can hide a file missing from the
    # package data.
    source = tmp_path / "source"
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in files.splitlines():
        if os.path.lexists(REPO / name):
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name, follow_symlinks=False)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(source)],
        check=True, capture_output=True, text=True,
    )
    (wheel,) = wheels.glob("lmseg-*.whl")
    # A fresh environment that reuses this one's libraries (torch, detectron2, ...) through a .pth
    # line: their folder joins sys.path without its own .pth files, so the checkout's editable
    # install of lmseg is not visible there; only the wheel's lmseg is.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "reuse_libraries.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
                   check=True, capture_output=True, text=True)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(*args):
        proc = subprocess.run([*args], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    script = (
        "import lmseg, lmseg.demo\n"
        "from pathlib import Path\n"
        "assert Path(lmseg.__file__).is_relative_to(Path(r'%s')), lmseg.__file__\n"
        "photo = Path(lmseg.demo.__file__).parent / 'coffee.jpg'\n"
        "seg = lmseg.Segmenter.from_config('tiny.yaml')\n"
        "result = seg(str(photo), vocabulary='cup|mug,table')\n"
        "print(result.label_map.shape, lmseg.get_config_file('vitb.yaml'))\n"
    ) % site
    out = run(str(python), "-c", script)
    assert "(400, 600)" in out and out.strip().endswith(os.path.join("lmseg", "configs", "vitb.yaml"))
    photo = run(str(python), "-c", "import lmseg.demo, pathlib; print(pathlib.Path(lmseg.demo.__file__).parent / 'coffee.jpg')").strip()
    run(str(venv / "bin" / "lmseg-demo"), "--config-file", "tiny.yaml", "--input", photo, "--vocab", "cup,table", "--output", "out")
    assert (elsewhere / "out" / "coffee.jpg.overlay.jpg").is_file()
    assert "--classes" in run(str(python), "-m", "prompt_gen", "--help")
    checked = run(str(python), "-m", "prompt_gen.check", os.path.join(site, "lmseg", "descriptions", "data", "ade150.json"))
    assert "ade150.json" in checked
