"""The plugin registry: entry points, load errors, duplicates, validation at registration."""

from __future__ import annotations

import importlib.metadata

import pytest
import seqweave as sw
from pydantic import Field
from seqweave.modules import WeightMap, rule


def _arch(name: str, **kw) -> sw.Architecture:
    class Cfg(sw.ArchitectureConfig):
        hidden_size: int = Field(8)
        vocab_size: int = 10
        initializer_range: float = 0.02
        tie_word_embeddings: bool = True

    base = sw.default_registry().get("bert")
    weight_map = kw.pop("weight_map", lambda cfg, role: WeightMap(()))
    return sw.Architecture(name=name, config=kw.pop("config", Cfg), build=base.build, weight_map=weight_map, **kw)


class _Plugin:
    def __init__(self, *archs):
        self.archs = archs

    @sw.hookimpl
    def seqweave_register_architectures(self, register):
        for a in self.archs:
            register(a)


def test_builtin_plugins_come_from_entry_points():
    reg = sw.default_registry()
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="seqweave")}
    assert eps["bert"] == "seqweave_bert"
    info = next(p for p in reg.plugins if p.name == "bert")
    assert info.distribution == "seqweave" and info.version == sw.__version__
    assert info.architectures == ["bert"] and info.error is None
    assert reg.owner("bert") is info


def test_duplicate_architecture_names_both_plugins():
    reg = sw.Registry(load_entry_points=False)
    reg.register(_Plugin(_arch("toy")), "first", distribution="dist-one", version="1")
    with pytest.raises(sw.PluginError, match=r"plugin 'second' \(dist-two 2\).*'toy'.*'first' \(dist-one\)"):
        reg.register(_Plugin(_arch("toy")), "second", distribution="dist-two", version="2")
    assert reg.names() == ["toy"]
    assert [p.name for p in reg.plugins] == ["first"]


def test_failing_entry_point_is_recorded_not_raised(monkeypatch):
    class EP:
        name = "broken"
        dist = type("D", (), {"name": "broken-dist", "version": "0.3"})()

        def load(self):
            raise ImportError("no module named torch_extras")

    real = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group: [*real(group=group), EP()] if group == "seqweave" else real(group=group))
    reg = sw.Registry()
    broken = next(p for p in reg.plugins if p.name == "broken")
    assert broken.distribution == "broken-dist" and broken.version == "0.3"
    assert broken.error == "ImportError: no module named torch_extras"
    assert "bert" in reg  # the others still load
    with pytest.raises(sw.ConfigError, match="plugins that failed to load: broken"):
        reg.get("missing")


def test_unknown_architecture_lists_the_registered_ones():
    with pytest.raises(sw.ConfigError, match=r"unknown architecture 'bart'; registered: .*bert"):
        sw.default_registry().get("bart")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Bad Name"}, "must be lowercase"),
        ({"name": "ok", "roles": ("encoder", "middle")}, "roles must be"),
        ({"name": "ok", "config": dict}, "must subclass seqweave.ArchitectureConfig"),
    ],
)
def test_invalid_architectures_are_refused_at_registration(kwargs, message):
    reg = sw.Registry(load_entry_points=False)
    with pytest.raises(sw.PluginError, match=message):
        reg.register(_Plugin(_arch(**kwargs)), "p")
    assert reg.names() == []


def test_config_lacking_required_attributes_is_refused():
    class Thin(sw.ArchitectureConfig):
        vocab_size: int = 3

    with pytest.raises(sw.PluginError, match="lacks hidden_size, initializer_range, tie_word_embeddings"):
        sw.Registry(load_entry_points=False).register(_Plugin(_arch("thin", config=Thin)), "p")


def test_architecture_role_is_checked():
    arch = _arch("enc-only", roles=("encoder",))
    with pytest.raises(sw.ConfigError, match="cannot be used as decoder"):
        arch.build_module(arch.config(), "decoder")


def test_build_from_registry_by_name():
    enc = sw.build_encoder("bert", hidden_size=16, num_hidden_layers=1, num_attention_heads=2, vocab_size=40)
    assert enc.architecture == "bert" and enc.config.hidden_size == 16
    assert isinstance(enc, sw.Encoder)
    dec = sw.build_decoder("bert", hidden_size=16, num_hidden_layers=1, num_attention_heads=2, vocab_size=40)
    assert isinstance(dec, sw.Decoder)
    with pytest.raises(sw.ConfigError, match=r"decoder config \(bert\): num_hidden_layers: Input should be greater"):
        sw.build_decoder("bert", num_hidden_layers=-1)
    with pytest.raises(sw.ConfigError, match="nope: unknown key"):
        sw.build_encoder("bert", nope=1)


