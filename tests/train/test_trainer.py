"""The training loop against independent references: one large batch, an uninterrupted run."""
import math

import numpy as np
import pytest
import torch

from lmforge.config import TrainConfig
from lmforge.data.loaders import LMWindowLoader
from lmforge.errors import TrainingError
from lmforge.models.registry import build_model, load_model
from lmforge.train.objectives import IGNORE_INDEX, CausalLM, causal_lm_loss, token_cross_entropy_sum
from lmforge.train.trainer import Trainer

VOCAB = 97


def tokens(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    # A repetitive sequence so that loss really falls within a few steps.
    base = rng.integers(0, VOCAB, size=50)
    return np.tile(base, n // 50 + 1)[:n].astype(np.uint16)


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    return build_model("debug", vocab_size=VOCAB, block_size=32, n_embd=32, **kw)


def test_gradient_accumulation_equals_one_large_batch(tmp_path):
    """4 micro-batches of 2 produce the same loss, gradients and update as 1 batch of 8, including
    uneven numbers of targets per micro-batch (token-weighted, not batch-averaged)."""
    torch.manual_seed(1)
    x = torch.randint(0, VOCAB, (8, 16))
    y = torch.randint(0, VOCAB, (8, 16))
    y[0, :12] = IGNORE_INDEX  # micro-batch 0 has far fewer targets than the others
    y[5, 3:] = IGNORE_INDEX
    cfg = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.0, warmup_steps=0, schedule="constant", grad_clip=None,
                      weight_decay=0.0)
    results = []
    for micro in (1, 4):
        model = tiny_model()
        trainer = Trainer(model, loader=None, cfg=cfg, run_dir=tmp_path)
        size = 8 // micro
        loss = trainer.train_step([(x[i:i + size], y[i:i + size]) for i in range(0, 8, size)])
        results.append((loss, {k: v.clone() for k, v in model.state_dict().items()}))
    (loss_big, w_big), (loss_acc, w_acc) = results
    assert loss_acc == pytest.approx(loss_big, rel=1e-6)
    for k in w_big:
        torch.testing.assert_close(w_acc[k], w_big[k], rtol=1e-5, atol=1e-6)
    # and the loss is the mean over all real targets
    ref_model = tiny_model()
    s, n = causal_lm_loss(ref_model, x, y)
    assert loss_big == pytest.approx(float(s.detach() / n), rel=1e-6)


class LearnedTemperatureLM(CausalLM):
    """Next-token loss on logits divided by a learned temperature: an objective with a parameter of its own."""

    def trainable(self, model):
        self.own = torch.nn.Module()
        self.own.log_temperature = torch.nn.Parameter(torch.zeros(()))
        return self.own

    def __call__(self, model, batch):
        logits = model(batch["input_ids"]) / self.own.log_temperature.exp()
        return {"lm": token_cross_entropy_sum(logits, batch["labels"])}


def run(tmp_path, name, *, stop_at=None, resume=False, steps=12, model_seed=0, objective=None):
    cfg = TrainConfig(batch_size=4, seq_len=16, max_steps=steps, lr=3e-3, warmup_steps=3, checkpoint_interval=4,
                      eval_interval=5, eval_batches=2, log_interval=2, progress=False, seed=7)
    model = tiny_model(model_seed, dropout=0.1)  # dropout makes the RNG state part of what must resume
    loader = LMWindowLoader(tokens(), 16, 4, seed=7)

    def evaluate(m):
        x, y = loader_eval
        s, n = causal_lm_loss(m, x, y)
        return {"val_loss": float(s / n)}

    rng = np.random.default_rng(3)
    data = tokens()
    starts = rng.integers(0, len(data) - 17, size=4)
    loader_eval = (torch.tensor(np.stack([data[s:s + 16] for s in starts]).astype(np.int64)),
                   torch.tensor(np.stack([data[s + 1:s + 17] for s in starts]).astype(np.int64)))

    def on_step(trainer):
        if stop_at is not None and trainer.state.step == stop_at:
            raise KeyboardInterrupt  # simulates the process being killed

    trainer = Trainer(model, loader, cfg, tmp_path / name, evaluate=evaluate, on_step=on_step, objective=objective)
    (tmp_path / name).mkdir(exist_ok=True)
    summary = trainer.fit(resume=resume)
    return model, summary


def test_interrupted_and_resumed_run_ends_with_identical_weights(tmp_path):
    full, summary = run(tmp_path, "full")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "cut", stop_at=6)  # last checkpoint at step 4; steps 5-6 are lost and redone
    resumed, summary_r = run(tmp_path, "cut", resume=True, model_seed=123)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert summary_r["steps"] == summary["steps"] == 12
    assert summary_r["val_loss"] == summary["val_loss"]
    # the metrics log has no duplicated steps after the resume
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    train_steps = [eval(l.replace("null", "None"))["step"] for l in lines if "train_loss" in l]
    assert train_steps == sorted(set(train_steps))
    # the published model equals the final weights
    loaded = load_model(tmp_path / "cut")
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, full.state_dict()[k])


