"""What a CUDA run needs, checked on a CPU: every path that takes gradients through an RNN finds it in
training mode (cuDNN refuses an RNN's backward pass in eval mode), with dropout still off in the
chains. A global hook on every RNN module records each forward that runs with gradients enabled
while the module is in eval mode; the commands and endpoints below must leave that record empty.
(On a CPU the forward runs either way: the hook is what turns cuDNN's refusal into a test.)"""

from __future__ import annotations

import traceback

import pytest
import torch
from torch import nn

from textebm.model.runs import load_run

MODEL = ["embedding_dim=16", "hidden_dim=32", "latent_dim=4", "energy_hidden=16", "prior_steps=3",
         "posterior_steps=2", "batch_size=8", "max_length=30", "num_log_samples=1", "valid_batches=1",
         "log_every=1", "checkpoint_every=10", "valid_every=2"]
SENTENCES = ["the company said it expects to report a loss", "stocks fell sharply in heavy trading yesterday"]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


class RNNGuard:
    """Counts RNN forwards with gradients enabled and records those in eval mode, with where they ran."""

    def __init__(self):
        self.grad_forwards, self.violations = 0, []

    def __call__(self, module, args):
        if isinstance(module, nn.RNNBase) and torch.is_grad_enabled():
            self.grad_forwards += 1
            if not module.training:
                frames = [f for f in traceback.extract_stack(limit=20)[:-1] if "/torch/" not in f.filename]
                self.violations.append(" <- ".join(f"{f.name} ({f.filename.rsplit('/', 1)[-1]}:{f.lineno})"
                                                   for f in reversed(frames[-6:])))

    def check(self, what: str) -> None:
        assert self.grad_forwards > 0, f"{what}: no RNN forward with gradients enabled: nothing was checked"
        assert not self.violations, (f"{what}: {len(self.violations)} RNN forward(s) with gradients enabled in "
                                     f"eval mode (cuDNN refuses their backward), first at {self.violations[0]}")


@pytest.fixture
def rnn_guard():
    guard = RNNGuard()
    handle = nn.modules.module.register_module_forward_pre_hook(guard)
    try:
        yield guard
    finally:
        handle.remove()


def _sets(items):
    return [arg for item in items for arg in ("--set", item)]


@pytest.fixture
def guarded_train(corpus_folder, tmp_path, cli):
    """Train a tiny run under a fresh guard (validation every 2 steps): returns (run folder, guard)."""

    def train(*extra: str, steps: int = 3, device: str = "cpu"):
        guard = RNNGuard()
        folder = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
        handle = nn.modules.module.register_module_forward_pre_hook(guard)
        try:
            status, _, err = cli("train", "--corpus", corpus_folder, "--out", folder, "--preset", "cpu",
                                 *_sets([*MODEL, *extra]), "--max-steps", steps, "--device", device, "--threads", "1",
                                 "--no-progress", "--seed", "0")
        finally:
            handle.remove()
        assert status == 0, err
        return folder, guard

    return train


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("extra", [
    [],
    ["num_layers=2", "dropout=0.3", "energy_warm_steps=1"],  # dropout between layers: off in the chains
    ["posterior_init=encoder", "refine_steps=1"],
    ["model=vae"],
    ["precision=bf16"],
], ids=["ebm", "two-layers-dropout-warm", "encoder", "vae", "bf16"])
def test_training_and_validation_take_rnn_gradients_in_training_mode(guarded_train, extra, device):
    _, guard = guarded_train(*extra, device=device)
    guard.check("train + validate")


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture
def two_layer_run(guarded_train, device):
    """A tiny run whose decoder has two layers with dropout between them, trained on `device`."""
    return guarded_train("num_layers=2", "dropout=0.3", steps=2, device=device)[0]


def test_evaluate_takes_rnn_gradients_in_training_mode(two_layer_run, corpus_folder, cli, rnn_guard, device):
    status, _, err = cli("evaluate", "--checkpoint", two_layer_run, "--data-dir", corpus_folder.parent,
                         "--max-sentences", "4", "--num-chains", "2", "--num-is-samples", "4",
                         "--partition-samples", "50", "--ais-chains", "10", "--ais-steps", "5", "--fppl-samples", "0",
                         "--no-progress", "--device", device, "--threads", "1", "--json")
    assert status == 0, err
    rnn_guard.check("evaluate")


@pytest.mark.parametrize("command", ["score", "reconstruct", "interpolate"])
def test_latent_commands_take_rnn_gradients_in_training_mode(command, two_layer_run, tmp_path, cli, rnn_guard,
                                                            device):
    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    extra = {"score": ["--num-chains", "2", lines], "reconstruct": ["--input", lines],
             "interpolate": ["--from", SENTENCES[0], "--to", SENTENCES[1], "--points", "3"]}[command]
    status, _, err = cli(command, "--checkpoint", two_layer_run, "--device", device, "--threads", "1", *extra)
    assert status == 0, err
    rnn_guard.check(command)


