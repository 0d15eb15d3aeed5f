"""The learning rate of every optimizer step: `optimizer.schedule` over the run's horizon (handout §4.4).

The horizon is run.steps, or, when run.time_budget_s is set, the budget itself: the schedule then runs on training
seconds, so a run stopped by its budget has just reached the minimum rate, however many steps fitted.
"""

from cs336_optim import cosine_schedule, wsd_schedule
from cs336_train.config import TrainConfig


def learning_rate(config: TrainConfig, step: int, elapsed_s: float = 0.0) -> float:
    """The rate of `optimizer.schedule` for a step taken after `step` steps and `elapsed_s` training seconds.

    Warm-up and decay lengths are fractions of the horizon (steps, or seconds with a time budget: then
    progress = elapsed_s / time_budget_s).
    """
    opt, run = config.optimizer, config.run
    if run.time_budget_s:
        position, horizon = elapsed_s, run.time_budget_s
        warmup, decay = opt.warmup_fraction * horizon, opt.decay_fraction * horizon
    else:
        position, horizon = step, run.steps
        warmup, decay = round(opt.warmup_fraction * horizon), max(1, round(opt.decay_fraction * horizon))
    min_lr = opt.lr * opt.min_lr_ratio
    if opt.schedule == "cosine":
        return cosine_schedule(position, opt.lr, min_lr, warmup, horizon)
    if opt.schedule == "wsd":
        return wsd_schedule(position, opt.lr, min_lr, warmup, horizon, decay)
    return opt.lr * min(1.0, position / warmup) if warmup else opt.lr
