"""Every code example in the README and the docs site runs, so the docs cannot drift from the code.

Python blocks run in order, one namespace per page (as a doctest session would), in a folder made as a
reader makes it, ``vaekit examples make DIR``: small seeded models of the real classes saved with
``save_pretrained`` (``./sd-vae``, ``./wan-vae``, ``./ltx2-vae``, ``./hunyuan15-vae``, ``./minimax-vae``,
``./sd-pipeline`` with a tokenizer and text encoder), ``latents.pt`` and a photograph. A block titled like a file
(```` ```python title="decode.py" ````) is written to that file, and a ``torchrun ... decode.py`` line
of the page runs it with 2 gloo ranks. Shell lines are checked against what they call: ``vaekit ...``
(and ``torchrun ... -m vaekit ...``) must parse with the CLI's parsers, ``make X`` must be a Makefile
target.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```", re.S | re.M)


def blocks(page: Path) -> list[tuple[str, str, str]]:
    """(language, the rest of the info string, code) of every fenced block of ``page``."""
    return [(m.group(1), m.group(2).strip(), m.group(3)) for m in FENCE.finditer(page.read_text())]


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """What the examples name, made as a reader makes it: ``vaekit examples make DIR``."""
    from vaekit.cli import main

    where = tmp_path_factory.mktemp("docs")
    assert main(["examples", "make", str(where)]) == 0
    return where


PYTHON_PAGES = [p for p in PAGES if any(lang == "python" for lang, _, _ in blocks(p))]


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=_name)
def test_python_examples_run(page, folder, monkeypatch, capsys):
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "argv", ["example"])
    namespace: dict = {"__name__": "__main__"}
    files = []
    for lang, info, code in blocks(page):
        if lang != "python":
            continue
        title = re.search(r'title="([^"]+)"', info)
        if title:  # a file the page's shell lines run
            (folder / title.group(1)).write_text(code)
            files.append(title.group(1))
            continue
        exec(compile(code, f"{_name(page)} example", "exec"), namespace)  # noqa: S102 (the docs' own code)
    for script in files:  # `torchrun ... script.py` on the page: two gloo ranks
        assert any(script in line for line in _shell_lines(page) if line.startswith("torchrun")), script
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", script],
                              cwd=folder, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-3000:]


def _shell_lines(page: Path) -> list[str]:
    """Every command of the page's bash blocks, continuation lines joined, comments dropped."""
    lines = []
    for lang, _, code in blocks(page):
        if lang in ("bash", "sh", "console"):
            for line in code.replace("\\\n", " ").splitlines():
                line = line.split(" #", 1)[0].strip()
                if line and not line.startswith("#"):
                    lines.append(line)
    return lines


class _Parsed(Exception):
    pass


def _check_vaekit_args(argv: list[str], monkeypatch) -> None:
    """Parse ``vaekit ARGV`` with the parser that would read it (the CLI's, or a tool's), run nothing."""
    from vaekit.cli import main

    original = argparse.ArgumentParser.parse_known_args  # what parse_args calls too

    def parse_only(self, args=None, namespace=None):
        _, extras = original(self, args, namespace)
        assert not extras, f"{self.prog}: unrecognized arguments {extras}"
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse_only)
    with pytest.raises(_Parsed):
        main(argv)


SHELL_PAGES = [p for p in PAGES if _shell_lines(p)]


@pytest.mark.parametrize("page", SHELL_PAGES, ids=_name)
def test_shell_examples_call_what_exists(page, monkeypatch):
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    for line in _shell_lines(page):
        words = shlex.split(line)
        if words[0] == "vaekit":
            _check_vaekit_args(words[1:], monkeypatch)
        elif words[0] == "torchrun" and "-m" in words and words[words.index("-m") + 1] == "vaekit":
            _check_vaekit_args(words[words.index("-m") + 2:], monkeypatch)
        elif words[0] == "make":
            assert all(w in targets for w in words[1:] if "=" not in w), line


def _resolve(path: str):
    """The object a ``::: path`` directive renders: the longest importable module, then attributes."""
    import importlib

    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(path)


def test_the_api_reference_renders_every_public_name_and_no_private_module():
    import inspect

    import vaekit

    text = (ROOT / "docs" / "reference.md").read_text()
    directives = re.findall(r"^::: ([\w.]+)\n((?:    .*\n)*)", text, re.M)
    rendered = set()
    for path, options in directives:
        obj = _resolve(path)
        if inspect.ismodule(obj):  # the one public module rendered whole: its members named
            assert obj is vaekit.errors, path
            listed = re.search(r"members: \[([^\]]*)\]", options, re.S).group(1)
            members = {m.strip() for m in listed.split(",")}
            assert members == set(vaekit.errors.__all__), members
            rendered |= {getattr(vaekit.errors, m) for m in members}
        else:
            rendered.add(obj)
    for name in vaekit.__all__:
        obj = getattr(vaekit, name)
        if inspect.ismodule(obj) or name == "__version__":
            assert f"`vaekit.{name}`" in text, name  # said in words: testing's members render one by one
        else:
            assert obj in rendered, name
    for name in vaekit.testing.__all__:
        assert getattr(vaekit.testing, name) in rendered, name