def test_server_latent_endpoints_take_rnn_gradients_in_training_mode(two_layer_run, rnn_guard, device):
    from fastapi.testclient import TestClient

    from server.app import create_app

    with TestClient(create_app(two_layer_run, max_n=4, max_length=30, device=device)) as client:
        for path, body in (("/reconstruct", {"sentences": SENTENCES, "seed": 1}),
                           ("/interpolate", {"from": SENTENCES[0], "to": SENTENCES[1], "points": 3, "seed": 1}),
                           ("/score", {"sentences": SENTENCES, "num_chains": 2, "seed": 1})):
            response = client.post(path, json=body)
            assert response.status_code == 200, (path, response.text)
    rnn_guard.check("/reconstruct, /interpolate, /score")


def test_chains_see_no_dropout_and_updates_do(two_layer_run, device):
    """The decoder's RNN stays in training mode in eval, yet its dropout between layers is off there:
    a chain's log-likelihood with gradients enabled is deterministic and equals the no-grad one."""
    model = load_run(two_layer_run, device).model
    decoder = model.decoder
    assert decoder.rnn.num_layers == 2 and decoder.layer_dropout == pytest.approx(0.3)
    tokens = torch.tensor([[model.bos_id, 5, 6, 7, model.eos_id]], device=device)
    z = torch.randn(1, model.prior.latent_dim, generator=torch.Generator().manual_seed(0)).to(device)
    model.eval()
    assert decoder.rnn.training and decoder.rnn.dropout == 0.0
    with torch.no_grad():
        exact = decoder(z, tokens)
    with torch.enable_grad():
        first, second = decoder(z.requires_grad_(True), tokens), decoder(z, tokens)
        (grad,) = torch.autograd.grad(first.sum(), z)  # cuDNN: a backward pass in eval mode
    assert torch.allclose(first.detach(), exact, rtol=1e-5) and torch.equal(first.detach(), second.detach())
    assert torch.isfinite(grad).all()
    model.train()
    assert decoder.rnn.training and decoder.rnn.dropout == pytest.approx(0.3)
    torch.manual_seed(1)
    dropped = [decoder(z, tokens).detach() for _ in range(3)]
    assert any(not torch.equal(d, exact) for d in dropped)  # dropout is on for the updates


