"""cs336_optim against torch.optim.AdamW, clip_grad_norm_, the handout's schedule, and the plain versions of
cs336_optim.reference (Algorithm 1 one parameter at a time, clipping as the handout words it)."""

import copy as copy_module
import math

import pytest
import torch

import cs336_optim as optim_
from cs336_optim import adamw as adamw_module
from cs336_optim import reference
from tests import adapters


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def train(optimizer_factory, steps=30, seed=0):
    model = make_model(seed)
    optimizer = optimizer_factory(model.parameters())
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, 6, generator=generator), torch.randn(16, 3, generator=generator)
        optimizer.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        optimizer.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()]), optimizer


def test_adamw_matches_torch_adamw():
    settings = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    ours, _ = train(lambda p: adapters.get_adamw_cls()(p, **settings))
    theirs, _ = train(lambda p: torch.optim.AdamW(p, **settings))
    # Both decay before the Adam step; torch adds ε to the bias-corrected sqrt(v / (1 - β2^t)), Algorithm 1 to
    # sqrt(v), a difference only where gradients come near ε (checked exactly with ε = 0 below).
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    without_decay = {**settings, "weight_decay": 0.0}
    ours_without, _ = train(lambda p: optim_.AdamW(p, **without_decay))
    theirs_without, _ = train(lambda p: torch.optim.AdamW(p, **without_decay))
    torch.testing.assert_close(ours_without, theirs_without, atol=1e-6, rtol=1e-5)
    assert (ours - ours_without).abs().max() > 1000 * (ours - theirs).abs().max()


@pytest.mark.parametrize("weight_decay", [0.0, 0.5])
def test_reference_adamw_is_torchs_adamw_when_epsilon_is_zero(weight_decay):
    """With ε = 0, where the two place ε does not matter: α_t m / sqrt(v) = α/(1 - β1^t) m / sqrt(v/(1 - β2^t)).
    In float64, so that any difference in the algorithm (the order of the decay, the bias corrections) shows."""
    def run(optimizer_class):
        torch.manual_seed(0)
        params = [torch.randn(shape, dtype=torch.float64, requires_grad=True) for shape in ((5, 4), (3,))]
        optimizer = optimizer_class(params, lr=0.1, betas=(0.8, 0.9), eps=0.0, weight_decay=weight_decay)
        for _ in range(5):
            for p in params:
                p.grad = torch.randn_like(p)
            optimizer.step()
        return torch.cat([p.detach().flatten() for p in params])

    torch.testing.assert_close(run(reference.AdamW), run(torch.optim.AdamW), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("batch_elements", [None, 10])
def test_adamw_is_exactly_the_reference_algorithm_1(batch_elements, monkeypatch):
    if batch_elements:  # parameters of 20, 3 and 7 numbers: updated in batches [20], [3, 7]
        monkeypatch.setattr(adamw_module, "BATCH_ELEMENTS", batch_elements)
        assert adamw_module._batches([torch.empty(20), torch.empty(3), torch.empty(7)]) == [[0], [1, 2]]
    torch.manual_seed(0)
    params = [torch.randn(shape, dtype=torch.float64, requires_grad=True) for shape in ((5, 4), (3,), (7,))]
    plain = [p.detach().clone().requires_grad_(True) for p in params]
    settings = dict(lr=0.1, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.5)
    optimizer, plain_optimizer = optim_.AdamW(params, **settings), reference.AdamW(plain, **settings)
    for step in range(5):
        gradients = [torch.randn_like(p) for p in params]
        for p, r, g in zip(params, plain, gradients):
            p.grad, r.grad = g.clone(), g.clone()
        optimizer.step()
        plain_optimizer.step()
        for p, r in zip(params, plain):
            torch.testing.assert_close(p, r, atol=1e-12, rtol=1e-12, msg=f"step {step}")


def test_reference_and_scratch_adamw_state_dicts_are_interchangeable():
    settings = dict(lr=1e-2, weight_decay=0.1)
    model, copy = make_model(), make_model()
    plain_optimizer = reference.AdamW(model.parameters(), **settings)
    for _ in range(3):
        plain_optimizer.zero_grad()
        model(torch.randn(4, 6)).sum().backward()
        plain_optimizer.step()
    copy.load_state_dict(model.state_dict())
    fast_optimizer = optim_.AdamW(copy.parameters(), **settings)
    fast_optimizer.load_state_dict(copy_module.deepcopy(plain_optimizer.state_dict()))
    x = torch.randn(4, 6)
    for m, o in ((model, plain_optimizer), (copy, fast_optimizer)):
        o.zero_grad()
        m(x).sum().backward()
        o.step()
    for a, b in zip(model.parameters(), copy.parameters()):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)