def test_registering_the_same_plugin_twice_is_a_plugin_error():
    reg = sw.Registry(load_entry_points=False)
    plugin = _Plugin(_arch("toy"))
    reg.register(plugin, "first")
    with pytest.raises(sw.PluginError, match=r"plugin 'again' .* is registered as plugin 'first'"):
        reg.register(plugin, "again")
    with pytest.raises(sw.PluginError, match="registered as plugin 'first'"):
        reg.register(plugin, "first")
    assert reg.names() == ["toy"] and [p.name for p in reg.plugins] == ["first"]


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        (r"cls\..*(", "is not a regular expression"),
        (r"bert\.^pooler\..*", "can never match"),
        (r"pooler$\.dense", "can never match"),
        ("", "can never match"),
    ],
)
def test_bad_ignore_patterns_are_refused_at_registration(pattern, message):
    arch = _arch("toy", weight_map=lambda cfg, role: WeightMap.build([rule("x")], ignore=[pattern]))
    reg = sw.Registry(load_entry_points=False)
    with pytest.raises(sw.PluginError, match=rf"plugin 'p'.*toy encoder.*{message}"):
        reg.register(_Plugin(arch), "p")
    assert reg.names() == []


def test_a_failing_weight_map_is_refused_at_registration():
    def broken(cfg, role):
        raise AttributeError("'Cfg' object has no attribute 'type_vocab_size'")

    with pytest.raises(sw.PluginError, match=r"plugin 'p': toy.weight_map\(tiny_config, 'encoder'\) failed"):
        sw.Registry(load_entry_points=False).register(_Plugin(_arch("toy", weight_map=broken)), "p")


@pytest.mark.parametrize("pattern", [r"^cls\..*$", r"cls\..*", r"\Acls\..*\Z"])
def test_ignore_patterns_match_the_parts_own_names_in_a_composite(pattern):
    """Anchors at the ends are harmless: patterns match the part's names, not the composite's prefix."""
    part = WeightMap.build([rule("x")], ignore=[pattern])
    assert part.is_ignored("cls.predictions.bias") and not part.is_ignored("bert.cls.x")
    composite = part.prefixed("encoder.", "encoder.") + WeightMap.build([rule("y")]).prefixed("decoder.", "decoder.")
    assert composite.is_ignored("encoder.cls.predictions.bias")
    assert not composite.is_ignored("cls.predictions.bias")
    assert not composite.is_ignored("decoder.cls.predictions.bias")
    nested = composite.prefixed("", "outer.")
    assert nested.is_ignored("outer.encoder.cls.predictions.bias")


def test_entry_points_can_be_limited_to_some_distributions():
    reg = sw.Registry(load_entry_points=False)
    reg.load_entry_points(distributions={"seqweave"})
    assert {p.distribution for p in reg.plugins} == {"seqweave"}
    # bert-generation joins once the project is reinstalled with its entry point.
    assert set(reg.names()) - {"bert-generation"} == {"bert", "gpt2", "roberta", "xlm-roberta", "camembert"}
    empty = sw.Registry(load_entry_points=False)
    empty.load_entry_points(distributions={"no-such-dist"})
    assert empty.names() == [] and empty.plugins == []


def test_has_plugin():
    reg = sw.Registry(load_entry_points=False)
    plugin = _Plugin(_arch("toy"))
    assert not reg.has_plugin(plugin)
    reg.register(plugin, "p")
    assert reg.has_plugin(plugin)


# Aliases: one architecture under several model types


