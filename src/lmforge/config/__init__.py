"""Typed configs for each concern, loadable from YAML recipes and overridable by dotted CLI flags.

`lmforge pretrain --config configs/pretrain/debug.yaml --train.lr 3e-4` fills these dataclasses;
each validates itself where it is built and names the offending field in a one-line error.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import yaml

from lmforge.config.checks import check as _check

OPTIMIZERS = ("adamw", "adam", "sgd", "adagrad", "rmsprop")
SCHEDULES = ("cosine", "linear", "exponential", "constant", "wsd")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PARALLELISMS = ("ddp", "fsdp")
CHECKPOINTING = ("none", "full", "selective")
CHECKPOINT_FORMATS = ("full", "sharded")


@dataclass
class DataConfig:
    """Where training tokens come from."""

    path: str = "python-docs"            # a prepared dataset dir, or a source/corpus to prepare into RUN/data
    tokenizer: str | None = None         # used only when `path` still has to be prepared; None: what the
                                         # objective needs (bpe for GPT, wordpiece for BERT)
    vocab_size: int = 8192
    val_fraction: float = 0.1
    text_field: str = "text"
    clean: bool = True                   # Unicode/HTML/whitespace normalisation and exact dedup

    def __post_init__(self):
        _check(bool(self.path), "data.path is empty", "pass --data DIR_OR_FILE_OR_CORPUS")
        _check(0.0 < self.val_fraction <= 0.5, f"data.val_fraction must be in (0, 0.5], got {self.val_fraction}",
               "pass e.g. --data.val_fraction 0.1")


@dataclass
class ModelSpec:
    """A named preset plus optional shape overrides (None keeps the preset's value)."""

    preset: str = "debug"
    vocab_size: int | None = None        # None: the tokenizer's vocabulary size
    block_size: int | None = None
    n_layer: int | None = None
    n_head: int | None = None
    n_kv_head: int | None = None
    n_embd: int | None = None
    intermediate_size: int | None = None
    position: str | None = None
    norm: str | None = None
    mlp: str | None = None
    bias: bool | None = None
    tie_embeddings: bool | None = None
    dropout: float | None = None
    attention_dropout: float | None = None  # GPT: on attention probabilities (default: dropout)
    hidden_size: int | None = None       # recurrent models: state size
    cell: str | None = None              # recurrent models: rnn, lstm or gru
    order: int | None = None             # n-gram models: tokens per n-gram

    def overrides(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "preset" and v is not None}


@dataclass
class TrainConfig:
    """The training loop: optimisation, schedule, precision, evaluation, checkpoints."""

    batch_size: int = 16                 # sequences per micro-batch per process
    grad_accum: int = 1                  # micro-batches per optimizer step
    global_batch_size: int | None = None  # sequences per optimizer step over all processes; sets grad_accum
    seq_len: int | None = None           # None: the model's context length
    max_steps: int = 1000
    max_seconds: float | None = None     # stop after this much wall-clock training time
    optimizer: str = "adamw"
    lr: float = 3e-4
    min_lr_ratio: float = 0.1            # final lr = lr * min_lr_ratio (cosine/linear/wsd)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    momentum: float = 0.9                # sgd and rmsprop
    nesterov: bool = False
    weight_decay: float = 0.1            # never applied to norms, biases or embeddings
    schedule: str = "cosine"
    warmup_steps: int = 100
    decay_fraction: float = 0.2          # wsd: share of steps spent decaying at the end
    gamma: float = 0.999                 # exponential: lr multiplier per step after warmup
    grad_clip: float | None = 1.0
    precision: str = "auto"              # auto = bf16 on GPUs that support it, fp32 on CPU
    compile: bool = False
    activation_checkpointing: str | bool = "none"  # none, full or selective (lmforge.parallel); true/false: full/none
    parallel: str = "ddp"                # over several processes: ddp (replicas) or fsdp (FSDP2 sharding)
    reshard_after_forward: bool = True   # fsdp: free each block's gathered weights after forward (less memory)
    shard_group_size: int | None = None  # fsdp: shard within groups of this many processes (a node), replicate
                                         # across the groups (hybrid sharding); None: shard over all processes
    seed: int = 1337
    device: str = "auto"
    log_interval: int = 10
    eval_interval: int = 200
    eval_batches: int = 20
    early_stopping_patience: int | None = None  # evals without val-loss improvement before stopping
    checkpoint_interval: int = 500
    keep_last: int = 2
    checkpoint_format: str = "full"      # full: whole weights from rank 0; sharded: each rank its shard (DCP)
    async_checkpoint: bool = False       # sharded only: write each checkpoint in the background while training goes on
    progress: bool = True
    threads: int | str | None = None     # CPU threads: N, or "auto" to time counts while training; None: as is

    def __post_init__(self):
        self.betas = tuple(self.betas)
        for name in ("batch_size", "grad_accum", "max_steps", "log_interval", "eval_interval", "eval_batches",
                     "checkpoint_interval", "keep_last"):
            v = getattr(self, name)
            _check(isinstance(v, int) and v > 0, f"train.{name} must be a positive integer, got {v}",
                   f"pass --train.{name} 1 or more")
        _check(math.isfinite(self.lr) and self.lr > 0, f"train.lr must be a positive number, got {self.lr}",
               "pass e.g. --train.lr 3e-4")
        # (name, lowest allowed or None for "above 0", highest allowed, example)
        for name, low, high, example in (("min_lr_ratio", 0.0, 1.0, 0.1), ("weight_decay", 0.0, math.inf, 0.1),
                                         ("warmup_steps", 0, math.inf, 100), ("decay_fraction", None, 1.0, 0.2),
                                         ("gamma", None, 1.0, 0.999)):
            v = getattr(self, name)
            inside = (v > 0 if low is None else v >= low) and v <= high
            allowed = ">= 0" if high == math.inf else f"in {'(' if low is None else '['}0, 1]"
            _check(inside, f"train.{name} must be {allowed}, got {v}", f"pass e.g. --train.{name} {example}")
        _check(all(0.0 <= b < 1.0 for b in self.betas), f"train.betas must be in [0, 1), got {list(self.betas)}",
               "pass e.g. --train.betas [0.9,0.95]")
        if isinstance(self.activation_checkpointing, bool) or self.activation_checkpointing in ("true", "false"):
            self.activation_checkpointing = "full" if self.activation_checkpointing in (True, "true") else "none"
        for name, choices, example in (("optimizer", OPTIMIZERS, "adamw"), ("schedule", SCHEDULES, "cosine"),
                                       ("precision", PRECISIONS, "fp32"), ("parallel", PARALLELISMS, "fsdp"),
                                       ("checkpoint_format", CHECKPOINT_FORMATS, "sharded"),
                                       ("activation_checkpointing", CHECKPOINTING, "full")):
            v = getattr(self, name)
            _check(v in choices, f"train.{name} must be one of {', '.join(choices)}, got {v!r}", f"pass e.g. --train.{name} {example}")
        for name, fix in (("grad_clip", "pass a positive norm, or omit it to disable clipping"),
                          ("max_seconds", "pass a positive number of seconds"),
                          ("global_batch_size", "pass e.g. --train.global_batch_size 64, or leave it unset"),
                          ("early_stopping_patience", "pass a positive number of evaluations"),
                          ("shard_group_size", "pass the processes per node, e.g. --train.shard_group_size 8")):
            v = getattr(self, name)
            _check(v is None or v > 0, f"train.{name} must be > 0, got {v}", fix)
        _check(not self.async_checkpoint or self.checkpoint_format == "sharded",
               "train.async_checkpoint writes sharded checkpoints in the background",
               "add --train.checkpoint_format sharded, or drop --train.async_checkpoint")
        _check(self.seq_len is None or self.seq_len > 1, f"train.seq_len must be > 1, got {self.seq_len}",
               "pass e.g. --train.seq_len 256")
        _check(self.threads in (None, "auto") or (isinstance(self.threads, int) and self.threads > 0),
               f"train.threads must be a positive integer or auto, got {self.threads!r}",
               "pass e.g. --train.threads 2, or --train.threads auto on a machine other processes share")


# ---------------------------------------------------------------- fine-tuning
METHODS = ("full", "lora", "frozen")


@dataclass
class TaskDataConfig:
    """Where a task's examples come from and how they are read.

    Relative paths are looked up in the current directory first, then under $LMFORGE_DATA_DIR,
    so recipes can name shared datasets as `sst2/stsa.binary.train`.
    """

    train: str = ""
    valid: str | None = None             # None: carve `val_fraction` of `train` (see `val_split`)
    train_target: str | None = None      # parallel text: the line-aligned target file of `train`
    extra_train: list[str] | None = None  # more training files in the same format, added after validation is carved
    valid_target: str | None = None
    format: str = "auto"                 # label_text, tsv, csv, conll, bmes, squad, parallel, jsonl, json, alpaca
    text_field: str | None = None
    text_pair_field: str | None = None
    label_field: str | None = None
    source_field: str | None = None
    target_field: str | None = None
    columns: list[int] | None = None     # header-less TSV: column indices (text, label) or (source, target)
    header: bool | None = None           # None: detect
    tag_column: int = -1
    encoding: str | None = None
    val_fraction: float = 0.1
    val_split: str = "tail"              # tail: last part of the file; hash: by md5 of the example's key
    max_train_examples: int | None = None  # first N (after carving): quick runs on small machines
    max_valid_examples: int | None = None
    max_length: int = 128                # tokens per input (QA: per context window)
    max_target_length: int = 64          # seq2seq and chat: tokens per target
    doc_stride: int = 64                 # QA: overlap between windows of long contexts
    question_match: bool = False         # QA, BERT: segment id 2 marks context tokens that occur in the question
    label_split: str | None = None       # classification: keep the label's part before this separator
                                         # (TREC's "DESC:manner" -> "DESC" with ":")
    tag_scheme: str = "IOB2"             # NER: IOB1, IOB2/BIO, BMES, BIOES
    source_lang: str = "en"
    target_lang: str = "auto"            # metrics tokenisation (zh -> sacrebleu's zh tokenizer)
    prompt: str = ""                     # decoder-only seq2seq: text put before the source

    def __post_init__(self):
        _check(0.0 < self.val_fraction < 1.0, f"data.val_fraction must be in (0, 1), got {self.val_fraction}",
               "pass e.g. --data.val_fraction 0.1")
        _check(self.val_split in ("tail", "hash"), f"data.val_split must be tail or hash, got {self.val_split!r}",
               "pass --data.val_split tail")
        for name in ("max_length", "max_target_length", "doc_stride"):
            v = getattr(self, name)
            _check(isinstance(v, int) and v > 0, f"data.{name} must be a positive integer, got {v}",
                   f"pass --data.{name} 128")
        for name in ("max_train_examples", "max_valid_examples"):
            v = getattr(self, name)
            _check(v is None or (isinstance(v, int) and v > 0), f"data.{name} must be a positive integer, got {v}",
                   f"pass --data.{name} 1000 or leave it unset")


@dataclass
class StartConfig:
    """What fine-tuning starts from: `init` is an lmforge run directory, a Hugging Face model folder,
    or a preset name (a fresh model, with a tokenizer trained on the task's own training text)."""

    init: str = "bert-debug"
    tokenizer: str | None = None         # fresh models: bpe, wordpiece, unigram or char (None: by family)
    vocab_size: int = 8000
    block_size: int | None = None        # fresh models: context length
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    intermediate_size: int | None = None
    dropout: float | None = None         # every dropout rate of the model, fresh or pretrained (None: as it is)
    overrides: dict | None = None        # fresh models: any other field of the preset's config, e.g. {mlp: gelu}
    classifier_dropout: float = 0.1
    # How a sequence head summarises the tokens: pooler (BERT's [CLS] pooler), mean or last; None: the family's
    # own. Sentence-embedding checkpoints (all-MiniLM-L6-v2) were trained for mean pooling.
    pooling: str | None = None
    # Pretrained starts: characters of the training text that the tokenizer can only encode as its
    # unknown token, seen at least this many times, join the vocabulary with new embedding rows
    # (0: off). An English BERT vocabulary meeting Chinese text, for example.
    extend_vocab: int = 0
    # Pretrained BERT-family starts: build an encoder-decoder whose encoder and decoder both start from
    # it (cross-attention new), for translation and summarization ("BERT2BERT").
    encoder_decoder: bool = False

    def __post_init__(self):
        _check(self.pooling in (None, "pooler", "mean", "last"), f"model.pooling must be pooler, mean or last, got "
               f"{self.pooling!r}", "pass --model.pooling mean")
        v = self.extend_vocab
        _check(isinstance(v, int) and not isinstance(v, bool) and v >= 0,
               f"model.extend_vocab must be a minimum character count >= 0, got {v!r}",
               "pass --model.extend_vocab 2 to add characters seen twice or more, or 0 for off")


@dataclass
class MethodConfig:
    """How much of the model trains: all of it, all but frozen parts, or LoRA adapters."""

    method: str = "full"
    freeze_embeddings: bool = False      # full/frozen: keep the embedding tables fixed
    freeze_layers: int = 0               # full/frozen: keep the first k blocks fixed
    lora_r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    lora_targets: list[str] | None = None  # None: attention and MLP projections
    layer_lr_decay: float | None = None  # discriminative rates: block i trains at lr * decay**(depth - i)
    head_lr_scale: float = 1.0           # the task head's lr relative to train.lr
    label_smoothing: float = 0.0         # translate/summarize training loss: target mass spread over the vocabulary
    decoder_input_dropout: float = 0.0   # translate/summarize (encoder-decoder) training: share of the decoder's
                                         # input tokens replaced by [UNK], so it leans on the source more

    def __post_init__(self):
        _check(self.method in METHODS, f"method.method must be one of {', '.join(METHODS)}, got {self.method!r}",
               "pass --method.method full")
        _check(self.freeze_layers >= 0, f"method.freeze_layers must be >= 0, got {self.freeze_layers}",
               "pass --method.freeze_layers 0")
        _check(self.lora_r > 0, f"method.lora_r must be positive, got {self.lora_r}", "pass --method.lora_r 8")
        _check(self.layer_lr_decay is None or 0.0 < self.layer_lr_decay <= 1.0,
               f"method.layer_lr_decay must be in (0, 1], got {self.layer_lr_decay}", "pass e.g. 0.9 or leave unset")
        _check(self.head_lr_scale > 0, f"method.head_lr_scale must be > 0, got {self.head_lr_scale}",
               "pass e.g. --method.head_lr_scale 1.0")
        _check(0.0 <= self.decoder_input_dropout < 1.0,
               f"method.decoder_input_dropout must be in [0, 1), got {self.decoder_input_dropout}",
               "pass e.g. --method.decoder_input_dropout 0.2")
        _check(0.0 <= self.label_smoothing < 1.0,
               f"method.label_smoothing must be in [0, 1), got {self.label_smoothing}",
               "pass e.g. --method.label_smoothing 0.1")


@dataclass
class BalanceConfig:
    """Class imbalance (classification): weighted loss and re-sampling of the training set."""

    class_weights: bool = False          # loss weight of a class = n / (classes * count)
    sampling: str = "none"               # none, over (repeat minority classes), under (drop majority examples)

    def __post_init__(self):
        _check(self.sampling in ("none", "over", "under"),
               f"balance.sampling must be none, over or under, got {self.sampling!r}", "pass --balance.sampling none")


@dataclass
class AugmentConfig:
    """Text augmentation of training examples (classification), each switch independent."""

    copies: int = 0                      # augmented copies per training example (0 = off)
    swap: float = 0.0                    # probability per word of swapping it with another
    delete: float = 0.0                  # probability per word of dropping it
    insert: float = 0.0                  # probability per word of inserting a synonym (or a copy) after it
    synonyms: str | None = None          # lexicon file: one line per group, words separated by spaces/tabs
    synonym_replace: float = 0.0         # probability per word with synonyms of replacing it
    back_translation: str | None = None  # a fine-tuned translate run (source->pivot) ...
    back_translation_return: str | None = None  # ... and one back (pivot->source)
    seed: int = 0

    def __post_init__(self):
        _check(self.copies >= 0, f"augment.copies must be >= 0, got {self.copies}", "pass --augment.copies 1")
        for name in ("swap", "delete", "insert", "synonym_replace"):
            v = getattr(self, name)
            _check(0.0 <= v <= 1.0, f"augment.{name} must be in [0, 1], got {v}", f"pass --augment.{name} 0.1")


@dataclass
class DecodeConfig:
    """Generation settings for seq2seq and chat evaluation and prediction."""

    num_beams: int = 1
    max_new_tokens: int = 64
    length_penalty: float = 1.0
    temperature: float = 0.0             # 0 = greedy / beam; > 0 samples
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0        # > 0: never repeat an n-gram of this size within an output
    min_new_tokens: int = 0              # no end-of-text before this many tokens
    seed: int = 0
    eval_examples: int | None = None     # validation examples generated for the metrics (None: the task's default)

    def __post_init__(self):
        _check(self.eval_examples is None or self.eval_examples >= 1,
               f"decode.eval_examples must be >= 1, got {self.eval_examples}", "pass e.g. --decode.eval_examples 100")
        _check(self.num_beams >= 1, f"decode.num_beams must be >= 1, got {self.num_beams}", "pass --decode.num_beams 4")
        _check(self.max_new_tokens >= 1, f"decode.max_new_tokens must be >= 1, got {self.max_new_tokens}",
               "pass --decode.max_new_tokens 64")
        _check(self.repetition_penalty > 0, f"decode.repetition_penalty must be > 0, got {self.repetition_penalty}",
               "pass 1.0 for no penalty or e.g. --decode.repetition_penalty 1.2")
        _check(self.no_repeat_ngram_size >= 0,
               f"decode.no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}",
               "pass 0 to allow repeats or e.g. --decode.no_repeat_ngram_size 3")
        _check(0 <= self.min_new_tokens <= self.max_new_tokens,
               f"decode.min_new_tokens must be between 0 and decode.max_new_tokens ({self.max_new_tokens}), "
               f"got {self.min_new_tokens}", "pass e.g. --decode.min_new_tokens 8")


def to_yaml(sections: dict) -> str:
    """Serialise a mapping of section name -> dataclass (or plain value) as a YAML recipe."""
    plain = {k: (asdict(v) if hasattr(v, "__dataclass_fields__") else v) for k, v in sections.items()}
    for v in plain.values():
        if isinstance(v, dict):
            for key, item in v.items():
                if isinstance(item, tuple):
                    v[key] = list(item)
    return yaml.safe_dump(plain, sort_keys=False)


def field_names(cls) -> list[str]:
    return [f.name for f in fields(cls)]


# Sections that change what a run optimises: defined beside, importable from here.
from lmforge.config.objectives import ACCOUNTANTS, DistillConfig, PrivacyConfig  # noqa: E402