def test_adamw_state_dict_round_trip_continues_identically():
    settings = dict(lr=1e-2, weight_decay=0.1)
    model = make_model()
    optimizer = optim_.AdamW(model.parameters(), **settings)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(4, 6)).sum().backward()
        optimizer.step()
    copy = make_model(seed=5)
    copy.load_state_dict(model.state_dict())
    copied_optimizer = optim_.AdamW(copy.parameters(), **settings)
    copied_optimizer.load_state_dict(copy_module.deepcopy(optimizer.state_dict()))  # as torch.save/load would
    x = torch.randn(4, 6)
    for m, o in ((model, optimizer), (copy, copied_optimizer)):
        o.zero_grad()
        m(x).sum().backward()
        o.step()
    for a, b in zip(model.parameters(), copy.parameters()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_parameter_groups_skip_norms_and_embeddings():
    import cs336_nn as nn_

    model = nn_.TransformerLM(nn_.ModelConfig(vocab_size=50, context_length=8, d_model=16, num_layers=1,
                                              num_heads=2))
    decay, no_decay = optim_.parameter_groups(model.named_parameters(), weight_decay=0.1)
    def holds(group, parameter):
        return any(candidate is parameter for candidate in group["params"])

    assert holds(no_decay, model.token_embeddings.weight) and holds(no_decay, model.ln_final.weight)
    assert holds(decay, model.lm_head.weight) and decay["weight_decay"] == 0.1
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_make_adamw_switch():
    model = make_model()
    assert isinstance(optim_.make_adamw(model.parameters(), impl="scratch", lr=1e-3), optim_.AdamW)
    assert isinstance(optim_.make_adamw(model.parameters(), impl="torch", lr=1e-3), torch.optim.AdamW)
    assert isinstance(optim_.make_adamw(model.parameters(), impl="reference", lr=1e-3), reference.AdamW)
    with pytest.raises(ValueError, match="not one of"):
        optim_.make_adamw(model.parameters(), impl="jax")


def test_sgd_decaying_step_example():
    """The handout's example: lr / sqrt(t + 1) on loss = mean(w²); larger lr converges faster, lr=1e3 diverges."""
    def final_loss(lr):
        torch.manual_seed(0)
        weights = torch.nn.Parameter(5 * torch.randn(10, 10))
        optimizer = optim_.SGD([weights], lr=lr)
        for _ in range(10):
            optimizer.zero_grad()
            loss = (weights ** 2).mean()
            loss.backward()
            optimizer.step()
        return loss.item()

    assert final_loss(1e1) < final_loss(1e0) < 25
    assert final_loss(1e3) > 1e10
    weights = torch.nn.Parameter(torch.tensor([1.0]))
    optimizer = optim_.SGD([weights], lr=0.5)
    for _ in range(3):
        weights.grad = torch.tensor([1.0])
        optimizer.step()
    assert math.isclose(weights.item(), 1 - 0.5 * (1 + 1 / math.sqrt(2) + 1 / math.sqrt(3)), rel_tol=1e-6)


def test_cosine_schedule_matches_handout():
    # The course test's values: max 1, min 0.1, warm-up 7, cycle 21.
    expected = [0, 0.14285714285714285, 0.2857142857142857, 0.42857142857142855, 0.5714285714285714,
                0.7142857142857143, 0.8571428571428571, 1.0, 0.9887175604818206, 0.9554359905560885,
                0.9018241671106134, 0.8305704108364301, 0.7452476826029011, 0.6501344202803414,
                0.55, 0.44986557971965857, 0.3547523173970989, 0.26942958916356996, 0.19817583288938662,
                0.14456400944391146, 0.11128243951817937, 0.1, 0.1, 0.1, 0.1]
    actual = [adapters.run_get_lr_cosine_schedule(it, 1.0, 0.1, 7, 21) for it in range(25)]
    assert actual == pytest.approx(expected)


def test_wsd_schedule_shape():
    lrs = [optim_.wsd_schedule(it, 1.0, 0.1, warmup_iters=10, total_iters=100, decay_iters=20) for it in range(101)]
    assert lrs[0] == 0 and lrs[5] == 0.5 and lrs[10] == lrs[79] == 1.0
    assert lrs[90] == pytest.approx(0.55) and lrs[100] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


@pytest.mark.parametrize("clip", [optim_.clip_gradients, reference.clip_gradients], ids=["fast", "reference"])
@pytest.mark.parametrize("max_norm", [1e-2, 1.0, 1e4])
def test_clipping_matches_clip_grad_norm(max_norm, clip):
    ours_model, builtin_model = make_model(), make_model()
    x = torch.randn(8, 6)
    for model in (ours_model, builtin_model):
        (model(x) ** 2).sum().backward()
    norm = clip(ours_model.parameters(), max_norm)
    expected_norm = torch.nn.utils.clip_grad_norm_(builtin_model.parameters(), max_norm)
    torch.testing.assert_close(norm, expected_norm)
    for a, b in zip(ours_model.parameters(), builtin_model.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5)


def _read_counter(monkeypatch):
    """Counts every read of a tensor's value back to Python (what would stall a GPU), by patching the readers."""
    reads = []
    for name in ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return reads


@pytest.mark.parametrize("max_norm", [1e-2, 1e4])
def test_clipping_reads_nothing_back_and_leaves_small_gradients_exactly_as_they_were(max_norm, monkeypatch):
    model = make_model()
    (model(torch.randn(8, 6)) ** 2).sum().backward()
    before = [p.grad.clone() for p in model.parameters()]
    reads = _read_counter(monkeypatch)
    norm = optim_.clip_gradients(model.parameters(), max_norm)
    assert reads == []  # the clip is decided on the device: no `if norm > max_norm` on the host
    monkeypatch.undo()
    expected_norm = torch.cat([g.flatten() for g in before]).norm()
    torch.testing.assert_close(norm, expected_norm)
    scale = min(1.0, max_norm / (float(expected_norm) + 1e-6))
    for p, g in zip(model.parameters(), before):
        if scale == 1.0:
            assert torch.equal(p.grad, g)  # multiplied by exactly 1
        else:
            torch.testing.assert_close(p.grad, g * scale)


def test_adamw_accepts_a_learning_rate_tensor_and_matches_the_number():
    settings = dict(betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    ours, _ = train(lambda p: optim_.AdamW(p, lr=1e-2, **settings))

    def with_tensor_rate(parameters):
        optimizer = optim_.AdamW(parameters, lr=1e-2, **settings)
        for group in optimizer.param_groups:
            group["lr"] = torch.tensor(1e-2)
        return optimizer

    tensor_rate, _ = train(with_tensor_rate)
    # -α_t divides the denominator in both cases; the tensor is float32, the number float64: rounding differs.
    torch.testing.assert_close(tensor_rate, ours, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("impl", ["reference", "scratch", "torch"])
def test_a_zero_learning_rate_tensor_leaves_the_weights_exactly_unchanged(impl):
    """The trainer's NaN guard: from a non-finite step on, the rate is a device 0 and nothing may move."""
    model = make_model()
    optimizer = optim_.make_adamw(optim_.parameter_groups(model.named_parameters(), 0.1), impl=impl, lr=1e-2,
                                  weight_decay=0.1)
    for rate in (1e-2, 1e-2, 0.0, 0.0):  # moments built up first, so a zero rate must also stop the momentum
        before = [p.detach().clone() for p in model.parameters()]
        optimizer.zero_grad()
        model(torch.randn(4, 6)).sum().backward()
        for group in optimizer.param_groups:
            group["lr"] = torch.where(torch.tensor(rate > 0), rate, 0.0)
        optimizer.step()
        unchanged = all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
        assert unchanged == (rate == 0.0), rate
