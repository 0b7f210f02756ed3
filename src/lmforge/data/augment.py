"""Text augmentation for classification training sets (EDA-style word operations, back-translation).

Each augmented copy of an example applies, word by word with the configured probabilities:
synonym replacement (from a user lexicon), random insertion (a synonym of a word, or a copy of
it without a lexicon), random swap, random deletion (never of every word). Text with spaces is
split into words on whitespace; text without spaces (Chinese) into characters. Back-translation
paraphrases through two fine-tuned translation runs (source -> pivot -> source).
The label is kept; the originals stay in the set, copies follow them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from lmforge.config import AugmentConfig
from lmforge.errors import DataError


def load_lexicon(path: str | Path) -> dict[str, list[str]]:
    """Synonym groups, one per line (words separated by spaces or tabs): each word maps to the others."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"synonym lexicon {path} does not exist", "pass a text file with one synonym group per line")
    lexicon: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        words = [w for w in line.replace("\t", " ").split(" ") if w]
        for w in words:
            lexicon.setdefault(w, [])
            lexicon[w] += [o for o in words if o != w and o not in lexicon[w]]
    if not lexicon:
        raise DataError(f"synonym lexicon {path} is empty", "put one group of synonyms per line")
    return lexicon


def split_words(text: str) -> tuple[list[str], str]:
    return (text.split(), " ") if " " in text.strip() else (list(text), "")


def augment_text(text: str, cfg: AugmentConfig, rng: np.random.Generator,
                 lexicon: dict[str, list[str]] | None = None) -> str:
    words, joiner = split_words(text)
    if not words:
        return text
    if lexicon and cfg.synonym_replace:
        words = [rng.choice(lexicon[w]) if lexicon.get(w) and rng.random() < cfg.synonym_replace else w
                 for w in words]
    if cfg.insert:
        out = []
        for w in words:
            out.append(w)
            if rng.random() < cfg.insert:
                out.append(rng.choice(lexicon[w]) if lexicon and lexicon.get(w) else w)
        words = out
    if cfg.swap and len(words) > 1:
        for i in range(len(words)):
            if rng.random() < cfg.swap:
                j = int(rng.integers(len(words)))
                words[i], words[j] = words[j], words[i]
    if cfg.delete and len(words) > 1:
        kept = [w for w in words if rng.random() >= cfg.delete]
        words = kept or [words[int(rng.integers(len(words)))]]
    return joiner.join(str(w) for w in words)


def augment_texts(examples: list[dict], cfg: AugmentConfig,
                  paraphrase: Callable[[list[str]], list[str]] | None = None) -> list[dict]:
    """`examples` followed by `cfg.copies` augmented copies of each (same labels).

    `paraphrase` (texts -> texts, e.g. back-translation through two translation runs) makes the
    first copy; later copies add word noise."""
    rng = np.random.default_rng(cfg.seed)
    lexicon = load_lexicon(cfg.synonyms) if cfg.synonyms else None
    out = list(examples)
    for copy in range(cfg.copies):
        texts = [e["text"] for e in examples]
        if paraphrase is not None and copy == 0:
            texts = paraphrase(texts)
        else:
            texts = [augment_text(t, cfg, rng, lexicon) for t in texts]
        out += [{**e, "text": t} for e, t in zip(examples, texts)]
    return out

