"""The plugin kit: the public namespace, the shipped checks and their command, width checks, extra plugins."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from seqweave.cli import main

import seqweave as sw
import seqweave.modules
from seqweave.modules import ConfigError, Embeddings, TransformerEncoder, TransformerLayer

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_SOURCES = [
    *sorted((ROOT / "plugins").glob("seqweave_*/__init__.py")),
    ROOT / "examples" / "seqweave-distilbert" / "seqweave_distilbert" / "__init__.py",
    ROOT / "tests" / "plugins" / "seqweave_electra.py",
]


def test_the_public_namespace_is_exactly_the_documented_one():
    expected = {
        "ACTIVATIONS", "Architecture", "ArchitectureConfig", "Attention", "ConfigError", "Embeddings",
        "FeedForward", "FieldError", "LMHead", "PluginError", "Role", "Rule", "TransformerDecoder",
        "TransformerEncoder", "TransformerLayer", "WeightMap", "activation", "conv1d_rules", "hookimpl",
        "pair_rules", "prefixed", "rule",
    }
    assert set(seqweave.modules.__all__) == expected
    assert all(hasattr(seqweave.modules, n) for n in expected)
    doc = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    assert not [n for n in expected if f"`{n}`" not in doc]


@pytest.mark.parametrize("path", PLUGIN_SOURCES, ids=lambda p: p.parent.name if p.name == "__init__.py" else p.stem)
def test_plugins_import_only_the_public_api(path):
    """The built-in plugins and the examples use seqweave and seqweave.modules, nothing deeper."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    used = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    private = sorted(m for m in used if m and m.startswith("seqweave.") and m != "seqweave.modules")
    assert not private, f"{path.name} imports {private}"


def test_embedding_width_that_differs_from_the_layers_is_a_config_error():
    layers = [TransformerLayer(32, 4, 37, "gelu", norm_first=False, eps=1e-12)]
    with pytest.raises(ConfigError, match=r"embeddings produce width 16 but the layers take width 32"):
        TransformerEncoder(Embeddings(99, 16, 64), layers)
    enc = TransformerEncoder(Embeddings(99, 16, 64, project_to=32), layers).eval()
    assert enc.hidden_size == 32
    assert enc(torch.tensor([[5, 6, 7]])).last_hidden_state.shape == (1, 3, 32)
    assert TransformerEncoder(Embeddings(99, 16, 64), []).hidden_size == 16  # no layers: the embeddings' width


# ----------------------------------------------------------------------------------------
# seqweave check-plugin


BROKEN = '''
import seqweave as sw
from seqweave_bert import BERT

def swapped(cfg, role):
    wmap = BERT.weight_map(cfg, role)
    rules = [r for r in wmap.rules if r.ours != "embeddings.norm.bias"]  # a tensor left out of the map
    return type(wmap)(tuple(rules), wmap.ignore, wmap.base_prefix)

import dataclasses
BROKEN = dataclasses.replace(BERT, name="brokenbert", weight_map=swapped, reference={"encoder": "BertModel"})

@sw.hookimpl
def seqweave_register_architectures(register):
    register(BROKEN)
'''


@pytest.fixture
def broken_plugin(tmp_path, monkeypatch):
    (tmp_path / "broken_plugin.py").write_text(textwrap.dedent(BROKEN))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "broken_plugin"
    sys.modules.pop("broken_plugin", None)


def test_check_plugin_fails_with_status_1_and_says_why(broken_plugin, capsys):
    code = main(["check-plugin", "brokenbert", "--module", broken_plugin, "--role", "encoder"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL  brokenbert   encoder  weight_map_round_trip: parameters no rule maps: ['embeddings.norm.bias']" in out
    assert "PASS  brokenbert   encoder  output_shapes" in out
    assert out.splitlines()[-1].endswith("failed, 1 skipped (brokenbert)")


def test_check_plugin_skips_parity_without_a_reference(broken_plugin, capsys):
    code = main(["check-plugin", broken_plugin, "--module", broken_plugin, "--role", "decoder", "--check", "parity"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.splitlines() == [
        "SKIP  brokenbert   decoder  parity: the plugin declares no reference class for decoder (Architecture.reference)",
        "0 passed, 0 failed, 1 skipped (brokenbert)",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "no plugin or architecture 'nope'; known: bert, "),
        (["bert", "--module", "no_such_module_here"], "cannot import 'no_such_module_here'"),
        (["bert", "--check", "speed"], "unknown check speed; known: protocol, output_shapes"),
    ],
)
def test_check_plugin_user_errors(args, message, capsys):
    code = main(["check-plugin", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err


def test_check_plugin_on_an_example_module_path(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "seqweave-distilbert"))
    code = main(["check-plugin", "distilbert", "--module", "seqweave_distilbert", "--check", "parity"])
    assert code == 0
    assert capsys.readouterr().out.splitlines()[0] == "PASS  distilbert   encoder  parity"


# ----------------------------------------------------------------------------------------
# The core's own tests with a third-party plugin installed


def test_the_suite_passes_with_a_third_party_plugin_installed(tmp_path):
    """With the DistilBERT example 'installed' (a .dist-info on the path), the listing and docs tests still pass.

    Nothing is installed: the example's folder goes on PYTHONPATH and a hand-written
    .dist-info declares its entry point, which importlib.metadata finds like an installed one.
    """
    info = tmp_path / "seqweave_distilbert-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: seqweave-distilbert\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[seqweave]\ndistilbert = seqweave_distilbert\n")
    path = os.pathsep.join([str(ROOT / "examples" / "seqweave-distilbert"), str(tmp_path), *sys.path])
    env = {**os.environ, "PYTHONPATH": path}
    listed = subprocess.run([sys.executable, "-m", "seqweave", "plugins"], env=env, capture_output=True, text=True)
    assert listed.returncode == 0 and "seqweave-distilbert 0.1.0" in listed.stdout, listed.stderr
    tests = ["tests/test_cli.py::test_plugins_text", "tests/test_cli.py::test_plugins_json",
             "tests/test_cli.py::test_docs_config_md_holds_the_generated_reference", "tests/test_example_plugin.py",
             "tests/test_registry.py"]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=ROOT,
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:]


def test_check_plugin_by_distribution_checks_all_its_architectures(capsys):
    code = main(["check-plugin", "seqweave", "--check", "protocol"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    # RoBERTa's aliases are architectures of the distribution too; bert-generation joins once reinstalled
    # (check-plugin reads the installed entry points afresh, so the expectation does too)
    installed = sw.Registry(load_entry_points=False)
    installed.load_entry_points(distributions={"seqweave"})
    names = [a for a in ("bert", "bert-generation", "camembert", "gpt2", "roberta", "xlm-roberta") if a in installed]
    assert {"bert", "camembert", "gpt2", "roberta", "xlm-roberta"} <= set(names)
    assert [line.split()[1:3] for line in out[:-1]] == [[a, r] for a in names for r in ("encoder", "decoder")]
    assert out[-1] == f"{2 * len(names)} passed, 0 failed, 0 skipped ({', '.join(names)})"


def test_parity_checks_skip_with_the_reason_without_transformers(monkeypatch, tmp_path):
    import importlib.util

    from seqweave.testing import CHECKS, CheckContext, CheckSkipped

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a))
    parity = next(c for c in CHECKS if c.name == "parity")
    registry = sw.default_registry()
    with pytest.raises(CheckSkipped, match=r"transformers is not installed \(reference BertModel\)"):
        parity(registry.get("bert"), "encoder", CheckContext(registry, tmp_path))
