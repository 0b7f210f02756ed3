"""The one training loop every objective and model family goes through.

    for each step: accumulate token-weighted micro-batch gradients -> clip -> optimizer step
                   -> log / evaluate / checkpoint (rank 0)

Resuming restores weights, optimizer, RNG and the data cursor from the newest complete
checkpoint, so an interrupted run ends with exactly the weights of an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from lmforge.config import PrivacyConfig, TrainConfig
from lmforge.errors import CheckpointError, ConfigError, TrainingError
from lmforge.models.registry import applied_transforms, tied_keys
from lmforge.parallel import (DistInfo, all_reduce_sum, apply_activation_checkpointing, apply_compile, apply_ddp,
                              apply_fsdp, barrier, clip_grad_norm, full_state, is_sharded, load_full_state,
                              load_sharded, materialize, on_meta_device, save_sharded, skip_gradient_sync, unwrap)
from lmforge.train import checkpoint as ckpt
from lmforge.train.metrics_log import LogWindow, MetricsLog
from lmforge.train.objectives import CausalLM, Objective, as_batch
from lmforge.train.optim import build_optimizer, lr_multiplier, set_lr
from lmforge.train.precision import autocast, grad_scaler, resolve_precision
from lmforge.train.background_saves import BackgroundSaves
from lmforge.train.objective_params import attach_objective_parameters, load_objective_tensors, objective_tensors
from lmforge.train.privacy import PrivateTraining
from lmforge.train.threads import ThreadTuner
from lmforge.train.utilisation import device_peak_tflops, mfu, model_flops_per_token, peak_memory_gb


@dataclass
class TrainerState:
    step: int = 0
    tokens: int = 0
    wall_seconds: float = 0.0
    best_val_loss: float = math.inf
    evals_since_best: int = 0
    initial_val_loss: float | None = None
    last_train_loss: float | None = None
    last_val: dict = field(default_factory=dict)


class Trainer:
    """Trains `model` on batches from `loader` (an object with `next_batch()` and `state_dict()`).

    `evaluate` returns validation figures (at least `val_loss`) for the bare model, or is None.
    `on_step(trainer)` is called after every optimizer step (for tests and custom stopping).
    """

    def __init__(self, model: nn.Module, loader, cfg: TrainConfig, run_dir: str | Path, *,
                 dist: DistInfo | None = None, objective: Objective | None = None,
                 evaluate: Callable[[nn.Module], dict] | None = None,
                 on_step: Callable[["Trainer"], None] | None = None, privacy: PrivacyConfig | None = None):
        self.cfg = cfg
        self.dist = dist or DistInfo()
        self.device = self.dist.device
        self.run_dir = Path(run_dir)
        # A model built on the meta device is given memory only once sharded (below), each rank its shards.
        self.model = model if on_meta_device(model) else model.to(self.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        self.grad_accum = micro_batches_per_step(cfg, self.dist)
        self.tied = tied_keys(self.model)  # before sharding, which gives every key its own tensor
        self.objective = objective or CausalLM()
        self.loader = loader
        # DP-SGD (lmforge.train.privacy) freezes what the loss never reaches before the optimizer is built,
        # then wraps the optimizer and replaces the loader with Poisson-sampled batches.
        self.privacy = PrivateTraining(self.model, loader, self.objective, cfg, privacy, precision=self.precision,
                                       world_size=self.dist.world_size) if privacy and privacy.enabled else None
        if self.privacy is None:
            # FSDP replaces the parameters with sharded ones, which the optimizer must hold: wrap first.
            self.wrapped = self._wrap(self.model)
        materialize(self.model, self.device)
        self.optimizer = build_optimizer(self.model, cfg, device_type=self.device.type, sharded=is_sharded(self.model))
        if self.privacy is not None:
            # Opacus hooks the bare model's layers; wrapping (DDP, compile) comes after them.
            self.optimizer, self.loader = self.privacy.attach(self.optimizer)
            self.wrapped = self._wrap(self.model)
        self.objective_module = attach_objective_parameters(
            self.objective, self.model, self.optimizer, device=self.device, world_size=self.dist.world_size,
            sharded_checkpoints=cfg.checkpoint_format == "sharded", private=self.privacy is not None)
        self.scaler = grad_scaler(self.precision, self.device)
        self.last_terms: dict[str, float] = {}
        self.evaluate_fn = evaluate
        self.on_step = on_step
        self.threads = ThreadTuner() if cfg.threads == "auto" else None
        self.background = BackgroundSaves(self.dist) if cfg.async_checkpoint else None
        self.state = TrainerState()
        self.stop_reason = ""
        self.seq_len = 0  # of the latest batch, for the FLOPs per token

    def _wrap(self, model: nn.Module) -> nn.Module:
        """Activation checkpointing -> compile -> DDP or FSDP, each applied from outside the model."""
        apply_activation_checkpointing(model, self.cfg.activation_checkpointing)
        if self.cfg.compile:
            apply_compile(model)
        if self.cfg.parallel == "fsdp":
            return apply_fsdp(model, self.dist, precision=self.precision,
                              reshard_after_forward=self.cfg.reshard_after_forward,
                              shard_group_size=self.cfg.shard_group_size)
        return apply_ddp(model, self.dist)

    # ------------------------------------------------------------------ one optimizer step
    def train_step(self, micro_batches: list) -> float:
        """Accumulate gradients over `micro_batches` so that the result equals one batch holding all of
        them: each loss term is summed and divided by its number of units over the global batch.

        Returns the loss per unit over the global batch (summed over terms).
        """
        model, opt = self.wrapped, self.optimizer
        if self.privacy is not None and self.privacy.is_empty(micro_batches):
            return self.privacy.empty_step(self.cfg.lr * lr_multiplier(self.state.step, self.cfg))
        batches = [{k: v.to(self.device, non_blocking=True) for k, v in as_batch(b).items()} for b in micro_batches]
        local = [self.objective.counts(b) for b in batches]
        n_global = {t: all_reduce_sum(sum(c[t] for c in local).float().clone(), self.dist).clamp(min=1.0)
                    for t in local[0]}
        totals = {t: torch.zeros((), device=self.device) for t in n_global}
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            with contextlib.nullcontext() if last else skip_gradient_sync(model, self.dist):
                with autocast(self.precision, self.device):
                    sums = self.objective(model, batch)
                # DDP and FSDP average gradients over ranks; scaling by world size makes the result a global sum.
                loss = sum(sums[t] * (self.dist.world_size / n_global[t]) for t in sums)
                self.scaler.scale(loss).backward()
            for t in sums:
                totals[t] += sums[t].detach()
        figures = [all_reduce_sum(totals[t], self.dist) / n_global[t] for t in totals]
        if self.privacy is not None:
            self.privacy.check_per_example_gradients(batches)  # DP-SGD clips each example's gradient instead
        elif self.cfg.grad_clip:
            self.scaler.unscale_(opt)
            figures.append(clip_grad_norm(self.model, self.cfg.grad_clip))
        # The step's one wait for the device: loss terms and gradient norm come back together.
        values = torch.stack([f.float() for f in figures]).tolist()
        self.last_terms = dict(zip(totals, values))
        mean_loss = sum(self.last_terms.values())
        if not math.isfinite(mean_loss):
            opt.zero_grad(set_to_none=True)
            if self.cfg.grad_clip and self.precision == "fp16":
                self.scaler.update()  # close the unscale_ above, so a later step may unscale again
            return mean_loss
        if self.cfg.grad_clip and self.privacy is None and not math.isfinite(values[-1]) and self.precision != "fp16":
            # A finite loss with non-finite gradients would write inf/NaN into the weights.
            opt.zero_grad(set_to_none=True)
            return float("nan")
        set_lr(opt, self.cfg.lr * lr_multiplier(self.state.step, self.cfg))
        self.scaler.step(opt)
        self.scaler.update()
        opt.zero_grad(set_to_none=True)
        return mean_loss

    # ------------------------------------------------------------------ the loop
    def fit(self, *, resume: bool = False) -> dict:
        if resume:
            self._resume()
        cfg, st = self.cfg, self.state
        metrics = MetricsLog(self.run_dir / "metrics.jsonl", enabled=self.dist.is_main, truncate_after=st.step)
        if st.step == 0 and self.evaluate_fn is not None and st.initial_val_loss is None:
            figures = self._evaluate()
            st.initial_val_loss = figures["val_loss"]
            metrics.write({"step": 0, **figures})
        bar = _progress(cfg, st.step, enabled=self.dist.is_main and cfg.progress)
        start_wall, start_seconds, window = time.perf_counter(), st.wall_seconds, LogWindow()
        self.stop_reason = "max_steps"
        threads_before = torch.get_num_threads()
        if isinstance(cfg.threads, int):
            torch.set_num_threads(cfg.threads)
        try:
            while st.step < cfg.max_steps:
                batches = [self.loader.next_batch() for _ in range(self.grad_accum)]
                self.seq_len = int(as_batch(batches[0])["input_ids"].shape[-1])
                loss = self.train_step(batches)
                if not math.isfinite(loss):
                    self._stop_on_nan(loss)
                step_tokens = sum(int(as_batch(b)["input_ids"].numel()) for b in batches) * self.dist.world_size
                st.step += 1
                st.tokens += step_tokens
                st.last_train_loss = loss
                window.add(step_tokens, loss)
                st.wall_seconds = start_seconds + time.perf_counter() - start_wall
                if st.step % cfg.log_interval == 0 or st.step == cfg.max_steps:
                    self._log(metrics, bar, window)
                if bar is not None:
                    bar.update(1)
                out_of_time = cfg.max_seconds is not None and st.wall_seconds >= cfg.max_seconds
                final = st.step == cfg.max_steps or out_of_time
                stop_early = False
                if self.evaluate_fn is not None and (st.step % cfg.eval_interval == 0 or final):
                    figures = self._evaluate()
                    metrics.write({"step": st.step, **figures, "elapsed": st.wall_seconds})
                    stop_early = self._track_best(figures)
                if st.step % cfg.checkpoint_interval == 0 or final or stop_early:
                    self.save()
                for callback in (self.threads, self.on_step):
                    if callback is not None:
                        callback(self)
                # A time budget resizes the run as it measures the step rate, and on a budget stop the
                # steps done, not the configured ones, were the run's length.
                _resize(bar, st.step if out_of_time else cfg.max_steps)
                if out_of_time or stop_early:
                    self.stop_reason = "max_seconds" if out_of_time else "early_stopping"
                    break
        finally:
            torch.set_num_threads(threads_before)
            if bar is not None:
                bar.close()
        if self.background is not None:
            self.background.wait()  # the final checkpoint is complete before the run reports it
        if bar is not None and self.stop_reason != "max_steps":
            print(self.stop_message(), flush=True)
        return self.summary()

    # ------------------------------------------------------------------ pieces
    def _log(self, metrics: MetricsLog, bar, window: LogWindow) -> None:
        st = self.state
        mean_loss, tps = window.close()
        terms = {f"train_{t}": v for t, v in self.last_terms.items()} if len(self.last_terms) > 1 else {}
        private = self.privacy.figures() if self.privacy is not None else {}
        flops = model_flops_per_token(unwrap(self.model), self.seq_len)
        utilisation = mfu(tps, flops, device_peak_tflops(self.device, self.precision), self.dist.world_size)
        hardware = {"peak_memory_gb": round(peak_memory_gb(self.device), 3),
                    **({"mfu": round(utilisation, 4)} if utilisation is not None else {})}
        metrics.write({"step": st.step, "train_loss": mean_loss, **terms, "lr": self.optimizer.param_groups[0]["lr"],
                       "tokens": st.tokens, "tokens_per_second": tps, "elapsed": st.wall_seconds, **hardware,
                       **private})
        if bar is not None:
            bar.set_postfix(loss=f"{mean_loss:.3f}", tok_s=f"{tps:,.0f}",
                            **({"mfu": f"{utilisation:.1%}"} if utilisation is not None else {}))

    def _evaluate(self) -> dict:
        bare = unwrap(self.model)
        was_training = bare.training
        bare.eval()
        with torch.no_grad(), autocast(self.precision, self.device):
            figures = self.evaluate_fn(bare)
        bare.train(was_training)
        self.state.last_val = figures
        return figures

    def _track_best(self, figures: dict) -> bool:
        st, cfg = self.state, self.cfg
        if figures["val_loss"] < st.best_val_loss:
            st.best_val_loss, st.evals_since_best = figures["val_loss"], 0
            self._write_checkpoint(self.run_dir / "checkpoints" / "best")
            return False
        st.evals_since_best += 1
        return cfg.early_stopping_patience is not None and st.evals_since_best >= cfg.early_stopping_patience

    def _state_dict(self) -> dict:
        private = {"privacy": self.privacy.state_dict()} if self.privacy is not None else {}
        return {**self.state.__dict__, "loader": self.loader.state_dict(), "best_val_loss": self.state.best_val_loss
                if math.isfinite(self.state.best_val_loss) else None, **private}

    def _write_checkpoint(self, path: Path) -> bool:
        """Write a checkpoint from rank 0 (under FSDP every rank takes part in gathering the state)."""
        if self.cfg.checkpoint_format == "sharded":
            return self._write_sharded(path)
        weights, optimizer_state = full_state(self.model, self.optimizer)
        if not self.dist.is_main:
            return False
        weights = {k: v for k, v in weights.items() if k not in self.tied}
        bare = unwrap(self.model)  # its config, with the record of any factorised layers it was built with
        ckpt.write_checkpoint(path, weights, {**bare.config.to_dict(), **applied_transforms(bare)}, optimizer_state,
                              self._state_dict(), extra=objective_tensors(self.objective_module))
        return True

    def _write_sharded(self, path: Path) -> bool:
        """Every rank writes its own shards into a temporary folder, which rank 0 completes and renames into
        place once all of them are written: a rank killed mid-save leaves the previous checkpoint the newest."""
        tmp = ckpt.temporary_for(path) if self.dist.is_main else path.with_name(path.name + ".tmp")
        barrier(self.dist)
        save_sharded(tmp / ckpt.SHARDED, self.model, self.optimizer)
        if self.dist.is_main:
            config = unwrap(self.model).config.to_dict()
            ckpt.finish_sharded(tmp, path, config, {**self._state_dict(), "world_size": self.dist.world_size})
        barrier(self.dist)
        return self.dist.is_main

    def save(self) -> Path | None:
        path = self.run_dir / "checkpoints" / f"step_{self.state.step:08d}"
        if self.background is not None:
            self.background.save(path, self.model, self.optimizer, config=unwrap(self.model).config.to_dict(),
                                 state={**self._state_dict(), "world_size": self.dist.world_size},
                                 after=lambda: (ckpt.publish_config(path, self.run_dir),
                                                ckpt.prune_checkpoints(self.run_dir, self.cfg.keep_last)))
            return path
        if not self._write_checkpoint(path):
            return None
        if self.cfg.checkpoint_format == "sharded":
            ckpt.publish_config(path, self.run_dir)
        else:
            ckpt.publish(path, self.run_dir)
        ckpt.prune_checkpoints(self.run_dir, self.cfg.keep_last)
        return path

    def _resume(self) -> None:
        path = ckpt.latest_checkpoint(self.run_dir)
        if path is None:
            return
        if ckpt.is_sharded_checkpoint(path):
            saved = ckpt.read_sharded_state(path)
            saved.pop("world_size", None)
            load_sharded(path / ckpt.SHARDED, self.model, self.optimizer)
        else:
            weights, optimizer_state, saved = ckpt.read_checkpoint(path, self.model.state_dict(), optional=self.tied)
            load_full_state(self.model, self.optimizer, weights, optimizer_state)
            load_objective_tensors(self.objective_module, saved.pop("objective", None), path)
        self.loader.load_state_dict(saved.pop("loader"))
        if self.privacy is not None:
            self.privacy.load_state_dict(saved.pop("privacy", None))
        elif "privacy" in saved:
            raise CheckpointError(f"{path} was trained with DP-SGD", "resume it with the run's own --privacy options")
        best = saved.pop("best_val_loss")
        self.state = TrainerState(**{k: v for k, v in saved.items() if k in TrainerState.__dataclass_fields__})
        self.state.best_val_loss = math.inf if best is None else best

    def _stop_on_nan(self, loss: float) -> None:
        # Checkpoints already on disk were written from finite losses; nothing is saved from here on.
        last = ckpt.latest_checkpoint(self.run_dir)
        where = f"; the last good checkpoint is {last}" if last else "; no checkpoint had been written yet"
        raise TrainingError(f"training loss became {loss} at step {self.state.step + 1}{where}",
                            "lower --train.lr, set --train.grad_clip 1.0 or use --train.precision fp32, "
                            "then --resume")

    def stop_message(self) -> str:
        """Why training ended, in one line: `stopped at step 71: the 150 s time budget was reached`."""
        st, cfg = self.state, self.cfg
        if self.stop_reason == "max_seconds":
            budget = cfg.max_seconds if cfg.max_seconds is not None else round(st.wall_seconds)
            return (f"stopped at step {st.step}: the {budget:g} s time budget was reached "
                    f"({st.step / max(st.wall_seconds, 1e-9):.1f} steps/s)")
        if self.stop_reason == "early_stopping":
            return (f"stopped at step {st.step}: validation loss has not improved for "
                    f"{cfg.early_stopping_patience} evaluations")
        return f"finished {st.step} steps"

    def summary(self) -> dict:
        st = self.state
        val = st.last_val
        return {
            "steps": st.step, "tokens": st.tokens, "wall_seconds": round(st.wall_seconds, 3),
            "tokens_per_second": st.tokens / st.wall_seconds if st.wall_seconds else None,
            "train_loss": st.last_train_loss, "val_loss": val.get("val_loss"), "val_ppl": val.get("val_ppl"),
            "val_bpb": val.get("val_bpb"), "initial_val_loss": st.initial_val_loss,
            "best_val_loss": st.best_val_loss if math.isfinite(st.best_val_loss) else None,
            "stop_reason": self.stop_reason, "stop_message": self.stop_message(),
            "tokens_per_step": st.tokens // st.step if st.step else None,
            "precision": self.precision,
            "threads": self.threads.describe() if self.threads else self.cfg.threads or torch.get_num_threads(),
            "world_size": self.dist.world_size,
            **({"epsilon": self.privacy.epsilon(), "privacy": self.privacy.summary()} if self.privacy else {}),
        }


def micro_batches_per_step(cfg: TrainConfig, dist: DistInfo) -> int:
    """`cfg.grad_accum`, or the micro-batches per step that make up `cfg.global_batch_size` over the ranks."""
    if cfg.global_batch_size is None:
        return cfg.grad_accum
    per_pass = cfg.batch_size * dist.world_size
    if cfg.global_batch_size % per_pass:
        raise ConfigError(f"train.global_batch_size ({cfg.global_batch_size}) is not a multiple of "
                          f"train.batch_size x processes ({cfg.batch_size} x {dist.world_size} = {per_pass})",
                          f"pass --train.global_batch_size {max(1, round(cfg.global_batch_size / per_pass)) * per_pass}"
                          f" or a --train.batch_size that divides it over {dist.world_size} processes")
    return cfg.global_batch_size // per_pass


def _resize(bar, total: int) -> None:
    if bar is not None and bar.total != total:
        bar.total = total
        bar.refresh()


def _progress(cfg: TrainConfig, initial: int, *, enabled: bool):
    if not enabled:
        return None
    return tqdm(total=cfg.max_steps, initial=initial, desc="train", unit="step", dynamic_ncols=True)
