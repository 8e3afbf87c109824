"""`attnbench new-method NAME`: the plugin, suite and test it writes pass `check`, `validate` and pytest
as written; bad names and existing files are refused with exit 2 and nothing written."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from attnbench.cli import main
from attnbench.scaffold import class_name, render

from conftest import REPO


def run(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("new") / "plugins"
    assert main(["new-method", "sliced_attn", "--dir", str(folder)]) == 0
    return folder


def test_writes_three_files(generated, capsys):
    assert sorted(p.name for p in generated.iterdir()) == ["sliced_attn.py", "sliced_attn.toml",
                                                          "test_sliced_attn.py"]
    plugin = (generated / "sliced_attn.py").read_text()
    assert 'register_method("sliced_attn"' in plugin and "class SlicedAttnParams" in plugin
    assert "limit=" in plugin and "https://arxiv.org/abs/" in plugin  # the citation line to fill in


def test_generated_plugin_passes_check_in_a_subprocess(generated):
    out = run("-m", "attnbench.cli", "--plugin", str(generated / "sliced_attn.py"), "check",
              "sliced_attn")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 of 1 methods conform" in out.stdout and " fail " not in out.stdout


def test_generated_suite_validates(generated):
    out = run("-m", "attnbench.cli", "--plugin", str(generated / "sliced_attn.py"), "validate",
              str(generated / "sliced_attn.toml"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid suite 'sliced_attn'" in out.stdout and "0 unsupported" in out.stdout


def test_generated_test_passes_under_pytest(generated):
    out = run("-m", "pytest", "-q", "-p", "no:cacheprovider", "test_sliced_attn.py", cwd=generated)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 passed" in out.stdout


def test_refuses_to_overwrite_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "mine.toml").write_text("kept")
    assert main(["new-method", "mine", "--dir", str(tmp_path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "refusing to overwrite" in err and "mine.toml" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.toml"]
    assert (tmp_path / "mine.toml").read_text() == "kept"


@pytest.mark.parametrize("name,words", [
    ("9lives", "must start with a letter"),
    ("my-attn", "must start with a letter"),
    ("class", "Python keyword"),
    ("linformer", "is taken by attnbench.methods.linformer"),
    ("json", "importable module"),
])
def test_bad_names_are_refused(tmp_path, capsys, name, words):
    assert main(["new-method", name, "--dir", str(tmp_path)]) == 2
    assert words in " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert not any(tmp_path.iterdir())


def test_class_names_and_templates_have_no_leftover_placeholders():
    assert class_name("my_attn") == "MyAttn" and class_name("mine") == "Mine"
    for text in render("my_attn").values():
        assert "$" not in text and "${" not in text
