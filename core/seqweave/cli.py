"""The ``seqweave`` command line (DESIGN.md section 4), built on click.

Every user error (a bad config, checkpoint or argument) prints one ``error: ...`` line
(or a short list) naming the file and the field, and exits with status 2; ``--debug``
adds the traceback. ``import seqweave`` never imports this module.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from .errors import SeqweaveError

__all__ = ["cli", "main"]

#: Exit status of every error the user can fix (click uses the same for usage errors).
USER_ERROR = 2
DTYPES = ("float32", "float16", "bfloat16")


def _dtype(name: str | None) -> Any:
    import torch

    return None if name is None else getattr(torch, name)


def _status(message: str) -> None:
    """A progress note on a terminal; silent when stderr is piped."""
    from .progress import show_progress

    if show_progress():
        click.echo(message, err=True)


class _ReaderGone(Exception):
    """Stdout's reader went away (``| head -1``); not an OSError, so that click does not exit 1 on it."""


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError as e:
            raise _ReaderGone() from e


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks and info logs.")
@click.version_option(package_name="seqweave", prog_name="seqweave")
def cli(debug: bool) -> None:
    """Compose any registered encoder with any registered decoder into one seq2seq model."""


# ----------------------------------------------------------------------------------------
# build


@cli.command(short_help="Compose a model from a config file and save it.")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write the checkpoint to (created if needed).",
)
@click.option("--dtype", type=click.Choice(DTYPES), default=None, help="Cast the weights before saving.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Write even into a folder the config loads from, or a non-empty folder that is no checkpoint.",
)
def build(config: Path, overrides: tuple[str, ...], output: Path, dtype: str | None, overwrite: bool) -> None:
    """Compose the model CONFIG describes and save it to a checkpoint folder.

    CONFIG is a .yaml, .toml or .json composition file; KEY=VALUE pairs override its
    fields (decoder.config.num_hidden_layers=2). Pretrained parts are loaded, the rest
    initialised; tokenizers found for the model are saved with it. The folder is replaced
    as a whole (the old checkpoint or the new one, never a mix); a folder that a part of
    CONFIG is loaded from, or a non-empty folder that is not a checkpoint, needs --overwrite.
    """
    import seqweave as sw

    from .checkpoint.save import write_pretrained
    from .checkpoint.transaction import transaction
    from .pipeline import DECODER_TOKENIZER_DIR, resolve_tokenizers

    cfg = sw.load_config(config, list(overrides))
    if not overwrite:
        _check_output(output, cfg)
    _status(f"composing {config} ...")
    model = sw.EncoderDecoder.from_config(cfg, dtype=_dtype(dtype))
    try:
        enc, dec = resolve_tokenizers(model)
    except sw.ConfigError:
        enc = dec = None  # a model without a tokenizer is still a model; generate will ask for one
    try:
        with transaction(output, owned=_owned_by_build) as stage:
            write_pretrained(model, stage)
            saved = ["config.json", "generation_config.json", "model.safetensors"]
            if enc is not None:
                saved.append(enc.save(stage).name)
                if dec is not enc:
                    dec.save(stage / DECODER_TOKENIZER_DIR)
                    saved.append(f"{DECODER_TOKENIZER_DIR}/tokenizer.json")
    except Exception as e:
        error = _write_error(output, e)
        if error is e:
            raise
        raise error from e
    from .summary import describe

    d = describe(model)
    click.echo(f"saved {d['architecture']} to {output}: {', '.join(saved)}")
    click.echo(
        f"{d['parameters']:,} parameters; {len(d['new'])}/{d['tensors']} tensors new, "
        f"{len(d['pretrained'])} pretrained" + ("" if enc is not None else "; no tokenizer found")
    )


def _owned_by_build(name: str) -> bool:
    """The entries ``build`` writes: an old folder's stale ones of these are not carried over."""
    from .checkpoint.save import owned_by_save
    from .hub import TOKENIZER_FILES
    from .pipeline import DECODER_TOKENIZER_DIR

    return owned_by_save(name) or name in TOKENIZER_FILES or name == DECODER_TOKENIZER_DIR


