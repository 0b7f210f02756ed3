"""Evaluation of trained models."""
from lmforge.eval.perplexity import evaluate_perplexity, perplexity_of_run

__all__ = ["evaluate_perplexity", "perplexity_of_run"]
