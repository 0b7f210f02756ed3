"""The contract every registered model family keeps; a family gets this whole battery by registering.

Every preset builds on the meta device and its config survives `to_dict` -> JSON -> `from_dict`.
A small model of each family (every preset of at most SMALL_PARAMETERS parameters once its vocabulary
is shrunk, and each wrapper family around a small backbone) also:
  - saves and loads back bit-identically (weights, tied weights, config, outputs);
  - is causal where it predicts the next token: a later token never changes earlier logits
    (for an encoder-decoder, on the decoder side), and bidirectional where it is an encoder;
  - decodes from its cache exactly as it does by recomputing everything, where it has a cache;
  - exports to a Hugging Face folder and imports back unchanged, where it has a transformers twin.
What a model is (decoder, encoder, counted rather than trained, ...) is asked of the registry's traits,
and whether it has a cache or a twin is asked of the model class and of `lmforge.interop.hf`.
"""
import json

import numpy as np
import pytest
import torch

from lmforge.errors import ConfigError
from lmforge.infer.generate import generate
from lmforge.infer.sampling import SamplingParams
from lmforge.infer.seq2seq import generate_seq2seq
from lmforge.interop import hf
from lmforge.models.registry import (FAMILIES, PRESETS, build_model, config_from_dict, load_model, preset_config,
                                     save_model, traits_of)

from decoding_checks import assert_cached_seq2seq_matches_full  # tests/models/decoding_checks.py

SMALL_VOCAB = 128                 # every family's config has `vocab_size`; the others keep their preset values
SMALL_PARAMETERS = 250_000        # the debug-sized presets: the whole battery stays a few seconds on a CPU
WRAPPER_LABELS = ["negative", "neutral", "positive"]
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17], [18]]


def _parameter_count(config) -> int:
    return sum(p.numel() for p in build_model(config, device="meta").parameters())


def _small_presets() -> list[str]:
    return [name for name in sorted(PRESETS)
            if _parameter_count(preset_config(name, vocab_size=SMALL_VOCAB)) <= SMALL_PARAMETERS]


def _wrapper_configs(small_presets: list[str]) -> dict[str, object]:
    """Each wrapper family around the first small preset of each family that gives hidden states."""
    configs = {}
    for wrapper, (wrapper_config_cls, _) in FAMILIES.items():
        if traits_of(wrapper).structure != "wrapper":
            continue
        backbones = {}
        for name in small_presets:
            family = PRESETS[name][0]
            if hasattr(FAMILIES[family][1], "features"):
                backbones.setdefault(family, name)
        for name in backbones.values():
            backbone = preset_config(name, vocab_size=SMALL_VOCAB)
            configs[f"{wrapper}[{name}]"] = wrapper_config_cls.from_dict(
                {"backbone": backbone.to_dict(), "labels": WRAPPER_LABELS})
    return configs


SMALL_PRESETS = _small_presets()
SMALL_CONFIGS = {**{name: preset_config(name, vocab_size=SMALL_VOCAB) for name in SMALL_PRESETS},
                 **_wrapper_configs(SMALL_PRESETS)}


def _family(case: str) -> str:
    return SMALL_CONFIGS[case].to_dict()["family"]


def _structure(case: str) -> str:
    return traits_of(_family(case)).structure


def _has_cache(case: str) -> bool:
    return hasattr(FAMILIES[_family(case)][1], "new_kv_cache")


def _has_hf_twin(case: str) -> bool:
    config = SMALL_CONFIGS[case]
    try:
        hf.export_architecture(config).config_to_hf(config)
    except ConfigError:
        return False
    return True


def _cases(keep) -> list[str]:
    return [case for case in SMALL_CONFIGS if keep(case)]


def _token_stream(seed: int = 0, n: int = 600) -> np.ndarray:
    rng = np.random.default_rng(seed)
    stream = rng.integers(0, SMALL_VOCAB, n)
    stream[200:300] = stream[0:100]  # repeats, so longer contexts have counts too
    return stream


def _small_model(case: str) -> torch.nn.Module:
    """The case's model with seeded, non-trivial weights (norms away from 1, biases away from 0)."""
    torch.manual_seed(0)
    model = build_model(SMALL_CONFIGS[case])
    if traits_of(model).fitted_by_counting:
        model.fit(_token_stream())
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.1)
    return model.eval()


def _ids(shape: tuple[int, int], seed: int) -> torch.Tensor:
    return torch.randint(2, SMALL_VOCAB, shape, generator=torch.Generator().manual_seed(seed))


SOURCE = _ids((2, 11), seed=99)  # (B, S) the encoder input of an encoder-decoder


def _outputs(model: torch.nn.Module, ids: torch.Tensor):
    """The model's output for `ids` (B, T); for an encoder-decoder `ids` are the decoder's tokens."""
    if traits_of(model).structure == "encoder-decoder":
        return model(SOURCE, None, ids)
    return model(ids)


def _tied_groups(model: torch.nn.Module) -> set[frozenset[str]]:
    """State-dict keys that share one tensor, grouped."""
    by_storage: dict[int, set[str]] = {}
    for key, value in model.state_dict().items():
        if value.numel():
            by_storage.setdefault(value.data_ptr(), set()).add(key)
    return {frozenset(keys) for keys in by_storage.values() if len(keys) > 1}


