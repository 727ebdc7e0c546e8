"""Scale-out (issue 11, item 4): one process, 2-process DDP and 2-process FSDP2 train alike.

The 2-process runs are real: ``torchrun --standalone --nproc-per-node 2`` (a free port each
time) runs this file as a worker on the CPU with the gloo backend. Each worker trains a tiny
model (dropout 0, float32) with the plain loop the trainer uses — the label count all-reduced
and passed as ``num_items_in_batch``, the loss times the world size, clipping, AdamW — saves a
DCP checkpoint half way and writes what it saw to a folder; the tests here compare that with a
single process on the same global batches.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import seqweave as sw
import torch
from seqweave.training import distributed as D
from test_training import reversal_pairs

STEPS = 6  # optimizer steps in every run
SAVE_AT = 3  # the workers save a checkpoint after this many steps
GLOBAL_BATCH = 4  # pairs per step, over all processes
CLIP = 0.5  # small enough that every step clips: the gradient norm must be the global one
HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]


# ---------------------------------------------------------------------------------------------
# The model, the data and the loop: the same code in the workers and in this process


def tiny_model(tied_encoder_decoder: bool = False, seed: int = 0) -> sw.EncoderDecoder:
    """bert2gpt2 (the decoder's head tied to its embeddings) or, tied, bert2bert sharing encoder and decoder."""
    torch.manual_seed(seed)
    bert = {"vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 37, "max_position_embeddings": 64, "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0}
    enc = sw.build_encoder("bert", **bert)
    if tied_encoder_decoder:
        dec = sw.build_decoder("bert", **bert)
        return sw.EncoderDecoder(encoder=enc, decoder=dec, decoder_start_token_id=2, pad_token_id=0,
                                 eos_token_id=3, tie_encoder_decoder=True)
    dec = sw.build_decoder("gpt2", vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=98, eos_token_id=98)
    return sw.EncoderDecoder(encoder=enc, decoder=dec, decoder_start_token_id=98, pad_token_id=0, eos_token_id=98)


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step ``step``'s pairs: source ids and mask [4, 9], labels [4, 7], of uneven lengths (padding, -100)."""
    g = torch.Generator().manual_seed(1000 + step)
    src = torch.randint(4, 97, (GLOBAL_BATCH, 9), generator=g)
    tgt = torch.randint(4, 97, (GLOBAL_BATCH, 7), generator=g)
    src_len = torch.randint(2, 10, (GLOBAL_BATCH,), generator=g)
    tgt_len = torch.randint(1, 8, (GLOBAL_BATCH,), generator=g)
    mask = (torch.arange(9) < src_len[:, None]).long()
    labels = tgt.masked_fill(torch.arange(7) >= tgt_len[:, None], -100)
    return src.masked_fill(mask == 0, 0), mask, labels


def train_steps(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, dist: D.Dist, steps: range, micro: int = 1
) -> list[float]:
    """The trainer's step: each rank its share of the global batch in ``micro`` micro-batches, the
    loss over the global batch (token losses summed, divided by the all-reduced label count)."""
    losses = []
    share = GLOBAL_BATCH // dist.world
    model.train()
    for step in steps:
        src, mask, labels = (t[dist.rank * share : (dist.rank + 1) * share].to(dist.device)
                             for t in global_batch(step))
        count = D.all_reduce_sum(dist, labels.ne(-100).sum())
        total = torch.zeros(())
        for i, rows in enumerate(torch.arange(share).chunk(micro)):
            with D.gradient_sync(model, i == micro - 1):  # only the last micro-batch averages over ranks
                loss = model(input_ids=src[rows], attention_mask=mask[rows], labels=labels[rows],
                             num_items_in_batch=count).loss
                (loss * dist.world).backward()  # DDP and FSDP2 average the gradients over the ranks
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(D.all_reduce_sum(dist, total).item())
    return losses


def optimizer_of(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)


def sources(rows: int = GLOBAL_BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    src, mask, _ = global_batch(99)
    return src[:rows], mask[:rows]


def uneven(model: sw.EncoderDecoder, rank: int) -> list[torch.Tensor]:
    """Generation and loss that differ by rank in calls and lengths, as evaluation on a rank's share does."""
    with torch.no_grad():
        if rank == 0:
            return [model.generate(*sources(1), max_new_tokens=2)]
        src, mask, labels = global_batch(7)
        return [model.generate(*sources(3), max_new_tokens=8), model.generate(*sources(2), max_new_tokens=5,
                num_beams=2), model(src, mask, labels=labels).logits]


# ---------------------------------------------------------------------------------------------
# One process


@pytest.fixture(scope="module")
def reference() -> dict:
    """One process, no group: the losses, and the model after every step."""
    torch.set_num_threads(1)
    dist = D.setup("none", "cpu")
    model = tiny_model()
    losses = train_steps(model, optimizer_of(model), dist, range(STEPS))
    tied = tiny_model(tied_encoder_decoder=True)
    tied_losses = train_steps(tied, optimizer_of(tied), dist, range(3))
    accumulated = tiny_model()
    accumulated_losses = train_steps(accumulated, optimizer_of(accumulated), dist, range(3), micro=2)
    return {"losses": losses, "tied": tied_losses, "accumulated": accumulated_losses, "model": model.eval()}


def _names(model: torch.nn.Module, groups: list[list[torch.nn.Module]]) -> list[list[str]]:
    names = {id(m): n for n, m in model.named_modules()}
    return [[names[id(m)] for m in group] for group in groups]


def test_fsdp_units_are_the_layers_embeddings_and_head_with_tied_modules_together():
    model = tiny_model()
    assert _names(model, D.fsdp_units(model)) == [
        ["encoder.layers.0"], ["encoder.layers.1"], ["encoder.embeddings"],
        ["decoder.layers.0"], ["decoder.layers.1"], ["decoder.embeddings", "decoder.head"],  # head tied
    ]
    tied = tiny_model(tied_encoder_decoder=True)
    assert _names(tied, D.fsdp_units(tied)) == [
        ["encoder.layers.0", "decoder.layers.0"], ["encoder.layers.1", "decoder.layers.1"],
        ["encoder.embeddings", "decoder.embeddings", "decoder.head"],
    ]


def test_fsdp_units_leave_to_the_root_what_shares_a_parameter_with_the_root():
    model = tiny_model()
    model.peek = torch.nn.Embedding(99, 32)  # a module outside every unit, tied to the decoder's embeddings
    model.peek.weight = model.decoder.embeddings.tokens.weight
    assert ["decoder.embeddings", "decoder.head"] not in _names(model, D.fsdp_units(model))
    assert len(D.fsdp_units(model)) == 5


def test_a_plugin_module_that_is_no_seqweave_stack_is_sharded_with_the_root():
    model = tiny_model()
    bare = torch.nn.Module()  # no layers, embeddings or head attribute
    bare.inner = model.encoder
    assert D._stack_units(bare) == []


def test_setup_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dist = D.setup("none", "cpu")
    assert (dist.rank, dist.world, dist.main, dist.grouped, dist.device) == (0, 1, True, False, torch.device("cpu"))
    assert D.broadcast_object(dist, {"a": 1}) == {"a": 1}
    t = torch.tensor(3)
    assert D.all_reduce_sum(dist, t) is t and int(t) == 3
    D.barrier(dist)
    D.teardown(dist)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_ddp_and_fsdp_without_torchrun_are_a_group_of_one(parallel, monkeypatch, reference):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    dist = D.setup(parallel, "cpu")
    try:
        assert (dist.world, dist.rank, dist.grouped, dist.backend) == (1, 0, True, "gloo")
        model = D.wrap(tiny_model(), dist, parallel)
        assert D.unwrap(model) is not model if parallel == "ddp" else D.unwrap(model) is model
        losses = train_steps(model, optimizer_of(model), dist, range(3))
        assert losses == pytest.approx(reference["losses"][:3], abs=1e-6, rel=0)
        if parallel == "fsdp":  # a CUDA graph cannot replay FSDP2's all-gathers
            with pytest.raises(sw.ConfigError, match=r"generate\(cuda_graph=True\) cannot run"):
                model.generate(*sources(1), max_new_tokens=2, cuda_graph=True)
        del model
        inner = D.setup(parallel, "cpu")  # a group already running is used, and left running
        assert inner.grouped and not inner.started
        D.teardown(inner)
        assert torch.distributed.is_initialized()
    finally:
        D.teardown(dist)
    assert not torch.distributed.is_initialized()


def test_setup_refuses_what_cannot_work(monkeypatch):
    with pytest.raises(sw.ConfigError, match="allowed: none, ddp, fsdp"):
        D.setup("zero3", "cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(sw.ConfigError, match="train.parallel=ddp"):
        D.setup("none", "cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(sw.ConfigError, match="WORLD_SIZE"):
        D.setup("ddp", "cpu")
    with pytest.raises(sw.ConfigError, match="needs the process group"):
        D.wrap(tiny_model(), D.Dist(), "ddp")


def test_unwrap_finds_the_model():
    model = tiny_model()
    assert D.unwrap(model) is model
    holder = torch.nn.Module()
    holder.module = model  # DDP's attribute
    assert D.unwrap(holder) is model
    with pytest.raises(sw.ConfigError, match="no seqweave.EncoderDecoder"):
        D.unwrap(torch.nn.Linear(2, 2))


def test_save_and_load_state_in_one_process_without_a_group(tmp_path, recwarn):
    dist = D.Dist()
    model = tiny_model()
    optimizer = optimizer_of(model)
    train_steps(model, optimizer, dist, range(2))
    D.save_state(dist, tmp_path / "state", model, optimizer)
    assert (tmp_path / "state" / ".metadata").is_file()
    expected = train_steps(model, optimizer, dist, range(2, 4))

    other = tiny_model(seed=1)
    other_optimizer = optimizer_of(other)
    D.load_state(dist, tmp_path / "state", other, other_optimizer)
    assert other.decoder.head.proj.weight is other.decoder.embeddings.tokens.weight  # still tied
    assert other.encoder.pooler.weight not in other_optimizer.state  # never had a gradient: no state
    assert train_steps(other, other_optimizer, dist, range(2, 4)) == expected  # exactly: one process both
    assert not [w for w in recwarn if "torch.distributed" in str(w.message)]


def test_load_state_names_what_is_wrong(tmp_path):
    dist = D.Dist()
    model = tiny_model()
    optimizer = optimizer_of(model)
    (tmp_path / "file").write_text("")
    with pytest.raises(sw.CheckpointError, match="could not write the checkpoint"):
        D.save_state(dist, tmp_path / "file" / "state", model, optimizer)  # a file where a folder must go
    with pytest.raises(sw.CheckpointError, match=r"\.metadata is missing"):
        D.load_state(dist, tmp_path, model, optimizer)
    D.save_state(dist, tmp_path / "state", model, optimizer)
    other = tiny_model(tied_encoder_decoder=True)  # bert2bert: other names
    with pytest.raises(sw.CheckpointError, match="the checkpoint has no decoder"):
        D.load_state(dist, tmp_path / "state", other, optimizer_of(other))
    wider = tiny_model()
    wider.encoder.layers[0].ffn.fc_in = torch.nn.Linear(32, 40)  # the names, another shape
    with pytest.raises(sw.CheckpointError, match=r"Size mismatch .* for model\.encoder\.layers\.0\.ffn\.fc_in\.weight"):
        D.load_state(dist, tmp_path / "state", wider, optimizer_of(wider))


def test_full_state_dict_in_one_process_is_the_models_own():
    model = tiny_model()
    sd = D.full_state_dict(D.Dist(), model)
    assert sd.keys() == model.state_dict().keys()
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------------------------------------
# Two processes (torchrun, gloo)


@pytest.fixture(scope="module", params=["ddp", "fsdp"])
def two(request, tmp_path_factory) -> dict:
    """A 2-process run of ``worker``: its losses, its saved tensors and its folders."""
    out = tmp_path_factory.mktemp(request.param)
    model = tiny_model()  # a 1-process checkpoint for the workers to resume
    optimizer = optimizer_of(model)
    train_steps(model, optimizer, D.Dist(), range(SAVE_AT))
    D.save_state(D.Dist(), out / "one", model, optimizer)
    result = run_workers(out, request.param)
    result.update(torch.load(out / "saved.pt", weights_only=True), out=out, parallel=request.param)
    return result


def test_two_processes_log_the_losses_of_one(two, reference):
    assert two["world"] == 2
    assert two["losses"] == pytest.approx(reference["losses"], abs=1e-5, rel=0)
    assert two["tied"] == pytest.approx(reference["tied"], abs=1e-5, rel=0)  # tie_encoder_decoder
    # two micro-batches a step, averaged over the ranks only after the second
    assert two["accumulated"] == pytest.approx(reference["accumulated"], abs=1e-5, rel=0)
    assert reference["accumulated"] == pytest.approx(reference["losses"][:3], abs=1e-5, rel=0)
    assert two["recomputed"] == pytest.approx(reference["losses"][:3], abs=1e-5, rel=0)  # gradient checkpointing
    assert len(set(reference["losses"])) == STEPS  # the steps differ: a stuck model would not pass


def test_a_checkpoint_of_two_processes_resumes_in_one(two):
    model = tiny_model(seed=1)  # other weights: all must come from the checkpoint
    optimizer = optimizer_of(model)
    D.load_state(D.Dist(), two["out"] / "state", model, optimizer)
    saved = two["full"]
    assert saved.keys() == model.state_dict().keys()
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name]), name
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = get_optimizer_state_dict(model, optimizer)
    assert state["state"].keys() == two["optim"]["state"].keys()
    for name, entry in two["optim"]["state"].items():
        for key, value in entry.items():
            assert torch.equal(torch.as_tensor(state["state"][name][key]), torch.as_tensor(value)), (name, key)
    assert state["param_groups"][0]["lr"] == two["optim"]["param_groups"][0]["lr"]
    resumed = train_steps(model, optimizer, D.Dist(), range(SAVE_AT, STEPS))
    assert resumed == pytest.approx(two["losses"][SAVE_AT:], abs=1e-5, rel=0)


def test_a_checkpoint_of_one_process_resumes_in_two(two, reference):
    assert two["from_one"] == pytest.approx(reference["losses"][SAVE_AT:], abs=1e-5, rel=0)


def test_the_consolidated_model_loads_as_one_folder_and_generates_the_same(two, reference):
    loaded = sw.EncoderDecoder.from_pretrained(two["out"] / "model").eval()
    src, mask = sources()
    with torch.no_grad():
        # the wrapped model generated these (FSDP2: sharded, through register_fsdp_forward_method)
        assert torch.equal(loaded.generate(src, mask, max_new_tokens=6, num_beams=1), two["tokens"])
        assert torch.equal(loaded.generate(src, mask, max_new_tokens=5, num_beams=3), two["beams"])
        scored = loaded.generate_with_scores(src, mask, max_new_tokens=4, num_beams=2)
        assert torch.equal(scored.sequences, two["scored"][0])
        torch.testing.assert_close(scored.scores, two["scored"][1], atol=1e-5, rtol=0)
        labels = global_batch(0)[2]
        ours = loaded(src, mask, labels=labels).logits
        ref = reference["model"](src, mask, labels=labels).logits  # trained in one process
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)
    assert loaded.decoder.head.proj.weight is loaded.decoder.embeddings.tokens.weight


def test_inside_gathered_each_rank_generates_on_its_own(two):
    """Different calls and lengths per rank: no rank waits for another (FSDP2 needs ``gathered``)."""
    trained = sw.EncoderDecoder.from_pretrained(two["out"] / "model").eval()
    initial = tiny_model().eval()
    for rank in (0, 1):
        got = torch.load(two["out"] / f"uneven-{rank}.pt", weights_only=True)
        for model, key in ((initial, "early"), (trained, "late")):
            want = uneven(model, rank)
            assert len(got[key]) == len(want) == (1 if rank == 0 else 3)
            for a, b in zip(got[key][:2], want[:2]):
                assert torch.equal(a, b), (rank, key)
            if rank == 1:
                torch.testing.assert_close(got[key][2], want[2], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# The same through the command line: torchrun -m seqweave train ... train.parallel=ddp|fsdp


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The demo's bert2bert (dropout 0) with a train: block, and its data: a config file in a folder."""
    import yaml
    from seqweave.demo import demo_config_path

    folder = tmp_path_factory.mktemp("project")
    for name, rows in (("train.jsonl", reversal_pairs(48, 0)), ("eval.jsonl", reversal_pairs(6, 1))):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = yaml.safe_load(demo_config_path().read_text())
    cfg["tokenizer"] = str(demo_config_path().parent / "demo_tokenizer")
    cfg["train"] = {"data": {"train": "train.jsonl", "eval": "eval.jsonl"}, "max_steps": 6, "batch_size": 8,
                    "learning_rate": 3e-3, "log_every": 1, "eval_every": 3, "save_every": 3, "device": "cpu"}
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    return folder / "config.yaml"


def _metrics(run: Path) -> tuple[dict[int, float], dict[int, float]]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return ({m["step"]: m["loss"] for m in lines if "loss" in m},
            {m["step"]: m["eval_loss"] for m in lines if "eval_loss" in m})


def torchrun_train(config: Path, run: Path, *args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "core"), str(ROOT / "plugins"),
                                                        os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "seqweave", "train", str(config), "-o", str(run), *args]
    return _run(cmd, env, f"torchrun -m seqweave train {' '.join(args)}")


@pytest.fixture(scope="module")
def one_process_run(project, tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("cli") / "one"
    sw.train(project, run)
    return run


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_torchrun_seqweave_train_logs_the_losses_of_one_process(parallel, project, one_process_run, tmp_path):
    run = tmp_path / parallel
    done = torchrun_train(project, run, f"train.parallel={parallel}")
    assert done.stdout.count("trained 6 steps") == 1  # rank 0 alone reports
    losses, evals = _metrics(run)
    want_losses, want_evals = _metrics(one_process_run)
    assert sorted(losses) == list(range(1, 7)) and sorted(evals) == [3, 6]
    assert list(losses.values()) == pytest.approx(list(want_losses.values()), abs=1e-5, rel=0)
    assert list(evals.values()) == pytest.approx(list(want_evals.values()), abs=1e-5, rel=0)
    state = json.loads((run / "checkpoints" / "step-6" / "trainer_state.json").read_text())
    assert state["world_size"] == 2
    assert sorted(p.name for p in (run / "checkpoints" / "step-6" / "state").iterdir()) == [
        ".metadata", "__0_0.distcp", "__1_0.distcp"]  # one shard a rank
    ours = sw.EncoderDecoder.from_pretrained(run / "model").eval()  # one consolidated folder
    single = sw.EncoderDecoder.from_pretrained(one_process_run / "model").eval()
    src, mask, labels = torch.tensor([[2, 9, 12, 3]]), torch.ones(1, 4, dtype=torch.long), torch.tensor([[9, 3]])
    with torch.no_grad():
        torch.testing.assert_close(ours(src, mask, labels=labels).logits, single(src, mask, labels=labels).logits,
                                   atol=1e-4, rtol=0)
    if parallel == "fsdp":  # the 2-process checkpoint of step 3 resumes in one process, on the CLI
        import shutil

        shutil.rmtree(run / "checkpoints" / "step-6")
        from seqweave.cli import main

        assert main(["train", str(project), "-o", str(run), "--resume"]) == 0
        resumed, _ = _metrics(run)
        assert [resumed[s] for s in (4, 5, 6)] == pytest.approx([want_losses[s] for s in (4, 5, 6)], abs=1e-5,
                                                                rel=0)


# ---------------------------------------------------------------------------------------------
# The worker (run by torchrun: python -m torch.distributed.run ... this_file OUT PARALLEL)


def worker(out: Path, parallel: str) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    torch.set_num_threads(1)
    dist = D.setup(parallel, "cpu")
    try:
        model = D.wrap(tiny_model(), dist, parallel)
        with D.gathered(model):  # before the first step too
            early = uneven(D.unwrap(model), dist.rank)
        optimizer = optimizer_of(model)
        first = train_steps(model, optimizer, dist, range(SAVE_AT))
        D.save_state(dist, out / "state", model, optimizer)
        # copies: on the CPU, DDP's "full" tensors are the live ones, which the next steps change
        full = _copy(D.full_state_dict(dist, model))
        optim_full = _copy(get_optimizer_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)))
        rest = train_steps(model, optimizer, dist, range(SAVE_AT, STEPS))
        model.eval()
        with torch.no_grad():  # every rank the same calls: FSDP2 all-gathers each layer as it runs
            tokens = D.unwrap(model).generate(*sources(), max_new_tokens=6, num_beams=1)
            beams = D.unwrap(model).generate(*sources(), max_new_tokens=5, num_beams=3)
            scored = D.unwrap(model).generate_with_scores(*sources(), max_new_tokens=4, num_beams=2)
        with D.gathered(model):
            late = uneven(D.unwrap(model), dist.rank)
        final = D.full_state_dict(dist, model)
        from_one = D.wrap(tiny_model(seed=1), dist, parallel)  # other weights: all come from the checkpoint
        from_one_optimizer = optimizer_of(from_one)
        D.load_state(dist, out / "one", from_one, from_one_optimizer)
        from_one_losses = train_steps(from_one, from_one_optimizer, dist, range(SAVE_AT, STEPS))
        tied = D.wrap(tiny_model(tied_encoder_decoder=True), dist, parallel)
        tied_losses = train_steps(tied, optimizer_of(tied), dist, range(3))
        accumulated = D.wrap(tiny_model(), dist, parallel)
        accumulated_losses = train_steps(accumulated, optimizer_of(accumulated), dist, range(3), micro=2)
        recomputing = tiny_model()
        recomputing.gradient_checkpointing_enable()  # each layer's forward runs again in backward
        recomputing = D.wrap(recomputing, dist, parallel)
        recomputed_losses = train_steps(recomputing, optimizer_of(recomputing), dist, range(3))
        torch.save({"early": early, "late": late}, out / f"uneven-{dist.rank}.pt")
        if dist.main:
            torch.save({"full": full, "optim": optim_full, "tokens": tokens, "beams": beams,
                        "scored": (scored.sequences, scored.scores)}, out / "saved.pt")
            D.unwrap(model).save_pretrained(out / "model", state_dict=final)
            (out / "losses.json").write_text(json.dumps({
                "losses": first + rest, "tied": tied_losses, "accumulated": accumulated_losses,
                "recomputed": recomputed_losses, "from_one": from_one_losses, "world": dist.world}))
        del model, from_one, tied, accumulated, recomputing  # DDP's reducers and FSDP2's meshes hold the group: free them first
        D.barrier(dist)
    finally:
        D.teardown(dist)


def _copy(tree: object) -> object:
    if isinstance(tree, torch.Tensor):
        return tree.clone()
    if isinstance(tree, dict):
        return {k: _copy(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_copy(v) for v in tree]
    return tree


def run_workers(out: Path, parallel: str, nproc: int = 2) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "core"), str(ROOT / "plugins"),
                                                        os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(HERE), str(out), parallel]
    _run(cmd, env, f"torchrun {parallel}")
    return json.loads((out / "losses.json").read_text())


def _run(cmd: list[str], env: dict[str, str], what: str) -> subprocess.CompletedProcess:
    # a session of its own: on a timeout the workers go too, not only torchrun
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            pytest.fail(f"{what} ran past 180 s:\n{stderr[-6000:]}")
    assert proc.returncode == 0, stdout[-3000:] + stderr[-6000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


if __name__ == "__main__":
    worker(Path(sys.argv[1]), sys.argv[2])
