"""Learning-rate schedules (handout §4.4), as plain functions of the iteration number.

Cosine with warm-up (the handout's definition, t = iteration, T_w = warmup_iters, T_c = cosine_cycle_iters):

    t < T_w:          lr = t / T_w · lr_max                                          (linear warm-up)
    T_w <= t <= T_c:  lr = lr_min + ½ (1 + cos(π (t - T_w) / (T_c - T_w))) (lr_max - lr_min)
    t > T_c:          lr = lr_min

Warm-up / stable / decay ("WSD", trapezoidal): linear warm-up, then lr_max for most of the run, then a linear
decay to lr_min over the final `decay_iters`. Its appeal: the stable phase does not depend on the run length,
so one run can be extended or branched into decays of different lengths.

The position need not be a whole step: a trainer with a time budget passes training seconds (and the warm-up and
cycle lengths in seconds), so the schedule ends when the time does.
"""

import math


def cosine_schedule(it: float, max_learning_rate: float, min_learning_rate: float, warmup_iters: float,
                    cosine_cycle_iters: float) -> float:
    if it < warmup_iters:
        return it / warmup_iters * max_learning_rate
    if it <= cosine_cycle_iters:
        span = cosine_cycle_iters - warmup_iters
        progress = (it - warmup_iters) / span if span > 0 else 1.0
        return min_learning_rate + 0.5 * (1 + math.cos(math.pi * progress)) * (max_learning_rate - min_learning_rate)
    return min_learning_rate


def wsd_schedule(it: float, max_learning_rate: float, min_learning_rate: float, warmup_iters: float,
                 total_iters: float, decay_iters: float) -> float:
    """Warm-up for `warmup_iters`, hold, then decay linearly to the minimum over the last `decay_iters`."""
    if it < warmup_iters:
        return it / warmup_iters * max_learning_rate
    decay_start = total_iters - decay_iters
    if it < decay_start:
        return max_learning_rate
    if it >= total_iters:
        return min_learning_rate
    progress = (it - decay_start) / decay_iters
    return max_learning_rate + progress * (min_learning_rate - max_learning_rate)
