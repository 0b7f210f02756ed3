"""Distillation against hand computations: the soft-target KL term, the objective's two terms and their
masking of unlabelled positions, and a student built from chosen teacher layers."""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmforge.compress.layers import keep_layers, parse_layers
from lmforge.errors import ConfigError
from lmforge.models.heads import TaskModel, TaskModelConfig
from lmforge.models.registry import preset_config
from lmforge.train.distill import DistillationObjective, soft_target_kl


def test_soft_target_kl_matches_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    T = 3.0
    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        zs, zt = sum(math.exp(v / T) for v in s_row), sum(math.exp(v / T) for v in t_row)
        for s, t in zip(s_row, t_row):
            p_t, p_s = math.exp(t / T) / zt, math.exp(s / T) / zs
            expected += p_t * (math.log(p_t) - math.log(p_s))
    assert float(soft_target_kl(student, teacher, T)) == pytest.approx(T * T * expected, rel=1e-5)
    assert float(soft_target_kl(teacher, teacher, T)) == pytest.approx(0.0, abs=1e-6)


class _Tagger:
    """A minimal tagging objective: summed cross-entropy over labelled positions of (B, T, L) logits."""
    label_key = "labels"

    def counts(self, batch):
        return {"tok": (batch["labels"] != -100).sum()}

    def __call__(self, model, batch):
        logits = model(batch["input_ids"])
        return {"tok": F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch["labels"].reshape(-1),
                                       ignore_index=-100, reduction="sum")}


