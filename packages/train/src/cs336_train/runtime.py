"""Where and how the model runs: device choice, precision, compilation, seeds and the hardware's matrix-product
peak."""

import contextlib
import logging
import os
import random
import time

import numpy as np
import torch

from cs336_train.errors import ConfigError


def resolve_device(requested: str, local_rank: int = 0, setting: str = "run.device") -> torch.device:
    """"auto" picks cuda, then mps, then cpu; an explicit device that is not available is an error, which names
    the `setting` the device came from (the config's run.device, or a command's --device)."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ConfigError(f"{setting} = {requested!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{setting} = {requested!r} but CUDA is not available here; use {setting}=auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{setting} = {requested!r} but MPS is not available here; use {setting}=auto or cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def configure_backends(device: torch.device, num_threads: int, deterministic: bool = False) -> None:
    """TF32 matrix products on CUDA (float32 storage, ~10-bit mantissa products: much faster, same training), and
    only there: on MPS the handout found TF32 kernels that silently break training (§7.2, low-resource tip).

    `deterministic`: the same run gives the same numbers bit for bit on any number of threads. With several
    threads some kernels add up partial results in whatever order the threads finish; their deterministic
    versions fix the order, at some cost in speed (train README, "Exactness").
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for repeatable results
    torch.use_deterministic_algorithms(deterministic)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.cuda.set_device(device)
    if num_threads:
        torch.set_num_threads(num_threads)


def compile_plan(requested: bool, device: torch.device) -> tuple[str | None, str | None]:
    """The torch.compile backend to use on `device` (None: do not compile), and the one line to say about it.

    mps: "aot_eager", as the handout advises (§7.2, low-resource tip): Inductor, the default backend, does not
    support mps, but ahead-of-time autograd still streamlines the backward pass.
    cpu: Inductor, with a warning. Compiling takes minutes there, which pays off only in long runs; a config that
    compiles was usually written for a GPU.
    """
    if not requested:
        return None, None
    if device.type == "mps":
        return "aot_eager", ("run.compile on mps uses torch.compile's aot_eager backend: Inductor, the default, "
                             "does not support mps (handout §7.2)")
    if device.type == "cpu":
        return "inductor", ("compiling the model for the CPU (run.compile = true): this takes minutes before the "
                            "first step and pays off only in long runs, and the configuration was probably written "
                            "for a GPU; set run.compile=false to skip it")
    return "inductor", None


def compile_model(model: torch.nn.Module, backend: str = "inductor") -> torch.nn.Module:
    """torch.compile(model), without torch's misleading "No CUDA runtime is found" warning on a CPU-only run.

    Compiling for the CPU imports torch.utils.cpp_extension, which warns at import when it finds a CUDA toolkit
    (nvcc, CUDA_HOME) but no GPU. It compiles no CUDA code here, so the warning only confuses. Compilation
    happens at the first forward pass, so the filter stays on the logger.
    """
    logging.getLogger("torch.utils.cpp_extension").addFilter(_no_cuda_runtime_warning)
    return torch.compile(model, backend=backend)


def _no_cuda_runtime_warning(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("No CUDA runtime is found")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16: matrix products in bfloat16 (weights, norms and the loss stay float32); fp32: nothing changes."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_states() -> dict:
    """Every global random state we use, in a form `torch.load(weights_only=True)` accepts."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()  # plain ints: no numpy objects in the file
    states = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    numpy_state = dict(states["numpy"], state=dict(states["numpy"]["state"]))
    numpy_state["state"]["key"] = np.array(numpy_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(numpy_state)
    random.setstate(_as_tuples(states["python"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _as_tuples(value):
    # random.setstate wants nested tuples; a saved state may come back with lists.
    return tuple(_as_tuples(item) for item in value) if isinstance(value, list | tuple) else value


def measure_matmul_peak(device: torch.device, precision: str, size: int = 2048, repeats: int = 3) -> float:
    """FLOP/s of a large square matrix product: the hardware's practical peak, the denominator of MFU."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype, generator=None)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up (kernel selection, caches)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def synchronize(device: torch.device) -> None:
    """Wait until the device has finished the work queued on it (on a CPU there is nothing to wait for)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
