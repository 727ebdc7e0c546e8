"""Hostile plugins (issue 10, item 4): a plugin can take neither the process down nor a built-in name.

Nothing is installed: each hostile plugin is a module in a temporary folder with a hand-written
.dist-info declaring its entry point (as tests/test_plugin_kit.py does), and that folder goes
*first* on the path, so that its entry points come before the built-in ones — the order in which
a first-come registry would let them win.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import seqweave as sw

ROOT = Path(__file__).resolve().parent.parent

# entry-point name -> (distribution, module source)
PLUGINS = {
    "exit-on-import": ("evil-exit", "import sys\nsys.exit(3)\n"),
    "exit-in-hook": ("evil-exit-hook", """
        import seqweave as sw

        @sw.hookimpl
        def seqweave_register_architectures(register):
            raise SystemExit("bye")
    """),
    "raise-in-hook": ("evil-raise", """
        import seqweave as sw

        @sw.hookimpl
        def seqweave_register_architectures(register):
            raise RuntimeError("boom in the hook")
    """),
    "chatty": ("evil-chatty", """
        print("hello from a plugin")
        raise ValueError("chatty and broken")
    """),
    "fake-bert": ("evil-bert", """
        import dataclasses
        import seqweave as sw
        import seqweave_bert

        FAKE = dataclasses.replace(seqweave_bert.BERT, description="not the real BERT")
        FRESH = dataclasses.replace(seqweave_bert.BERT, name="fresh-name", aliases={})

        @sw.hookimpl
        def seqweave_register_architectures(register):
            register(FRESH)
            register(FAKE)
    """),
    "fake-xlmr": ("evil-xlmr", """
        import dataclasses
        import seqweave as sw
        import seqweave_roberta

        FAKE = dataclasses.replace(seqweave_roberta.ROBERTA, name="xlm-roberta", aliases={})

        @sw.hookimpl
        def seqweave_register_architectures(register):
            register(FAKE)
    """),
}


def _module(ep_name: str) -> str:
    return "hostile_" + ep_name.replace("-", "_")


@pytest.fixture
def hostile_site(tmp_path_factory) -> Path:
    """A folder holding the hostile plugins as 'installed' distributions."""
    site = tmp_path_factory.mktemp("hostile_site")
    for ep_name, (dist, source) in PLUGINS.items():
        (site / f"{_module(ep_name)}.py").write_text(textwrap.dedent(source))
        info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[seqweave]\n{ep_name} = {_module(ep_name)}\n")
    return site


@pytest.fixture
def on_path(hostile_site, monkeypatch):
    """The hostile site first on sys.path, for in-process registries; its modules forgotten afterwards."""
    monkeypatch.syspath_prepend(str(hostile_site))
    monkeypatch.delenv("SEQWEAVE_PLUGINS", raising=False)
    importlib.invalidate_caches()
    yield hostile_site
    for ep_name in PLUGINS:
        sys.modules.pop(_module(ep_name), None)


def _by_name(reg: sw.Registry) -> dict[str, sw.PluginInfo]:
    return {p.name: p for p in reg.plugins}


def test_the_hostile_entry_points_come_before_the_builtin_ones(on_path):
    """The setting in which first-come-first-served would hand 'bert' to the impostor."""
    order = [ep.name for ep in importlib.metadata.entry_points(group="seqweave")]
    assert order.index("fake-bert") < order.index("bert")
    assert order.index("fake-xlmr") < order.index("roberta")


def test_sys_exit_on_import_is_that_plugins_failure(on_path):
    reg = sw.Registry()
    info = _by_name(reg)["exit-on-import"]
    assert info.distribution == "evil-exit" and info.architectures == []
    assert info.error == "SystemExit: the plugin called sys.exit(3) while loading"
    assert {"bert", "gpt2", "roberta", "xlm-roberta"} <= set(reg.names())  # the others still load


def test_anything_raised_in_the_hook_is_that_plugins_failure(on_path):
    plugins = _by_name(sw.Registry())
    assert plugins["exit-in-hook"].error == "SystemExit: the plugin called sys.exit('bye') while loading"
    assert plugins["raise-in-hook"].error == "RuntimeError: boom in the hook"
    assert plugins["exit-in-hook"].architectures == plugins["raise-in-hook"].architectures == []


def test_a_third_party_plugin_cannot_take_a_builtin_name(on_path):
    reg = sw.Registry()
    plugins = _by_name(reg)
    assert reg.owner("bert").distribution == "seqweave" and plugins["bert"].error is None
    assert reg.get("bert").description != "not the real BERT"
    fake = plugins["fake-bert"]
    assert fake.architectures == [] and "fresh-name" not in reg  # all or nothing: its other name is not kept
    assert "plugin 'fake-bert' (evil-bert 1.0) registers architecture 'bert'" in fake.error
    assert "already registered by plugin 'bert' (seqweave)" in fake.error
    assert "a built-in name cannot be replaced" in fake.error


def test_a_third_party_plugin_cannot_take_a_builtin_alias(on_path):
    reg = sw.Registry()
    assert reg.owner("xlm-roberta").distribution == "seqweave"
    assert reg.get("xlm-roberta").alias_of == "roberta"
    plugins = _by_name(reg)
    assert plugins["roberta"].error is None and "xlm-roberta" in plugins["roberta"].architectures
    error = plugins["fake-xlmr"].error
    assert "(evil-xlmr 1.0) registers architecture 'xlm-roberta'" in error
    assert "plugin 'roberta' (seqweave) as alias 'xlm-roberta' of architecture 'roberta'" in error


def test_keyboard_interrupt_still_interrupts(monkeypatch):
    class EP:
        name = "interrupting"
        dist = type("D", (), {"name": "evil-ki", "version": "1"})()

        def load(self):
            raise KeyboardInterrupt

    real = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group: [EP(), *real(group=group)] if group == "seqweave" else real(group=group))
    with pytest.raises(KeyboardInterrupt):
        sw.Registry()


@pytest.mark.parametrize(
    ("value", "loaded", "unknown"),
    [
        ("builtin", set(), set()),
        (" builtin , ", set(), set()),
        ("fake-bert,raise-in-hook", {"fake-bert", "raise-in-hook"}, set()),
        ("raise-in-hook,nosuch", {"raise-in-hook"}, {"nosuch"}),
        ("", set(PLUGINS), set()),
    ],
)
def test_the_environment_variable_restricts_the_third_party_plugins(on_path, monkeypatch, value, loaded, unknown):
    monkeypatch.setenv("SEQWEAVE_PLUGINS", value)
    reg = sw.Registry()
    plugins = _by_name(reg)
    assert {"bert", "bert-generation", "gpt2", "roberta"} <= set(plugins)  # built-ins always load
    assert all(plugins[n].error is None for n in ("bert", "bert-generation", "gpt2", "roberta"))
    assert set(plugins) & set(PLUGINS) == loaded
    assert set(reg.skipped) == set(PLUGINS) - loaded
    for name in unknown:
        assert plugins[name].error == (
            f"SEQWEAVE_PLUGINS names {name!r}, but no installed plugin has that entry-point name"
        )
    assert not any(n in plugins for n in ({"nosuch"} - unknown))


def test_restricting_by_distribution_ignores_the_environment_variable(on_path, monkeypatch):
    monkeypatch.setenv("SEQWEAVE_PLUGINS", "nosuch")
    reg = sw.Registry(load_entry_points=False)
    reg.load_entry_points(distributions={"seqweave"})
    assert all(p.error is None for p in reg.plugins) and reg.skipped == []


def _cli(site: Path, env_value: str | None, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SEQWEAVE_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), *sys.path])
    if env_value is not None:
        env["SEQWEAVE_PLUGINS"] = env_value
    return subprocess.run([sys.executable, "-m", "seqweave", "plugins", *args], env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def _failed(stdout: str) -> dict[str, str]:
    return {line.split()[0]: line for line in stdout.splitlines() if "  FAILED  " in line}


def test_cli_lists_every_hostile_plugin_as_failed_and_keeps_working(hostile_site):
    run = _cli(hostile_site, None)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    failed = _failed(run.stdout)
    assert set(failed) == set(PLUGINS), run.stdout
    assert "evil-exit 1.0" in failed["exit-on-import"] and "sys.exit(3)" in failed["exit-on-import"]
    assert "boom in the hook" in failed["raise-in-hook"]
    assert "a built-in name cannot be replaced" in failed["fake-bert"]
    rows = [line.split() for line in run.stdout.splitlines()]
    assert next(r[:2] for r in rows if r[:1] == ["bert"]) == ["bert", "seqweave"]
    assert any(r[:1] == ["roberta"] and "xlm-roberta" in r for r in rows)


def test_cli_with_only_the_builtins(hostile_site):
    run = _cli(hostile_site, "builtin")
    assert run.returncode == 0, run.stderr
    assert _failed(run.stdout) == {}
    *listing, last = run.stdout.splitlines()
    assert not any(line.split()[0] in PLUGINS for line in listing)
    assert last == "not loaded (SEQWEAVE_PLUGINS): " + ", ".join(sorted(PLUGINS))


def test_cli_with_a_list_and_an_unknown_name(hostile_site):
    run = _cli(hostile_site, "exit-on-import,nosuch", "--json")
    assert run.returncode == 0, run.stderr
    rows = {r["name"]: r for r in json.loads(run.stdout)}
    assert set(rows) & set(PLUGINS) == {"exit-on-import"}
    assert "sys.exit(3)" in rows["exit-on-import"]["error"]
    assert rows["nosuch"]["error"].startswith("SEQWEAVE_PLUGINS names 'nosuch'")
    assert rows["bert"]["distribution"] == "seqweave" and rows["bert"]["error"] is None


def test_plugins_help_documents_the_environment_variable():
    run = subprocess.run([sys.executable, "-m", "seqweave", "plugins", "--help"], capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode == 0 and "SEQWEAVE_PLUGINS" in run.stdout and "builtin" in run.stdout


def test_other_commands_work_with_the_hostile_plugins_installed(hostile_site):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hostile_site), *sys.path])}
    env.pop("SEQWEAVE_PLUGINS", None)
    run = subprocess.run([sys.executable, "-m", "seqweave", "schema"], env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    assert "xlm-roberta" in run.stdout and "fresh-name" not in run.stdout


def test_naming_a_failed_plugins_architecture_says_which_plugins_failed(on_path):
    with pytest.raises(sw.ConfigError, match=r"unknown architecture 'fresh-name'.*failed to load: .*fake-bert"):
        sw.Registry().get("fresh-name")


def test_what_a_plugin_prints_goes_to_stderr_so_json_stays_json(hostile_site):
    run = _cli(hostile_site, None, "--json")
    assert run.returncode == 0, run.stderr
    rows = {r["name"]: r for r in json.loads(run.stdout)}
    assert rows["chatty"]["error"] == "ValueError: chatty and broken"
    assert "hello from a plugin" in run.stderr


def test_a_second_seqweave_distribution_on_the_path_is_reported(tmp_path, monkeypatch):
    """Entry points come from the first distribution of a name: an impostor 'seqweave' must not go unnoticed."""
    info = tmp_path / "seqweave-9.9.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: seqweave\nVersion: 9.9\n")
    (info / "entry_points.txt").write_text("[seqweave]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("SEQWEAVE_PLUGINS", raising=False)
    importlib.invalidate_caches()
    reg = sw.Registry()
    report = next(p for p in reg.plugins if p.name == "seqweave")
    assert report.error.startswith("2 seqweave distributions on the path, in " + str(tmp_path))
