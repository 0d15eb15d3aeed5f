"""`Decoding`: the generation loop over token ids, for a batch of prompts, with or without a KV cache.

    prefill: run the model over the prompts                    -> logits for each row's next token
    repeat:  sample a token per row; stop rows that are done;  feed the new tokens -> logits again

Prompts of different lengths share one batch by right padding: row b's tokens fill columns 0..len_b-1 and
padding follows. The causal mask already keeps every real token from seeing the padding (it comes later), so
the model needs no padding mask, positions are simply column numbers, and each row computes exactly what it
would alone. We read row b's next-token logits at column len_b - 1.

- Without a cache, every step runs the model over the whole (padded) sequences again: O(t) positions/token.
- With a cache (`cs336_nn.KVCache`), the prefill stores every layer's keys and values, and each step feeds
  one token per row at its own position len_b: O(1) positions per token. Padding entries in the cache sit at
  positions a row has not reached yet; the row overwrites them before its queries can see them.

The context limit: the model reads at most `context_length` tokens, so a row may grow to context_length + 1
tokens (the last one predicted from a full window) and then stops with stop_reason "context_length". We do
not slide the window: dropping the start of the text changes what the model conditions on, and with a cache
every stored key would have to be recomputed at its new position. Stopping is simple, exact and visible.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from cs336_nn import KVCache
from cs336_sample.errors import SampleError
from cs336_sample.sampling import SamplingSettings, row_generators, sample_next_tokens

STOP_TOKEN, MAX_NEW_TOKENS, CONTEXT_LENGTH = "stop_token", "max_new_tokens", "context_length"


@dataclass
class Completion:
    """One generated continuation. `token_ids` excludes the prompt and the stop token."""

    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    stop_reason: str | None = None  # None while generating, then STOP_TOKEN, MAX_NEW_TOKENS or CONTEXT_LENGTH
    seed: int | None = None  # this row's seed: the same prompt with this seed reproduces the completion
    text: str = ""  # filled in by the text-level functions (`generate`)

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.token_ids)

    @property
    def last_token(self) -> int:
        return self.token_ids[-1] if self.token_ids else self.prompt_ids[-1]


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


class Decoding:
    """Generation state for a batch of prompts; iterate `steps()` to advance it one token at a time.

    Args:
        model: a `cs336_nn.TransformerLM` (anything with its forward signature and `config`).
        prompt_ids: one list of token ids per row, each non-empty and at most context_length long.
        max_new_tokens: the most tokens to generate per row.
        sampling: temperature / top-p / top-k.
        seed: row b draws from a generator seeded seed + b (a random seed when None, see `self.seed`).
        stop_token_id: a row ends when it samples this id (usually `<|endoftext|>`); None never stops early.
        use_kv_cache: False re-runs the whole sequence each step (slow; kept to check the cache against).
        token_limit: only ids below it are sampled: the tokenizer's vocab_size, when the model has more
            embedding rows than the tokenizer has tokens (e.g. a vocabulary rounded up for speed).

        >>> decoding = Decoding(model, [[1, 2, 3], [4]], max_new_tokens=5)   # doctest: +SKIP
        >>> for new_tokens in decoding.steps(): ...                           # doctest: +SKIP
        >>> [c.token_ids for c in decoding.completions]                      # doctest: +SKIP
    """

    def __init__(self, model, prompt_ids: Sequence[Sequence[int]], *, max_new_tokens: int,
                 sampling: SamplingSettings | None = None, seed: int | None = None,
                 stop_token_id: int | None = None, use_kv_cache: bool = True, token_limit: int | None = None):
        self.model = model
        self.context_length = model.config.context_length
        self.vocab_size = model.config.vocab_size
        if max_new_tokens < 0:
            raise SampleError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if not prompt_ids:
            raise SampleError("no prompts given; pass at least one list of token ids")
        for row, ids in enumerate(prompt_ids):
            self._check_prompt(row, ids)
        self.max_new_tokens = max_new_tokens
        self.sampling = sampling or SamplingSettings()
        self.seed = int(torch.randint(0, 2**31 - 1, ())) if seed is None else seed
        self.completions = [Completion(list(ids), seed=self.seed + row) for row, ids in enumerate(prompt_ids)]
        self.generators = row_generators(self.seed, len(prompt_ids))
        self.stop_token_id = stop_token_id
        self.use_kv_cache = use_kv_cache
        self.token_limit = self.vocab_size if token_limit is None else min(token_limit, self.vocab_size)
        self.device = model_device(model)
        self.kv_cache = KVCache.for_model(model, len(prompt_ids)) if use_kv_cache else None

    def _check_prompt(self, row: int, ids: Sequence[int]) -> None:
        if len(ids) == 0:
            raise SampleError(f"prompt {row} is empty; give at least one token (e.g. <|endoftext|> to start a "
                              "new document)")
        if len(ids) > self.context_length:
            raise SampleError(f"prompt {row} has {len(ids)} tokens but the model reads at most "
                              f"{self.context_length} (its context_length); shorten the prompt")
        bad = [token for token in ids if not 0 <= token < self.vocab_size]
        if bad:
            raise SampleError(f"prompt {row} has token ids {bad[:5]} outside the model's vocabulary "
                              f"0..{self.vocab_size - 1}; was it encoded with another tokenizer?")

    @property
    def done(self) -> bool:
        return all(completion.stop_reason is not None for completion in self.completions)

    def steps(self) -> Iterator[list[int | None]]:
        """Generate one token per row per step; yield, per row, the new token id, or None if the row is done
        (a row that just sampled the stop token yields None too: the stop token is not part of the text)."""
        if self.max_new_tokens == 0:
            for completion in self.completions:
                completion.stop_reason = MAX_NEW_TOKENS
            return
        logits = self._prefill()
        while True:
            next_ids = sample_next_tokens(logits[:, :self.token_limit], self.sampling, self.generators).tolist()
            yield self._append(next_ids)
            if self.done:
                return
            logits = self._next_logits()

    def run(self) -> list[Completion]:
        """Generate to the end; the completions."""
        for _ in self.steps():
            pass
        return self.completions

    def _append(self, next_ids: list[int]) -> list[int | None]:
        """Record each active row's new token and decide whether the row is done."""
        new_tokens: list[int | None] = []
        for completion, token in zip(self.completions, next_ids):
            if completion.stop_reason is not None:
                new_tokens.append(None)
                continue
            if token == self.stop_token_id:
                completion.stop_reason = STOP_TOKEN
                new_tokens.append(None)
                continue
            completion.token_ids.append(token)
            new_tokens.append(token)
            if len(completion.token_ids) >= self.max_new_tokens:
                completion.stop_reason = MAX_NEW_TOKENS
            elif completion.length > self.context_length:  # the model cannot read the whole sequence any more
                completion.stop_reason = CONTEXT_LENGTH
        return new_tokens

    def _padded_sequences(self) -> tuple[Tensor, Tensor]:
        """Every row's tokens so far, right-padded with 0: (batch, width), and each row's last column (batch,).

        Rows that are done may be longer than the context; they are cut (their logits are never used)."""
        lengths = [min(completion.length, self.context_length) for completion in self.completions]
        width = max(lengths)
        rows = [(completion.prompt_ids + completion.token_ids)[:width] for completion in self.completions]
        token_ids = torch.tensor([row + [0] * (width - len(row)) for row in rows], device=self.device)
        return token_ids, torch.tensor(lengths, device=self.device) - 1

    def _logits_at(self, token_ids: Tensor, last_columns: Tensor, **cache_arguments) -> Tensor:
        logits = self.model(token_ids, **cache_arguments)  # (batch, width, vocab)
        return logits[torch.arange(len(last_columns), device=self.device), last_columns]  # (batch, vocab)

    # Inference mode (no autograd bookkeeping) only around the model: a `with` around the loop would stay on
    # in the caller's code too, between the steps it receives.
    @torch.inference_mode()
    def _prefill(self) -> Tensor:
        """Run the prompts (filling the cache, if any); the next-token logits of each row (batch, vocab)."""
        token_ids, last_columns = self._padded_sequences()
        if self.kv_cache is None:
            return self._logits_at(token_ids, last_columns)
        return self._logits_at(token_ids, last_columns, kv_cache=self.kv_cache)  # positions 0..width-1

    @torch.inference_mode()
    def _next_logits(self) -> Tensor:
        if self.kv_cache is None:
            return self._prefill()  # no cache: the whole sequences again
        # Feed each row's newest token at its own position. Rows that are done repeat a harmless step
        # (cheaper than reshaping the batch and the cache); the clamp keeps them inside the context.
        newest = [completion.last_token for completion in self.completions]
        positions = [min(completion.length - 1, self.context_length - 1) for completion in self.completions]
        token_ids = torch.tensor(newest, device=self.device).unsqueeze(-1)  # (batch, 1)
        token_positions = torch.tensor(positions, device=self.device).unsqueeze(-1)  # (batch, 1)
        logits = self.model(token_ids, token_positions, kv_cache=self.kv_cache)  # (batch, 1, vocab)
        return logits[:, -1]
