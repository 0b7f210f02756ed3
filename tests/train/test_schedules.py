import math

import pytest
import torch

from lmforge.config import TrainConfig
from lmforge.errors import ConfigError
from lmforge.models.registry import build_model
from lmforge.train.optim import build_optimizer, lr_multiplier, parameter_groups


def cfg(schedule, **kw):
    return TrainConfig(schedule=schedule, warmup_steps=10, max_steps=110, min_lr_ratio=0.1, **kw)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "exponential", "constant", "wsd"])
def test_warmup_is_linear_from_first_step(schedule):
    c = cfg(schedule)
    assert lr_multiplier(0, c) == pytest.approx(0.1)
    assert lr_multiplier(4, c) == pytest.approx(0.5)
    assert lr_multiplier(9, c) == pytest.approx(1.0)


@pytest.mark.parametrize("schedule,step,expected", [
    ("cosine", 10, 1.0), ("cosine", 60, 0.55), ("cosine", 110, 0.1), ("cosine", 500, 0.1),
    ("cosine", 35, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25))),
    ("linear", 10, 1.0), ("linear", 35, 0.775), ("linear", 60, 0.55), ("linear", 110, 0.1),
    ("constant", 10, 1.0), ("constant", 109, 1.0),
    ("wsd", 50, 1.0), ("wsd", 88, 1.0), ("wsd", 99, 0.55), ("wsd", 110, 0.1),
])
def test_schedule_values_at_known_steps(schedule, step, expected):
    assert lr_multiplier(step, cfg(schedule)) == pytest.approx(expected)


def test_exponential_decays_by_gamma_per_step():
    c = cfg("exponential", gamma=0.9)
    assert lr_multiplier(10, c) == pytest.approx(1.0)
    assert lr_multiplier(12, c) == pytest.approx(0.81)


def test_no_warmup():
    c = TrainConfig(schedule="cosine", warmup_steps=0, max_steps=100, min_lr_ratio=0.0)
    assert lr_multiplier(0, c) == pytest.approx(1.0)
    assert lr_multiplier(50, c) == pytest.approx(0.5)


def test_weight_decay_skips_norms_biases_and_embeddings():
    model = build_model("debug")
    decay, no_decay = parameter_groups(model, 0.1)
    decayed = {id(p) for p in decay["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[i].endswith("weight") and "ln" not in names[i] and names[i] not in ("wte.weight", "wpe.weight")
               for i in decayed)
    assert id(model.wte.weight) not in decayed and id(model.ln_f.weight) not in decayed
    assert id(model.blocks[0].attn.qkv.weight) in decayed
    assert no_decay["weight_decay"] == 0.0
    # tied lm_head/wte counted once
    assert len(decay["params"]) + len(no_decay["params"]) == len({id(p) for p in model.parameters()})


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd", "adagrad", "rmsprop"])
def test_every_optimizer_reduces_loss(name):
    torch.manual_seed(0)
    model = build_model("debug", n_layer=1)
    lr = {"sgd": 0.5, "adagrad": 0.05}.get(name, 3e-3)
    opt = build_optimizer(model, TrainConfig(optimizer=name, lr=lr, nesterov=True))
    x = torch.randint(0, 512, (4, 16))
    losses = []
    for _ in range(15):
        loss = model.loss(x[:, :-1], x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


@pytest.mark.parametrize("field,value", [("lr", -1e-3), ("lr", 0.0), ("batch_size", 0), ("optimizer", "lion"),
                                         ("schedule", "step"), ("min_lr_ratio", 2.0), ("grad_clip", -1.0)])
def test_bad_train_config_names_the_field(field, value):
    with pytest.raises(ConfigError, match=f"train.{field}"):
        TrainConfig(**{field: value})