def _check_output(output: Path, cfg: Any) -> None:
    """Refuse a folder that a part of ``cfg`` is loaded from, or a non-empty folder that is no checkpoint."""
    import os

    from .checkpoint.save import owned_by_save
    from .errors import ConfigError

    target = os.path.realpath(output)
    sources = {
        "encoder.pretrained": cfg.encoder.pretrained,
        "decoder.pretrained": cfg.decoder.pretrained,
        "tokenizer": cfg.tokenizer,
        "decoder_tokenizer": cfg.decoder_tokenizer,
    }
    for field, source in sources.items():
        if source is None or not os.path.exists(Path(source).expanduser()):
            continue  # a Hub id: in the cache, not in the output folder
        real = os.path.realpath(Path(source).expanduser())
        inside = os.path.relpath(real, target).split(os.sep)[0] if real.startswith(target + os.sep) else None
        if real == target or (inside is not None and _owned_by_build(inside)):
            raise ConfigError(f"{output}: the config's {field} is loaded from this folder ({source}); "
                              "building into it replaces it (pass --overwrite to do so)")
    try:
        names = os.listdir(output)
    except OSError:
        return  # absent (created), or not readable: the save itself will say what is wrong
    if names and not any(owned_by_save(n) for n in names):  # config.json, a weight file, shard or index
        raise ConfigError(f"{output}: not empty and not a checkpoint (no config.json or weight file); "
                              "building into it replaces its files (pass --overwrite to do so)")


def _write_error(output: Path, e: Exception) -> Exception:
    """A failed write of the checkpoint (disk full, no permission, not a folder) as a user error naming it."""
    if isinstance(e, OSError):
        where = f" ({e.filename}: {e.strerror})" if e.filename and e.strerror else f" ({e.strerror or e})"
        return click.ClickException(f"{output}: cannot write the checkpoint{where}")
    if type(e).__name__ == "SafetensorError":  # safetensors' own I/O errors are not OSErrors
        return click.ClickException(f"{output}: cannot write the checkpoint ({e})")
    return e


# ----------------------------------------------------------------------------------------
# train


@cli.command(short_help="Fine-tune as a config's train: block says.")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="RUN_DIR: gets model/, checkpoints/step-N/, metrics.jsonl and config.yaml.",
)
@click.option("--resume", is_flag=True, help="Continue from RUN_DIR's newest complete checkpoint.")
def train(config: Path, overrides: tuple[str, ...], output: Path, resume: bool) -> None:
    """Fine-tune the model CONFIG describes on the pairs its train: block names.

    KEY=VALUE pairs override fields (train.max_steps=100, train.parallel=ddp). Under torchrun
    (`torchrun --nproc-per-node N -m seqweave train ...`) every process runs this; only the
    first logs and shows progress. A RUN_DIR that holds a run needs --resume (or another folder).
    """
    from .training.loop import train as run_training

    result = run_training(config, output, overrides=list(overrides), resume=resume)
    if result.rank == 0:
        done = f"trained {result.steps} steps" + (
            f" (resumed at step {result.resumed_from})" if result.resumed_from is not None else "")
        loss = f"; loss {result.loss:.4f}" if result.loss is not None else ""
        evaluation = "".join(f"; {k} {v:.4f}" for k, v in (result.eval or {}).items())
        click.echo(f"{done}{loss}{evaluation}")
        click.echo(f"saved {result.model_dir} (metrics: {result.output_dir / 'metrics.jsonl'})")


# ----------------------------------------------------------------------------------------
# generate


def _read_stdin() -> str:
    """All of stdin as UTF-8 text; a closed, unreadable or non-UTF-8 stdin is a user error naming it."""
    stream = sys.stdin
    if stream is None or getattr(stream, "closed", False):
        raise click.UsageError("stdin: it is closed; give TEXT or --input FILE instead of -")
    try:
        raw = stream.buffer.read() if hasattr(stream, "buffer") else stream.read()
    except (OSError, ValueError) as e:
        raise click.UsageError(f"stdin: cannot read it ({e})") from None
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise click.UsageError(f"stdin: not UTF-8 text (byte {e.start}: {e.reason})") from None


