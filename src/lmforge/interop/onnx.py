"""ONNX graphs of lmforge models, for onnxruntime and other ONNX runtimes.

Two kinds of model export:
- a classifier: a sequence-classification task model over an encoder backbone (BERT, MiniLM).
  Inputs `input_ids`, `attention_mask` (B, T) int64, and `token_type_ids` (B, T) when the backbone
  reads segment ids; output `logits` (B, labels). Batch and sequence axes are dynamic.
- a decoder step: a language model with a key/value cache (GPT, Llama shapes), one graph for the
  prompt and for every new token. Inputs `input_ids` (B, T), `attention_mask` (B, P + T) over cached and
  new tokens (1 = real, 0 = left padding), `position_ids` (B, T), and per layer i `past_key_i`,
  `past_value_i` (B, n_kv_head, P, head_dim); outputs `logits` (B, T, vocab) and `present_key_i`,
  `present_value_i` (B, n_kv_head, P + T, head_dim), fed back as the next step's past. The first step
  passes a past of length P = 0.

Graphs come from the torch.export-based exporter (`torch.onnx.export(..., dynamo=True)`) at opset OPSET.
"""
from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn

from lmforge.errors import ConfigError
from lmforge.models.common.cache import AttentionCache
from lmforge.models.heads import TaskModel
from lmforge.models.registry import traits_of

OPSET = 18
SUPPORTED = ("sequence classifiers over an encoder (BERT, MiniLM) and language models with a key/value cache "
             "(GPT, Llama)")
# Loggers of the exporter's stages, whose notes (optional torchvision ops, attribute typing) are not for users.
EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "onnx_ir", "onnxscript")
# Example sizes traced at export; none may be 0 or 1, which torch.export would fix as constants.
EXAMPLE_BATCH, EXAMPLE_TOKENS, EXAMPLE_PAST = 2, 3, 4


class ClassifierGraph(nn.Module):
    """A sequence classifier with fixed positional inputs: (input_ids, attention_mask[, token_type_ids]) -> logits."""

    def __init__(self, model: TaskModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids, attention_mask, token_type_ids)  # (B, labels)


class TensorCache(AttentionCache):
    """A cache held in plain tensors: each layer's past keys/values (B, n_kv_head, P, hs) come in, and
    `present` collects the past joined with the new tokens' keys/values, (B, n_kv_head, P + T, hs)."""

    def __init__(self, past: tuple[torch.Tensor, ...]):
        self.past = past  # key_0, value_0, key_1, value_1, ...
        self.present: list[torch.Tensor] = list(past)
        self.length = past[0].shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys = torch.cat([self.past[2 * layer], k], dim=2)
        values = torch.cat([self.past[2 * layer + 1], v], dim=2)
        self.present[2 * layer], self.present[2 * layer + 1] = keys, values
        return keys, values


