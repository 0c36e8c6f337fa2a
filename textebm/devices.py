"""Which device and how many CPU threads: the `--device`/`--threads` options and their resolution,
shared by the CLI's subcommands and the server's launcher."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from textebm.errors import UserError

if TYPE_CHECKING:
    import torch


def add_device_argument(parser, threads: int | None = None) -> None:
    """--device, --threads and --tf32; `threads` is the command's own default thread count (None: torch's choice)."""
    import argparse

    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    default = str(threads) if threads else "torch's choice"
    parser.add_argument("--threads", type=int, default=threads, help=f"CPU threads for torch (default: {default})")
    parser.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                        help="CUDA: fp32 matrix products and cuDNN's RNN on TF32 tensor cores (default on; "
                             "--no-tf32 for full fp32); no effect on a CPU")


PRECISIONS = ("fp32", "bf16", "int8")  # of decoding's matrix products (textebm/generation/precision.py)


def add_precision_argument(parser) -> None:
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="precision of the decoder's matrix products when generating: fp32 (exact), bf16, "
                             "or int8 (dynamic quantization, CPU only); chains and likelihoods stay fp32")


def set_tf32(enabled: bool) -> None:
    """TF32 (a 10-bit mantissa on tensor cores, fp32 range) for fp32 matrix products and cuDNN's RNN and
    convolutions, or full fp32 for both. TF32 is a CUDA setting: CPU products are untouched. (PyTorch's
    older switches, set together: its newer per-backend ones must not be mixed with them, and parts of
    PyTorch still read the older ones.)"""
    import torch

    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cudnn.allow_tf32 = enabled


def tf32_enabled() -> bool:
    import torch

    return torch.get_float32_matmul_precision() != "highest" and torch.backends.cudnn.allow_tf32


def resolve_device(name: str, threads: int | None = None, tf32: bool = True):
    """The torch device `name` stands for; on CUDA, TF32 on or off as `tf32` says (`set_tf32`)."""
    import torch

    if threads is not None:
        if threads < 1:
            raise UserError(f"--threads must be at least 1, not {threads}")
        torch.set_num_threads(threads)

    device = parse_device(name)
    if device.type == "cuda":
        set_tf32(tf32)
    return device


def parse_device(name) -> torch.device:
    """The torch device `name` (a string, or a torch.device) stands for, where this machine has it: auto is
    CUDA when present; a UserError for a name torch does not know, or a GPU the machine lacks. No setting
    changes (`resolve_device` is the command line's, with threads and TF32)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {name!r} (use auto, cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} was asked for, but no CUDA GPU is available (use cpu or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"device {name!r} was asked for, but this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def decoding_precision_warning(precision: str, device) -> str | None:
    """What to say of `--precision bf16` on a CPU that emulates bf16: decoding runs about 5x slower than fp32
    there (docs/sampling.md), the opposite of what the option is for."""
    if precision == "bf16" and bf16_emulated(device):
        return ("--precision bf16 on a CPU without AVX-512: bf16 is emulated there and decoding runs several times "
                "slower than fp32 (int8 is the faster choice on this CPU)")
    return None


def bf16_emulated(device) -> bool:
    """Whether bf16 products on `device` run without bf16 hardware: a CPU whose vector unit torch reports
    below AVX-512 (AVX2 and older) emulates them, about 8 times slower than fp32 (docs/benchmarks.md)."""
    import torch

    return device.type == "cpu" and "AVX512" not in torch.backends.cpu.get_cpu_capability()


def bf16_native(device) -> bool:
    """Whether `device` multiplies bf16 in hardware: a CUDA GPU that supports it (Ampere and later), or a
    CPU that /proc/cpuinfo says has AVX-512 BF16 or AMX (no /proc/cpuinfo: assumed not). What
    `chain_precision=auto` asks: bf16 pays only there (1.52x on the cpu preset's step with AVX-512 BF16,
    docs/benchmarks.md), and costs where it is emulated (AVX2: about 8 times slower than fp32)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and _cpu_has_bf16()


@functools.cache
def _cpu_has_bf16() -> bool:
    """Read once: the chains ask at every step."""
    return cpu_description()["bf16"]


def resolve_chain_precision(chain_precision: str, device) -> str:
    """The chain projection's precision on `device`: `auto` is bf16 where it is native (`bf16_native`),
    fp32 elsewhere; fp32 and bf16 are themselves."""
    if chain_precision != "auto":
        return chain_precision
    return "bf16" if bf16_native(device) else "fp32"


def cpu_description() -> dict:
    """The CPU that ran a measurement, from /proc/cpuinfo (empty where there is none): its model name, and
    the vector units that decide a step's speed. CPU-time budgets give equal work only on equal units:
    the same grid ran at AVX2 on one day and on AVX-512 with AMX on another."""
    import os
    from pathlib import Path

    name, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not name:
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    return {"cpu": name or None, "cores": os.cpu_count(), "vector": vector,
            "bf16": "avx512_bf16" in flags or "amx_bf16" in flags, "amx": "amx_tile" in flags}
