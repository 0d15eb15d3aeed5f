"""The model's kernels and the training loop on every device this machine has: the CPU always, a GPU when there is one.

On CI these run on the CPU; `benchmarks/gpu_check.sh` runs them on a lent GPU (CS336_TEST_DEVICE=cuda), where the
automatic chunking policy is the CUDA one and a wrong kernel, a stray host read or a dtype slip would show.
References are torch's own: F.scaled_dot_product_attention and F.cross_entropy.
"""

import json
import os

import pytest
import torch
import torch.nn.functional as F

from cs336_nn import ModelConfig, TransformerLM, causal_attention, cross_entropy
from cs336_train import train
from tests.train_helpers import make_token_files, tiny_config


def _devices() -> list[str]:
    devices = ["cpu"]
    requested = os.environ.get("CS336_TEST_DEVICE", "cuda")
    if requested.startswith("cuda") and torch.cuda.is_available():
        devices.append(requested)
    return devices


DEVICES = _devices()


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.mark.parametrize("shape", [(2, 4, 64, 16), (3, 2, 200, 32), (1, 16, 256, 32)])
def test_attention_matches_torch_sdpa_forward_and_backward(device, shape):
    generator = torch.Generator().manual_seed(sum(shape))
    q, k, v = (torch.randn(*shape, generator=generator).to(device).requires_grad_() for _ in range(3))
    reference_q, reference_k, reference_v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = causal_attention(q, k, v)
    reference = F.scaled_dot_product_attention(reference_q, reference_k, reference_v, is_causal=True)
    torch.testing.assert_close(out, reference, atol=2e-5, rtol=1e-4)
    upstream = torch.randn(out.shape, generator=generator).to(device)
    out.backward(upstream)
    reference.backward(upstream)
    for ours, theirs in ((q, reference_q), (k, reference_k), (v, reference_v)):
        torch.testing.assert_close(ours.grad, theirs.grad, atol=5e-5, rtol=1e-4)


def test_cross_entropy_matches_torch_forward_and_backward(device):
    generator = torch.Generator().manual_seed(0)
    logits = (5 * torch.randn(4, 100, 1000, generator=generator)).to(device).requires_grad_()
    targets = torch.randint(0, 1000, (4, 100), generator=generator).to(device)
    reference_logits = logits.detach().clone().requires_grad_()
    loss = cross_entropy(logits, targets)
    reference = F.cross_entropy(reference_logits.view(-1, 1000), targets.view(-1))
    torch.testing.assert_close(loss, reference, atol=1e-5, rtol=1e-5)
    loss.backward()
    reference.backward()
    torch.testing.assert_close(logits.grad, reference_logits.grad, atol=1e-7, rtol=1e-5)


def test_model_forward_backward_under_bf16_autocast_stays_finite_and_float32(device):
    config = ModelConfig(vocab_size=500, context_length=64, d_model=64, num_layers=2, num_heads=4)
    torch.manual_seed(0)
    model = TransformerLM(config, device=device)
    tokens = torch.randint(0, 500, (4, 65), device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        logits = model(tokens[:, :-1])
    loss = cross_entropy(logits.float(), tokens[:, 1:])
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for p in model.parameters())


def test_training_on_the_device_learns_and_logs(tmp_path, device):
    files = make_token_files(tmp_path / "data")
    config = tiny_config(files, device=str(device), steps=30, log_interval=10, precision="bf16")
    result = train(config, tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [record["loss"] for record in records if record["kind"] == "train"]
    assert result.steps == 30 and losses[-1] < losses[0]
