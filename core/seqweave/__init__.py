"""seqweave: weave any registered encoder with any registered decoder into one seq2seq model.

Quick tour::

    import seqweave as sw
    m = sw.EncoderDecoder.from_pretrained("path/to/bert2bert")       # a transformers folder, or ours
    m = sw.EncoderDecoder.from_pretrained_parts("enc", "dec", decoder_start_token_id=101, pad_token_id=0)
    m = sw.EncoderDecoder(sw.build_encoder("bert", hidden_size=256), sw.build_decoder("bert", hidden_size=256))
    out = m(input_ids, attention_mask=mask, labels=labels); out.loss.backward()
    sw.train("config.yaml", "runs/one")        # fine-tune as the config's train: block says
"""

from __future__ import annotations

from ._version import __version__
from .assembly import build_decoder, build_encoder, shift_tokens_right
from .cache import Cache
from .checkpoint.report import LoadReport
from .composer import EncoderDecoder
from .composition import composition_json_schema, load_config
from .config import ArchitectureConfig, CompositionConfig, FieldError, GenerationSettings, PartConfig
from .errors import CheckpointError, ConfigError, PluginError, SeqweaveError
from .generation import Generated
from .outputs import DecoderOutput, EncoderOutput, Seq2SeqOutput
from .pipeline import TextToText, pipeline
from .protocols import Decoder, Encoder
from .registry import Architecture, PluginInfo, Registry, Role, default_registry, hookimpl, hookspec
from .tokenizer import TextTokenizer, load_tokenizer
from .training import TrainSettings

__all__ = [
    "Architecture",
    "ArchitectureConfig",
    "Cache",
    "CheckpointError",
    "CompositionConfig",
    "ConfigError",
    "Decoder",
    "DecoderOutput",
    "Encoder",
    "EncoderDecoder",
    "EncoderOutput",
    "FieldError",
    "Generated",
    "GenerationSettings",
    "LoadReport",
    "PartConfig",
    "PluginError",
    "PluginInfo",
    "Registry",
    "Role",
    "Seq2SeqOutput",
    "SeqweaveError",
    "TextToText",
    "TextTokenizer",
    "TrainResult",
    "TrainSettings",
    "__version__",
    "build_decoder",
    "build_encoder",
    "composition_json_schema",
    "default_registry",
    "hookimpl",
    "hookspec",
    "load_config",
    "load_tokenizer",
    "pipeline",
    "shift_tokens_right",
    "train",
]


def __getattr__(name: str) -> object:
    # The trainer (torch.distributed, checkpoint code) loads on first use: `import seqweave` stays light.
    if name in ("train", "TrainResult"):
        from .training import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'seqweave' has no attribute {name!r}")
