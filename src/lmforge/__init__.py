"""lmforge: raw text to a trained, evaluated and served language model.

    import lmforge
    lmforge.pretrain("python-docs", "gpt-mini", out="runs/pydocs")
    classify = lmforge.pipeline("sentiment-analysis", model="runs/sentiment")

The whole Python API is `lmforge.api`; the most used functions are re-exported here.
"""
__version__ = "0.1.0"

from lmforge.api import demo, finetune, generate, load, pipeline, predict, prepare, pretrain, serve  # noqa: E402

__all__ = ["demo", "finetune", "generate", "load", "pipeline", "predict", "prepare", "pretrain", "serve"]
