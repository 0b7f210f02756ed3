"""The Hugging Face architectures lmforge reads and writes, looked up by HF name, HF model type or lmforge family."""
from __future__ import annotations

from typing import Callable

from lmforge.errors import CheckpointError, ConfigError
from lmforge.interop.adapter import Architecture
from lmforge.interop.bert import BERT
from lmforge.interop.gpt2 import GPT2
from lmforge.interop.llama import LLAMA
from lmforge.interop.t5 import T5

# Every name accepted on import; the BERT checkpoints differ only in which heads they hold.
ARCHITECTURES: dict[str, Architecture] = {
    "GPT2LMHeadModel": GPT2, "LlamaForCausalLM": LLAMA, "BertForPreTraining": BERT, "BertForMaskedLM": BERT,
    "BertModel": BERT, "T5ForConditionalGeneration": T5,
}
BY_MODEL_TYPE: dict[str, Architecture] = {arch.model_type: arch for arch in (GPT2, LLAMA, BERT, T5)}

# lmforge family -> the architecture a config of it is written as. A gpt with rotary positions is a
# Llama; any other gpt is checked against GPT-2, which names what it lacks.
EXPORTS: dict[str, Callable[[object], Architecture]] = {
    "gpt": lambda cfg: LLAMA if cfg.position == "rope" else GPT2,
    "bert": lambda cfg: BERT,
    "t5": lambda cfg: T5,
}


def architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise CheckpointError(f"unsupported architecture {name}",
                              f"lmforge converts {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def export_architecture(model_or_config) -> Architecture:
    """The HF architecture an lmforge model (or config) is written as."""
    cfg = getattr(model_or_config, "config", model_or_config)
    family = cfg.to_dict()["family"]
    if family not in EXPORTS:
        raise ConfigError(f"the {family} model family has no Hugging Face transformers twin",
                          "export a gpt, bert or t5 model")
    return EXPORTS[family](cfg)
