"""ONNX graphs of lmforge models, run in onnxruntime against the PyTorch models they came from: classifier
logits at several batch sizes and lengths, and decoders decoding token by token through the exported cache."""
import numpy as np
import onnxruntime as ort
import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.infer.generate import generate
from lmforge.infer.sampling import SamplingParams
from lmforge.interop.onnx import export_graph, graph_for
from lmforge.models.heads import TaskModel, TaskModelConfig
from lmforge.models.registry import build_model, preset_config


def _session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _classifier(preset: str = "bert-debug", head: str = "sequence") -> TaskModel:
    torch.manual_seed(0)
    backbone = preset_config(preset, vocab_size=100, block_size=64, n_layer=2, n_embd=64, n_head=4)
    cfg = TaskModelConfig(task="classify", head=head, backbone=backbone.to_dict(), labels=["a", "b", "c"],
                          classifier_dropout=0.0)
    return TaskModel(cfg).eval()


def ort_greedy(session: ort.InferenceSession, prompt: list[int], steps: int,
               cache: dict) -> tuple[list[int], np.ndarray]:
    """Greedy continuation of one prompt in onnxruntime, feeding each step's present keys/values back as
    the next step's past; returns the new ids and the first step's logits (T, vocab)."""
    past = {f"past_{kind}_{layer}": np.zeros((1, cache["kv_heads"], 0, cache["head_dim"]), np.float32)
            for layer in range(cache["layers"]) for kind in ("key", "value")}
    ids, new, first = np.array([prompt], np.int64), [], None
    for _ in range(steps):
        length = next(iter(past.values())).shape[2]
        feed = {"input_ids": ids, "attention_mask": np.ones((1, length + ids.shape[1]), np.int64),
                "position_ids": np.arange(length, length + ids.shape[1], dtype=np.int64)[None], **past}
        logits, *present = session.run(None, feed)
        first = logits[0] if first is None else first
        new.append(int(logits[0, -1].argmax()))
        past = dict(zip(past, present))
        ids = np.array([[new[-1]]], np.int64)
    return new, first


def test_classifier_logits_match_pytorch_at_any_batch_size_and_length(tmp_path):
    model = _classifier()
    record = export_graph(graph_for(model), tmp_path / "model.onnx")
    assert [i["name"] for i in record["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert record["inputs"][0]["shape"] == ["batch", "sequence"] and record["outputs"][0]["shape"] == ["batch", 3]
    session = _session(tmp_path / "model.onnx")
    g = torch.Generator().manual_seed(1)
    for batch, length in ((1, 7), (5, 40)):
        ids = torch.randint(0, 100, (batch, length), generator=g)
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[0, length // 2:] = 0  # a right-padded row
        types = torch.zeros_like(ids)
        types[:, length // 3:] = 1
        with torch.no_grad():
            expected = model(ids, mask, types).numpy()
        (got,) = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                                    "token_type_ids": types.numpy()})
        assert got.shape == (batch, 3)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("preset", ["debug", "llama-debug"])
def test_greedy_decoding_through_the_exported_cache_matches_lmforge_generate(tmp_path, preset):
    torch.manual_seed(0)
    model = build_model(preset, vocab_size=97, block_size=48).eval()
    spec = graph_for(model)
    record = export_graph(spec, tmp_path / "model.onnx")
    assert [o["name"] for o in record["outputs"]][:3] == ["logits", "present_key_0", "present_value_0"]
    assert record["inputs"][3]["shape"] == ["batch", model.config.n_kv_head, "past", model.config.head_dim]
    prompt = [5, 17, 3, 88, 41, 2]
    expected = generate(model, [prompt], SamplingParams(temperature=0.0, max_new_tokens=20))[0]
    got, first = ort_greedy(_session(tmp_path / "model.onnx"), prompt, 20, record["cache"])
    assert got == expected
    with torch.no_grad():
        reference = model(torch.tensor([prompt]))[0].numpy()
    np.testing.assert_allclose(first, reference, atol=1e-4, rtol=0)


def test_a_batch_with_left_padding_decodes_like_each_row_alone(tmp_path):
    torch.manual_seed(0)
    model = build_model("debug", vocab_size=97, block_size=48).eval()
    export_graph(graph_for(model), tmp_path / "model.onnx")
    session = _session(tmp_path / "model.onnx")
    rows = [[4, 9, 33, 2, 71], [8, 60]]
    ids = np.array([rows[0], [0, 0, 0] + rows[1]], np.int64)
    mask = np.array([[1] * 5, [0, 0, 0, 1, 1]], np.int64)
    positions = np.clip(mask.cumsum(-1) - 1, 0, None)
    past = {f"past_{kind}_{layer}": np.zeros((2, 4, 0, 16), np.float32)
            for layer in range(2) for kind in ("key", "value")}
    logits, *present = session.run(None, {"input_ids": ids, "attention_mask": mask, "position_ids": positions, **past})
    for row, tokens in enumerate(rows):
        with torch.no_grad():
            alone = model(torch.tensor([tokens]))[0, -1].numpy()
        np.testing.assert_allclose(logits[row, -1], alone, atol=1e-4, rtol=0)
    assert present[0].shape == (2, 4, 5, 16)


@pytest.mark.parametrize("make, fragment", [
    (lambda: build_model("t5-debug"), "t5 models cannot be exported"),
    (lambda: build_model("rnn-debug"), "rnn models cannot be exported"),
    (lambda: _classifier(head="token"), "fine-tuned classify models over bert cannot be exported"),
    (lambda: _classifier(preset="debug"), "fine-tuned classify models over gpt cannot be exported"),
])
def test_other_models_are_a_config_error_naming_what_is_supported(make, fragment):
    with pytest.raises(ConfigError, match="supported: sequence classifiers over an encoder") as error:
        graph_for(make())
    assert fragment in str(error.value)