def _read_inputs(texts: Sequence[str], input_file: str | None) -> list[str]:
    """TEXT arguments, ``-`` (stdin) and --input FILE, one input per non-empty line of a file."""
    items: list[str] = []
    for n, t in enumerate(texts, 1):
        if t == "-":
            items += [line for line in _read_stdin().splitlines() if line.strip()]
        else:
            try:
                t.encode("utf-8")  # undecodable argv bytes arrive as lone surrogates
            except UnicodeEncodeError:
                raise click.BadParameter(f"argument {n} is not UTF-8 text", param_hint="TEXT") from None
            items.append(t)
    if input_file is not None:
        if input_file == "-":
            items += [line for line in _read_stdin().splitlines() if line.strip()]
        else:
            try:
                text = Path(input_file).read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise click.BadParameter(
                    f"{input_file}: not UTF-8 text (byte {e.start}: {e.reason})", param_hint="--input"
                ) from None
            except OSError as e:
                raise click.BadParameter(f"{input_file}: {e.strerror or e}", param_hint="--input") from None
            items += [line for line in text.splitlines() if line.strip()]
    if not items:
        if texts or input_file is not None:
            raise click.UsageError("no input text: the file or stdin had no non-empty lines")
        raise click.UsageError("give TEXT, --input FILE, or - to read stdin")
    return items


#: Flag spellings that differ from ``--field-name/--no-field-name`` (kept from earlier releases).
_FLAG_NAMES = {"do_sample": "--do-sample/--greedy"}
#: Fields with no flag, and why: they change what ``generate`` returns in Python (an output
#: object instead of token ids), and the command prints text.
NOT_FLAGS = {
    "output_scores": "the command prints text, not scores",
    "output_logits": "the command prints text, not logits",
    "return_dict_in_generate": "the command prints text, not an output object",
}


def _generation_flags(command: Callable[..., Any]) -> Callable[..., Any]:
    """One flag per :class:`~seqweave.GenerationSettings` field, typed and described by the field.

    ``--max-new-tokens INTEGER``, ``--top-p FLOAT``; a field that takes a bool becomes
    ``--x/--no-x`` (its other values stay config-only, as early_stopping's "never"); a
    list becomes a repeatable flag (``--eos-token-id 2 --eos-token-id 5``), a list of lists
    a repeatable flag of comma-separated ids (``--bad-words-ids 5,6 --bad-words-ids 9``).
    Every flag defaults to None, "the model's setting"; values are checked by the model, not
    here. The fields of :data:`NOT_FLAGS` have none.
    """
    from .config import GenerationSettings

    for name, field in reversed(GenerationSettings.model_fields.items()):
        if name in NOT_FLAGS:
            continue
        flag = "--" + name.replace("_", "-")
        types = _scalar_types(field.annotation)
        help_text = (field.description or "").replace("%", "%%")
        if _is_list_of_lists(field.annotation):
            help_text += " One comma-separated sequence per flag (5,6); repeat the flag for several."
            command = click.option(
                flag, name, type=_IdList(), multiple=True, help=help_text, metavar="ID[,ID...]"
            )(command)
        elif bool in types:
            decls = _FLAG_NAMES.get(name, f"{flag}/--no-{flag[2:]}")
            command = click.option(decls, name, default=None, help=help_text)(command)
        elif list in types:
            kind = next((t for t in types if t in (int, float, str)), str)
            help_text += " Repeat the flag for several."
            command = click.option(flag, name, type=kind, multiple=True, help=help_text)(command)
        else:
            kind = next((t for t in types if t in (int, float)), str)
            command = click.option(flag, name, type=kind, default=None, help=help_text)(command)
    return command


class _IdList(click.ParamType):
    """A comma-separated list of token ids: ``5,6`` -> [5, 6]."""

    name = "ids"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, list):
            return value
        try:
            return [int(v) for v in str(value).split(",")]
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of token ids", param, ctx)


def _is_list_of_lists(annotation: Any) -> bool:
    """Whether the annotation takes a list of lists (``list[list[int]] | None``)."""
    import typing

    return any(
        typing.get_origin(a) is list and any(typing.get_origin(x) is list for x in typing.get_args(a))
        for a in (*typing.get_args(annotation), annotation)
    )


def _scalar_types(annotation: Any) -> set[Any]:
    """The types a field's annotation takes: ``int | list[int] | None`` -> {int, list}."""
    import types
    import typing

    is_union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    args = typing.get_args(annotation) if is_union else ()
    found = set()
    for a in args or (annotation,):
        origin = typing.get_origin(a)
        found.add(list if origin is list else str if origin is typing.Literal else a)
        if origin is list:
            found |= set(typing.get_args(a))
    return found


def _generation_options(options: dict[str, Any]) -> dict[str, Any]:
    """The flags' values as generation options: a repeatable flag not given is None, not ()."""
    return {k: (list(v) or None) if isinstance(v, tuple) else v for k, v in options.items()}


