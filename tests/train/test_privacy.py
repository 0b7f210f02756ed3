"""DP-SGD through Opacus on the one trainer: per-example gradients against a loop over single examples,
the epsilon reported against Opacus's accountants computed independently, resume keeping epsilon exact,
Poisson sampling, the empty-batch step, and the one-line errors."""
import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lmforge.api as lf
from lmforge.cli import main
from lmforge.config import MethodConfig, PrivacyConfig, StartConfig, TaskDataConfig, TrainConfig
from lmforge.data.loaders import LMWindowLoader
from lmforge.errors import ConfigError
from lmforge.models.heads import TaskModel, TaskModelConfig
from lmforge.models.registry import build_model, preset_config
from lmforge.tasks.base import ExampleLoader, pad_batch
from lmforge.train.methods import apply_method
from lmforge.train.objectives import CausalLM, as_batch
from lmforge.train.trainer import Trainer

opacus = pytest.importorskip("opacus")

WORDS = "good great bad awful the movie plot was and a of it".split()


class Classify:
    """Cross-entropy over `class_labels`, summed, as lmforge's classification task computes it."""

    def counts(self, batch):
        return {"cls": (batch["class_labels"] != -100).sum()}

    def __call__(self, model, batch):
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"],
                       token_type_ids=batch.get("token_type_ids"))
        return {"cls": F.cross_entropy(logits.float(), batch["class_labels"], reduction="sum")}


def _classifier(method: str) -> TaskModel:
    torch.manual_seed(0)
    backbone = build_model(preset_config("bert-debug", vocab_size=64, n_layer=2, n_embd=32, n_head=4, block_size=32,
                                         dropout=0.0))
    net = TaskModel(TaskModelConfig(task="classify", head="sequence", backbone=backbone.config.to_dict(),
                                    labels=["0", "1"], classifier_dropout=0.0), backbone=backbone)
    apply_method(net, MethodConfig(method=method, lora_dropout=0.0))
    if method == "lora":  # B starts at zero; move it so every adapter gradient is non-trivial
        with torch.no_grad():
            for name, p in net.named_parameters():
                if name.endswith("lora_B"):
                    p.normal_(std=0.1)
    return net


def _features(n: int, seed: int = 0) -> list[dict]:
    g = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        length = int(g.integers(3, 12))  # rows of different lengths: padding is part of the check
        ids = [2] + g.integers(5, 64, length).tolist() + [3]
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "token_type_ids": [0] * len(ids),
                     "class_labels": int(g.integers(0, 2))})
    return rows


def _trainer(tmp_path, net, features, privacy: PrivacyConfig, **train) -> Trainer:
    loader = ExampleLoader(features, 8, lambda f: pad_batch(f, 0), seed=0)
    cfg = TrainConfig(**{**dict(batch_size=8, max_steps=5, lr=1e-2, warmup_steps=0, progress=False,
                                weight_decay=0.0, schedule="constant"), **train})
    return Trainer(net, loader, cfg, tmp_path, objective=Classify(), privacy=privacy)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_per_example_gradients_equal_a_loop_over_single_examples(tmp_path, method):
    net = _classifier(method)
    reference = copy.deepcopy(net)  # before Opacus's hooks and the step
    trainer = _trainer(tmp_path, net, _features(64), PrivacyConfig(noise_multiplier=1.0, max_grad_norm=1e9))
    trained = _check_against_loop(trainer, net, reference, Classify())
    if method == "lora":
        assert all("lora_" in n or n.startswith(("head.", "backbone.pooler.")) for n in trained)


def test_per_example_gradients_of_gpt_pretraining_windows_equal_a_loop(tmp_path):
    torch.manual_seed(0)
    net = build_model(preset_config("debug", vocab_size=40, block_size=16, n_layer=2, n_embd=32, n_head=4,
                                    dropout=0.0))
    reference = copy.deepcopy(net)
    tokens = np.random.default_rng(0).integers(0, 40, 2000).astype(np.uint16)
    loader = LMWindowLoader(tokens, 16, 8, seed=0)
    cfg = TrainConfig(batch_size=8, max_steps=2, lr=1e-2, warmup_steps=0, progress=False, schedule="constant")
    trainer = Trainer(net, loader, cfg, tmp_path, objective=CausalLM(),
                      privacy=PrivacyConfig(noise_multiplier=1.0, max_grad_norm=1e9))
    trained = _check_against_loop(trainer, net, reference, CausalLM(), per_unit=16)
    assert "wte.weight" in trained  # tied to the output layer: both uses are in its per-example gradient


