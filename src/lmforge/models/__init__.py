"""Model families (one module each) over the shared building blocks of `common/`, LoRA adapters, task heads,
and the registry of families and presets."""
from lmforge.models import bert, gpt, heads, ngram, rnn, t5
from lmforge.models.registry import register_family

# Each family module defines its config class, model class and named presets.
for _family in (gpt, rnn, t5, bert, ngram, heads):
    register_family(_family)
del _family
