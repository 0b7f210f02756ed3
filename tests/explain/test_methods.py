"""Each attribution method against an independent reference: a hand loop, autograd, the model's own output."""
import numpy as np
import pytest
import torch

from lmforge.explain.faithfulness import erasure, rank_correlation, top_positions
from lmforge.explain.logit_lens import layer_probabilities
from lmforge.explain.methods import (attention_maps, attention_scores, integrated_gradients, rollout,
                                     rollout_scores, saliency)
from lmforge.runs.explain_subjects import ExplainedRun
from tiny_runs import lm_run, task_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {"bert": ExplainedRun(task_run(root / "bert", "bert-debug")),
            "gpt": ExplainedRun(task_run(root / "gpt", "debug")),
            "t5": ExplainedRun(task_run(root / "t5", "t5-debug")),
            "ner": ExplainedRun(task_run(root / "ner", "bert-debug", task="ner", labels=("O", "B-PER", "I-PER"))),
            "lm": ExplainedRun(lm_run(root / "lm"))}


def test_rollout_matches_a_hand_loop():
    torch.manual_seed(0)
    maps = torch.softmax(torch.randn(3, 2, 5, 5), -1)
    joint = np.eye(5)
    for layer in maps.numpy().astype(np.float64):
        a = 0.5 * layer.mean(0) + 0.5 * np.eye(5)
        a = a / a.sum(1, keepdims=True)
        joint = a @ joint
    assert np.allclose(rollout(maps).numpy(), joint, atol=1e-6)
    assert torch.allclose(rollout(maps).sum(-1), torch.ones(5), atol=1e-5)


@pytest.mark.parametrize("name", ["bert", "gpt", "t5", "ner", "lm"])
def test_integrated_gradients_are_complete(runs, name):
    subject = runs[name].subject("the film was good and the acting was great")
    result = integrated_gradients(subject)
    with torch.no_grad():
        f_input = float(subject.score(subject.input_ids)[0])
        f_base = float(subject.score(subject.baseline_ids)[0])
    gap = f_input - f_base
    assert abs(float(result["scores"].sum()) - gap) <= 0.01 * abs(gap) + 1e-7
    assert result["relative_error"] <= 0.01 and result["steps"] in (32, 64, 128, 256, 512)
    assert abs(result["delta"] - (float(result["scores"].sum()) - gap)) < 1e-5
    assert all(result["scores"][i] == 0 for i, s in enumerate(subject.special) if s)


@pytest.mark.parametrize("name", ["bert", "gpt", "lm"])
def test_saliency_is_gradient_times_embedding(runs, name):
    subject = runs[name].subject("a dull boring film")
    kept = {}
    hook = subject.embedding.register_forward_hook(lambda m, a, out: kept.setdefault("emb", out.retain_grad() or out))
    try:
        subject.score(subject.input_ids).sum().backward()
    finally:
        hook.remove()
        subject.model.zero_grad(set_to_none=True)
    emb = kept["emb"]
    expected = (emb.grad * emb).sum(-1)[0].detach()
    assert torch.allclose(saliency(subject), expected, atol=1e-6)


def test_attention_scores_read_the_pooled_row(runs):
    bert = runs["bert"].subject("the film was good")
    maps = attention_maps(bert)
    expected = maps["self"][-1].mean(0)[0].clone()  # [CLS]'s row: BERT classifies from its pooled [CLS]
    expected[0] = expected[-1] = 0.0
    assert torch.allclose(attention_scores(bert, maps), expected)
    gpt = runs["gpt"].subject("the film was good")
    assert gpt.focus == [len(gpt.tokens) - 1]  # a decoder classifies from its last token
    assert torch.allclose(rollout_scores(gpt)[: -1], rollout(attention_maps(gpt)["self"])[-1][: -1])


def test_tagger_explains_one_word(runs):
    subject = runs["ner"].subject("Alice met Bob", target="B-PER@2")
    assert subject.target["word"] == "Bob" and subject.target["label"] == "B-PER"
    with torch.no_grad():
        logits = subject.model(subject.input_ids, attention_mask=torch.ones_like(subject.input_ids))
    position = subject.target["position"]
    assert subject.tokens[position].strip().lower() == "bob"
    assert abs(subject.value() - float(torch.softmax(logits[0, position], -1)[1])) < 1e-6


def test_logit_lens_last_layer_is_the_model_output(runs):
    run = runs["lm"]
    ids = torch.tensor([run.tokenizer.encode("the quick brown fox")])
    probs = layer_probabilities(run.model, ids)
    with torch.no_grad():
        expected = torch.softmax(run.model(ids)[0].float(), -1)
    assert probs.shape[0] == run.model.config.n_layer
    assert torch.allclose(probs[-1], expected, atol=1e-6)
    assert not torch.allclose(probs[0], expected, atol=1e-3)


def test_erasure_deletes_the_chosen_tokens(runs):
    subject = runs["bert"].subject("the film was good and the acting was great")
    scores = torch.arange(len(subject.tokens), dtype=torch.float)  # later tokens score higher
    top = top_positions(scores, subject.special, 0.2)
    assert top == [8, 9]  # ceil(0.2 * 9 words) = 2: the last two words ([SEP] is never deleted)
    ids = subject.input_ids[0].tolist()
    with torch.no_grad():
        full = float(subject.score(subject.input_ids)[0])
        without = float(subject.score(torch.tensor([ids[:8] + ids[10:]]))[0])
        only = float(subject.score(torch.tensor([[ids[0], ids[8], ids[9], ids[10]]]))[0])
    got = erasure(subject, top)
    assert abs(got["comprehensiveness"] - (full - without)) < 1e-6
    assert abs(got["sufficiency"] - (full - only)) < 1e-6


def test_rank_correlation_ignores_special_tokens():
    special = [True, False, False, False, False, True]
    a = torch.tensor([9.0, 1, 2, 3, 4, -9])
    assert rank_correlation(a, torch.tensor([-5.0, 10, 20, 30, 40, 99]), special) == pytest.approx(1.0)
    assert rank_correlation(a, torch.tensor([0.0, 4, 3, 2, 1, 0]), special) == pytest.approx(-1.0)
