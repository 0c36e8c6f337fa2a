"""An evaluation's finished stages on disk, so that an interrupted `textebm evaluate` resumes where it
stopped instead of starting over (an evaluation at 80 temperatures is an hour of CPU per PTB run).

RUN/evaluation-<split>.partial.pt holds what is done, written atomically after each stage and each
chunk of sentences: log Z and the prior chain's bias, the importance-sampling chunks, the
half-schedule chunks, and the random generator's state after the last of them. Everything the
evaluation draws comes from that one generator in a fixed order, so restoring its state and skipping
the finished work gives the numbers an uninterrupted run gives. The file is kept only for the same
options, checkpoint step and evaluator version (`key`); any other evaluation starts afresh and
replaces it, and a finished evaluation removes it. Loaded with `weights_only=True`: tensors and
plain data only, nothing that runs code.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import torch

from textebm.io import atomic_write_bytes


def partial_path(folder: Path, split: str) -> Path:
    return Path(folder) / f"evaluation-{split}.partial.pt"


class PartialEvaluation:
    """The stages finished so far (`stages`: name -> plain data and tensors) for one `key`; with
    `path` None, nothing is read or written (an evaluation that is not to resume). `discarded` says why
    a saved file was not resumed from (None when there was none, or it was): the evaluation starts afresh
    and its first save replaces the file, so the caller tells the user."""

    def __init__(self, path: Path | None, key: dict):
        self.path, self.key = None if path is None else Path(path), json.dumps(key, sort_keys=True, default=str)
        self.stages: dict = {}
        self.discarded: str | None = None
        if self.path is not None and self.path.is_file():
            try:
                saved = torch.load(self.path, map_location="cpu", weights_only=True)
            except Exception as err:  # damaged, or refused by the safe unpickler: any reason means start afresh
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                self.discarded = f"it is unreadable ({first[:200]})"
                return
            if isinstance(saved, dict) and saved.get("key") == self.key:
                self.stages = saved["stages"]
            else:
                self.discarded = ("it was made with other options, other weights, other held-out lines, on "
                                  "another device type or by another version of the evaluator")

    def restore(self, generator: torch.Generator) -> bool:
        """Put `generator` in the state it had after the last saved stage; False when nothing is saved."""
        if "generator" not in self.stages:
            return False
        generator.set_state(self.stages["generator"])
        return True

    def summary(self) -> str:
        """What is done, in words: 'log Z, 3 chunk(s) of importance sampling'."""
        names = {"log_z": "log Z", "importance_sampling": "importance sampling", "half_schedule": "half schedule",
                 "draws_check": "draws check"}
        return ", ".join(names.get(name, name) if not isinstance(value, list) else
                         f"{len(value)} chunk(s) of {names.get(name, name)}"
                         for name, value in self.stages.items() if name != "generator")

    def save(self, name: str, value, generator: torch.Generator) -> None:
        """Record stage `name` (plain data and tensors) and the generator's state after it."""
        self.stages[name] = value
        self.stages["generator"] = generator.get_state()
        if self.path is None:
            return
        buffer = io.BytesIO()
        torch.save({"key": self.key, "stages": self.stages}, buffer)
        atomic_write_bytes(self.path, buffer.getvalue())


def parts_to_data(parts) -> list[dict]:
    """`likelihood.ISResult`s as plain dicts of tensors (on the CPU), for `PartialEvaluation.save`."""
    return [{name: value.cpu() if isinstance(value, torch.Tensor) else value
             for name, value in dataclasses.asdict(part).items()} for part in parts]


def parts_from_data(data: list[dict] | None, device) -> list:
    from textebm.inference.likelihood import ISResult

    return [ISResult(**{name: value.to(device) if isinstance(value, torch.Tensor) else value
                        for name, value in part.items()}) for part in data or []]
