"""Text in, text out: `generate` (whole completions, batched) and `stream_generate` (text as it is produced).

    >>> completion = generate(model, tokenizer, "Once upon a time", max_new_tokens=64, top_p=0.9, seed=0)
    ...                                                                                # doctest: +SKIP
    >>> for piece in stream_generate(model, tokenizer, "Once upon a time", temperature=0.7):  # doctest: +SKIP
    ...     print(piece, end="", flush=True)

Streaming must not split a character. Byte-level BPE tokens are byte strings, and one character can take
several tokens: "é" is the two bytes C3 A9, and a tokenizer without that merge emits them as two tokens.
Decoding each token alone would print two U+FFFD replacement characters. `IncrementalTextDecoder` keeps the
bytes of an unfinished character until the rest arrives; only bytes that can never become a character (a
real encoding error) turn into U+FFFD, exactly as `tokenizer.decode` does on the whole sequence.
"""

import codecs
from collections.abc import Iterator, Sequence

from cs336_bpe import Tokenizer
from cs336_sample.decoding import Completion, Decoding
from cs336_sample.errors import SampleError
from cs336_sample.sampling import SamplingSettings

END_OF_TEXT = "<|endoftext|>"


class IncrementalTextDecoder:
    """Token ids in, text out, holding back the bytes of a character that is not complete yet."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token_id: int) -> str:
        """The text that this token completes ("" while a character is still unfinished)."""
        return self._utf8.decode(self.tokenizer.decode_bytes([token_id]))

    def finish(self) -> str:
        """Flush: bytes of a character that never completed become U+FFFD, as in `Tokenizer.decode`."""
        return self._utf8.decode(b"", final=True)


def token_id_of(tokenizer: Tokenizer, token: str | None) -> int | None:
    """The id of `token` (a special token such as <|endoftext|>), or None if it is not in the vocabulary."""
    return None if token is None else tokenizer.token_to_id.get(token.encode("utf-8"))


def encode_prompt(tokenizer: Tokenizer, prompt: str, start_token: str = END_OF_TEXT) -> list[int]:
    """The prompt's token ids. An empty prompt starts a new document: [<|endoftext|>], the separator the model
    saw before every training document, so the model writes a document from scratch."""
    ids = tokenizer.encode(prompt)
    if ids:
        return ids
    start_id = token_id_of(tokenizer, start_token)
    if start_id is None:
        raise SampleError(f"the prompt is empty and the tokenizer has no {start_token} token to start from; "
                          "give a prompt")
    return [start_id]


def start_decoding(model, tokenizer: Tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 256,
                   temperature: float = 1.0, top_p: float = 1.0, top_k: int | None = None, seed: int | None = None,
                   stop_token: str | None = END_OF_TEXT, use_kv_cache: bool = True) -> Decoding:
    """Encode the prompts and set up a `Decoding` (the options are those of `generate`)."""
    return Decoding(
        model, [encode_prompt(tokenizer, prompt) for prompt in prompts], max_new_tokens=max_new_tokens,
        sampling=SamplingSettings(temperature, top_p, top_k), seed=seed,
        stop_token_id=token_id_of(tokenizer, stop_token), use_kv_cache=use_kv_cache, token_limit=tokenizer.vocab_size,
    )


def stream_text(decoding: Decoding, tokenizer: Tokenizer, row: int = 0) -> Iterator[str]:
    """Run `decoding` and yield row `row`'s text as it grows; at the end its completion's `text` is set."""
    text_decoder = IncrementalTextDecoder(tokenizer)
    pieces = []
    for new_tokens in decoding.steps():
        token = new_tokens[row]
        if token is not None and (piece := text_decoder.add(token)):
            pieces.append(piece)
            yield piece
    if tail := text_decoder.finish():
        pieces.append(tail)
        yield tail
    decoding.completions[row].text = "".join(pieces)


def generate(model, tokenizer: Tokenizer, prompt: str | Sequence[str], **options) -> Completion | list[Completion]:
    """Complete one prompt (returns a `Completion`) or several as one batch (returns a list).

    Options: max_new_tokens (256), temperature (1.0; 0 = greedy), top_p (1.0), top_k (None), seed (None: a
    random one; prompt i uses seed + i), stop_token ("<|endoftext|>"; None to never stop early), use_kv_cache
    (True). `Completion.text` is the generated text without the prompt; `stop_reason` says why it ended.
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    decoding = start_decoding(model, tokenizer, prompts, **options)
    completions = decoding.run()
    for completion in completions:
        completion.text = tokenizer.decode(completion.token_ids)
    return completions[0] if isinstance(prompt, str) else completions


def stream_generate(model, tokenizer: Tokenizer, prompt: str, **options) -> Iterator[str]:
    """Yield the completion of `prompt` piece by piece, never splitting a character. Options: see `generate`."""
    yield from stream_text(start_decoding(model, tokenizer, [prompt], **options), tokenizer)