def _check_against_loop(trainer, net, reference, objective, per_unit: int = 1) -> set[str]:
    """Run one DP step, recording Opacus's per-example gradients before clipping, and compare each with
    the gradient of that example's own loss per unit (`per_unit` units per example) on a copy of the model."""
    seen = {}
    clip = trainer.optimizer.clip_and_accumulate

    def record():
        seen.update({id(p): p.grad_sample.clone() for p in trainer.optimizer.params})
        clip()

    trainer.optimizer.clip_and_accumulate = record
    batch = as_batch(trainer.loader.next_batch())
    trainer.train_step([batch])
    rows = batch["input_ids"].shape[0]
    assert rows > 0
    id_of = {n: id(p) for n, p in net.named_parameters()}
    trained = sorted(n for n, p in net.named_parameters() if id(p) in seen)
    ref_params = dict(reference.named_parameters())
    for i in range(rows):
        single = {k: v[i:i + 1] for k, v in batch.items()}
        loss = sum(objective(reference, single).values()) / per_unit
        grads = torch.autograd.grad(loss, [ref_params[n] for n in trained])
        for name, g in zip(trained, grads):
            torch.testing.assert_close(seen[id_of[name]][i], g, rtol=1e-4, atol=1e-6, msg=f"{name}, example {i}")
    return set(trained)


def test_an_empty_poisson_draw_is_a_noise_only_step_that_is_counted(tmp_path):
    net = _classifier("full")
    trainer = _trainer(tmp_path, net, _features(32), PrivacyConfig(noise_multiplier=1.0))
    before = {n: p.detach().clone() for n, p in net.named_parameters() if p.requires_grad}
    empty = trainer.loader.source.batch_of([])
    assert empty["input_ids"].shape[0] == 0
    trainer.train_step([empty])
    moved = [n for n, p in net.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert moved, "the noise moved no weight"
    assert trainer.privacy.engine.accountant.history == [(1.0, trainer.privacy.sample_rate, 1)]


def test_poisson_batches_include_each_example_with_the_sample_rate_and_repeat_by_step(tmp_path):
    trainer = _trainer(tmp_path, _classifier("full"), _features(200), PrivacyConfig(noise_multiplier=1.0))
    loader = trainer.loader
    q = loader.sampler.sample_rate
    assert q == pytest.approx(1 / math.ceil(200 / 8))
    sizes = [loader.next_batch()["input_ids"].shape[0] for _ in range(400)]
    # Binomial(200, q) batch sizes: mean 200 q, within 4 standard errors.
    assert abs(np.mean(sizes) - 200 * q) < 4 * math.sqrt(200 * q * (1 - q) / 400)
    assert np.var(sizes) > 0
    loader.load_state_dict({"step": 17, "seed": 1337})
    a = loader.next_batch()
    loader.load_state_dict({"step": 17, "seed": 1337})
    assert torch.equal(a["input_ids"], loader.next_batch()["input_ids"])


# ---------------------------------------------------------------- through `lmforge finetune`
def _lines(n: int, seed: int) -> list[str]:
    g = np.random.default_rng(seed)
    return [f"{i % 2} " + " ".join(WORDS[int(j)] for j in g.integers(0, len(WORDS), 6)) for i in range(n)]


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("dp_sentiment")
    (root / "train.txt").write_text("\n".join(_lines(200, 0)) + "\n")
    (root / "dev.txt").write_text("\n".join(_lines(24, 1)) + "\n")
    return root


def _finetune(root: Path, out: Path, privacy: PrivacyConfig, **train) -> dict:
    data = TaskDataConfig(train=str(root / "train.txt"), valid=str(root / "dev.txt"), format="label_text",
                          max_length=12)
    start = StartConfig(init="bert-debug", vocab_size=120, n_layer=1, n_embd=32, n_head=4, block_size=16)
    cfg = TrainConfig(**{**dict(batch_size=10, max_steps=12, lr=1e-3, warmup_steps=2, eval_interval=12,
                                checkpoint_interval=4, log_interval=4, progress=False), **train})
    return lf.finetune("classify", data=data, model=start, out=out, train=cfg, privacy=privacy)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_epsilon_reported_equals_opacus_accountant_for_the_same_rate_noise_and_steps(sentiment, tmp_path, accountant):
    from opacus.accountants import create_accountant
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
    from opacus.accountants.rdp import RDPAccountant

    summary = _finetune(sentiment, tmp_path / "run", PrivacyConfig(noise_multiplier=1.1, accountant=accountant))
    private = summary["privacy"]
    n = summary["train_examples"]
    assert private["training_examples"] == n and private["private_steps"] == 12
    assert private["sample_rate"] == pytest.approx(1 / math.ceil(n / 10))
    assert private["delta"] == pytest.approx(1 / (10 * n))
    if accountant == "rdp":  # straight from the RDP analysis functions
        orders = RDPAccountant.DEFAULT_ALPHAS
        rdp = compute_rdp(q=private["sample_rate"], noise_multiplier=1.1, steps=12, orders=orders)
        expected, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=private["delta"])
    else:
        fresh = create_accountant("prv")
        fresh.history = [(1.1, private["sample_rate"], 12)]
        expected = fresh.get_epsilon(private["delta"])
    assert summary["epsilon"] == pytest.approx(expected, rel=0.01)
    logged = [r["epsilon"] for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
              if "epsilon" in r]
    assert logged == sorted(logged) and logged[-1] == pytest.approx(summary["epsilon"])
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["epsilon"] == summary["epsilon"]


