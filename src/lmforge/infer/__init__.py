"""Text generation: sampling rules, the batched decode loop, terminal streaming and chat."""
from lmforge.infer.generate import (Completion, TextStreamer, generate, generate_completions, generate_text,
                                    prepare_for_inference, stream_text)
from lmforge.infer.sampling import SamplingParams, sample_next

__all__ = ["Completion", "SamplingParams", "TextStreamer", "generate", "generate_completions", "generate_text",
           "prepare_for_inference", "sample_next", "stream_text"]
