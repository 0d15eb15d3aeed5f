"""Causal attention as one autograd function that holds the (batch, heads, seq, seq) scores a chunk at a time.

Plain version: `reference.causal_attention`. That textbook version builds the full score matrix, masks it into a
second one, softmaxes it into a third, and autograd keeps the probabilities for the backward pass, which then
builds three more matrices of the same size. Those are by far the largest tensors in the model (batch x heads x
seq x seq), and on a CPU every fresh one also costs page faults. This function computes the same thing one
chunk of (batch, head) slices at a time, in one small buffer that every chunk reuses. For the backward pass it
keeps only the inputs, the output and, per query, the row maximum and the row sum of the exponentials, and
recomputes each chunk's probabilities (one extra Q K^T product, cheap next to the memory saved): the idea of
FlashAttention (Dao et al., 2022), written with whole-row softmax over plain matrix products. Query rows are
split into blocks so that early rows skip the keys they may not see anyway.

How large a chunk is, and how many query blocks, depends on the device (`kernel_policy.py`): a few MB and two
blocks on a CPU, for its caches; on a GPU, where every operation is a kernel launch, one chunk and one block
whenever the scores fit in 1 GiB. That case has its own function, `OneChunkCausalAttention` (below): with nothing
to cut and no cache to fit, it gives up the tricks below, which save passes over cache-sized chunks at the price
of more small operations, for the fewest kernel launches. In the model that is 4 launches a layer forward and 10
backward, where this chunked version, even in one chunk, takes 12 and 18.

Forward, per chunk (S = scores, E = unnormalised probabilities, O = output):

    S = Q K^T / sqrt(d) + mask        mask: 0 where a query may attend, -inf in the future (one baddbmm)
    E = exp(S - max S)                in place; P = E / sum(E) is never formed
    [E V | sum E] = E [V | 1]         one product gives the unnormalised output and the row sums
    O = E V / sum E                   normalising O (seq x d) instead of P (seq x seq)

Backward, with dO the gradient of the output, dO' = dO / sum E and D' = rowsum(dO' * O):

    E  = exp([Q / sqrt(d) | -max] [K | 1]^T + mask)    recomputed; the max is subtracted inside the product
    dV = E^T dO'
    dS = E * ([dO' | -D'] [V | 1]^T)  = P (dP - rowsum(P dP)), the softmax backward
    dQ = dS K / sqrt(d),   dK = dS^T Q / sqrt(d)

Shapes: q (..., queries, d), k (..., keys, d), v (..., keys, d_v) -> (..., queries, d_v). When there are fewer
queries than keys, the queries are the last positions of the sequence (query i sits at position
keys - queries + i), as when new tokens attend to cached ones. Under autocast the products run in the inputs'
low precision, like the textbook version.
"""

import math

import torch
from torch import Tensor

from cs336_nn.activations import LOG2_E
from cs336_nn.kernel_policy import part, policy_for

_future_masks: dict[tuple, Tensor] = {}


