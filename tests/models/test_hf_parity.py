"""Our GPT against independent implementations: HF transformers GPT-2 and Llama with copied weights."""
import pytest
import torch

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


def gpt2_to_ours(sd: dict, n_layer: int) -> dict:
    """HF GPT-2 -> lmforge. HF's Conv1D stores weights as (in, out); nn.Linear as (out, in)."""
    out = {"wte.weight": sd["transformer.wte.weight"], "wpe.weight": sd["transformer.wpe.weight"],
           "ln_f.weight": sd["transformer.ln_f.weight"], "ln_f.bias": sd["transformer.ln_f.bias"]}
    for i in range(n_layer):
        h, o = f"transformer.h.{i}.", f"blocks.{i}."
        for ln in ("ln_1", "ln_2"):
            out[f"{o}{ln}.weight"] = sd[f"{h}{ln}.weight"]
            out[f"{o}{ln}.bias"] = sd[f"{h}{ln}.bias"]
        for theirs, mine in (("attn.c_attn", "attn.qkv"), ("attn.c_proj", "attn.proj"),
                             ("mlp.c_fc", "mlp.up"), ("mlp.c_proj", "mlp.down")):
            out[f"{o}{mine}.weight"] = sd[f"{h}{theirs}.weight"].t()
            out[f"{o}{mine}.bias"] = sd[f"{h}{theirs}.bias"]
    return out


def llama_to_ours(sd: dict, n_layer: int) -> dict:
    """HF Llama -> lmforge. Our attention fuses q, k, v into one projection: qkv = cat[q, k, v]."""
    out = {"wte.weight": sd["model.embed_tokens.weight"], "ln_f.weight": sd["model.norm.weight"],
           "lm_head.weight": sd["lm_head.weight"]}
    for i in range(n_layer):
        h, o = f"model.layers.{i}.", f"blocks.{i}."
        out[f"{o}ln_1.weight"] = sd[f"{h}input_layernorm.weight"]
        out[f"{o}ln_2.weight"] = sd[f"{h}post_attention_layernorm.weight"]
        out[f"{o}attn.qkv.weight"] = torch.cat([sd[f"{h}self_attn.{x}_proj.weight"] for x in "qkv"], dim=0)
        out[f"{o}attn.proj.weight"] = sd[f"{h}self_attn.o_proj.weight"]
        out[f"{o}mlp.gate.weight"] = sd[f"{h}mlp.gate_proj.weight"]
        out[f"{o}mlp.up.weight"] = sd[f"{h}mlp.up_proj.weight"]
        out[f"{o}mlp.down.weight"] = sd[f"{h}mlp.down_proj.weight"]
    return out


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
    state = gpt2_to_ours(hf.state_dict(), 2)
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
    state = llama_to_ours(hf.state_dict(), 2)
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
    ours.load_state_dict(llama_to_ours(hf.state_dict(), 2), strict=False)
    ids = torch.randint(0, 100, (2, 20))
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, :6] = 0
    with torch.no_grad():
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        ref = hf(ids, attention_mask=mask, position_ids=position_ids).logits
        out = ours(ids, attention_mask=mask.bool())
    real = mask.bool()
    assert (out[real] - ref[real]).abs().max().item() <= ATOL
