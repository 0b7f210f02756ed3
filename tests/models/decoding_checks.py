"""A check shared by the family contract and the T5 variant tests: decoding an encoder-decoder through
its cache, a prefix then one token at a time, gives the logits of one full forward pass."""
import torch


def assert_cached_seq2seq_matches_full(model, source: torch.Tensor, mask: torch.Tensor, dec: torch.Tensor,
                                       rtol: float) -> None:
    """source (B, S), mask (B, S), dec (B, T) decoder inputs; a 3-token prefix, then single tokens."""
    with torch.no_grad():
        full = model(source, mask, dec)  # (B, T, V)
        encoded = model.encode(source, mask)
        cache = model.new_kv_cache(dec.shape[0], 16)
        steps = [model.decode(dec[:, :3], encoded, mask, kv_cache=cache)]
        cache.advance(3)
        for t in range(3, dec.shape[1]):
            steps.append(model.decode(dec[:, t:t + 1], encoded, mask, kv_cache=cache))
            cache.advance(1)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=rtol)