def future_mask(queries: int, keys: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(queries, keys) additive mask: 0 where query i may attend to key j (j <= i + keys - queries), else -inf.

    Built once per shape, dtype and device and cached: it is the same for every layer and every step.
    """
    key = (queries, keys, dtype, device)
    if key in _future_masks:
        return _future_masks[key]
    allowed = torch.ones(queries, keys, dtype=torch.bool, device=device).tril(diagonal=keys - queries)
    mask = torch.zeros(queries, keys, dtype=dtype, device=device).masked_fill_(~allowed, float("-inf"))
    if not torch.compiler.is_compiling():  # a compiled graph builds its own constant; it must not touch globals
        _future_masks[key] = mask
    return mask


def check_keys_cover_queries(queries: int, keys: int) -> None:
    if keys < queries:
        raise ValueError(f"causal attention needs at least as many keys as queries, got {keys} < {queries}")


def query_blocks(queries: int, keys: int, blocks: int) -> list[tuple[slice, int]]:
    """(rows, keys they may see) for `blocks` blocks of query rows, the one that sees all keys last.

    Causality lets the first rows skip the last keys: with two blocks, a quarter of the scores is never computed.
    """
    size = max(1, -(-queries // blocks))
    starts = range(0, queries, size)
    return [(slice(start, min(start + size, queries)), keys - queries + min(start + size, queries)) for start in starts]


def chunks(slices: int, rows: int, keys: int, dtype: torch.dtype, chunk_bytes: int) -> list[slice]:
    """Consecutive runs of (batch, head) slices whose (rows x keys) scores take about `chunk_bytes`."""
    step = max(1, chunk_bytes // (rows * keys * dtype.itemsize))
    return [slice(start, min(start + step, slices)) for start in range(0, slices, step)]


def with_column(x: Tensor, column: Tensor | float) -> Tensor:
    """(..., rows, d) -> (..., rows, d + 1): append a column (a tensor (..., rows, 1) or a constant).

    Appending a column to one factor of a matrix product adds a term to every entry of the result. Three uses:
    [V | 1] makes the last column of E [V | 1] the row sums of E; [Q | -m] [K | 1]^T = Q K^T - m subtracts each
    row's max inside the product; [dO | -D] [V | 1]^T = dO V^T - D. Each saves a separate pass over the scores.
    """
    if not isinstance(column, Tensor):
        column = torch.full((*x.shape[:-1], 1), column, dtype=x.dtype, device=x.device)
    return torch.cat((x, column.to(x.dtype)), dim=-1)


def join(blocks: list[Tensor], dim: int) -> Tensor:
    """torch.cat(blocks, dim), without the copy when there is one block (one query block, as on a GPU)."""
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=dim)


def write_or_add(target: Tensor, a: Tensor, b: Tensor, write: bool) -> None:
    """target = a @ b, or target += a @ b (as a separate product: baddbmm_ into a strided view would fall back
    to one small product per slice)."""
    if write:
        torch.bmm(a, b, out=target)
    else:
        target += torch.bmm(a, b)


EVERY = slice(None)  # all (batch, head) slices


class CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        batch_shape, queries, keys, d = q.shape[:-2], q.shape[-2], k.shape[-2], q.shape[-1]
        check_keys_cover_queries(queries, keys)
        # exp(x) = 2^(x log2 e): folding log2 e into the 1/sqrt(d) scale lets us use exp2, which torch computes at
        # full speed even where the result underflows (masked and far-below-max scores); float32 exp on a CPU
        # takes a slow path there, about 10x slower.
        scale_log2 = LOG2_E / math.sqrt(d)
        policy = policy_for(q.device)  # how large the chunks are: see kernel_policy.py
        with torch.autocast(q.device.type, enabled=False):  # dtypes are chosen here, not by autocast
            dtype = q.dtype
            # Heads are a batch dimension: flatten all batch dimensions into one, (slices, seq, d).
            q3 = q.reshape(-1, queries, d)
            k_ones = with_column(k.to(dtype), 1.0).reshape(-1, keys, d + 1)  # [K | 1], for the backward pass
            v_ones = with_column(v.to(dtype), 1.0).reshape(-1, keys, v.shape[-1] + 1)  # [V | 1]
            k3 = k_ones[..., :d]  # K itself, a view
            slices, d_v = q3.shape[0], v.shape[-1]
            mask = future_mask(queries, keys, dtype, q.device)
            outputs, maxima = [], []  # per block of query rows: [E V | row sums of E] and row maxima
            for rows, seen in query_blocks(queries, keys, policy.query_blocks):
                block_rows = rows.stop - rows.start
                block_chunks = chunks(slices, block_rows, seen, dtype, policy.attention_chunk_bytes)
                block_out = torch.empty(slices, block_rows, d_v + 1, dtype=dtype, device=q.device)
                block_max = torch.empty(slices, block_rows, 1, dtype=dtype, device=q.device)
                buffer = torch.empty(block_chunks[0].stop, block_rows, seen, dtype=dtype, device=q.device)
                # This block's queries, the keys and values they may see, and its part of the mask.
                q_rows, mask_rows = part(q3, EVERY, rows), part(mask, rows, slice(seen))
                k_seen, v_seen = part(k3, EVERY, slice(seen)), part(v_ones, EVERY, slice(seen))
                for chunk in block_chunks:
                    scores = part(buffer, slice(chunk.stop - chunk.start))  # (c, rows, seen), reused by every chunk
                    torch.baddbmm(mask_rows, part(q_rows, chunk), part(k_seen, chunk).transpose(1, 2),
                                  alpha=scale_log2, out=scores)
                    chunk_max = part(block_max, chunk)
                    torch.amax(scores, dim=-1, keepdim=True, out=chunk_max)
                    exponentials = scores.sub_(chunk_max).exp2_()  # E = exp(S - max S), in place
                    torch.bmm(exponentials, part(v_seen, chunk), out=part(block_out, chunk))
                outputs.append(block_out)
                maxima.append(block_max)
            out_and_totals, maxima = join(outputs, dim=1), join(maxima, dim=1)  # (slices, Tq, ...)
            totals = out_and_totals[..., d_v:].clone()  # (slices, Tq, 1); a copy, so out_and_totals can be freed
            out = out_and_totals[..., :d_v] / totals  # normalise the output (Tq x d), not the probabilities (Tq x Tk)
        ctx.save_for_backward(q3, k_ones, v_ones, out, maxima, totals)
        ctx.scale_log2, ctx.policy = scale_log2, policy
        ctx.inputs = [(t.shape, t.dtype) for t in (q, k, v)]
        return out.view(*batch_shape, queries, d_v)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q3, k_ones, v_ones, out, maxima, totals = ctx.saved_tensors  # out: (slices, Tq, d_v)
        dtype, scale_log2, policy = q3.dtype, ctx.scale_log2, ctx.policy
        slices, queries, keys, d = q3.shape[0], q3.shape[1], k_ones.shape[1], q3.shape[2]
        with torch.autocast(q3.device.type, enabled=False):
            # P = E / total. Dividing dO by the total once (Tq x d values) lets every chunk work with E directly:
            # dV = E^T dO', and P (dP - D) = E (dP' - D') with dO' = dO / total, dP' = dO' V^T, D' = rowsum(dO' O).
            grad_scaled = grad_out.reshape(out.shape).to(dtype) / totals
            row_dot = (grad_scaled * out).sum(dim=-1, keepdim=True, dtype=torch.promote_types(dtype, torch.float32))
            grad_scaled_dot = with_column(grad_scaled, -row_dot)  # [dO' | -D']
            q_max = with_column(q3 * scale_log2, -maxima)  # [Q scale | -max]: scores minus max in one product
            k3 = k_ones[..., :d]
            mask = future_mask(queries, keys, dtype, q3.device)
            grad_k = torch.empty(slices, keys, d, dtype=dtype, device=q3.device)
            grad_v = torch.empty(slices, keys, v_ones.shape[-1] - 1, dtype=dtype, device=q3.device)
            grad_q_blocks = []
            # The last block sees every key and writes dK and dV; the earlier ones add to their first keys.
            for rows, seen in reversed(query_blocks(queries, keys, policy.query_blocks)):
                first = seen == keys
                block_rows = rows.stop - rows.start
                block_chunks = chunks(slices, block_rows, seen, dtype, policy.attention_chunk_bytes)
                grad_q = torch.empty(slices, block_rows, d, dtype=dtype, device=q3.device)
                exponentials_buffer, grad_scores_buffer = (
                    torch.empty(block_chunks[0].stop, block_rows, seen, dtype=dtype, device=q3.device)
                    for _ in range(2))
                # This block's rows of Q, [Q scale | -max], dO' and [dO' | -D']; the keys and values they may see.
                q_rows, q_max_rows = part(q3, EVERY, rows), part(q_max, EVERY, rows)
                grad_rows, grad_dot_rows = part(grad_scaled, EVERY, rows), part(grad_scaled_dot, EVERY, rows)
                k_seen, k_ones_seen, v_ones_seen = (part(t, EVERY, slice(seen)) for t in (k3, k_ones, v_ones))
                grad_k_seen, grad_v_seen = part(grad_k, EVERY, slice(seen)), part(grad_v, EVERY, slice(seen))
                mask_rows = part(mask, rows, slice(seen))
                for chunk in block_chunks:
                    exponentials = part(exponentials_buffer, slice(chunk.stop - chunk.start))
                    grad_scores = part(grad_scores_buffer, slice(chunk.stop - chunk.start))
                    torch.baddbmm(mask_rows, part(q_max_rows, chunk), part(k_ones_seen, chunk).transpose(1, 2),
                                  out=exponentials).exp2_()  # E
                    write_or_add(part(grad_v_seen, chunk), exponentials.transpose(1, 2), part(grad_rows, chunk),
                                 first)  # dV = E^T dO'
                    torch.bmm(part(grad_dot_rows, chunk), part(v_ones_seen, chunk).transpose(1, 2), out=grad_scores)
                    grad_scores.mul_(exponentials)  # dS = E (dP' - D'), from dP' - D' = [dO' | -D'] [V | 1]^T
                    torch.bmm(grad_scores, part(k_seen, chunk), out=part(grad_q, chunk))  # dQ = dS K
                    write_or_add(part(grad_k_seen, chunk), grad_scores.transpose(1, 2), part(q_rows, chunk),
                                 first)  # dK = dS^T Q
                grad_q_blocks.insert(0, grad_q)
            grad_q = join(grad_q_blocks, dim=1)
            # S = Q K^T / sqrt(d): dQ = dS K / sqrt(d), dK = dS^T Q / sqrt(d); exp2's log2 e is not part of S.
            grad_q.mul_(scale_log2 / LOG2_E)
            grad_k.mul_(scale_log2 / LOG2_E)
        return tuple(grad.view(shape).to(input_dtype) if needed else None
                     for grad, needed, (shape, input_dtype) in zip((grad_q, grad_k, grad_v), ctx.needs_input_grad,
                                                                    ctx.inputs))


def as_batches_of_matrices(q: Tensor, k: Tensor, v: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v (..., rows, d) -> three contiguous (slices, rows, d) tensors in `dtype`: batch dimensions flattened.

    In the model q, k and v are strided views of one QKV projection ((batch, seq, heads, d_head) in memory, and
    RoPE's output keeps that layout), so flattening (batch, heads) into one dimension for bmm copies each of them.
    When their shapes agree, one stack makes the three copies in one operation instead of three.
    """
    if q.shape == k.shape == v.shape:
        q3, k3, v3 = torch.stack((q, k.to(dtype), v.to(dtype))).view(3, -1, *q.shape[-2:]).unbind()
        return q3, k3, v3
    q3, k3, v3 = (t.to(dtype).reshape(-1, *t.shape[-2:]) for t in (q, k, v))  # fewer queries than keys, or d_v != d
    return q3, k3, v3


class OneChunkCausalAttention(torch.autograd.Function):
    """The same causal attention when all its scores are one chunk and its queries one block (a GPU's policy).

    On a GPU each tensor operation is a kernel launch, and the chunked version's tricks cost launches: the columns
    of ones and of -max each take a fill and a concatenation of (slices, seq, d + 1) copies, and its softmax is
    four operations (max, subtract, exp2, the row sums). With one chunk there is no cache to fit, so this version
    uses the fewest operations instead, with the same memory plan: nothing (seq x seq) is kept for the backward
    pass, and the probabilities are recomputed there from Q and K.

    Forward (S = scores, P = probabilities, O = output): three launches, after one stack that copies Q, K and V
    into the (slices, seq, d) layout that bmm needs:

        S = Q K^T / sqrt(d) + mask         one baddbmm: the mask is 0 where a query may attend, -inf in the future
        P = softmax(S)                     torch.softmax: one kernel for the max, exp, sum and division of each row
        O = P V

    Backward, with dO the gradient of O and D = rowsum(dO * O) = rowsum(P * dP), the softmax backward's term:

        P  = softmax(Q K^T / sqrt(d) + mask)               recomputed: two launches
        dV = P^T dO
        dS = P * (dO V^T - D) / sqrt(d)                    one baddbmm (D broadcast along the keys), one multiply
        dQ = dS K,   dK = dS^T Q                           the 1/sqrt(d) of S is already in dS

    Two (slices, seq, seq) tensors exist at a time, here as in the chunked version's backward pass.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        batch_shape, queries, keys, d = q.shape[:-2], q.shape[-2], k.shape[-2], q.shape[-1]
        check_keys_cover_queries(queries, keys)
        scale = 1 / math.sqrt(d)
        with torch.autocast(q.device.type, enabled=False):  # dtypes are chosen here, not by autocast
            q3, k3, v3 = as_batches_of_matrices(q, k, v, q.dtype)  # (slices, seq, d)
            mask = future_mask(queries, keys, q.dtype, q.device)
            scores = torch.baddbmm(mask, q3, k3.transpose(1, 2), alpha=scale)  # (slices, Tq, Tk)
            out = torch.bmm(torch.softmax(scores, dim=-1), v3)  # (slices, Tq, d_v)
        ctx.save_for_backward(q3, k3, v3, out)
        ctx.scale = scale
        ctx.inputs = [(t.shape, t.dtype) for t in (q, k, v)]
        return out.view(*batch_shape, queries, v.shape[-1])

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q3, k3, v3, out = ctx.saved_tensors
        dtype, scale, queries, keys = q3.dtype, ctx.scale, q3.shape[1], k3.shape[1]
        with torch.autocast(q3.device.type, enabled=False):
            grad_out = grad_out.reshape(out.shape).to(dtype)  # (slices, Tq, d_v)
            mask = future_mask(queries, keys, dtype, q3.device)
            probabilities = torch.softmax(torch.baddbmm(mask, q3, k3.transpose(1, 2), alpha=scale), dim=-1)
            grad_v = torch.bmm(probabilities.transpose(1, 2), grad_out)  # dV = P^T dO
            row_dot = (grad_out * out).sum(dim=-1, keepdim=True)  # D (slices, Tq, 1)
            # dS = P (dP - D) / sqrt(d), with dP - D = dO V^T - D: baddbmm computes beta D + alpha dO V^T
            grad_scores = torch.baddbmm(row_dot, grad_out, v3.transpose(1, 2), beta=-scale, alpha=scale)
            grad_scores.mul_(probabilities)
            grad_q = torch.bmm(grad_scores, k3)  # dQ = dS K
            grad_k = torch.bmm(grad_scores.transpose(1, 2), q3)  # dK = dS^T Q
        return tuple(grad.view(shape).to(input_dtype) if needed else None
                     for grad, needed, (shape, input_dtype) in zip((grad_q, grad_k, grad_v), ctx.needs_input_grad,
                                                                    ctx.inputs))


def runs_as_one_piece(q: Tensor, k: Tensor) -> bool:
    """Whether the policy for q's device asks for the fewest launches (a GPU's) and makes one query block and one
    chunk of all the (batch, head) slices. A CPU keeps the chunked version even then (kernel_policy.py says why)."""
    policy = policy_for(q.device)
    slices = math.prod(q.shape[:-2])
    return (policy.fewest_launches and policy.query_blocks == 1
            and len(chunks(slices, q.shape[-2], k.shape[-2], q.dtype, policy.attention_chunk_bytes)) == 1)


def fused_causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal softmax(q k^T / sqrt(d)) v with a hand-written backward (see the module docstring): in chunks
    (`CausalAttention`), or in one piece where a GPU's policy makes one chunk and one query block
    (`OneChunkCausalAttention`)."""
    if runs_as_one_piece(q, k):
        return OneChunkCausalAttention.apply(q, k, v)
    return CausalAttention.apply(q, k, v)
