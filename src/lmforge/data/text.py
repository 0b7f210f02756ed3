"""Character classes that tokenizers, maskers and metrics agree on."""
from __future__ import annotations


def is_cjk(ch: str) -> bool:
    """True for a CJK ideograph (the ranges BERT's tokenizer splits into single-character words)."""
    cp = ord(ch)
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)
