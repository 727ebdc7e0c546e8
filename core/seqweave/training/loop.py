"""The trainer: ``seqweave train CONFIG -o RUN_DIR`` and :func:`seqweave.train` (docs/training.md).

One loop for one process and for many (torchrun; :mod:`seqweave.training.distributed` wraps
the model for DDP or FSDP2 and saves sharded checkpoints). The loss of a step is the sum of
the token losses over the global batch divided by the number of label tokens in it, whatever
the number of processes and accumulation steps: each process counts its labels, the counts
are summed across processes before any backward, and each backward loss is multiplied by the
number of processes because DDP and FSDP average gradients. Everything random derives from
``train.seed``: the model's initialisation, the epoch order (:mod:`seqweave.training.data`) and
the dropout of each step, re-seeded from (seed, step, rank); so a run resumed from a checkpoint
repeats the uninterrupted one exactly.

RUN_DIR holds ``config.yaml`` (the resolved config), ``metrics.jsonl``, ``checkpoints/step-N/``
(``state/``: model and optimizer; ``trainer_state.json``; ``rng/rank-R.safetensors``), each
written as one transaction, and the final ``model/`` (a Hugging Face folder, with tokenizers).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint.save import owned_by_save, write_pretrained
from ..checkpoint.transaction import recover, transaction
from ..composer import EncoderDecoder
from ..composition import load_config
from ..config import CompositionConfig
from ..errors import ConfigError
from ..pipeline import DECODER_TOKENIZER_DIR, _max_source_length, resolve_tokenizers
from ..progress import show_progress
from . import distributed as D
from .config import TrainSettings
from .data import Batches, Pairs, eval_batches, read_pairs, tokenize_pairs

__all__ = ["TrainResult", "build_optimizer", "latest_checkpoint", "lr_factor", "prepare_run", "run_step", "train"]

logger = logging.getLogger("seqweave")

CHECKPOINTS = "checkpoints"
MODEL = "model"
METRICS = "metrics.jsonl"
CONFIG = "config.yaml"
TRAINER_STATE = "trainer_state.json"
_STEP_DIR = re.compile(r"step-(\d+)")

#: Called with the step number after each optimizer step (and its logging and saving): tests stop
#: a run here by raising, as a kill would.
after_step: Callable[[int], None] | None = None


@dataclass
class TrainResult:
    """What a run did.

    Attributes:
        output_dir: RUN_DIR.
        model_dir: the final model folder (``RUN_DIR/model``).
        steps: optimizer steps taken in all (a resumed run counts the earlier ones).
        resumed_from: the step of the checkpoint the run continued from, or None.
        loss: the last step's training loss.
        eval: the last evaluation's results (``eval_loss``, and ``bleu``, ``rougeL`` with
            generation on), or None without ``data.eval``.
        metrics: every metrics.jsonl entry of the run (empty on ranks but 0).
        rank: this process's rank (0 without torchrun): only rank 0 reports.
    """

    output_dir: Path
    model_dir: Path
    steps: int
    resumed_from: int | None = None
    loss: float | None = None
    eval: dict[str, float] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    rank: int = 0


# ----------------------------------------------------------------------------------------
# RUN_DIR


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete ``checkpoints/step-N`` of a run folder, or None."""
    folder = Path(output_dir) / CHECKPOINTS
    if not folder.is_dir():
        return None
    found = []
    for entry in folder.iterdir():
        m = _STEP_DIR.fullmatch(entry.name)
        if m and entry.is_dir():
            recover(entry)  # a swap a kill left half done is finished or undone first
            if (entry / TRAINER_STATE).is_file():
                found.append((int(m.group(1)), entry))
    return max(found)[1] if found else None


