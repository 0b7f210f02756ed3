"""Our GPT against independent implementations: HF transformers GPT-2 and Llama, weights copied by the
key maps of lmforge.interop.hf."""
import pytest
import torch

from lmforge.interop.hf import state_from_hf
from lmforge.models.gpt import GPT, GPTConfig

transformers = pytest.importorskip("transformers")

ATOL = 1e-4


def _randomise(module: torch.nn.Module, seed: int) -> None:
    # Non-trivial norms and biases, so a key copied to the wrong place cannot go unnoticed.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.1 if p.dim() > 1 else 0.5) + (1.0 if p.dim() == 1 else 0.0))


def _check_all_copied(model: GPT, state: dict) -> None:
    ours = set(model.state_dict()) - ({"lm_head.weight"} if model.config.tie_embeddings else set())
    assert set(state) == ours


def test_gpt2_parity():
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_cfg = GPT2Config(n_layer=2, n_head=4, n_embd=64, vocab_size=100, n_positions=64,
                        bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(hf_cfg).eval()
    _randomise(hf, 1)
    ours = GPT(GPTConfig(vocab_size=100, block_size=64, n_layer=2, n_head=4, n_embd=64, position="learned",
                         norm="layernorm", norm_eps=hf_cfg.layer_norm_epsilon, mlp="gelu", bias=True,
                         tie_embeddings=True)).eval()
    state = state_from_hf(hf.state_dict(), "GPT2LMHeadModel", ours.config)
    _check_all_copied(ours, state)
    ours.load_state_dict(state, strict=False)

    ids = torch.randint(0, 100, (3, 64))
    with torch.no_grad():
        ref = hf(ids).logits
        out = ours(ids)
    assert (out - ref).abs().max().item() <= ATOL
    assert ref.std() > 0.1  # the comparison is not between two near-constant outputs


@pytest.mark.parametrize("n_kv_head", [2, 4])  # GQA and MHA
def test_llama_parity(n_kv_head):
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=n_kv_head, max_position_embeddings=64,
                         rms_norm_eps=1e-5, tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
                         bos_token_id=0, eos_token_id=0, pad_token_id=None)
    torch.manual_seed(0)
    hf = LlamaForCausalLM(hf_cfg).eval()
    _randomise(hf, 2)
    rope_theta = (getattr(hf_cfg, "rope_parameters", None) or {}).get("rope_theta") \
        or getattr(hf_cfg, "rope_theta", 10000.0)
    ours = GPT(GPTConfig(vocab_size=100, block_size=64, n_layer=2, n_head=4, n_kv_head=n_kv_head, n_embd=64,
                         intermediate_size=160, position="rope", rope_theta=rope_theta, norm="rmsnorm",
                         norm_eps=1e-5, mlp="swiglu", bias=False, tie_embeddings=False)).eval()
    state = state_from_hf(hf.state_dict(), "LlamaForCausalLM", ours.config)
    _check_all_copied(ours, state)
    ours.load_state_dict(state, strict=False)

    ids = torch.randint(0, 100, (3, 64))
    with torch.no_grad():
        ref = hf(ids).logits
        out = ours(ids)
    assert (out - ref).abs().max().item() <= ATOL
    assert ref.std() > 0.1


def test_llama_parity_with_left_padding():
    # Position ids must count real tokens only, as HF derives them from the attention mask.
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    hf = LlamaForCausalLM(hf_cfg).eval()
    _randomise(hf, 3)
    ours = GPT(GPTConfig(vocab_size=100, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                         intermediate_size=160, position="rope", norm="rmsnorm", norm_eps=1e-5, mlp="swiglu",
                         bias=False, tie_embeddings=False)).eval()
    ours.load_state_dict(state_from_hf(hf.state_dict(), "LlamaForCausalLM", ours.config), strict=False)
    ids = torch.randint(0, 100, (2, 20))
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, :6] = 0
    with torch.no_grad():
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        ref = hf(ids, attention_mask=mask, position_ids=position_ids).logits
        out = ours(ids, attention_mask=mask.bool())
    real = mask.bool()
    assert (out[real] - ref[real]).abs().max().item() <= ATOL
