"""lmforge: raw text to a trained, evaluated and served language model."""
__version__ = "0.1.0"


def __getattr__(name: str):
    # `lmforge.pipeline(...)` and friends without importing torch until they are used.
    if name in ("pipeline", "finetune", "predict", "pretrain", "prepare", "generate", "load", "demo", "serve"):
        import lmforge.api

        return getattr(lmforge.api, name)
    raise AttributeError(f"module 'lmforge' has no attribute {name!r}")