def _assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    mine, theirs = a.state_dict(), b.state_dict()
    assert mine.keys() == theirs.keys()
    different = [k for k in mine if not torch.equal(mine[k], theirs[k])]
    assert not different, different


# ---------------------------------------------------------------- every preset, on the meta device
def test_every_family_has_a_small_case():
    covered = {_family(case) for case in SMALL_CONFIGS}
    assert covered == set(FAMILIES), f"register a preset of at most {SMALL_PARAMETERS} parameters for " \
                                     f"{sorted(set(FAMILIES) - covered)}"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_builds_on_meta_device(name):
    model = build_model(name, device="meta")
    tensors = [*model.parameters(), *model.buffers()]
    assert all(t.is_meta for t in tensors)
    assert model.config == preset_config(name)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_config_round_trips_through_json(name):
    config = preset_config(name)
    assert config_from_dict(config.to_dict()) == config
    assert config_from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert type(config).from_dict(config.to_dict()) == config


@pytest.mark.parametrize("case", _cases(lambda case: _structure(case) == "wrapper"))
def test_wrapper_config_round_trips_and_builds_on_meta_device(case):
    config = SMALL_CONFIGS[case]
    assert config_from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert all(p.is_meta for p in build_model(config, device="meta").parameters())


# ---------------------------------------------------------------- small models
@pytest.mark.parametrize("case", list(SMALL_CONFIGS))
def test_save_load_round_trip_is_bit_identical(case, tmp_path):
    model = _small_model(case)
    save_model(model, tmp_path)
    loaded = load_model(tmp_path).eval()
    assert loaded.config == model.config
    _assert_same_state(model, loaded)
    assert _tied_groups(loaded) == _tied_groups(model)
    ids = _ids((2, 12), seed=3)
    with torch.no_grad():
        torch.testing.assert_close(_outputs(loaded, ids), _outputs(model, ids), atol=0, rtol=0)


@pytest.mark.parametrize("case", _cases(lambda case: _structure(case) in ("decoder", "encoder-decoder")))
def test_later_tokens_never_change_earlier_logits(case):
    model = _small_model(case)
    ids = _ids((2, 16), seed=4)
    t = 9
    changed = ids.clone()
    changed[:, t] = (changed[:, t] + 1) % SMALL_VOCAB
    with torch.no_grad():
        a, b = _outputs(model, ids), _outputs(model, changed)
    torch.testing.assert_close(a[:, :t], b[:, :t], atol=1e-6, rtol=0)
    assert (a[:, t] - b[:, t]).abs().amax() > 1e-4  # the change is visible from position t on


@pytest.mark.parametrize("case", _cases(lambda case: _structure(case) == "encoder"))
def test_encoder_sees_every_token(case):
    model = _small_model(case)
    ids = _ids((1, 12), seed=5)
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % SMALL_VOCAB
    with torch.no_grad():
        a, b = _outputs(model, ids), _outputs(model, changed)
    assert (a[0, 0] - b[0, 0]).abs().amax() > 1e-4  # the first position sees the last token


@pytest.mark.parametrize("case", _cases(lambda case: _structure(case) == "decoder" and _has_cache(case)))
def test_cached_decoding_matches_full_recompute(case):
    model = _small_model(case)
    ids = _ids((2, 12), seed=6)
    with torch.no_grad():
        full = model(ids)  # (B, T, V)
        cache = model.new_kv_cache(2, 12)
        steps = [model(ids[:, :5], kv_cache=cache)]  # a 5-token prompt, then one token at a time
        cache.advance(5)
        for t in range(5, 12):
            steps.append(model(ids[:, t:t + 1], kv_cache=cache))
            cache.advance(1)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    assert generate(model, PROMPTS, params) == generate(model, PROMPTS, params, use_cache=False)


@pytest.mark.parametrize("case", _cases(lambda case: _structure(case) == "encoder-decoder" and _has_cache(case)))
def test_cached_seq2seq_decoding_matches_full_recompute(case):
    model = _small_model(case)
    mask = torch.ones(SOURCE.shape, dtype=torch.bool)
    mask[1, 8:] = False
    assert_cached_seq2seq_matches_full(model, SOURCE, mask, _ids((2, 9), seed=7), rtol=1e-4)
    cached = generate_seq2seq(model, SOURCE, 8, attention_mask=mask)
    assert cached == generate_seq2seq(model, SOURCE, 8, attention_mask=mask, use_cache=False)


@pytest.mark.parametrize("case", _cases(_has_hf_twin))
def test_hugging_face_round_trip_is_exact(case, tmp_path):
    model = _small_model(case)
    hf.export_hf(model, tmp_path / "hf")
    back, _ = hf.import_hf(tmp_path / "hf")
    assert back.config == model.config
    _assert_same_state(model, back)
    ids = _ids((2, 12), seed=8)
    with torch.no_grad():
        torch.testing.assert_close(_outputs(back, ids), _outputs(model, ids), atol=0, rtol=0)
