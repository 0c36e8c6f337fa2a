"""Which device and how many CPU threads: the `--device`/`--threads` options and their resolution,
shared by the CLI's subcommands and the server's launcher."""

from __future__ import annotations

from textebm.errors import UserError


def add_device_argument(parser, threads: int | None = None) -> None:
    """--device and --threads; `threads` is the command's own default thread count (None: torch's choice)."""
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    default = str(threads) if threads else "torch's choice"
    parser.add_argument("--threads", type=int, default=threads, help=f"CPU threads for torch (default: {default})")


PRECISIONS = ("fp32", "bf16", "int8")  # of decoding's matrix products (textebm/precision.py)


def add_precision_argument(parser) -> None:
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="precision of the decoder's matrix products when generating: fp32 (exact), bf16, "
                             "or int8 (dynamic quantization, CPU only); chains and likelihoods stay fp32")


def resolve_device(name: str, threads: int | None = None):
    import torch

    if threads is not None:
        if threads < 1:
            raise UserError(f"--threads must be at least 1, not {threads}")
        torch.set_num_threads(threads)

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (use auto, cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but no CUDA GPU is available (use --device cpu or auto)")
    return device
