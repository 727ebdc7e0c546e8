"""Checkpoint I/O in one place: the files of a model folder, read and written.

The parts, lowest first (each imports only the ones above it in this list):

- :mod:`~seqweave.checkpoint.formats`: the table of weight-file readers (safetensors,
  sharded index, ``.bin``) that :func:`read_state_dict` walks and from which
  :mod:`seqweave.hub` derives the files it fetches; :class:`CheckpointTensors`.
- :mod:`~seqweave.checkpoint.jsonio`: the JSON readers (``config.json``,
  ``generation_config.json``, tokenizer configs) with one error wording.
- :mod:`~seqweave.checkpoint.report`: :class:`LoadReport` and :func:`summarize_names`.
- :mod:`~seqweave.checkpoint.hf_config`: Hugging Face ``config.json`` to our configs and back.
- :mod:`~seqweave.checkpoint.load`: :func:`load_part`, the one loading path, and the three
  entry points built on it (a composite folder, two single-model folders, a config file).
- :mod:`~seqweave.checkpoint.transaction`: folder transactions (a save replaces the whole
  folder or nothing) and :func:`recover` after a killed save; stdlib only.
- :mod:`~seqweave.checkpoint.save`: ``save_pretrained``'s files, written through a transaction.

This ``__init__`` imports none of them: :mod:`seqweave.hub` reads the formats table, and
the loaders use the hub, so a package that imported everything would be an import cycle.
"""