class _Net(nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.emb, self.out = nn.Embedding(20, 8), nn.Linear(8, 3)

    def forward(self, input_ids):
        return self.out(torch.tanh(self.emb(input_ids)))


def test_the_objective_is_weighted_hard_plus_soft_terms_over_labelled_positions_only():
    student, teacher = _Net(0), _Net(1)
    batch = {"input_ids": torch.randint(0, 20, (2, 6), generator=torch.Generator().manual_seed(2)),
             "labels": torch.tensor([[0, 1, -100, 2, -100, -100], [2, 2, 1, -100, 0, -100]])}
    objective = DistillationObjective(_Tagger(), teacher, temperature=2.0, alpha=0.3)
    terms = objective(student, batch)
    assert objective.counts(batch) == {"tok": 7, "kd": 7}
    keep = batch["labels"] != -100
    s, t = student(batch["input_ids"])[keep], teacher(batch["input_ids"])[keep].detach()
    hard = F.cross_entropy(s, batch["labels"][keep], reduction="sum")
    soft = 4.0 * (F.softmax(t / 2, -1) * (F.log_softmax(t / 2, -1) - F.log_softmax(s / 2, -1))).sum()
    torch.testing.assert_close(terms["tok"], 0.7 * hard)
    torch.testing.assert_close(terms["kd"], 0.3 * soft)
    (terms["tok"] + terms["kd"]).backward()
    assert all(p.grad is None for p in teacher.parameters())  # the teacher is frozen
    assert student.out.weight.grad is not None


@pytest.mark.parametrize("kwargs, message", [({"temperature": 0.0}, "temperature must be positive"),
                                             ({"alpha": 1.5}, r"alpha must be in \[0, 1\]")])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DistillationObjective(_Tagger(), _Net(1), **kwargs)


def test_a_student_from_chosen_layers_computes_the_teacher_with_only_those_blocks():
    torch.manual_seed(0)
    backbone = preset_config("bert-debug", vocab_size=50, n_layer=4, dropout=0.0)
    teacher = TaskModel(TaskModelConfig(backbone=backbone.to_dict(), labels=["a", "b"], classifier_dropout=0.0)).eval()
    layers = parse_layers("half", 4)
    assert layers == [0, 2]
    student = keep_layers(teacher, layers).eval()
    reference = copy.deepcopy(teacher)
    reference.backbone.blocks = nn.ModuleList([reference.backbone.blocks[i] for i in layers])
    ids = torch.randint(1, 50, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(student(ids, attention_mask=torch.ones_like(ids)),
                                   reference(ids, attention_mask=torch.ones_like(ids)), atol=0, rtol=0)
    assert student.backbone.config.n_layer == 2 and student.config.backbone["n_layer"] == 2


@pytest.mark.parametrize("spec, message", [("0,9", "between 0 and 3"), ("a,b", "is not a list of layer numbers")])
def test_bad_layer_lists_are_refused(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_layers(spec, 4)


class _Classifier:
    """A minimal classification objective over a TaskModel: summed cross-entropy per example."""
    label_key = "class_labels"

    def counts(self, batch):
        return {"cls": torch.tensor(batch["class_labels"].numel())}

    def __call__(self, model, batch):
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"])
        return {"cls": F.cross_entropy(logits, batch["class_labels"], reduction="sum")}


def test_the_hidden_state_term_matches_block_outputs_computed_from_truncated_models():
    torch.manual_seed(0)
    backbone = preset_config("bert-debug", vocab_size=50, n_layer=4, dropout=0.0)
    teacher = TaskModel(TaskModelConfig(backbone=backbone.to_dict(), labels=["a", "b"], classifier_dropout=0.0)).eval()
    student = keep_layers(teacher, [0, 2]).eval()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]])
    batch = {"input_ids": torch.randint(1, 50, (2, 6), generator=torch.Generator().manual_seed(3)) * mask,
             "attention_mask": mask, "class_labels": torch.tensor([0, 1])}
    objective = DistillationObjective(_Classifier(), teacher, alpha=0.5, hidden_weight=2.0)
    terms = objective(student, batch)
    assert objective.counts(batch)["hidden"] == 2

    def after(model, blocks):  # the output of the model's first `blocks` blocks, by a truncated copy
        return keep_layers(model, list(range(blocks))).backbone.features(batch["input_ids"], mask)

    expected = 0.0
    with torch.no_grad():
        for i, j in ((0, 1), (1, 3)):  # student block i is matched with teacher block round((i+1)*4/2)-1
            error = (after(student, i + 1) - after(teacher, j + 1)).pow(2).mean(-1)[mask.bool()]
            expected += float(error.sum())
    assert float(terms["hidden"].detach()) == pytest.approx(2.0 * expected * 2 / int(mask.sum()), rel=1e-5)
    terms["hidden"].backward()
    assert student.backbone.blocks[0].mlp.up.weight.grad is not None


def test_hidden_states_of_different_widths_are_refused():
    torch.manual_seed(0)
    wide = preset_config("bert-debug", vocab_size=50, n_layer=2, dropout=0.0)
    narrow = preset_config("bert-debug", vocab_size=50, n_layer=2, n_embd=32, n_head=2, dropout=0.0)
    teacher = TaskModel(TaskModelConfig(backbone=wide.to_dict(), labels=["a", "b"]))
    student = TaskModel(TaskModelConfig(backbone=narrow.to_dict(), labels=["a", "b"]))
    batch = {"input_ids": torch.ones(1, 4, dtype=torch.long), "attention_mask": torch.ones(1, 4, dtype=torch.long),
             "class_labels": torch.tensor([1])}
    with pytest.raises(ConfigError, match="needs the student's width"):
        DistillationObjective(_Classifier(), teacher, hidden_weight=1.0)(student, batch)


def _wide_teacher_and_narrow_student(student_heads: int):
    """A 4-layer, 64-wide teacher, a fresh 2-layer, 32-wide student, and a padded batch of two."""
    torch.manual_seed(0)
    wide = preset_config("bert-debug", vocab_size=50, n_layer=4, dropout=0.0)
    narrow = preset_config("bert-debug", vocab_size=50, n_layer=2, n_embd=32, n_head=student_heads, dropout=0.0)
    teacher = TaskModel(TaskModelConfig(backbone=wide.to_dict(), labels=["a", "b"], classifier_dropout=0.0)).eval()
    student = TaskModel(TaskModelConfig(backbone=narrow.to_dict(), labels=["a", "b"], classifier_dropout=0.0)).eval()
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]])
    batch = {"input_ids": torch.randint(1, 50, (2, 6), generator=torch.Generator().manual_seed(3)) * mask,
             "attention_mask": mask, "class_labels": torch.tensor([0, 1])}
    return teacher, student, batch


