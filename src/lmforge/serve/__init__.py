"""An OpenAI-compatible HTTP server, task routes and a web playground over lmforge models."""
from lmforge.serve.app import create_app
from lmforge.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]