@cli.command(short_help="Text in, text out.")
@click.argument("model")
@click.argument("texts", nargs=-1, metavar="[TEXT]...")
@click.option(
    "-i", "--input", "input_file", metavar="FILE", help="Read inputs from FILE (one per line; - for stdin)."
)
@click.option("--tokenizer", help="Tokenizer folder or Hub id (default: from MODEL or its config).")
@click.option("--decoder-tokenizer", help="Target-side tokenizer when the decoder has its own vocabulary.")
@click.option("--revision", help="Hub revision of MODEL.")
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Inputs per batch."
)
@_generation_flags
@click.option(
    "--seed",
    type=click.IntRange(0, 2**64 - 1),
    help="Seed for sampling, 0 to 2**64-1 (a generator for this run, not a setting).",
)
@click.option("--device", default="cpu", show_default=True, help="Where the model runs (cpu, cuda, cuda:1).")
@click.option("--dtype", type=click.Choice(DTYPES), default=None, help="Cast the weights when loading.")
@click.option("--jsonl", is_flag=True, help="Print one JSON object per input: {input, output}.")
def generate(
    model: str,
    texts: tuple[str, ...],
    input_file: str | None,
    tokenizer: str | None,
    decoder_tokenizer: str | None,
    revision: str | None,
    batch_size: int,
    device: str,
    dtype: str | None,
    jsonl: bool,
    **options: Any,
) -> None:
    """Generate text for each TEXT with MODEL (a checkpoint folder, Hub id or config file).

    Inputs come from TEXT arguments, --input FILE or stdin (-), one per line, and are
    generated in batches; outputs are printed one per line, in input order. Generation
    flags left out take the model's settings (its config's generation: block).
    """
    from .pipeline import TextToText, load_model, resolve_tokenizers

    device = _check_device(device)
    items = _read_inputs(texts, input_file)
    _status(f"loading {model} ...")
    loaded, folder = load_model(model, revision=revision, device=device, dtype=_dtype(dtype))
    enc, dec = resolve_tokenizers(loaded, folder, tokenizer, decoder_tokenizer)
    pipe = TextToText(loaded, enc, dec, batch_size=batch_size, device=device)
    for text, out in zip(items, pipe.iter_generate(items, **_generation_options(options)), strict=True):
        if jsonl:
            click.echo(json.dumps({"input": text, "output": out}, ensure_ascii=False))
        else:
            for line in [out] if isinstance(out, str) else out:
                click.echo(line.replace("\n", " "))


