"""Activation checkpointing (`TransformerLM.activation_checkpointing`): the same losses and gradients, fewer
activations kept for the backward pass, and only when a backward pass can follow."""

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

import cs336_nn as nn_
from cs336_nn import transformer_lm

CONFIG = nn_.ModelConfig(vocab_size=64, context_length=32, d_model=32, num_layers=3, num_heads=4)
BATCH = 4


def train_step(model: nn_.TransformerLM, token_ids: torch.Tensor, forward=None):
    """Loss, parameter gradients, and the bytes of activations the forward pass saved for the backward pass
    (tensors handed to autograd, each storage once, parameters left out)."""
    saved = {}

    def pack(tensor):
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    model.zero_grad(set_to_none=True)
    with saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = nn_.cross_entropy((model if forward is None else forward)(token_ids[:, :-1]), token_ids[:, 1:])
    loss.backward()
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    activation_bytes = sum(size for pointer, size in saved.items() if pointer not in parameters)
    return loss.detach(), [p.grad for p in model.parameters()], activation_bytes


def test_it_is_off_by_default_and_settable():
    model = nn_.TransformerLM(CONFIG)
    assert model.activation_checkpointing is False
    model.activation_checkpointing = True
    assert model.activation_checkpointing is True


def test_the_same_loss_and_gradients_with_far_fewer_saved_activations():
    torch.manual_seed(0)
    model = nn_.TransformerLM(CONFIG)
    token_ids = torch.randint(0, CONFIG.vocab_size, (BATCH, CONFIG.context_length + 1))
    loss, grads, saved = train_step(model, token_ids)
    model.activation_checkpointing = True
    checkpointed_loss, checkpointed_grads, checkpointed_saved = train_step(model, token_ids)
    torch.testing.assert_close(checkpointed_loss, loss)
    for checkpointed_grad, grad in zip(checkpointed_grads, grads, strict=True):
        torch.testing.assert_close(checkpointed_grad, grad)
    # Checkpointing also keeps each block's input (B·T·d float32 values a block), outside autograd's saved tensors.
    block_inputs = CONFIG.num_layers * BATCH * CONFIG.context_length * CONFIG.d_model * 4
    assert checkpointed_saved + block_inputs < saved / 3


@pytest.mark.parametrize(("training", "grad_enabled", "checkpointed_blocks"),
                         [(True, True, CONFIG.num_layers), (False, True, 0), (True, False, 0)])
def test_blocks_are_recomputed_only_when_training_with_gradients(monkeypatch, training, grad_enabled,
                                                                 checkpointed_blocks):
    calls = []

    def counting_checkpoint(function, *args, **kwargs):
        calls.append(function)
        return torch.utils.checkpoint.checkpoint(function, *args, **kwargs)

    monkeypatch.setattr(transformer_lm, "checkpoint", counting_checkpoint)
    model = nn_.TransformerLM(CONFIG).train(training)
    model.activation_checkpointing = True
    with torch.set_grad_enabled(grad_enabled):
        model(torch.randint(0, CONFIG.vocab_size, (BATCH, 8)))
    assert calls == list(model.layers)[:checkpointed_blocks]


@pytest.mark.slow
def test_it_compiles_whole_and_trains_like_eager():
    torch.manual_seed(0)
    model = nn_.TransformerLM(CONFIG)
    model.activation_checkpointing = True
    token_ids = torch.randint(0, CONFIG.vocab_size, (BATCH, CONFIG.context_length + 1))
    loss, grads, _ = train_step(model, token_ids)
    torch._dynamo.reset()
    compiled_loss, compiled_grads, _ = train_step(model, token_ids, torch.compile(model, fullgraph=True))
    torch.testing.assert_close(compiled_loss, loss)
    for compiled_grad, grad in zip(compiled_grads, grads, strict=True):
        torch.testing.assert_close(compiled_grad, grad, atol=1e-5, rtol=1e-4)
