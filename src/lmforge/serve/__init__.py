"""An OpenAI-compatible HTTP server, task routes and a web playground over lmforge models."""
from lmforge.serve.app import create_app

__all__ = ["create_app"]