def test_a_target_epsilon_is_met_over_the_steps_of_the_run(sentiment, tmp_path):
    summary = _finetune(sentiment, tmp_path / "run", PrivacyConfig(epsilon=3.0, accountant="rdp"))
    assert 2.95 <= summary["epsilon"] <= 3.0


def test_interrupted_and_resumed_run_reports_the_epsilon_of_an_uninterrupted_one(sentiment, tmp_path, monkeypatch):
    privacy = PrivacyConfig(noise_multiplier=0.9, accountant="rdp")
    whole = _finetune(sentiment, tmp_path / "whole", privacy)

    class Stop(Exception):
        pass

    save = Trainer.save

    def save_then_stop(self):
        path = save(self)
        if self.state.step == 8:
            raise Stop
        return path

    monkeypatch.setattr(Trainer, "save", save_then_stop)
    with pytest.raises(Stop):
        _finetune(sentiment, tmp_path / "cut", privacy)
    monkeypatch.setattr(Trainer, "save", save)
    data = TaskDataConfig(train=str(sentiment / "train.txt"), valid=str(sentiment / "dev.txt"), format="label_text",
                          max_length=12)
    resumed = lf.finetune("classify", data=data, out=tmp_path / "cut", privacy=privacy, resume=True,
                          model=StartConfig(init="bert-debug", vocab_size=120, n_layer=1, n_embd=32, n_head=4,
                                            block_size=16),
                          train=TrainConfig(batch_size=10, max_steps=12, lr=1e-3, warmup_steps=2, eval_interval=12,
                                            checkpoint_interval=4, log_interval=4, progress=False))
    assert resumed["privacy"]["private_steps"] == 12
    assert resumed["epsilon"] == whole["epsilon"]
    from safetensors.torch import load_file
    a, b = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- errors
def test_privacy_config_checks():
    for bad in (dict(epsilon=0.0), dict(epsilon=-1.0), dict(epsilon=8.0, noise_multiplier=1.0),
                dict(noise_multiplier=0.0), dict(epsilon=1.0, delta=1.5), dict(epsilon=1.0, accountant="gdp")):
        with pytest.raises(ConfigError):
            PrivacyConfig(**bad)
    assert not PrivacyConfig().enabled and PrivacyConfig(epsilon=1.0).enabled


def _cli(root: Path, out: Path, *extra: str) -> list[str]:
    return ["finetune", "--task", "classify", "--data.train", str(root / "train.txt"), "--data.valid",
            str(root / "dev.txt"), "--data.format", "label_text", "--data.max_length", "12", "--model.vocab_size",
            "120", "--model.n_layer", "1", "--model.n_embd", "32", "--model.n_head", "4", "--model.block_size", "16",
            "--train.batch_size", "8", "--train.max_steps", "2", "--train.progress", "false", "--out", str(out),
            *extra]


@pytest.mark.parametrize("extra,message", [
    (["--model.init", "bert-debug", "--privacy.epsilon", "0"], "privacy.epsilon must be a positive number"),
    (["--model.init", "bert-debug", "--privacy.epsilon", "8", "--privacy.noise_multiplier", "1"], "both set"),
    (["--model.init", "bert-debug", "--privacy.epsilon", "8", "--privacy.delta", "0.005"], "below 1 / N"),
    (["--model.init", "bert-debug", "--privacy.epsilon", "8", "--train.grad_accum", "2"], "grad_accum must be 1"),
    (["--model.init", "lstm-debug", "--model.vocab_size", "300", "--privacy.epsilon", "8"], "backbone.rnn"),
])
def test_bad_privacy_input_is_one_error_line_with_exit_2(sentiment, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        main(_cli(sentiment, tmp_path / "run", *extra))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "run").exists()