@pytest.mark.parametrize("student_heads", [4, 2])
def test_the_attention_term_is_the_kl_between_transformers_attention_maps_of_matched_blocks(tmp_path, student_heads):
    """Reference: Hugging Face's BertModel (eager attention) on the same weights gives the attention maps, and
    the KL is summed key by key over the unmasked positions. A student of another width and, in one case,
    another head count (compared head-averaged)."""
    transformers = pytest.importorskip("transformers")
    from lmforge.interop.convert import export_hf

    teacher, student, batch = _wide_teacher_and_narrow_student(student_heads)
    mask = batch["attention_mask"]
    objective = DistillationObjective(_Classifier(), teacher, alpha=0.5, attention_weight=3.0)
    terms = objective(student, batch)
    assert objective.counts(batch)["attention"] == 2

    def hf_maps(model, name):
        export_hf(model.backbone, tmp_path / name)
        hf = transformers.BertModel.from_pretrained(tmp_path / name, attn_implementation="eager").eval()
        with torch.no_grad():
            return [a.double() for a in hf(batch["input_ids"], attention_mask=mask, output_attentions=True).attentions]

    s_maps, t_maps = hf_maps(student, "student"), hf_maps(teacher, "teacher")
    expected = 0.0
    for i, j in ((0, 1), (1, 3)):  # student block i is matched with teacher block round((i+1)*4/2)-1
        s, t = s_maps[i], t_maps[j]
        if s.shape[1] != t.shape[1]:
            s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
        for b in range(2):
            keys = [k for k in range(6) if mask[b, k]]
            for q in keys:
                per_head = [sum(float(t[b, h, q, k]) * math.log(float(t[b, h, q, k]) / float(s[b, h, q, k]))
                                for k in keys) for h in range(s.shape[1])]
                expected += sum(per_head) / len(per_head)
    assert float(terms["attention"].detach()) == pytest.approx(3.0 * expected * 2 / int(mask.sum()), rel=1e-4)
    terms["attention"].backward()
    assert student.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    # A student that is the teacher itself has nothing left to learn from its attention.
    same = DistillationObjective(_Classifier(), teacher, attention_weight=1.0)(copy.deepcopy(teacher), batch)
    assert float(same["attention"].detach()) == pytest.approx(0.0, abs=1e-6)


def test_a_narrower_student_is_matched_through_a_learned_projection_to_the_teachers_width():
    teacher, student, batch = _wide_teacher_and_narrow_student(2)
    mask = batch["attention_mask"]
    objective = DistillationObjective(_Classifier(), teacher, hidden_weight=2.0)
    projection = objective.trainable(student)
    assert isinstance(projection, nn.Linear) and projection.weight.shape == (64, 32)
    terms = objective(student, batch)

    def after(model, blocks):
        return keep_layers(model, list(range(blocks))).backbone.features(batch["input_ids"], mask)

    expected = 0.0
    with torch.no_grad():
        for i, j in ((0, 1), (1, 3)):
            error = (after(student, i + 1) @ projection.weight.T - after(teacher, j + 1)).pow(2).mean(-1)[mask.bool()]
            expected += float(error.sum())
    assert float(terms["hidden"].detach()) == pytest.approx(2.0 * expected * 2 / int(mask.sum()), rel=1e-5)
    terms["hidden"].backward()
    assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0
    # Equal widths need no projection.
    assert DistillationObjective(_Classifier(), teacher, hidden_weight=1.0).trainable(copy.deepcopy(teacher)) is None
