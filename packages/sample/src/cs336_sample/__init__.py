"""cs336-sample: text generation from a trained cs336 Transformer LM (handout §6), and the `cs336-sample` CLI.

    >>> from cs336_sample import load_model_and_tokenizer, generate, stream_generate
    >>> model, tokenizer, config = load_model_and_tokenizer("runs/tinystories")                  # doctest: +SKIP
    >>> generate(model, tokenizer, "Once upon a time", temperature=0.8, top_p=0.9, seed=0).text  # doctest: +SKIP
    >>> for piece in stream_generate(model, tokenizer, "Once upon a time"):                       # doctest: +SKIP
    ...     print(piece, end="", flush=True)
"""

from cs336_sample.decoding import Completion, Decoding
from cs336_sample.errors import SampleError
from cs336_sample.loading import find_checkpoint, load_model_and_tokenizer
from cs336_sample.sampling import (
    SamplingSettings,
    keep_top_k,
    keep_top_p,
    next_token_probabilities,
    sample_next_tokens,
    temperature_probabilities,
)
from cs336_sample.text import IncrementalTextDecoder, generate, stream_generate, stream_text

__all__ = [
    "Completion", "Decoding", "IncrementalTextDecoder", "SampleError", "SamplingSettings", "find_checkpoint",
    "generate", "keep_top_k", "keep_top_p", "load_model_and_tokenizer", "next_token_probabilities",
    "sample_next_tokens", "stream_generate", "stream_text", "temperature_probabilities",
]
__version__ = "0.1.0"