def _check_run_dir(output_dir: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from (None: start at step 0); refuse to overwrite a run."""
    if resume:
        found = latest_checkpoint(output_dir)
        if found is None:
            logger.warning("%s: no checkpoint to resume from; starting at step 0", output_dir)
        return found
    ckpt = output_dir / CHECKPOINTS
    taken = [p.name for p in (output_dir / MODEL, output_dir / METRICS) if p.exists()]
    if ckpt.is_dir() and any(not n.startswith(".") for n in os.listdir(ckpt)):
        taken.insert(0, CHECKPOINTS)
    if taken:
        raise ConfigError(
            f"{output_dir}: holds a run ({', '.join(taken)}); pass --resume (resume=True) to continue it, "
            "or choose another folder"
        )
    return None


def _write_text(path: Path, text: str) -> None:
    """Write ``path`` whole or not at all (a temporary file renamed over it)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _config_yaml(cfg: CompositionConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


# ----------------------------------------------------------------------------------------
# The learning rate


def lr_factor(settings: TrainSettings, step: int, total: int) -> float:
    """The learning rate's factor at ``step`` (transformers' schedules with warm-up)."""
    warmup = settings.warmup(total)
    if step < warmup:
        return step / max(1, warmup)
    if settings.lr_schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if settings.lr_schedule == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def _param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay every matrix (weights, embeddings), not biases and norm weights (as transformers' Trainer)."""
    decay, no_decay = [], []
    for _, p in module.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(module: nn.Module, settings: TrainSettings, device: torch.device) -> torch.optim.AdamW:
    """The trainer's AdamW over ``module`` (wrapped already, for FSDP2): decay as :func:`_param_groups`."""
    return torch.optim.AdamW(
        _param_groups(module, settings.weight_decay),
        lr=settings.learning_rate,
        betas=settings.adam_betas,
        eps=settings.adam_epsilon,
        # one kernel for all parameters, on CUDA and the CPU (transformers' Trainer defaults to it
        # too, with torch >= 2.8): on the CPU benchmark 1.08x -> 1.20x at batch 4. FSDP2's sharded
        # parameters keep the default multi-tensor path.
        fused=device.type in ("cuda", "cpu") and settings.parallel != "fsdp",
    )


# ----------------------------------------------------------------------------------------
# RNG


def _step_seed(seed: int, step: int, rank: int) -> int:
    digest = hashlib.sha256(f"seqweave/{seed}/{step}/{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: Mapping[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ----------------------------------------------------------------------------------------
# The run


@dataclass
class _Run:
    """Everything a step needs, made once by :func:`train`."""

    cfg: CompositionConfig | None
    settings: TrainSettings
    dist: D.Dist
    model: EncoderDecoder  # unwrapped
    module: nn.Module  # wrapped for the parallel mode
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: Any
    batches: Batches
    eval_pairs: Pairs | None
    total_steps: int
    output_dir: Path | None
    tokenizers: tuple[Any, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    eval_results: dict[str, float] | None = None

    @property
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        p = self.settings.precision
        if p == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if p == "bf16" else torch.float16
        return torch.autocast(self.dist.device.type, dtype=dtype)


def train(
    config: str | os.PathLike | Mapping[str, Any] | CompositionConfig,
    output_dir: str | os.PathLike,
    *,
    overrides: Sequence[str] = (),
    resume: bool = False,
) -> TrainResult:
    """Fine-tune the model a composition config describes, as its ``train:`` block says.

    Args:
        config: a composition file, mapping or :class:`~seqweave.CompositionConfig` with a
            ``train:`` block (files in it are relative to the file's folder, or to the working
            folder for a mapping).
        output_dir: RUN_DIR: gets ``model/``, ``checkpoints/step-N/``, ``metrics.jsonl``,
            ``config.yaml``.
        overrides: ``key.sub=value`` changes (``train.max_steps=100``).
        resume: continue from RUN_DIR's newest complete checkpoint (from step 0 when it has
            none). Without it, a RUN_DIR that holds a run is an error.

    Returns:
        What the run did (:class:`TrainResult`).

    Raises:
        ConfigError: no ``train:`` block, an invalid one, unreadable data, a batch that the
            number of processes does not divide, or a RUN_DIR that holds a run.
    """
    cfg = load_config(config, overrides)
    source = str(config) if isinstance(config, (str, os.PathLike)) else "config"
    if cfg.train is None:
        raise ConfigError(f"{source}: no train: block; add one (docs/training.md) to train this composition")
    settings = cfg.train
    # a file's paths are already its folder's; a mapping's are the working folder's, made absolute
    # here so that RUN_DIR/config.yaml reads the same data from anywhere
    settings.data = settings.data.resolved(Path.cwd())
    output_dir = Path(output_dir)
    dist = D.setup(settings.parallel, settings.device)
    try:
        return _train(cfg, settings, output_dir, resume, dist)
    finally:
        D.teardown(dist)


def _train(
    cfg: CompositionConfig, settings: TrainSettings, output_dir: Path, resume: bool, dist: D.Dist
) -> TrainResult:
    per_micro, rest = divmod(settings.batch_size, dist.world * settings.gradient_accumulation_steps)
    if rest or not per_micro:
        raise ConfigError(
            f"train.batch_size: {settings.batch_size} pairs do not split evenly over "
            f"{dist.world} process(es) "
            f"x {settings.gradient_accumulation_steps} accumulation step(s); use a multiple of "
            f"{dist.world * settings.gradient_accumulation_steps}"
        )
    if settings.precision == "fp16" and dist.device.type != "cuda":
        raise ConfigError(f"train.precision: fp16 needs CUDA (the device is {dist.device}); use bf16 or fp32")
    checkpoint, problem = None, None
    if dist.main:  # one process looks, all of them act on what it found (or fail with it)
        try:
            checkpoint = _check_run_dir(output_dir, resume)
        except ConfigError as e:
            problem = str(e)
    checkpoint, problem = D.broadcast_object(dist, (checkpoint, problem))
    if problem is not None:
        raise ConfigError(problem)
    if dist.main:
        output_dir.mkdir(parents=True, exist_ok=True)
        _write_text(output_dir / CONFIG, _config_yaml(cfg))
    run = _setup(cfg, settings, output_dir, dist)
    start = _load_checkpoint(run, Path(checkpoint)) if checkpoint is not None else 0
    if start == 0 and dist.main:
        _write_text(output_dir / METRICS, "")
    _loop(run, start)
    if run.eval_pairs is not None and (
        run.eval_results is None or run.eval_results.get("step") != run.total_steps
    ):
        _evaluate(run, run.total_steps)
    _save_model(run)
    last = next((m["loss"] for m in reversed(run.metrics) if "loss" in m), None)
    evaluation = {k: v for k, v in (run.eval_results or {}).items() if k != "step"} or None
    return TrainResult(
        output_dir=output_dir,
        model_dir=output_dir / MODEL,
        steps=run.total_steps,
        resumed_from=start if checkpoint is not None else None,
        loss=last,
        eval=evaluation,
        metrics=run.metrics,
        rank=dist.rank,
    )


def _token_ids(model: EncoderDecoder) -> tuple[int | None, int | None]:
    """(decoder start, eos) as the labels need them."""
    defaults = model.generation_defaults()
    return defaults.decoder_start_token_id, defaults.eos_ids[0] if defaults.eos_ids else None


def _source_pad(model: EncoderDecoder, tokenizers: tuple[Any, Any]) -> int:
    """The id that pads sources: the source tokenizer's (RoBERTa's positions count from it), else the
    model's."""
    if tokenizers[0].pad_token_id is not None:
        return tokenizers[0].pad_token_id
    return model.pad_token_id if model.pad_token_id is not None else 0


def _read(path: str, settings: TrainSettings, model: EncoderDecoder, tokenizers: tuple[Any, Any]) -> Pairs:
    data = settings.data
    start, eos = _token_ids(model)
    max_source = data.max_source_length or _max_source_length(model.encoder)
    max_target = data.max_target_length or _max_source_length(model.decoder)
    pairs = read_pairs(path, data.source_field, data.target_field)
    return tokenize_pairs(
        pairs,
        *tokenizers,
        decoder_start=start,
        eos=eos,
        max_source_length=max_source,
        max_target_length=max_target,
    )


def _setup(cfg: CompositionConfig, settings: TrainSettings, output_dir: Path, dist: D.Dist) -> _Run:
    torch.manual_seed(settings.seed)  # the initialisation of whatever is not pretrained
    model = EncoderDecoder.from_config(cfg)
    tokenizers = resolve_tokenizers(model)
    train_pairs = _read(settings.data.train, settings, model, tokenizers)
    eval_pairs = _read(settings.data.eval, settings, model, tokenizers) if settings.data.eval else None
    batches = Batches(train_pairs, settings.batch_size, settings.seed, _source_pad(model, tokenizers))
    total = settings.max_steps or (settings.epochs or 0) * batches.steps_per_epoch
    return prepare_run(model, settings, dist, batches, total, cfg=cfg, eval_pairs=eval_pairs,
                       output_dir=output_dir, tokenizers=tokenizers)


def prepare_run(
    model: EncoderDecoder,
    settings: TrainSettings,
    dist: D.Dist,
    batches: Any,
    total_steps: int,
    *,
    cfg: CompositionConfig | None = None,
    eval_pairs: Pairs | None = None,
    output_dir: Path | None = None,
    tokenizers: tuple[Any, Any] = (None, None),
) -> _Run:
    """What :func:`run_step` needs for ``model``: wrapped for ``settings.parallel``, its optimizer,
    schedule and gradient scaler. :func:`train` makes one from a config and data files;
    ``benchmarks/train.py`` from a loaded model and fixed batches (anything with
    :meth:`~seqweave.training.data.Batches.micro_batches`)."""
    if settings.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    module = D.wrap(model, dist, settings.parallel, settings.precision)
    optimizer = build_optimizer(module, settings, dist.device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(settings, s, total_steps))
    scaler = torch.amp.GradScaler("cuda") if settings.precision == "fp16" else None
    return _Run(
        cfg=cfg,
        settings=settings,
        dist=dist,
        model=model,
        module=module,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        batches=batches,
        eval_pairs=eval_pairs,
        total_steps=total_steps,
        output_dir=output_dir,
        tokenizers=tokenizers,
    )


def run_step(run: _Run, step: int) -> torch.Tensor:
    """One optimizer step; returns [loss, tokens] of the global batch, on the device (no host sync)."""
    dist, settings = run.dist, run.settings
    torch.manual_seed(_step_seed(settings.seed, step, dist.rank))  # dropout: the same on a resumed run
    micro = run.batches.micro_batches(step, dist.rank, dist.world, settings.gradient_accumulation_steps)
    local = torch.tensor(
        [float(sum(int(b.labels.ne(-100).sum()) for b in micro)), float(sum(b.tokens for b in micro))]
    )
    # [labels, tokens] over all processes: the loss's divisor, summed before any backward
    count, tokens = D.all_reduce_sum(dist, local.to(dist.device)).unbind()
    total = torch.zeros((), device=dist.device)
    run.module.train()
    for j, batch in enumerate(micro):
        batch = batch.to(dist.device)
        with D.gradient_sync(run.module, j == len(micro) - 1), run.autocast:
            loss = run.module(**batch.model_inputs(), num_items_in_batch=count).loss
        total += loss.detach().float()
        scaled = loss * dist.world  # DDP and FSDP average gradients over processes; we want their sum
        (run.scaler.scale(scaled) if run.scaler is not None else scaled).backward()
    if run.scaler is not None:
        run.scaler.unscale_(run.optimizer)
    if settings.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(run.module.parameters(), settings.max_grad_norm)
    if run.scaler is not None:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return torch.stack([D.all_reduce_sum(dist, total), tokens])


def _loop(run: _Run, start: int) -> None:
    settings, dist = run.settings, run.dist
    bar = _Bar(run.total_steps, start) if dist.main and show_progress() and start < run.total_steps else None
    window, window_start = torch.zeros((), device=dist.device), time.perf_counter()
    try:
        for step in range(start, run.total_steps):
            lr = run.scheduler.get_last_lr()[0]
            summed = run_step(run, step)
            window += summed[1]
            done = step + 1
            if done % settings.log_every == 0 or done == run.total_steps:
                elapsed = time.perf_counter() - window_start
                _log(
                    run,
                    {
                        "step": done,
                        "loss": float(summed[0]),
                        "lr": lr,
                        "tokens_per_s": round(float(window) / max(elapsed, 1e-9), 1),
                        "epoch": round(done / run.batches.steps_per_epoch, 4),
                    },
                )
                window.zero_()
                window_start = time.perf_counter()
            if bar is not None:  # a host sync per step: only on a terminal
                bar.update(float(summed[0]), lr, int(summed[1]))
            _after(run, done)
    finally:
        if bar is not None:
            bar.close()


def _after(run: _Run, done: int) -> None:
    """After step ``done``: evaluation, checkpoint and the test hook, as the settings say."""
    settings = run.settings
    if run.eval_pairs is not None and settings.eval_every and done % settings.eval_every == 0:
        _evaluate(run, done)
    if settings.save_every and done % settings.save_every == 0:
        _save_checkpoint(run, done)
    if after_step is not None:
        after_step(done)


class _Bar:
    """A tqdm bar of steps on rank 0's terminal (its ETA), showing loss, learning rate and tokens/s."""

    def __init__(self, total: int, start: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=total, initial=start, desc="training", unit="step", dynamic_ncols=True, leave=False
        )
        self.t0, self.tokens = time.perf_counter(), 0

    def update(self, loss: float, lr: float, tokens: int) -> None:
        self.tokens += tokens
        rate = self.tokens / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{rate:,.0f}", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _log(run: _Run, entry: dict[str, Any]) -> None:
    if run.dist.main:
        with open(run.output_dir / METRICS, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
        run.metrics.append(entry)


# ----------------------------------------------------------------------------------------
# Evaluation


def _evaluate(run: _Run, step: int) -> None:
    """Loss over data.eval, and with eval_generate BLEU and ROUGE-L; every process takes its share.

    It runs on the unwrapped model inside :func:`~seqweave.training.distributed.gathered`: every
    weight whole on every rank, so that no forward is a collective and the ranks may run different
    numbers of them (FSDP2 would otherwise all-gather in each, and generation stops at different
    lengths on different ranks).
    """
    assert run.eval_pairs is not None
    dist, settings = run.dist, run.settings
    size = settings.eval_batch_size or settings.batch_size // (
        dist.world * settings.gradient_accumulation_steps
    )
    pad = _source_pad(run.model, run.tokenizers)
    sums = torch.zeros(2, device=dist.device)
    run.model.eval()
    with D.gathered(run.module), torch.no_grad():
        for batch in eval_batches(run.eval_pairs, size, dist.rank, dist.world, pad):
            batch = batch.to(dist.device)
            with run.autocast:
                out = run.model(**batch.model_inputs(), num_items_in_batch=1)  # the sum of the token losses
            sums += torch.stack([out.loss.detach().float(), batch.labels.ne(-100).sum().float()])
        predictions = _generate(run, size, pad) if settings.eval_generate else None
    run.model.train()
    sums = D.all_reduce_sum(dist, sums)
    results: dict[str, float] = {"eval_loss": float(sums[0] / sums[1].clamp(min=1))}
    if predictions is not None:
        from .metrics import generation_metrics  # sacrebleu and rouge-score: the `train` extra

        gathered = _gather(dist, predictions)
        if dist.main:
            by_index = {i: text for part in gathered for i, text in part.items()}
            ordered = [by_index[i] for i in range(len(run.eval_pairs))]
            results.update(generation_metrics(ordered, run.eval_pairs.targets))
    run.eval_results = {"step": step, **results}
    _log(run, {"step": step, **results})


def _generate(run: _Run, batch_size: int, pad: int) -> dict[int, str]:
    """This process's share of the eval sources (every world-th by length), generated and decoded."""
    pairs, target_tok = run.eval_pairs, run.tokenizers[1]
    assert pairs is not None
    options: dict[str, Any] = {"num_return_sequences": 1}  # one prediction per reference
    if run.settings.eval_max_new_tokens is not None:
        options["max_new_tokens"] = run.settings.eval_max_new_tokens
    if run.settings.eval_num_beams is not None:
        options["num_beams"] = run.settings.eval_num_beams
    mine = sorted(range(len(pairs)), key=lambda i: len(pairs.sources[i]))[run.dist.rank :: run.dist.world]
    out: dict[int, str] = {}
    with run.autocast:
        for start in range(0, len(mine), batch_size):
            chunk = mine[start : start + batch_size]
            ids = torch.full((len(chunk), max(len(pairs.sources[i]) for i in chunk)), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, i in enumerate(chunk):
                ids[r, : len(pairs.sources[i])] = torch.tensor(pairs.sources[i])
                mask[r, : len(pairs.sources[i])] = 1
            generated = run.model.generate(
                ids.to(run.dist.device), attention_mask=mask.to(run.dist.device), **options
            )
            out.update({i: target_tok.decode(row) for i, row in zip(chunk, generated, strict=True)})
    return out


def _gather(dist: D.Dist, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a collective)."""
    if dist.world == 1:
        return [obj]
    import torch.distributed as tdist

    out: list[Any] = [None] * dist.world
    tdist.all_gather_object(out, obj)
    return out


# ----------------------------------------------------------------------------------------
# Checkpoints


def _trainer_state(run: _Run, step: int) -> dict[str, Any]:
    return {
        "step": step,
        "epoch": step // run.batches.steps_per_epoch,
        "pairs_consumed": step * run.settings.batch_size,
        "total_steps": run.total_steps,
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else None,
        "seed": run.settings.seed,
        "batch_size": run.settings.batch_size,
        "world_size": run.dist.world,
        "metrics": run.metrics if run.dist.main else [],
        "eval": run.eval_results,
    }


def _save_checkpoint(run: _Run, step: int) -> None:
    """``checkpoints/step-N`` as one transaction: rank 0 stages it, every rank writes its part, rank 0
    commits."""
    from safetensors.torch import save_file

    dist = run.dist
    folder = run.output_dir / CHECKPOINTS / f"step-{step}"
    with transaction(folder) if dist.main else contextlib.nullcontext(None) as stage:
        stage = Path(D.broadcast_object(dist, str(stage) if dist.main else None))
        D.save_state(dist, stage / "state", run.module, run.optimizer)
        (stage / "rng").mkdir(exist_ok=True)
        save_file(_rng_state(), str(stage / "rng" / f"rank-{dist.rank}.safetensors"))
        D.barrier(dist)
        if dist.main:  # written last: a step folder without it is no checkpoint
            _write_json(stage / TRAINER_STATE, _trainer_state(run, step))
    D.barrier(dist)
    if dist.main and run.settings.keep_checkpoints is not None:
        _prune(run.output_dir / CHECKPOINTS, run.settings.keep_checkpoints)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _prune(folder: Path, keep: int) -> None:
    """Remove all but the newest ``keep`` checkpoints; each is renamed away first, so that a kill
    mid-removal never leaves a partial folder that looks like a checkpoint."""
    steps = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_DIR.fullmatch(p.name)))
    for _, path in steps[:-keep]:
        gone = path.with_name(f".{path.name}.removing")
        os.replace(path, gone)
        shutil.rmtree(gone, ignore_errors=True)


def _load_checkpoint(run: _Run, folder: Path) -> int:
    """Restore model, optimizer, scheduler, scaler and RNG from ``folder``; returns its step."""
    from safetensors.torch import load_file

    state = json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))
    if state["batch_size"] != run.settings.batch_size or state["seed"] != run.settings.seed:
        raise ConfigError(
            f"{folder}: was saved with train.batch_size={state['batch_size']} and "
            f"train.seed={state['seed']}; "
            "a resumed run must keep both (the data position depends on them)"
        )
    D.load_state(run.dist, folder / "state", run.module, run.optimizer)
    run.scheduler.load_state_dict(state["scheduler"])
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    rng = folder / "rng" / f"rank-{run.dist.rank}.safetensors"
    if rng.is_file():  # saved by fewer processes: this rank's RNG is re-seeded each step anyway
        _set_rng_state(load_file(str(rng)))
    if run.dist.main:
        run.metrics = [m for m in state.get("metrics", []) if m.get("step", 0) <= state["step"]]
        # metrics.jsonl: the lines up to the checkpoint (later ones were logged by the run that died)
        _write_text(run.output_dir / METRICS, "".join(json.dumps(m) + "\n" for m in run.metrics))
    run.eval_results = state.get("eval")
    logger.info("resuming %s from step %d", run.output_dir, state["step"])
    return int(state["step"])


def _owned_by_model(name: str) -> bool:
    from ..hub import TOKENIZER_FILES

    return owned_by_save(name) or name in TOKENIZER_FILES or name == DECODER_TOKENIZER_DIR


def _save_model(run: _Run) -> None:
    """The final ``model/``: weights (gathered on rank 0), configs and tokenizers in one transaction."""
    state = D.full_state_dict(run.dist, run.module)
    if run.dist.main:
        source_tok, target_tok = run.tokenizers
        with transaction(run.output_dir / MODEL, owned=_owned_by_model) as stage:
            write_pretrained(run.model, stage, state_dict=state)
            source_tok.save(stage)
            if target_tok is not source_tok:
                target_tok.save(stage / DECODER_TOKENIZER_DIR)
    D.barrier(run.dist)
