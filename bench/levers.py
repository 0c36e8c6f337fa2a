"""What each speed setting buys a training step on one device: `Learner.step` in full fp32 against
itself with TF32, with `precision=bf16` (autocast: the projection and the energy in bf16, the RNN
fp32), with `chain_precision=bf16` (the posterior chain's projection only) and with `compile=true`;
the latent step against the plain LM step (prior=none); and the peak GPU memory of a step with each
(above the resident weights and optimizer states).

On CUDA at the paper's `ptb` preset (LSTM 512/1024, batch 64 x 24 tokens, K1=20, K0=60); on a CPU
at the `cpu` preset, where the TF32, compile and memory rows say that they are for CUDA (a CPU has
no TF32; inductor's C++ compile of the step takes minutes on a small CPU). Every contender starts
from the same weights; they run interleaved (bench/__init__.py), every timing waiting for the GPU.
The settings other than fp32 run with TF32 on, as the commands run on CUDA by default.
"""

from __future__ import annotations

import torch

from bench import Row, interleave, median
from bench.step_profile import batches_on, fed, learner, spec_for
from textebm.devices import set_tf32

# name -> (config overrides, TF32, CUDA only)
SETTINGS = {
    "fp32": ([], False, False),
    "TF32": ([], True, True),
    "precision=bf16": (["precision=bf16"], True, False),
    "chain_precision=bf16": (["chain_precision=bf16"], True, False),
    "compile=true": (["compile=true"], True, True),
    "LM step": (["prior=none"], True, False),
}


def with_tf32(step, enabled: bool, device: torch.device):
    """`step` with TF32 switched as the setting says (a switch of the whole process: set at every call)."""
    def run(tokens):
        if device.type == "cuda":
            set_tf32(enabled)
        return step(tokens)
    return run


def peak_mib(step, batch: torch.Tensor, device: torch.device) -> float:
    """The most GPU memory one call of `step` holds at once beyond what was allocated before it (the
    contenders' weights and Adam states, resident throughout), in MiB: activations and workspaces."""
    torch.cuda.synchronize(device)
    resident = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step(batch)
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - resident) / 2**20


def run(quick: bool, repeats: int, overrides: list[str] = (), device: str = "cpu") -> list[Row]:
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    spec = spec_for(quick, device)
    batches = batches_on(spec, device)
    chosen = {name: value for name, value in SETTINGS.items() if on_cuda or not value[2]}
    # every setting on the fp32 chain but chain_precision=bf16's (the cpu preset's own is auto)
    learners = {name: learner(spec, [*overrides, "chain_precision=fp32", *extra], device)
                for name, (extra, _, _) in chosen.items()}
    steps = {name: with_tf32(learners[name].step, chosen[name][1], device) for name in chosen}
    compile_failure = None
    if "compile=true" in steps:  # compiled now, forward and backward, alone: a failure loses its row, not all
        try:
            steps["compile=true"](batches[0])
        except Exception as err:  # noqa: BLE001 - reported in its row; the other settings are still measured
            compile_failure = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200] if str(err) else ''}"
            del steps["compile=true"], learners["compile=true"]
    seconds = interleave({name: fed(step, batches) for name, step in steps.items()}, repeats,
                         0 if quick else 1, device)  # the warm-up round compiles (compile=true)
    ms = {name: 1000 * median(values) for name, values in seconds.items()}
    memory = {name: peak_mib(step, batches[0], device) for name, step in steps.items()} if on_cuda else {}
    if on_cuda:
        set_tf32(True)

    settings = f" --set {' '.join(overrides)}" if overrides else ""
    shape = f"batch {spec['batch']} x {spec['words'] + 1} tokens, {spec['preset']} preset on {device.type}{settings}"
    fp32, rows = ms["fp32"], []
    for name in SETTINGS:
        if name == "fp32":
            continue
        if name == "compile=true" and compile_failure:
            rows.append(Row("levers", f"Learner.step with {name} over fp32, {shape}", "ms",
                            note=f"FAILED to compile or run: {compile_failure}"))
            continue
        if name not in ms:
            rows.append(Row("levers", f"Learner.step with {name} over fp32, {shape}", "ms",
                            note="CUDA only: run with --device cuda" + (" (a CPU has no TF32)" if name == "TF32" else
                                                                       " (inductor's CPU compile takes minutes)")))
            continue
        if name == "LM step":
            latent = ms["TF32"] if "TF32" in ms else fp32
            rows.append(Row("levers", f"latent step over the LM step (prior=none), {shape}", "ms", ms[name], latent,
                            latent / ms[name], "cost factor",
                            note=f"both {'with TF32' if on_cuda else 'fp32'}: LM step {ms[name]:.1f} ms, "
                                 f"latent step {latent:.1f} ms"))
            continue
        baseline = "fp32 (TF32 off)" if on_cuda else "fp32"
        if name == "compile=true":  # compiled, or fallen back to eager (textebm/training/compiling.py)?
            model = learners[name].model
            baseline = (("compiled" if model.decoder.project.is_compiled else "FELL BACK TO EAGER (see the warning)")
                        + "; " + baseline)
        rows.append(Row("levers", f"Learner.step with {name} over fp32, {shape}", "ms", fp32, ms[name],
                        fp32 / ms[name], "speed-up", note=f"{baseline} {fp32:.1f} ms -> {ms[name]:.1f} ms",
                        samples={"fp32": seconds["fp32"], name: seconds[name]}))
    for name in SETTINGS:
        if not on_cuda:
            rows.append(Row("levers", f"peak memory of a step with each setting, {shape}", "MiB",
                            note="CUDA only: run with --device cuda"))
            break
        if name not in memory:  # compile=true that failed
            continue
        rows.append(Row("levers", f"peak memory of a step with {name}, {shape}", "MiB", memory["fp32"],
                        memory[name], memory[name] / memory["fp32"], "cost factor",
                        note=f"torch.cuda.max_memory_allocated over one step, above the resident weights and "
                             f"optimizer states: {memory[name]:,.0f} MiB"))
    return rows
