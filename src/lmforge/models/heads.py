"""Task heads on top of any backbone family, and the model that joins them.

    backbone.features(input_ids, attention_mask) -> hidden (B, T, C)
        sequence head: pooled (B, C) -> logits (B, labels)      classification
        token head:    hidden       -> logits (B, T, labels)    NER
        span head:     hidden       -> start, end logits (B, T)  extractive QA
        lm head:       the backbone's own language-model output   translation, summarization, chat

Pooling for the sequence head follows each family's training: BERT uses its pretrained pooler
over [CLS]; decoders (GPT, RNN) read the last real token, the only one that has seen the whole
text; the T5 encoder is mean-pooled over real tokens.

`TaskModel` is a model family of its own ("task") so the trainer, checkpoints, `--resume` and
`load_model` handle fine-tuned models exactly like pretrained ones. Its `config.json` holds the
backbone's config, the head, the label names and any LoRA adapter settings.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from lmforge.errors import ConfigError
from lmforge.models.lora import apply_lora, remove_lora
from lmforge.models.registry import FamilyTraits, build_model, config_from_dict, traits_of



HEADS = ("sequence", "token", "span", "lm")
POOLINGS = ("pooler", "mean", "last")  # BERT's pooler over [CLS], the mean over real tokens, the last real token


@dataclass
class TaskModelConfig:
    task: str = "classify"
    head: str = "sequence"
    backbone: dict = field(default_factory=dict)   # the backbone's config.to_dict() (incl. its family)
    labels: list[str] = field(default_factory=list)
    classifier_dropout: float = 0.1
    pooling: str | None = None                      # sequence heads: pooler, mean or last (None: the family's own)
    lora: dict | None = None                        # {"r", "alpha", "dropout", "targets"} when adapters are in
    extra: dict = field(default_factory=dict)       # task settings needed again at prediction time

    def __post_init__(self):
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r} (choose from {', '.join(HEADS)})")
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r} (choose from {', '.join(POOLINGS)})")

    @property
    def block_size(self) -> int:
        return int(self.backbone.get("block_size", 512))

    @property
    def vocab_size(self) -> int:
        return int(self.backbone["vocab_size"])

    def to_dict(self) -> dict:
        return {"family": FAMILY, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "TaskModelConfig":
        return cls(**{k: v for k, v in d.items() if k != "family"})


def backbone_width(cfg) -> int:
    """Size of the hidden states a backbone's `features` returns."""
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else cfg
    return int(d[traits_of(d).width_field])


class TaskModel(nn.Module):
    family = "task"

    def __init__(self, cfg: TaskModelConfig, backbone: nn.Module | None = None):
        super().__init__()

        self.config = cfg
        self.backbone = backbone if backbone is not None else build_model(config_from_dict(cfg.backbone))
        self.backbone_family = self.backbone.family
        self.backbone_traits = traits_of(self.backbone)
        if cfg.pooling == "pooler" and not hasattr(self.backbone, "pool"):
            raise ConfigError(f"a {self.backbone.family} model has no pooler layer", "pass --model.pooling mean or last")
        width = backbone_width(self.backbone.config)
        n_out = {"sequence": len(cfg.labels), "token": len(cfg.labels), "span": 2, "lm": 0}[cfg.head]
        self.dropout = nn.Dropout(cfg.classifier_dropout)
        self.head = nn.Linear(width, n_out) if n_out else None
        if self.head is not None:
            nn.init.normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        if cfg.lora:
            apply_lora(self.backbone, r=cfg.lora["r"], alpha=cfg.lora["alpha"], dropout=cfg.lora.get("dropout", 0.0),
                       targets=tuple(cfg.lora["targets"]))
            for p in self.parameters():  # a loaded model trains whatever the config says; set by the caller
                p.requires_grad_(True)

    def lr_scale_for(self, name: str) -> float:
        """Learning-rate scale of parameter `name` (see `parameter_groups`): the head at `head_lr_scale`;
        with `layer_lr_decay` d, block i of L at d**(L-1-i) and the embeddings at d**L."""
        extra = self.config.extra
        if name.startswith("head."):
            return float(extra.get("head_lr_scale", 1.0))
        decay = extra.get("layer_lr_decay")
        if not decay:
            return 1.0
        blocks = block_lists(self.backbone)
        depth = max((len(b) for b in blocks), default=0)
        parts = name.split(".")
        for i, part in enumerate(parts[:-1]):
            if part == "blocks" and parts[i + 1].isdigit():
                return float(decay) ** (depth - 1 - int(parts[i + 1]))
        if any(isinstance(m, nn.Embedding) for n, m in self.named_modules() if name.startswith(n + ".") and n):
            return float(decay) ** depth
        return 1.0

    def plain_backbone(self) -> nn.Module:
        """The backbone as a plain model of its family, LoRA adapters folded into its weights."""
        if not self.config.lora:
            return self.backbone
        return remove_lora(self.backbone)

    # ------------------------------------------------------------------ shared pieces
    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        if self.backbone_traits.segment_ids:
            return self.backbone.features(input_ids, attention_mask, token_type_ids)
        return self.backbone.features(input_ids, attention_mask)

    @property
    def pooling(self) -> str:
        """How a sequence head summarises the tokens: the config's choice, else the family's own."""
        return self.config.pooling or self.backbone_traits.pooling

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, C) summary of right-padded rows."""
        pooling = self.pooling
        if pooling == "pooler":
            return self.backbone.pool(hidden)
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        if pooling == "mean":
            m = attention_mask.to(hidden.dtype)[..., None]
            return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        last = attention_mask.long().sum(1).clamp(min=1) - 1  # (B,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    # ------------------------------------------------------------------ forward per head
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, **lm_kwargs) -> torch.Tensor | tuple:
        """sequence: logits (B, labels); token: (B, T, labels); span: (start, end) each (B, T);
        lm: whatever the backbone's forward returns for these arguments."""
        head = self.config.head
        if head == "lm":
            if attention_mask is not None:
                lm_kwargs["attention_mask"] = attention_mask
            return self.backbone(input_ids, **lm_kwargs)
        hidden = self.hidden(input_ids, attention_mask, token_type_ids)  # (B, T, C)
        if head == "sequence":
            return self.head(self.dropout(self.pool(hidden, attention_mask)))
        logits = self.head(self.dropout(hidden))
        if head == "token":
            return logits
        start, end = logits.unbind(-1)
        return start, end


def block_lists(backbone: nn.Module) -> list[nn.ModuleList]:
    """The stacks of transformer blocks in a backbone (one for GPT/BERT, encoder and decoder for T5)."""
    return [m for name, m in backbone.named_modules()
            if isinstance(m, nn.ModuleList) and name.split(".")[-1] == "blocks"]


# ---------------------------------------------------------------- registry entry
FAMILY, CONFIG, MODEL = "task", TaskModelConfig, TaskModel
TRAITS = FamilyTraits(structure="wrapper")
PRESETS: dict[str, dict] = {}
