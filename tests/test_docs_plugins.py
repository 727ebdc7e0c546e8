"""docs/plugins.md runs as written: its plugin file, its Python examples and its commands."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest
from seqweave.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
BLOCK = re.compile(r"(?:<!-- file: (?P<file>[\w.]+) -->\n)?```(?P<lang>\w+)\n(?P<code>.*?)```", re.S)


def _blocks() -> list[tuple[str | None, str, str]]:
    return [(m["file"], m["lang"], m["code"]) for m in BLOCK.finditer(DOC.read_text(encoding="utf-8"))]


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    """The doc's plugin file, written out and put on the path as a module would be."""
    folder = tmp_path_factory.mktemp("docs_plugin")
    files: dict[str, str] = {}
    for file, _, code in _blocks():
        if file:
            files[file] = files.get(file, "") + code + "\n"
    assert files, "docs/plugins.md has no worked plugin file"
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    for name in files:
        sys.modules.pop(Path(name).stem, None)


def test_every_python_example_runs(plugin_dir, tmp_path, monkeypatch):
    """The examples run in order in one namespace, as a reader would paste them."""
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_plugins_example"}
    ran = 0
    for file, lang, code in _blocks():
        if lang == "python" and not file:
            exec(compile(code, f"{DOC.name} example {ran + 1}", "exec"), namespace)
            ran += 1
    assert ran >= 4
    # the pytest example defines a test: run it for every check and role, as pytest would
    test = namespace["test_contract"]
    outcomes = []
    for check in namespace["CHECKS"]:
        for role in ("encoder", "decoder"):
            try:
                test.__wrapped__(check, role, tmp_path) if hasattr(test, "__wrapped__") else test(check, role, tmp_path)
                outcomes.append("pass")
            except pytest.skip.Exception:
                outcomes.append("skip")
    assert outcomes.count("pass") == 18


def test_the_documented_commands_run_and_print_what_the_doc_shows(plugin_dir, capsys):
    commands = [
        shlex.split(line.split("#")[0])[1:]
        for _, lang, code in _blocks()
        if lang == "bash"
        for line in code.splitlines()
        if line.startswith("seqweave ")
    ]
    assert commands
    outputs = []
    for args in commands:
        code = main(args)
        out, err = capsys.readouterr()
        assert code == 0, (args, out, err)
        outputs.append(out)
    shown = next(code for _, lang, code in _blocks() if lang == "text" and "PASS" in code)
    for line in shown.splitlines():
        if line.strip() != "...":
            assert line in outputs[0].splitlines(), line


def test_the_internal_names_table_lists_every_parameter_of_the_builtins():
    """Every parameter name of a built-in module (layer index as {i}) appears in the doc's table."""
    from conftest import build_part

    doc = DOC.read_text(encoding="utf-8")
    first_cells = re.findall(r"^\| (`[^|]+)\|", doc, re.M)
    listed = {name for cell in first_cells for name in re.findall(r"`([^`]+)`", cell)}
    names = set()
    for arch in ("bert", "gpt2", "roberta"):
        for role in ("encoder", "decoder"):
            for n, _ in build_part(arch, role).named_parameters(remove_duplicate=False):
                names.add(re.sub(r"\.\d+\.", ".{i}.", n))

    def covered(name: str) -> bool:
        stem, leaf = name.rsplit(".", 1)
        return any(e in (name, f"{stem}.*", f"{stem}.{{weight,bias}}") for e in listed)

    assert not [n for n in sorted(names) if not covered(n)]
