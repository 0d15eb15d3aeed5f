"""Overfit one batch: the first check to run on a new model, loss or optimizer (handout §7 "debugging").

A model that is correct can memorise a handful of sequences: trained on the same batch over and over, its loss
must fall close to zero within a few hundred steps. If it does not, something upstream of any hyperparameter is
wrong: gradients that do not flow (a detached tensor, a missing residual), a loss that does not match its
targets (shifted by one the wrong way), an optimizer that does not update. Finding that now costs seconds;
finding it after a day of training costs the day.

    cs336-train overfit tinystories_cpu --set data.train=runs/first/data/train.bin
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cs336_nn import TransformerLM, cross_entropy
from cs336_optim import clip_gradients, make_adamw
from cs336_train import runtime
from cs336_train.config import TrainConfig
from cs336_train.data import open_tokens, windows_at

TARGET_LOSS = 0.1  # nats per token: a batch memorised (a 10K vocabulary starts at ln(10000) = 9.2)


@dataclass
class OverfitResult:
    losses: list[float]  # one per step
    passed: bool
    message: str


def overfit_one_batch(config: TrainConfig, steps: int = 300, batch_size: int = 4, lr: float = 3e-3,
                      say: Callable[[str], None] = print) -> OverfitResult:
    """Train `config.model` on one fixed batch of the training file for `steps` steps; the loss must reach
    TARGET_LOSS. Constant learning rate after a short warm-up, no weight decay: nothing but memorising."""
    device = runtime.resolve_device(config.run.device)
    runtime.configure_backends(device, config.run.num_threads)
    runtime.seed_everything(config.run.seed)
    tokens = open_tokens(config.data.train, config.model.vocab_size)
    starts = np.random.default_rng(config.run.seed).integers(0, len(tokens) - config.model.context_length,
                                                             size=batch_size)
    inputs, targets = windows_at(tokens, starts, config.model.context_length, device)
    model = TransformerLM(config.model, device=device)
    optimizer = make_adamw(model.parameters(), impl=config.optimizer.impl, lr=lr, betas=config.optimizer.betas,
                           eps=config.optimizer.eps, weight_decay=0.0)
    warmup = max(1, steps // 20)
    losses = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup)
        with runtime.autocast(device, config.run.precision):
            logits = model(inputs)
        loss = cross_entropy(logits.float(), targets)
        loss.backward()
        clip_gradients(list(model.parameters()), config.optimizer.grad_clip or math.inf)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if step % 50 == 0 or step == steps - 1:
            say(f"step {step + 1:>4}  loss {losses[-1]:.4f}")
        if not math.isfinite(losses[-1]):
            break
    return _verdict(losses, steps, lr, math.log(config.model.vocab_size))


def _verdict(losses: list[float], steps: int, lr: float, uniform_loss: float) -> OverfitResult:
    final = losses[-1]
    if final <= TARGET_LOSS:
        return OverfitResult(losses, True, f"passed: the loss fell from {losses[0]:.3f} to {final:.4f} in "
                                           f"{len(losses)} steps; the model can learn")
    if not math.isfinite(final):
        why = f"the loss became {final} at step {len(losses)}: lower --lr (now {lr:g})"
    elif final > 0.9 * losses[0]:
        why = (f"the loss barely moved ({losses[0]:.3f} -> {final:.3f}; a uniform guess is {uniform_loss:.3f}): "
               "gradients are not reaching the weights (a detached tensor? an optimizer that does not update?) "
               "or the targets do not match the inputs")
    else:
        why = (f"the loss fell from {losses[0]:.3f} to {final:.3f} but not below {TARGET_LOSS}: train longer "
               f"(--steps, now {steps}), or try another --lr (now {lr:g}); a model this size should memorise "
               "a few sequences")
    return OverfitResult(losses, False, f"failed: {why}")
