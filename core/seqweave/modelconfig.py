"""``model.config``: transformers' ``EncoderDecoderConfig`` surface, as a live view of an :class:`~seqweave.EncoderDecoder`.

transformers users read and write ``model.config.decoder_start_token_id``, ``model.config.pad_token_id``,
``model.config.decoder.vocab_size`` and so on. Here nothing is copied: every read comes from the
model (its attributes, its parts' configs, its generation settings) and every write goes to it, so
a write takes effect in ``forward``, ``generate`` and ``save_pretrained`` at once.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .checkpoint import hf_config as hf_layout
from .config import DEFAULT_NEW_TOKENS, TOKEN_ID_FIELDS, GenerationSettings
from .errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["FORWARD_FLAGS", "GenerationConfigView", "ModelConfigView", "PartConfigView"]

#: what transformers' PretrainedConfig answers for these, and we too (read-only)
_FIXED = {
    "model_type": "encoder-decoder",
    "is_encoder_decoder": True,
    "return_dict": True,
    "use_return_dict": True,
}
#: forward's defaults for its arguments of these names (False unless written; carried in config.json)
FORWARD_FLAGS = ("use_cache", "output_attentions", "output_hidden_states")


def _token_ids(name: str, value: Any) -> Any:
    """``value`` checked as a token id field (None, an id >= 0, or for eos a list of ids)."""
    try:
        return GenerationSettings.model_validate({name: value}).__dict__[name]
    except Exception as exc:  # pydantic's ValidationError, said with the field's name
        raise ConfigError(f"config.{name}: {value!r} is not a token id") from exc


class PartConfigView:
    """``model.config.encoder`` / ``.decoder``: a part's config.json fields, by attribute.

    Reads the part's architecture config, then the fields carried from its config.json
    (``hf_extra``). A field the architecture defines can be written only with its current
    value (the built module does not change: rebuild, or use ``resize_token_embeddings``);
    any other name is carried into the saved config.json.
    """

    def __init__(self, model: nn.Module, role: str) -> None:
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_role", role)

    def _module(self) -> nn.Module:
        return getattr(self._model, self._role)

    def to_dict(self) -> dict[str, Any]:
        """The part's config.json content, as saving writes it."""
        try:
            return dict(hf_layout.hf_config(self._model)[self._role])
        except ConfigError:  # a hand-built part: what it says of itself
            module = self._module()
            names = ("hidden_size", "vocab_size", "cross_attention_hidden_size", "num_layers")
            return {**self._model.hf_extra[self._role],
                    **{n: getattr(module, n) for n in names if hasattr(module, n)}}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        module = self._module()
        config = getattr(module, "config", None)
        if config is not None and name in type(config).model_fields:
            return getattr(config, name)
        if name == "is_decoder":
            return self._role == "decoder"
        if name == "add_cross_attention":
            return self._role == "decoder"
        data = self.to_dict()
        if name in data:
            return data[name]
        if hasattr(module, name) and name in ("hidden_size", "vocab_size"):
            return getattr(module, name)
        raise AttributeError(f"model.config.{self._role} has no field {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        config = getattr(self._module(), "config", None)
        fixed = name in ("is_decoder", "add_cross_attention", "model_type", "vocab_size", "hidden_size")
        if (config is not None and name in type(config).model_fields) or fixed:
            if getattr(self, name) != value:
                raise ConfigError(
                    f"config.{self._role}.{name}: the {self._role} is built with {getattr(self, name)!r}; changing "
                    f"it needs a new model (from_config with an override"
                    + (", or resize_token_embeddings)" if name == "vocab_size" else ")")
                )
            return
        self._model.hf_extra[self._role][name] = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PartConfigView) and other.to_dict() == self.to_dict()

    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._role}) {json.dumps(self.to_dict(), indent=2, sort_keys=True)}"