def _learner(overrides, device, vocab_size=50):
    from textebm.config import resolve_config
    from textebm.data.vocab import WordVocab
    from textebm.model.runs import build_model
    from textebm.training.learner import make_learner

    cfg = resolve_config("cpu", "ptb", [*MODEL, *overrides])
    vocab = WordVocab.build([" ".join(f"w{i}" for i in range(vocab_size))])
    torch.manual_seed(0)
    model = build_model(cfg, vocab).to(device)
    tokens = torch.randint(4, len(vocab), (cfg.batch_size, 9), generator=torch.Generator().manual_seed(1))
    tokens[:, 0], tokens[:, -1] = vocab.bos_id, vocab.eos_id
    return make_learner(model, cfg, device), tokens.to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_training_runs_the_rnn_in_fp32_and_the_projection_and_energy_in_bf16(device):
    """precision=bf16: autocast is off at the RNN (cuDNN's autocast would run it in fp16), its outputs
    fp32; the vocabulary projection and the energy's MLP compute in bf16; the step's figures are finite;
    and the weights get their gradients: autocast caches no casts (before torch 2.10 a cast cached in a
    chain's no_grad lost the energy's gradient; the suite on torch 2.4.1 saw it)."""
    learner, tokens = _learner(["precision=bf16"], device)
    model, seen = learner.model, {}

    def record(name):
        def hook(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            seen.setdefault(name, set()).add((out.dtype, torch.is_autocast_enabled(out.device.type)))
            seen.setdefault("cache", set()).add(torch.is_autocast_cache_enabled())
        return hook

    class Projections(torch.overrides.TorchFunctionMode):  # the projection is F.linear on the out layer's weight
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is torch.nn.functional.linear and args[1].data_ptr() == model.decoder.out.weight.data_ptr():
                seen.setdefault("projection", set()).add((out.dtype, torch.is_autocast_enabled(out.device.type)))
            return out

    modules = {"rnn": model.decoder.rnn, "energy": model.prior.f[0]}
    handles = [module.register_forward_hook(record(name)) for name, module in modules.items()]
    try:
        with Projections():
            metrics = learner.step(tokens)
    finally:
        for handle in handles:
            handle.remove()
    assert seen["rnn"] == {(torch.float32, False)}
    assert seen["projection"] == {(torch.bfloat16, True)}
    assert seen["energy"] == {(torch.bfloat16, True)} and seen["cache"] == {False}
    assert all(torch.isfinite(torch.tensor(float(value))) for value in metrics.values())
    # The weights (f's last bias has gradient n - n = 0: as many codes of each sign).
    learned = [model.decoder.out.weight, *(p for p in model.prior.parameters() if p.dim() > 1)]
    assert all(weight.grad is not None and weight.grad.abs().sum() > 0 for weight in learned)


@pytest.fixture
def fp32_settings():
    """PyTorch's TF32 switches as they were, restored after the test."""
    matmul, cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    yield
    torch.set_float32_matmul_precision(matmul)
    torch.backends.cudnn.allow_tf32 = cudnn


def test_tf32_is_on_by_default_on_cuda_off_by_flag_and_untouched_on_cpu(fp32_settings, monkeypatch):
    import argparse

    from textebm.devices import add_device_argument, resolve_device, set_tf32, tf32_enabled

    parser = argparse.ArgumentParser()
    add_device_argument(parser)
    assert parser.parse_args([]).tf32 is True and parser.parse_args(["--no-tf32"]).tf32 is False
    set_tf32(False)
    assert resolve_device("cpu").type == "cpu" and not tf32_enabled()  # a CPU run changes nothing
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # resolve as on a CUDA host
    assert resolve_device("cuda").type == "cuda" and tf32_enabled()
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    resolve_device("auto", tf32=False)
    assert not tf32_enabled() and not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


class HostReads(torch.overrides.TorchFunctionMode):
    """Counts reads of a tensor's value into Python (.item(), .tolist(), bool(), float(), int()): on a GPU
    each waits for the device. Adam's step counters, CPU tensors by design, are left out."""

    READS = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__"}

    def __init__(self, ignored: set[int]):
        super().__init__()
        self.ignored, self.reads = ignored, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.READS and args and id(args[0]) not in self.ignored:
            frames = [f for f in traceback.extract_stack(limit=8)[:-1] if "/torch/" not in f.filename]
            self.reads.append(f"{name} at {frames[-1].name}:{frames[-1].lineno}" if frames else name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("extra, syncs", [([], 1), (["posterior_init=encoder", "refine_steps=1"], 1),
                                          (["energy_warm_steps=1"], 2), (["model=vae"], 1), (["prior=none"], 1)],
                         ids=["ebm", "encoder", "warm", "vae", "lm"])
def test_a_training_step_reads_the_device_once(extra, syncs, device):
    """Chains, losses and gradient norms are checked and read together: one host sync per step (two when
    the warm chain must read the updated decoder)."""
    learner, tokens = _learner(extra, device)
    learner.step(tokens)  # Adam's state exists from here on
    steps = {id(state["step"]) for opt in learner.optimizers.values() for state in opt.state.values()}
    with HostReads(steps) as mode:
        metrics = learner.step(tokens)
    assert len(mode.reads) == syncs, mode.reads
    assert metrics["gen_grad_norm"] > 0 and isinstance(metrics["nll_sum"], float)


def _three_steps(learner, tokens) -> list[dict]:
    return [learner.step(tokens[:, : tokens.shape[1] - i].contiguous()) for i in (0, 2, 0)]  # two shapes


@pytest.mark.slow
def test_compile_true_trains_three_steps_like_eager_without_graph_breaks(monkeypatch):
    """compile=true on a CPU, through dynamo and AOT autograd (the `aot_eager` backend: inductor's C++
    code generation takes minutes on a 2-core CPU; the GPU acceptance script runs inductor): both
    functions compile, for two sentence lengths, with no graph break, and give eager's figures."""
    import functools

    import torch._dynamo
    from torch._dynamo.utils import counters

    import textebm.training.compiling

    eager = _three_steps(*_learner([], "cpu"))
    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setattr(textebm.training.compiling.torch, "compile",
                        functools.partial(torch.compile, backend="aot_eager"))
    learner, tokens = _learner(["compile=true"], "cpu")
    compiled = _three_steps(learner, tokens)
    assert learner.model.decoder.project.is_compiled and learner.model.prior.gradient_pass.is_compiled
    assert not counters["graph_break"] and counters["frames"]["ok"] >= 2
    for a, b in zip(eager, compiled):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key


def test_compile_true_falls_back_to_eager_when_compiling_fails(monkeypatch):
    import textebm.training.compiling

    def cannot_compile(fn, **kwargs):
        def fail(*args):
            raise torch._dynamo.exc.TorchDynamoException("no C++ compiler found")
        return fail

    eager = _three_steps(*_learner([], "cpu"))
    monkeypatch.setattr(textebm.training.compiling.torch, "compile", cannot_compile)
    learner, tokens = _learner(["compile=true"], "cpu")
    with pytest.warns(RuntimeWarning, match=r"runs eagerly: torch.compile failed \(no C\+\+ compiler") as seen:
        fallen_back = _three_steps(learner, tokens)
    assert len(seen) == 2  # once per function, not once per call
    assert not learner.model.decoder.project.is_compiled and not learner.model.prior.gradient_pass.is_compiled
    assert fallen_back == eager