def test_aliases_register_the_same_architecture_under_other_names():
    reg = sw.Registry(load_entry_points=False)
    info = reg.register(_Plugin(_arch("toy", aliases=("toy-xl", "toy-fr"), reference={"encoder": "ToyModel"})), "p")
    assert reg.names() == ["toy", "toy-fr", "toy-xl"] and info.architectures == ["toy", "toy-xl", "toy-fr"]
    assert reg.aliases() == {"toy-fr": "toy", "toy-xl": "toy"}
    xl, toy = reg.get("toy-xl"), reg.get("toy")
    assert xl.alias_of == "toy" and toy.alias_of is None and xl.aliases == {}
    assert (xl.build, xl.weight_map, xl.config, xl.reference) == (toy.build, toy.weight_map, toy.config, toy.reference)
    assert "as model_type toy-xl" in xl.description
    assert reg.owner("toy-xl") is info


def test_an_alias_may_set_its_own_config_and_reference():
    class Other(_arch("x").config):
        vocab_size: int = 20

    arch = _arch("toy", aliases={"toy-xl": {"config": Other, "reference": {"encoder": "ToyXLModel"}}})
    reg = sw.Registry(load_entry_points=False)
    reg.register(_Plugin(arch), "p")
    assert reg.get("toy-xl").config is Other and reg.get("toy-xl").make_config().vocab_size == 20
    assert reg.get("toy-xl").reference == {"encoder": "ToyXLModel"} and reg.get("toy").make_config().vocab_size == 10


def test_an_alias_setting_another_field_is_refused():
    reg = sw.Registry(load_entry_points=False)
    with pytest.raises(sw.PluginError, match=r"plugin 'p'.*aliases\['toy-xl'\] sets build; an alias may set only"):
        reg.register(_Plugin(_arch("toy", aliases={"toy-xl": {"build": None}})), "p")
    assert reg.names() == [] and reg.plugins == []


def test_an_alias_taken_by_another_plugin_names_both():
    reg = sw.Registry(load_entry_points=False)
    reg.register(_Plugin(_arch("toy", aliases=["shared"])), "first", distribution="dist-one", version="1")
    with pytest.raises(
        sw.PluginError,
        match=r"plugin 'second' \(dist-two 2\) registers alias 'shared' of architecture 'other', already "
        r"registered by plugin 'first' \(dist-one\) as alias 'shared' of architecture 'toy'",
    ):
        reg.register(_Plugin(_arch("other", aliases=["shared"])), "second", distribution="dist-two", version="2")
    # an architecture named like another plugin's alias, and the other way round
    with pytest.raises(sw.PluginError, match=r"registers architecture 'shared'.*as alias 'shared' of architecture"):
        reg.register(_Plugin(_arch("shared")), "third")
    with pytest.raises(sw.PluginError, match=r"registers alias 'toy' of architecture 'fourth'.*as architecture 'toy'"):
        reg.register(_Plugin(_arch("fourth", aliases=["toy"])), "fourth")
    assert reg.names() == ["shared", "toy"] and [p.name for p in reg.plugins] == ["first"]


def test_a_name_registered_twice_by_one_plugin_is_refused():
    reg = sw.Registry(load_entry_points=False)
    with pytest.raises(sw.PluginError, match=r"registers 'b' twice: as alias 'b' of architecture 'a' and as "
                                             r"architecture 'b'"):
        reg.register(_Plugin(_arch("a", aliases=["b"]), _arch("b")), "p")
    with pytest.raises(sw.PluginError, match=r"name 'Bad Alias' must be lowercase"):
        reg.register(_Plugin(_arch("a", aliases=["Bad Alias"])), "p")
    assert reg.names() == []


def test_roberta_answers_to_xlm_roberta_and_camembert():
    """RoBERTa's aliases carry transformers' defaults and reference classes for those model types."""
    import transformers

    reg = sw.default_registry()
    assert reg.aliases()["xlm-roberta"] == "roberta" and reg.aliases()["camembert"] == "roberta"
    for name, cls in (("xlm-roberta", transformers.XLMRobertaConfig), ("camembert", transformers.CamembertConfig)):
        arch = reg.get(name)
        assert arch.build is reg.get("roberta").build and arch.weight_map is reg.get("roberta").weight_map
        ours, theirs = arch.make_config(), cls()
        for field in type(ours).model_fields:
            if hasattr(theirs, field):
                assert getattr(ours, field) == getattr(theirs, field), (name, field)
        assert getattr(transformers, arch.reference["encoder"]).config_class is cls
        assert getattr(transformers, arch.reference["decoder"]).config_class is cls
        module = sw.build_encoder(name, **arch.tiny_config)
        assert module.architecture == name and module.seqweave_architecture is arch