class ModelConfigView:
    """``model.config``: transformers' ``EncoderDecoderConfig`` fields, read from and written to the model.

    ``decoder_start_token_id``, ``pad_token_id`` and ``eos_token_id`` are the model's own
    attributes; ``tie_encoder_decoder`` too (setting it True ties the parts now);
    ``vocab_size`` is the decoder's (writable with that value only, as transformers' docs do);
    ``use_cache``, ``output_attentions`` and ``output_hidden_states`` are forward's defaults (False);
    ``encoder`` / ``decoder`` are :class:`PartConfigView` s; generation options
    (``max_length``, ``num_beams``, ...) are the model's generation settings; any other name is
    carried into the saved config.json. ``to_dict()`` / ``to_json_string()`` give what
    ``save_pretrained`` writes.
    """

    def __init__(self, model: nn.Module) -> None:
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "encoder", PartConfigView(model, "encoder"))
        object.__setattr__(self, "decoder", PartConfigView(model, "decoder"))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        model = self._model
        if name in TOKEN_ID_FIELDS or name == "tie_encoder_decoder":
            return getattr(model, name)
        if name == "vocab_size":
            return model.decoder.vocab_size
        if name in _FIXED:
            return _FIXED[name]
        if name in FORWARD_FLAGS:
            return bool(model.hf_extra["top"].get(name, False))
        if name in GenerationSettings.model_fields:
            return getattr(model.generation_settings, name)
        if name in model.hf_extra["top"]:
            return model.hf_extra["top"][name]
        raise AttributeError(f"model.config has no field {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        model = self._model
        if name in TOKEN_ID_FIELDS:
            setattr(model, name, _token_ids(name, value))
        elif name == "tie_encoder_decoder":
            if bool(value) == model.tie_encoder_decoder:
                return
            if not value:
                raise ConfigError("config.tie_encoder_decoder: parts already tied share their parameters; "
                                  "untying needs a new model (from_config with tie_encoder_decoder: false)")
            model.tie_encoder_decoder = True
            model.tie_weights()
        elif name in ("vocab_size", "encoder", "decoder", *_FIXED):
            if getattr(self, name) != value:
                hint = "; resize with model.resize_token_embeddings" if name == "vocab_size" else ""
                raise ConfigError(f"config.{name} is {getattr(self, name)!r} and cannot be set to {value!r}{hint}")
        elif name in FORWARD_FLAGS:
            model.hf_extra["top"][name] = bool(value)
        elif name in GenerationSettings.model_fields:
            settings = model.generation_settings
            if value is None:  # merged() reads None as "not given"; here it resets the option
                settings = type(settings).model_validate({**settings.model_dump(), name: None})
            model.generation_settings = settings.merged({name: value}, "config")
        else:
            model.hf_extra["top"][name] = value

    def __contains__(self, name: str) -> bool:
        try:
            getattr(self, name)
        except AttributeError:
            return False
        return True

    def to_dict(self) -> dict[str, Any]:
        """The composite's config.json, as :meth:`~seqweave.EncoderDecoder.save_pretrained` writes it."""
        return hf_layout.hf_config(self._model)

    def to_json_string(self, use_diff: bool = True) -> str:
        """:meth:`to_dict` as JSON (indented, keys sorted, as transformers writes it). ``use_diff`` is accepted
        for transformers' signature; the whole config is written."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"


def _set_option(model: nn.Module, name: str, value: Any, source: str) -> None:
    """Set one generation option on ``model`` (None resets it to "not set")."""
    settings = model.generation_settings
    if value is None:  # merged() reads None as "not given"; here it resets the option
        settings = type(settings).model_validate({**settings.model_dump(), name: None})
    model.generation_settings = settings.merged({name: value}, source)


class GenerationConfigView:
    """``model.generation_config``: transformers' ``GenerationConfig`` surface over the model's generation defaults.

    Reads come from :meth:`~seqweave.EncoderDecoder.generation_defaults` (the settings, the
    model's token ids where they leave them unset); writes go to
    :attr:`~seqweave.EncoderDecoder.generation_settings`, so they take effect in ``generate``
    and ``save_pretrained``. ``max_length`` reads 20 when unset, as transformers'
    ``GenerationConfig`` does (``Seq2SeqTrainer`` pads its predictions to it). The private members transformers'
    trainers touch (``_from_model_config``, ``_get_default_generation_params``) are here so
    that ``Seq2SeqTrainer(predict_with_generate=True)`` runs unchanged.
    """

    def __init__(self, model: nn.Module) -> None:
        object.__setattr__(self, "_model", model)

    #: transformers marks a GenerationConfig made from a model config; ours never is one
    _from_model_config = False

    def __getattr__(self, name: str) -> Any:
        if name not in GenerationSettings.model_fields:
            raise AttributeError(f"generation_config has no field {name!r}")
        settings = self._model.generation_defaults()
        if name == "max_length" and settings.max_length is None:
            return DEFAULT_NEW_TOKENS  # what transformers' GenerationConfig reads when unset
        return getattr(settings, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_from_model_config":
            return  # transformers clears it after the first generate; nothing to remember here
        if name not in GenerationSettings.model_fields:
            raise ConfigError(f"generation_config.{name}: not a generation option of seqweave")
        _set_option(self._model, name, value, "generation_config")

    def update(self, defaults_only: bool = False, **kwargs: Any) -> dict[str, Any]:
        """Set the options among ``kwargs`` (with ``defaults_only``, only those not set); return the others."""
        current = self._model.generation_settings
        unused = {}
        for name, value in kwargs.items():
            if name not in GenerationSettings.model_fields:
                unused[name] = value
            elif not defaults_only or getattr(current, name) is None:
                _set_option(self._model, name, value, "generation_config")
        return unused

    def _get_default_generation_params(self) -> dict[str, Any]:
        # transformers fills these into a config whose fields are None; ours have their defaults already
        return {}

    def to_dict(self) -> dict[str, Any]:
        """The options, as ``generation_config.json`` holds them."""
        return self._model.generation_defaults().model_dump()

    def __repr__(self) -> str:
        return f"{type(self).__name__} {json.dumps(self.to_dict(), indent=2)}"