def test_an_objectives_own_parameters_train_and_resume_exactly_outside_the_saved_model(tmp_path):
    full_objective, cut_objective = LearnedTemperatureLM(), LearnedTemperatureLM()
    full, _ = run(tmp_path, "full", objective=full_objective)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "cut", stop_at=6, objective=LearnedTemperatureLM())
    resumed, _ = run(tmp_path, "cut", resume=True, model_seed=123, objective=cut_objective)
    trained = float(full_objective.own.log_temperature.detach())
    assert abs(trained) > 1e-3  # it trained
    assert float(cut_objective.own.log_temperature.detach()) == trained  # and resumed with its optimizer state
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    loaded = load_model(tmp_path / "cut")  # the run's model knows nothing of the objective's parameter
    assert set(loaded.state_dict()) == set(full.state_dict())


def test_loss_falls_and_checkpoints_are_pruned(tmp_path):
    model, summary = run(tmp_path, "a", steps=16)
    assert summary["val_loss"] < summary["initial_val_loss"]
    ckpts = sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir())
    assert ckpts == ["best", "step_00000012", "step_00000016"]


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path):
    cfg = TrainConfig(batch_size=2, seq_len=16, max_steps=10, checkpoint_interval=2, progress=False, warmup_steps=0)

    def poison(trainer):
        if trainer.state.step == 3:
            trainer.model.wte.weight.data[:] = math.nan

    trainer = Trainer(tiny_model(), LMWindowLoader(tokens(), 16, 2, seed=0), cfg, tmp_path, on_step=poison)
    with pytest.raises(TrainingError, match="loss became nan at step 4.*step_00000002"):
        trainer.fit()
    kept = load_model(tmp_path / "checkpoints" / "step_00000002")
    assert all(torch.isfinite(p).all() for p in kept.parameters())
    assert not (tmp_path / "checkpoints" / "step_00000004").exists()


def test_early_stopping(tmp_path):
    cfg = TrainConfig(batch_size=2, seq_len=16, max_steps=50, eval_interval=1, early_stopping_patience=2,
                      progress=False, checkpoint_interval=100)
    values = iter([5.0, 4.0, 4.5, 4.6, 4.7, 4.8])
    trainer = Trainer(tiny_model(), LMWindowLoader(tokens(), 16, 2), cfg, tmp_path,
                      evaluate=lambda m: {"val_loss": next(values)})
    summary = trainer.fit()
    assert summary["stop_reason"] == "early_stopping"
    assert summary["steps"] == 3
    assert summary["best_val_loss"] == 4.0


def test_logged_train_loss_is_the_mean_since_the_previous_log_line(tmp_path):
    """The same run logged every step and every 4 steps: each 4-step value is the mean of the 4 single ones."""
    import json

    logged = {}
    for interval in (1, 4):
        cfg = TrainConfig(batch_size=4, seq_len=16, max_steps=8, lr=3e-3, warmup_steps=2, checkpoint_interval=8,
                          log_interval=interval, progress=False, seed=7, precision="fp32")
        trainer = Trainer(tiny_model(), LMWindowLoader(tokens(), 16, 4, seed=7), cfg, tmp_path / str(interval))
        (tmp_path / str(interval)).mkdir()
        trainer.fit()
        rows = [json.loads(line) for line in (tmp_path / str(interval) / "metrics.jsonl").read_text().splitlines()]
        logged[interval] = {r["step"]: r["train_loss"] for r in rows if "train_loss" in r}
    assert sorted(logged[4]) == [4, 8]
    for step in (4, 8):
        assert logged[4][step] == pytest.approx(np.mean([logged[1][s] for s in range(step - 3, step + 1)]), rel=1e-9)


def test_compiled_training_equals_eager_and_saves_plain_parameter_names(tmp_path):
    """`train.compile` compiles blocks in place: same losses and weights as eager, and the weights it
    saves load into a fresh model (wrapping blocks would have renamed every parameter `_orig_mod`)."""
    from lmforge.models.registry import save_model

    results = []
    for compile in (False, True):
        model = tiny_model()
        cfg = TrainConfig(lr=3e-3, warmup_steps=0, compile=compile, precision="fp32", device="cpu")
        trainer = Trainer(model, None, cfg, tmp_path)
        g = torch.Generator().manual_seed(1)
        losses = []
        for _ in range(3):
            seq = torch.randint(0, VOCAB, (4, 17), generator=g)
            losses.append(trainer.train_step([(seq[:, :-1], seq[:, 1:])]))
        results.append((losses, model))
    (eager_losses, eager), (compiled_losses, compiled) = results
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-5)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    save_model(compiled, tmp_path / "saved")
    loaded = load_model(tmp_path / "saved")
    for k, v in compiled.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    # Fused kernels round differently, and Adam's division by small second moments magnifies it a little.
    for k, v in eager.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, atol=1e-4, rtol=1e-3)