def _check_device(name: str) -> str:
    """``--device``: a device torch knows and this machine has; else a usage error."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise click.BadParameter(
            f"unknown device {name!r}; use cpu, cuda, cuda:N or mps", param_hint="--device"
        ) from None
    if device.type == "cpu":
        return name
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise click.BadParameter(f"{name}: CUDA is not available on this machine", param_hint="--device")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise click.BadParameter(
                f"{name}: no such GPU; this machine has {count} (cuda:0 to cuda:{count - 1})",
                param_hint="--device",
            )
        return name
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise click.BadParameter(f"{name}: MPS is not available on this machine", param_hint="--device")
        return name
    raise click.BadParameter(
        f"unsupported device {name!r}; use cpu, cuda, cuda:N or mps", param_hint="--device"
    )


# ----------------------------------------------------------------------------------------
# inspect, plugins, check-plugin, schema


@cli.command(short_help="Parts, parameter counts, pretrained/new/tied tensors.")
@click.argument("model")
@click.option("--revision", help="Hub revision of MODEL.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def inspect(model: str, revision: str | None, as_json: bool) -> None:
    """Show MODEL's parts, parameter counts, and which tensors are pretrained, tied or new.

    MODEL is a checkpoint folder, a Hub id, or a config file (composed, with pretrained
    parts loaded, to show what a build would produce).
    """
    from .pipeline import load_model
    from .summary import describe, format_description

    _status(f"loading {model} ...")
    loaded, folder = load_model(model, revision=revision)
    d = describe(loaded, folder)
    click.echo(json.dumps(d, indent=2) if as_json else format_description(d))


@cli.command(short_help="Plugins, their architectures and load errors.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def plugins(as_json: bool) -> None:
    """List plugins: distribution, version, architectures (roles, description), and load errors.

    Rows are sorted by plugin and architecture name. ``--json`` prints a list of objects with
    ``name``, ``distribution``, ``version``, ``architectures`` (names), ``error`` (null or the
    reason it failed to load) and ``details`` (each architecture's ``name``, ``roles``,
    ``description``, ``reference`` classes and ``alias_of``: the architecture an alias such as
    ``xlm-roberta`` is another model type of, or null).

    The built-in plugins load first; a third-party plugin that registers one of their names,
    or that raises anything (even ``sys.exit()``) on import, is listed as FAILED with the reason.
    The environment variable ``SEQWEAVE_PLUGINS`` restricts the third-party plugins that load:
    entry-point names separated by commas (``SEQWEAVE_PLUGINS=distilbert,electra``), or
    ``builtin`` for none; a name there that no plugin has is listed as FAILED.
    """
    import dataclasses

    import seqweave as sw

    registry = sw.default_registry()
    rows = []
    for p in sorted(registry.plugins, key=lambda p: (p.name, p.distribution or "")):
        row = dataclasses.asdict(p)
        row["architectures"] = sorted(p.architectures)
        row["details"] = [
            {
                "name": name,
                "roles": list(registry.get(name).roles),
                "description": registry.get(name).description,
                "reference": dict(registry.get(name).reference),
                "alias_of": registry.get(name).alias_of,
            }
            for name in row["architectures"]
        ]
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = [("PLUGIN", "DISTRIBUTION", "ARCHITECTURE", "ROLES", "DESCRIPTION")]
    for p in rows:
        dist = f"{p['distribution']} {p['version']}" if p["distribution"] else "(not installed)"
        if p["error"]:
            table.append((p["name"], dist, "FAILED", "", p["error"]))
        table += [
            (p["name"], dist, d["name"], "/".join(d["roles"]),
             d["description"] + (f" [alias of {d['alias_of']}]" if d["alias_of"] else ""))
            for d in p["details"]
        ]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4])
    if registry.skipped:
        click.echo(f"not loaded (SEQWEAVE_PLUGINS): {', '.join(sorted(set(registry.skipped)))}")


@cli.command("check-plugin", short_help="Run the plugin contract checks against a plugin.")
@click.argument("name")
@click.option(
    "--module",
    "modules",
    multiple=True,
    metavar="MODULE",
    help="Import and register this plugin module first (a plugin on the path, not installed); repeatable.",
)
@click.option("--role", type=click.Choice(["encoder", "decoder"]), help="Check this role only.")
@click.option("--check", "only", multiple=True, metavar="CHECK", help="Run only this check (repeatable).")
def check_plugin(name: str, modules: tuple[str, ...], role: str | None, only: tuple[str, ...]) -> None:
    """Check every architecture of plugin NAME (or architecture NAME) against seqweave's contract.

    Prints one line per check and role (PASS, FAIL or SKIP, with the reason) and exits with
    status 1 when a check fails. Parity with transformers runs when transformers is installed
    and the plugin declares reference classes (Architecture.reference).
    """
    import importlib

    import seqweave as sw

    from .testing import CHECKS, run_checks

    _quiet_transformers()
    registry = sw.Registry()
    for module in modules:
        try:
            plugin = importlib.import_module(module)
        except ImportError as e:
            raise click.BadParameter(f"cannot import {module!r}: {e}", param_hint="--module") from None
        if not registry.has_plugin(plugin):  # an installed plugin is loaded already
            registry.register(plugin, module)
    names = _plugin_architectures(registry, name)
    checks = [c for c in CHECKS if not only or c.name in only]
    unknown = sorted(set(only) - {c.name for c in CHECKS})
    if unknown:
        known = ", ".join(c.name for c in CHECKS)
        raise click.BadParameter(f"unknown check {', '.join(unknown)}; known: {known}", param_hint="--check")
    results = []
    for arch_name in names:
        arch = registry.get(arch_name)
        if role is not None and role not in arch.roles:
            raise click.BadParameter(f"{arch_name} cannot be used as {role}", param_hint="--role")
        results += run_checks(arch, registry, roles=[role] if role else None, checks=checks, echo=click.echo)
    counts = {s: sum(r.status == s for r in results) for s in ("PASS", "FAIL", "SKIP")}
    summary = f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped"
    click.echo(f"{summary} ({', '.join(names)})")
    if counts["FAIL"]:
        click.get_current_context().exit(1)


def _quiet_transformers() -> None:
    """No progress bars or warnings from the reference models: one line per check is the output."""
    import importlib.util

    if importlib.util.find_spec("transformers") is not None:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def _plugin_architectures(registry: Any, name: str) -> list[str]:
    """The architectures of plugin ``name`` or of distribution ``name``, or architecture ``name`` itself."""
    found = [p for p in registry.plugins if name in (p.name, p.distribution)]
    failed = [p for p in found if p.error]
    if failed:
        raise click.ClickException(f"plugin {failed[0].name!r} failed to load: {failed[0].error}")
    names = sorted({a for p in found for a in p.architectures})
    if names:
        return names
    if name in registry:
        return [name]
    known = sorted({p.name for p in registry.plugins} | set(registry.names()))
    raise click.BadParameter(
        f"no plugin or architecture {name!r}; known: {', '.join(known)}", param_hint="NAME"
    )


@cli.command(short_help="JSON Schema of config files.")
@click.option("--markdown", is_flag=True, help="Print the config reference (docs/config.md) instead.")
def schema(markdown: bool) -> None:
    """Print the JSON Schema of config files, built from the registered architectures."""
    import seqweave as sw

    if markdown:
        from .configdoc import config_reference

        click.echo(config_reference(sw.default_registry()), nl=False)
        return
    click.echo(json.dumps(sw.composition_json_schema(), indent=2))


@cli.command(short_help="Build, fine-tune, save, reload, generate: offline.")
@click.option(
    "--steps", type=click.IntRange(min=1), default=None, help="Training steps (default: the demo's)."
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed for initialisation and data order."
)
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the run here (RUN_DIR: model/, metrics.jsonl, ...; default: a temporary folder, removed).",
)
def demo(steps: int | None, seed: int, output: Path | None) -> None:
    """The main job on the embedded default, offline: seqweave.train, reload, generate, exact match."""
    from .demo import run_demo

    run_demo(steps=steps, seed=seed, output=output, echo=click.echo)


# ----------------------------------------------------------------------------------------
# Entry point


def _user_error(e: BaseException) -> str | None:
    """The ``error: ...`` text of an error the user can fix, or None for a bug."""
    if isinstance(e, SeqweaveError):
        return str(e)
    if isinstance(e, click.ClickException):
        msg = e.format_message()
        ctx = getattr(e, "ctx", None)
        return f"{msg} (see '{ctx.command_path} --help')" if ctx is not None else msg
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    return None


class _StderrHandler(logging.Handler):
    """``warning: ...`` lines on whatever sys.stderr is at the time (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"{record.levelname.lower()}: {record.getMessage()}", err=True)


