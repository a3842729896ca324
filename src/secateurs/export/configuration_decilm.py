"""The config class of a nemotron-nas (DeciLM) checkpoint written by secateurs.

This file is copied into every ``--format nemotron-nas`` export and is the only code that
``vllm serve DIR --trust-remote-code`` runs from it: vLLM has the model (``DeciLMForCausalLM``) built in
but no config class for ``model_type: nemotron-nas``, and it reads ``block_configs`` by attribute
(``config.block_configs[i].attention.no_op``). It imports nothing but transformers.
"""

from transformers import PretrainedConfig


class BlockRecord(dict):
    """A JSON object whose keys also read as attributes (a missing key is an AttributeError, so hasattr works)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    @classmethod
    def wrap(cls, value):
        if isinstance(value, dict):
            return cls({key: cls.wrap(item) for key, item in value.items()})
        return value


class DeciLMConfig(PretrainedConfig):
    """A Llama-like decoder whose layers each say whether they have attention and an MLP, and their sizes."""

    model_type = "nemotron-nas"

    def __init__(self, block_configs=None, **kwargs):
        self.block_configs = [BlockRecord.wrap(block) for block in (block_configs or [])]
        super().__init__(**kwargs)
