"""Differentially private training (DP-SGD) through Opacus, applied to the one trainer as a transform.

    freeze what the loss never reaches -> Opacus's hooks on the model (per-example gradients)
      -> its DPOptimizer (clip each example's gradient to C, add N(0, (sigma C)^2) to the sum)
      -> Poisson-sampled batches from its sampler -> its accountant counts every step

Each example joins a step's batch independently with probability q (Opacus's
UniformWithReplacementSampler), which is what the accountant's privacy analysis assumes; a step's
randomness is drawn from (seed, step), so a resumed run sees the batches an uninterrupted one would.
The accountant's history goes into every checkpoint, so a resumed run reports the same epsilon.
Language-model pretraining samples non-overlapping windows of the token stream the same way.

Per-example loss: the trainer's loss divides each term by its units over the batch, and Opacus
(loss_reduction "mean") multiplies the backpropagated gradient by the batch's rows, so an example's
gradient is that of its own loss terms per unit (its cross-entropy for classification, its mean
token loss for fixed-length language-model windows).

Opacus has per-example rules for nn.Linear, nn.Embedding and nn.LayerNorm, which is every trainable
layer of the BERT and GPT families; lmforge's RMSNorm goes through its functional (torch.func)
fallback, and LoRA layers through the rule registered here. On the first step the per-example
gradients of every parameter are checked to add up to the batch gradient, so a layer whose weight is
used outside its own forward (a fused loss reading a tied embedding, say) is named in an error instead
of being trained with wrong clipping.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import replace

import numpy as np
import torch
import torch.nn as nn

from lmforge.config import PrivacyConfig, TrainConfig
from lmforge.errors import CheckpointError, ConfigError
from lmforge.models.lora import LoRALinear
from lmforge.train.objectives import as_batch
from lmforge.train.optim import set_lr


class PoissonLoader:
    """Batches of a loader's examples, each example in a batch with probability `sampler.sample_rate`.

    `source` has `num_examples` and `batch_of(indices)`; `sampler` is Opacus's Poisson sampler, its
    generator seeded from (seed, step) before each draw."""

    def __init__(self, source, sampler, seed: int):
        self.source, self.sampler, self.seed = source, sampler, int(seed)
        self.sampler.generator = torch.Generator()
        self.step = 0

    def next_batch(self):
        state = np.random.SeedSequence([self.seed, self.step]).generate_state(1, np.uint64)[0]
        self.sampler.generator.manual_seed(int(state) & ((1 << 63) - 1))
        indices = next(iter(self.sampler))
        self.step += 1
        return self.source.batch_of(indices)

    @property
    def epoch(self) -> float:
        """Expected passes over the training set so far."""
        return self.step * self.sampler.sample_rate

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


class PrivateTraining:
    """The DP-SGD transform of one training run: built before the optimizer (it freezes parameters the
    loss never reaches, which would otherwise receive pure noise), then `attach`ed to the optimizer."""

    def __init__(self, model: nn.Module, loader, objective, train: TrainConfig, privacy: PrivacyConfig,
                 *, world_size: int = 1, precision: str = "fp32"):
        _check_training(train, world_size, precision, loader)
        self.config, self.train = privacy, train
        self.model, self.objective, self.source = model, objective, loader
        self.examples = int(loader.num_examples)
        self.delta = privacy.delta if privacy.delta is not None else 1.0 / (10 * self.examples)
        if self.delta >= 1.0 / self.examples:
            raise ConfigError(f"privacy.delta ({self.delta:g}) must be below 1 / N = {1 / self.examples:.3g} for "
                              f"N = {self.examples:,} training examples",
                              f"pass e.g. --privacy.delta {_round_down(0.1 / self.examples):g}")
        for module in model.modules():
            if getattr(module, "sums_loss_from_labels", False):
                # The fused loss reads the (tied) output weight outside lm_head's forward, where Opacus's
                # hooks cannot see it; the logits go through lm_head instead.
                module.sums_loss_from_labels = False
        self.frozen = freeze_unreached(model, objective, loader)
        check_layers(model)
        self.tolerance = 1e-2 if precision in ("bf16", "fp16") else 1e-3
        self.engine = self.optimizer = self.loader = self.hooks = None
        self.noise_multiplier = self.sample_rate = None
        self.checked = False

    # ------------------------------------------------------------------ setup
    def attach(self, optimizer: torch.optim.Optimizer):
        """Opacus's DPOptimizer around `optimizer` and the Poisson loader that goes with it."""
        from opacus import PrivacyEngine
        from opacus.accountants.utils import get_noise_multiplier

        _register_lora_rule()
        # Opacus's hooks sit on the embeddings too, whose inputs (token ids) never need a gradient.
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed with "
                                "respect to module outputs")
        cfg = self.config
        # Opacus samples a DataLoader; this one holds example indices, and the source loader collates them.
        index_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(self.examples)),
                                                   batch_size=self.train.batch_size)
        self.sample_rate = 1.0 / len(index_loader)
        # The noise for a budget is searched over exactly train.max_steps steps (make_private_with_epsilon
        # would count whole epochs); make_private then applies it.
        self.noise_multiplier = cfg.noise_multiplier or get_noise_multiplier(
            target_epsilon=cfg.epsilon, target_delta=self.delta, sample_rate=self.sample_rate,
            steps=self.train.max_steps, accountant=cfg.accountant)
        self.engine = PrivacyEngine(accountant=cfg.accountant)
        try:
            self.hooks, self.optimizer, dp_loader = self.engine.make_private(
                module=self.model, optimizer=optimizer, data_loader=index_loader,
                noise_multiplier=self.noise_multiplier, max_grad_norm=cfg.max_grad_norm, poisson_sampling=True,
                wrap_model=False)
        except NotImplementedError as e:
            raise ConfigError(f"DP-SGD cannot train this model: {' '.join(str(e).split())[:300]}",
                              "freeze the layer named (method.*) or train without --privacy") from None
        self.loader = PoissonLoader(self.source, dp_loader.batch_sampler, self.train.seed)
        return self.optimizer, self.loader

    def detach(self) -> None:
        """Take Opacus's hooks off the model (a federated client trains it again next round, hooked anew)."""
        if self.hooks is not None:
            self.hooks.cleanup()
            self.hooks = None

    # ------------------------------------------------------------------ during training
    @staticmethod
    def is_empty(batches: list) -> bool:
        return all(as_batch(b)["input_ids"].shape[0] == 0 for b in batches)

    def empty_step(self, lr: float) -> float:
        """A step whose Poisson draw holds no example: the update is the noise alone, and it is counted."""
        for p in self.optimizer.params:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
        set_lr(self.optimizer, lr)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return 0.0

    def check_per_example_gradients(self, batches: list) -> None:
        """Once: every parameter has one gradient per example of the batch, and they add up to its batch
        gradient, so each example's gradient is what gets clipped. A layer Opacus cannot separate is named
        (a layer called without the batch dimension, or a weight used outside its layer's forward)."""
        if self.checked:
            return
        self.checked = True
        rows = as_batch(batches[0])["input_ids"].shape[0]
        names = {id(p): n for n, p in self.model.named_parameters()}
        for p in self.optimizer.params:
            samples = p.grad_sample if isinstance(p.grad_sample, torch.Tensor) else None
            good = (samples is not None and p.grad is not None and samples.shape[0] == rows
                    and _close(samples.float().sum(0) / rows, p.grad.float(), self.tolerance))
            if not good:
                raise ConfigError(f"DP-SGD: Opacus cannot compute per-example gradients of layer "
                                  f"{_layer_of(self.model, names[id(p)])}",
                                  "freeze that layer (method.freeze_*, method.method lora) or train without "
                                  "--privacy")

    def epsilon(self) -> float:
        return float(self.engine.accountant.get_epsilon(self.delta)) if len(self.engine.accountant) else 0.0

    def figures(self) -> dict:
        return {"epsilon": self.epsilon()}

    def summary(self) -> dict:
        steps = sum(h[2] for h in self.engine.accountant.history)
        return {"epsilon": self.epsilon(), "delta": self.delta, "noise_multiplier": self.noise_multiplier,
                "max_grad_norm": self.config.max_grad_norm, "sample_rate": self.sample_rate,
                "expected_batch_size": self.sample_rate * self.examples, "private_steps": steps,
                "training_examples": self.examples, "accountant": self.config.accountant,
                "target_epsilon": self.config.epsilon, "frozen_unreached": len(self.frozen)}

    def state_dict(self) -> dict:
        return {"history": [list(h) for h in self.engine.accountant.history], "accountant": self.config.accountant,
                "noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate}

    def load_state_dict(self, state: dict | None) -> None:
        if state is None:
            raise CheckpointError("this checkpoint was written by a run without --privacy",
                                  "resume it without the privacy options, or start a new run")
        if state["accountant"] != self.config.accountant or not math.isclose(state["sample_rate"], self.sample_rate):
            raise CheckpointError("the privacy settings differ from the run being resumed",
                                  "resume with the run's own --privacy and --train.batch_size options")
        self.engine.accountant.history = [tuple(h) for h in state["history"]]


def noise_for_budget(privacy: PrivacyConfig, examples: int, batch_size: int, steps: int) -> PrivacyConfig:
    """`privacy` with its noise fixed: the noise multiplier that spends `privacy.epsilon` over `steps` steps of
    Poisson-sampled batches of expected size `batch_size` from `examples` examples (as PrivateTraining samples
    them), and delta made explicit. Used where one budget covers several trainer runs, as a federated client's
    local training does over all its rounds."""
    from opacus.accountants.utils import get_noise_multiplier

    delta = privacy.delta if privacy.delta is not None else 1.0 / (10 * examples)
    if privacy.noise_multiplier is not None:
        return replace(privacy, delta=delta)
    sample_rate = 1.0 / math.ceil(examples / batch_size)
    sigma = get_noise_multiplier(target_epsilon=privacy.epsilon, target_delta=delta, sample_rate=sample_rate,
                                 steps=steps, accountant=privacy.accountant)
    return replace(privacy, epsilon=None, noise_multiplier=float(sigma), delta=delta)


def freeze_unreached(model: nn.Module, objective, loader) -> list[str]:
    """Freeze the trainable parameters the objective's loss does not depend on (a pretraining head a
    classifier never calls, say): Opacus needs a per-example gradient for every trained parameter, and
    would otherwise move these by noise alone. One forward pass on the first examples, RNG untouched."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    device = named[0][1].device if named else torch.device("cpu")
    batch = {k: v.to(device) for k, v in as_batch(loader.batch_of(list(range(min(2, loader.num_examples))))).items()}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        loss = sum(objective(model, batch).values())
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    frozen = [n for (n, p), g in zip(named, grads) if g is None]
    for (n, p), g in zip(named, grads):
        if g is None:
            p.requires_grad_(False)
    return frozen


def check_layers(model: nn.Module) -> None:
    """Name the first trained layer DP-SGD cannot give per-example gradients, before anything runs."""
    for name, module in model.named_modules():
        if not any(p.requires_grad for p in module.parameters(recurse=False)):
            continue
        if isinstance(module, nn.RNNBase):
            raise ConfigError(f"DP-SGD cannot train layer {name} ({type(module).__name__}): Opacus has per-example "
                              "gradients only for its own DPLSTM/DPGRU recurrent layers",
                              "start from a transformer (BERT, GPT) or train without --privacy")
        if isinstance(module, LoRALinear) and module.dropout_p > 0:
            raise ConfigError(f"DP-SGD cannot train LoRA layer {name} with dropout {module.dropout_p:g}: the "
                              "dropped inputs are not seen by the per-example gradient rule",
                              "pass --method.lora_dropout 0")
        if list(module.buffers()):
            raise ConfigError(f"DP-SGD cannot train layer {name} ({type(module).__name__}): it holds buffers, "
                              "which Opacus does not support", "freeze it or train without --privacy")


def _check_training(train: TrainConfig, world_size: int, precision: str, loader) -> None:
    checks = [(train.grad_accum == 1 and train.global_batch_size is None, "train.grad_accum must be 1 and "
               "train.global_batch_size unset with --privacy (a Poisson-sampled batch is one step)",
               "raise --train.batch_size, the expected batch size, instead"),
              (world_size == 1, "DP-SGD runs in one process", "launch without torchrun"),
              (precision != "fp16", "DP-SGD does not run with fp16 loss scaling", "pass --train.precision fp32 or bf16"),
              (not train.compile and train.activation_checkpointing == "none",
               "train.compile and train.activation_checkpointing cannot be used with --privacy (Opacus's hooks "
               "must see each layer's forward once)", "drop those options"),
              (hasattr(loader, "num_examples") and hasattr(loader, "batch_of"),
               "this objective's batches cannot be Poisson-sampled for DP-SGD",
               "use --privacy with fine-tuning or next-token (clm) pretraining")]
    for ok, what, fix in checks:
        if not ok:
            raise ConfigError(what, fix)


def _close(a: torch.Tensor, b: torch.Tensor, tolerance: float) -> bool:
    return float((a - b).norm()) <= tolerance * float(b.norm()) + 1e-7


def _layer_of(model: nn.Module, parameter: str) -> str:
    module_name = parameter.rsplit(".", 1)[0]
    module = model.get_submodule(module_name)
    return f"{module_name} ({type(module).__name__})"


def _round_down(x: float) -> float:
    """`x` rounded down to one significant digit (a delta to suggest)."""
    exponent = math.floor(math.log10(x))
    return math.floor(x / 10 ** exponent) * 10 ** exponent


_LORA_RULE: list = []


def _register_lora_rule() -> None:
    """Opacus's per-example rule for LoRALinear: gradients of the adapters (and of whatever else trains)
    from the layer's input x (B, ..., in) and output gradient g (B, ..., out), without touching the
    frozen base weight. y = x W^T + b + s (x A^T) B^T."""
    if _LORA_RULE:
        return
    from opacus.grad_sample import register_grad_sampler

    @register_grad_sampler(LoRALinear)
    def lora_grad_sample(layer: LoRALinear, activations: list[torch.Tensor], backprops: torch.Tensor) -> dict:
        x, g = activations[0], backprops
        out = {}
        if layer.lora_B.requires_grad:
            out[layer.lora_B] = torch.einsum("n...o,n...r->nor", g, x @ layer.lora_A.t()) * layer.scaling
        if layer.lora_A.requires_grad:
            out[layer.lora_A] = torch.einsum("n...r,n...i->nri", g @ layer.lora_B, x) * layer.scaling
        if layer.weight.requires_grad:
            out[layer.weight] = torch.einsum("n...o,n...i->noi", g, x)
        if layer.bias is not None and layer.bias.requires_grad:
            out[layer.bias] = torch.einsum("n...o->no", g)
        return out

    _LORA_RULE.append(lora_grad_sample)