def _log_to_stderr(level: int) -> None:
    logger = logging.getLogger("seqweave")
    logger.setLevel(level)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
        logger.propagate = False  # the command line owns the process: no second copy via the root logger


def _from_stdout(e: BaseException) -> bool:
    """Whether an OSError came from writing to stdout: no file name, raised in ``click.echo`` or our flush."""
    if not isinstance(e, OSError) or e.filename is not None:
        return False
    frames = traceback.extract_tb(e.__traceback__)
    return any(f.name == "echo" and "click" in f.filename for f in frames) or frames[-1].name == "main"


def _silence_stdout() -> None:
    """Point stdout's descriptor at /dev/null so that the flush at exit cannot fail a second time."""
    import os

    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (tests): nothing is flushed at exit
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, 1 for a bug, 2 for a user error)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args  # wherever it is written, so that a failing subcommand honours it
    if debug:
        args = ["--debug", *[a for a in args if a != "--debug"]]
    _log_to_stderr(logging.INFO if debug else logging.WARNING)
    try:
        if sys.stdout is None:  # started with stdout closed (>&-): what we print would vanish
            raise click.UsageError("stdout: it is closed; nothing could be printed")
        result = cli.main(args, prog_name="seqweave", standalone_mode=False)
        sys.stdout.flush()  # a full disk or a bad descriptor fails here at the latest, not at exit
        return result if isinstance(result, int) else 0
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except (BrokenPipeError, _ReaderGone):
        _silence_stdout()
        return 0  # the reader (head, less) has gone; nothing left to say
    except Exception as e:
        msg = _user_error(e)
        if msg is not None and _from_stdout(e):
            _silence_stdout()
            msg = f"stdout: cannot write the output: {e.strerror or e}"
        if msg is None:
            raise  # a bug: the traceback is the report
        if debug:
            traceback.print_exception(e)
        lines = msg.splitlines() or [type(e).__name__]
        click.echo(f"error: {lines[0]}", err=True)
        for line in lines[1:]:
            click.echo(f"error: {line}", err=True)
        return USER_ERROR