class DecoderStepGraph(nn.Module):
    """One decoding step with the cache as tensors: (input_ids, attention_mask, position_ids, *past) ->
    (logits, *present), past and present ordered key_0, value_0, key_1, value_1, ..."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cache = TensorCache(past)
        logits = self.model(input_ids, kv_cache=cache, attention_mask=attention_mask, position_ids=position_ids)
        return (logits, *cache.present)  # (B, T, vocab), then (B, n_kv_head, P + T, hs) each


@dataclass
class GraphSpec:
    """A module ready to export, with example inputs and the names and dynamic axes of its inputs and outputs."""
    kind: str                           # "classifier" or "decoder"
    module: nn.Module
    inputs: dict[str, torch.Tensor]     # name -> example tensor, in the module's argument order
    outputs: list[str]
    dynamic: dict[str, dict[int, str]]  # input name -> {axis: axis name}
    details: dict                       # recorded in export.json: labels, or the cache layout


def graph_for(model: nn.Module) -> GraphSpec:
    """The export spec of `model` (eval mode, plain weights); a ConfigError naming what is supported otherwise."""
    if isinstance(model, TaskModel):
        if model.config.head == "sequence" and model.backbone_traits.structure == "encoder":
            return _classifier_spec(model)
        what = f"fine-tuned {model.config.task} models over {model.backbone_family}"
    else:
        traits = traits_of(model)
        if traits.structure == "decoder" and traits.kv_cache and hasattr(model, "new_kv_cache"):
            return _decoder_spec(model)
        what = f"{model.family} models"
    raise ConfigError(f"{what} cannot be exported to ONNX; supported: {SUPPORTED}",
                      "export a fine-tuned encoder classifier or a GPT/Llama language-model run")


def _classifier_spec(model: TaskModel) -> GraphSpec:
    shape = (EXAMPLE_BATCH, EXAMPLE_TOKENS)
    inputs = {"input_ids": torch.randint(0, model.config.vocab_size, shape),
              "attention_mask": torch.ones(shape, dtype=torch.long)}
    if model.backbone_traits.segment_ids:
        inputs["token_type_ids"] = torch.zeros(shape, dtype=torch.long)
    axes = {0: "batch", 1: "sequence"}
    return GraphSpec("classifier", ClassifierGraph(model), inputs, ["logits"], {name: axes for name in inputs},
                     {"labels": list(model.config.labels), "task": model.config.task,
                      "max_sequence": model.config.block_size})


def _decoder_spec(model: nn.Module) -> GraphSpec:
    cfg = model.config
    B, T, P = EXAMPLE_BATCH, EXAMPLE_TOKENS, EXAMPLE_PAST
    inputs = {"input_ids": torch.randint(0, cfg.vocab_size, (B, T)),
              "attention_mask": torch.ones(B, P + T, dtype=torch.long),
              "position_ids": torch.arange(P, P + T)[None].expand(B, T).contiguous()}
    dynamic = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "total"},
               "position_ids": {0: "batch", 1: "sequence"}}
    outputs = ["logits"]
    for layer in range(cfg.n_layer):
        for kind in ("key", "value"):
            inputs[f"past_{kind}_{layer}"] = torch.zeros(B, cfg.n_kv_head, P, cfg.head_dim)
            dynamic[f"past_{kind}_{layer}"] = {0: "batch", 2: "past"}
            outputs.append(f"present_{kind}_{layer}")
    cache = {"layers": cfg.n_layer, "kv_heads": cfg.n_kv_head, "head_dim": cfg.head_dim,
             "past_inputs": "past_{key,value}_{layer}", "present_outputs": "present_{key,value}_{layer}"}
    return GraphSpec("decoder", DecoderStepGraph(model), inputs, outputs, dynamic,
                     {"cache": cache, "vocab_size": cfg.vocab_size, "max_sequence": cfg.block_size})


def export_graph(spec: GraphSpec, path: Path) -> dict:
    """Write `spec` as an ONNX model at `path`; returns its description: kind, opset, inputs and outputs
    with their element types and shapes (axis names where dynamic)."""
    names = list(spec.inputs)
    if spec.kind == "decoder":  # the past tensors arrive as *past: their shapes go in one tuple
        fixed = names[:3]
        shapes = (*(spec.dynamic[n] for n in fixed), tuple(spec.dynamic[n] for n in names[3:]))
    else:
        shapes = tuple(spec.dynamic[n] for n in names)
    with torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(spec.module, tuple(spec.inputs.values()), dynamo=True, input_names=names,
                                    output_names=spec.outputs, dynamic_shapes=shapes, opset_version=OPSET,
                                    verbose=False)
    program.save(str(path))
    exporter = f"torch.onnx.export dynamo=True (torch {torch.__version__})"
    return {"format": "onnx", "kind": spec.kind, "opset": OPSET, "exporter": exporter, **describe_onnx(path),
            **spec.details}


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Within the block the exporter's warnings and log notes are dropped; errors still surface."""
    loggers = [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def describe_onnx(path: Path) -> dict:
    """Inputs and outputs of the ONNX model at `path`: name, element type and shape (ints, or axis names)."""
    import onnx  # slow to import; only exporting reads ONNX files

    graph = onnx.load(str(path), load_external_data=False).graph

    def entries(values) -> list[dict]:
        out = []
        for value in values:
            tensor = value.type.tensor_type
            shape = [d.dim_param or d.dim_value for d in tensor.shape.dim]
            out.append({"name": value.name, "type": onnx.TensorProto.DataType.Name(tensor.elem_type).lower(),
                        "shape": shape})
        return out

    return {"inputs": entries(graph.input), "outputs": entries(graph.output)}
