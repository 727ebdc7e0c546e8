"""The contract every registered architecture keeps, in every role it registers (timm's pattern).

The checks themselves ship in the wheel (:mod:`seqweave.testing`, run against any plugin
with ``seqweave check-plugin NAME``); here they are parametrised over the registry, so a
plugin is tested the moment it registers: shapes, masks, caching, the two-way weight map,
a save/load round trip through the composite, and parity with transformers wherever
``Architecture.reference`` names the class. transformers is a dev dependency, so in this
suite a parity check never skips for want of it.
"""

from __future__ import annotations

import pytest
from conftest import REGISTRY, ROLES

from seqweave.testing import CHECKS, CheckContext, CheckSkipped

PARAMS = [
    pytest.param(check, name, role, id=f"{check.name}-{name}-{role}")
    for check in CHECKS
    for name, role in ROLES
    if role in check.roles
]
#: The skips the contract allows in this suite, and nothing else: a causal check of a bidirectional encoder.
ALLOWED_SKIPS = {"causal": "a bidirectional encoder"}


@pytest.mark.parametrize(("check", "name", "role"), PARAMS)
def test_contract(check, name: str, role: str, tmp_path) -> None:
    try:
        check(REGISTRY.get(name), role, CheckContext(REGISTRY, tmp_path))
    except CheckSkipped as e:
        assert ALLOWED_SKIPS.get(check.name) == str(e), f"{check.name} skipped unexpectedly: {e}"
        pytest.skip(str(e))


@pytest.mark.parametrize("name", [n for n, r in ROLES if r == "decoder"])
def test_cache_counts_the_decoded_tokens(name: str) -> None:
    """The cache's position after step-by-step decoding is the number of tokens fed."""
    import seqweave as sw
    import torch
    from conftest import build_part

    from seqweave.testing import source_states, tokens

    decoder = build_part(name, "decoder")
    ids, source = tokens(decoder, (2, 6), 5), source_states(decoder, 2, 4)
    cache = sw.Cache(decoder.num_layers)
    with torch.no_grad():
        for i in range(ids.shape[1]):
            decoder(ids[:, i : i + 1], encoder_hidden_states=source, cache=cache)
    assert cache.length == ids.shape[1]


def test_a_broken_plugin_fails_the_checks(tmp_path) -> None:
    """The checks can fail: a weight map that swaps two layers' norms loses parity and says where."""
    import dataclasses

    from seqweave.modules import WeightMap
    from seqweave.testing import run_checks

    bert = REGISTRY.get("bert")

    def swapped(cfg, role):
        wmap = bert.weight_map(cfg, role)
        rules = list(wmap.rules)
        i = next(k for k, r in enumerate(rules) if r.ours == "layers.0.ffn_norm.weight")
        j = next(k for k, r in enumerate(rules) if r.ours == "layers.1.ffn_norm.weight")
        rules[i], rules[j] = dataclasses.replace(rules[i], hf=rules[j].hf), dataclasses.replace(rules[j], hf=rules[i].hf)
        return WeightMap(tuple(rules), wmap.ignore, wmap.base_prefix)

    broken = dataclasses.replace(bert, weight_map=swapped)
    lines: list[str] = []
    results = run_checks(broken, REGISTRY, roles=["encoder"], echo=lines.append)
    status = {r.check: r.status for r in results}
    assert status["parity"] == "FAIL" and status["output_shapes"] == "PASS"
    assert any(line.startswith("FAIL  bert         encoder  parity: last_hidden_state against BertModel")
               for line in lines), lines
