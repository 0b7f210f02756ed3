"""Hugging Face `transformers` checkpoints to and from lmforge models, through explicit key maps.

    HF architecture                         lmforge family  what it covers
    GPT2LMHeadModel                         gpt             learned positions, LayerNorm, GELU; tied or untied head
    LlamaForCausalLM                        gpt             RoPE, RMSNorm, SwiGLU; MHA, GQA or MQA; tied or untied head
    BertForPreTraining, BertForMaskedLM,    bert            post-norm encoder; whichever of pooler, MLM head and
      BertModel (import)                                    sentence-pair head the checkpoint has (export: all three)
    T5ForConditionalGeneration              t5              relative positions; relu, gated-gelu or gelu feed-forward

A checkpoint folder is `config.json` plus `model.safetensors` (or shards listed in
`model.safetensors.index.json`); `pytorch_model.bin` files are read with `torch.load(weights_only=True)`,
which refuses anything but tensors. Reading and writing never import `transformers`.

Each architecture has a key map: one `Row` per lmforge tensor naming the HF tensor(s) it is made of.
Import is strict: every HF tensor must be used by a row, be a known duplicate of a tied weight, or be a
known non-weight buffer; every row must find its tensors with the shapes the config implies.

Where things live: `keymap` (rows), `adapter` (what an architecture is), `gpt2`, `llama`, `bert`, `t5`
(one architecture each), `architectures` (the lookups), `state` (state dicts), `folder` (reading a
folder), `tokenizers`, and `convert` (whole folders). This module gathers the public names.
"""
from lmforge.interop.adapter import Architecture
from lmforge.interop.architectures import ARCHITECTURES, architecture, export_architecture
from lmforge.interop.convert import check_destination, convert, describe, export_hf, hf_config, import_hf
from lmforge.interop.folder import read_hf_config, read_hf_weights
from lmforge.interop.keymap import KeyMap, Row
from lmforge.interop.state import state_from_hf, state_to_hf
from lmforge.interop.tokenizers import write_hf_tokenizer

__all__ = ["ARCHITECTURES", "Architecture", "KeyMap", "Row", "architecture", "check_destination", "convert",
           "describe", "export_architecture", "export_hf", "hf_config", "import_hf", "read_hf_config",
           "read_hf_weights", "state_from_hf", "state_to_hf", "write_hf_tokenizer"]
