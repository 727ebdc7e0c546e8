"""The ``train:`` block of a composition config: what ``seqweave train`` reads.

Pure pydantic models, below the registry like :mod:`seqweave.config` (which holds them as
``CompositionConfig.train``). Checks that need the run (the number of processes that must
divide the batch, files that must exist and hold the fields) happen when training starts,
in :mod:`seqweave.training.data` and :mod:`seqweave.training.loop`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["DATA_SUFFIXES", "TrainData", "TrainSettings"]

#: The data file formats, by suffix: JSON Lines, CSV, TSV.
DATA_SUFFIXES = (".jsonl", ".csv", ".tsv")


class TrainData(BaseModel):
    """``train.data``: the pair files and how to read them."""

    model_config = ConfigDict(extra="forbid")

    train: str = Field(
        description="Training pairs: a .jsonl, .csv or .tsv file (relative to the config file's folder; "
        "for a config given as a mapping, to the working folder)."
    )
    eval: str | None = Field(None, description="Evaluation pairs, same formats; null: no evaluation.")
    source_field: str = Field(
        "source", min_length=1, description="The field (column) holding the input text."
    )
    target_field: str = Field(
        "target", min_length=1, description="The field (column) holding the output text."
    )
    max_source_length: int | None = Field(
        None,
        ge=2,
        description="Cut longer inputs to this many tokens; null: what the encoder's positions hold.",
    )
    max_target_length: int | None = Field(
        None,
        ge=2,
        description="Cut longer targets (labels, eos included) to this many tokens; null: what the decoder's "
        "positions hold.",
    )

    @model_validator(mode="after")
    def _check(self) -> TrainData:
        for name in ("train", "eval"):
            value = getattr(self, name)
            if value is not None and Path(value).suffix.lower() not in DATA_SUFFIXES:
                raise ValueError(
                    f"{name}: {value!r} is not a data file; use .jsonl, .csv or .tsv "
                    "(the format is the suffix)"
                )
        if self.source_field == self.target_field:
            raise ValueError(f"source_field and target_field are both {self.source_field!r}")
        return self

    def resolved(self, base: Path) -> TrainData:
        """These settings with relative file paths made relative to ``base`` (a config file's folder)."""

        def at(value: str | None) -> str | None:
            if value is None or Path(value).expanduser().is_absolute():
                return value
            return str(base / value)

        return self.model_copy(update={"train": at(self.train), "eval": at(self.eval)})


class TrainSettings(BaseModel):
    """``train:``: a fine-tuning run (``seqweave train CONFIG -o RUN_DIR``; docs/training.md)."""

    model_config = ConfigDict(extra="forbid")

    data: TrainData = Field(description="The pair files and how to read them (`train.data.*` below).")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps to run; set this or `epochs`.")
    epochs: int | None = Field(None, ge=1, description="Passes over data.train; set this or `max_steps`.")
    batch_size: int = Field(
        8,
        ge=1,
        description="Pairs per optimizer step over all processes and accumulation steps (the global batch); "
        "each process takes batch_size / (processes * gradient_accumulation_steps) per micro-batch.",
    )
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    learning_rate: float = Field(5e-5, gt=0, allow_inf_nan=False, description="Peak learning rate (AdamW).")
    warmup_steps: int = Field(0, ge=0, description="Steps of linear warm-up from 0 to learning_rate.")
    warmup_ratio: float | None = Field(
        None,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="Warm-up as a fraction of the steps (instead of warmup_steps).",
    )
    lr_schedule: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="After warm-up: linear decay to 0, cosine decay to 0, or constant."
    )
    weight_decay: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="AdamW weight decay; never on biases and norm weights."
    )
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW's betas.")
    adam_epsilon: float = Field(1e-8, gt=0, allow_inf_nan=False, description="AdamW's epsilon.")
    max_grad_norm: float | None = Field(
        1.0,
        gt=0,
        allow_inf_nan=False,
        description="Clip the gradients' global norm to this; null: no clipping.",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="fp32; bf16 (autocast, fp32 weights); fp16 (autocast with a gradient scaler, CUDA only).",
    )
    gradient_checkpointing: bool = Field(
        False, strict=True, description="Recompute activations in backward: less memory, more time."
    )
    log_every: int = Field(10, ge=1, description="Write a metrics.jsonl line every this many steps.")
    eval_every: int | None = Field(
        None, ge=1, description="Evaluate every this many steps; null: once, at the end (with data.eval)."
    )
    save_every: int | None = Field(
        None, ge=1, description="Write checkpoints/step-N every this many steps; null: only the final model/."
    )
    keep_checkpoints: int | None = Field(
        None, ge=1, description="Keep only the newest this many checkpoints; null: keep all."
    )
    seed: int = Field(0, ge=0, description="Seeds initialisation, data order and dropout.")
    parallel: Literal["none", "ddp", "fsdp"] = Field(
        "none", description="Across processes started by torchrun: none, ddp or fsdp (FSDP2)."
    )
    device: str | None = Field(
        None,
        description="cpu, cuda, cuda:1 ...; null: cuda when available, else cpu "
        "(torchrun: the local rank's GPU).",
    )
    eval_batch_size: int | None = Field(
        None, ge=1, description="Pairs per evaluation batch per process; null: the training micro-batch."
    )
    eval_generate: bool = Field(
        False,
        strict=True,
        description="Also generate for data.eval and report BLEU and ROUGE-L "
        "(needs `pip install 'seqweave[train]'`).",
    )
    eval_max_new_tokens: int | None = Field(
        None, ge=1, description="Generation length for eval_generate; null: the config's generation block."
    )
    eval_num_beams: int | None = Field(
        None, ge=1, description="Beam width for eval_generate; null: the config's generation block."
    )

    @model_validator(mode="after")
    def _check(self) -> TrainSettings:
        # pydantic puts these at `train`: the messages name the fields.
        if (self.max_steps is None) == (self.epochs is None):
            both = "both are set" if self.max_steps is not None else "neither is set"
            raise ValueError(f"set exactly one of max_steps and epochs ({both})")
        if self.warmup_ratio is not None and self.warmup_steps:
            raise ValueError("set warmup_steps or warmup_ratio, not both")
        if self.batch_size % self.gradient_accumulation_steps:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of gradient_accumulation_steps "
                f"({self.gradient_accumulation_steps})"
            )
        if self.eval_generate and self.data.eval is None:
            raise ValueError("eval_generate needs data.eval")
        if not 0 <= self.adam_betas[0] < 1 or not 0 <= self.adam_betas[1] < 1:
            raise ValueError(f"adam_betas must be in [0, 1) (got {self.adam_betas})")
        return self

    def warmup(self, total_steps: int) -> int:
        """Warm-up steps of a run of ``total_steps``."""
        if self.warmup_ratio is not None:
            return math.ceil(self.warmup_ratio * total_steps)  # as transformers' TrainingArguments
        return self.warmup_steps
