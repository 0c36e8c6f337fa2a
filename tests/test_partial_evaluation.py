"""An evaluation's saved stages: kept for the same key only, the generator restored, nothing that runs code."""

import torch

from textebm.evaluation.partial_evaluation import PartialEvaluation, parts_from_data, parts_to_data
from textebm.inference.likelihood import ISResult


def _part(b: int = 3) -> ISResult:
    return ISResult(torch.randn(b), torch.rand(b), torch.randn(b, 4), torch.randn(b, 2), torch.rand(b, 2), 1,
                    torch.randn(b, 4))


def test_stages_come_back_for_the_same_key_with_the_generator_where_it_was(tmp_path):
    path, key = tmp_path / "evaluation-test.partial.pt", {"options": {"seed": 0}, "step": 7}
    generator = torch.Generator().manual_seed(3)
    saved = PartialEvaluation(path, key)
    assert not saved.restore(generator) and saved.stages == {}
    parts = [_part(), _part(2)]
    torch.rand(5, generator=generator)
    saved.save("importance_sampling", parts_to_data(parts), generator)
    expected_next = torch.rand(4, generator=generator)

    again, fresh = PartialEvaluation(path, key), torch.Generator().manual_seed(99)
    assert again.restore(fresh) and torch.equal(torch.rand(4, generator=fresh), expected_next)
    back = parts_from_data(again.stages["importance_sampling"], "cpu")
    assert [torch.equal(a.log_w, b.log_w) and a.num_chains == b.num_chains for a, b in zip(parts, back)] == [True] * 2
    assert again.summary() == "2 chunk(s) of importance sampling"


def test_another_key_or_a_damaged_file_starts_afresh(tmp_path):
    path = tmp_path / "evaluation-test.partial.pt"
    generator = torch.Generator().manual_seed(0)
    PartialEvaluation(path, {"step": 7}).save("log_z", {"partition": {"log_z": -3.5}}, generator)
    same = PartialEvaluation(path, {"step": 7})
    assert same.stages["log_z"] == {"partition": {"log_z": -3.5}} and same.discarded is None
    other = PartialEvaluation(path, {"step": 8})  # another checkpoint step: nothing reused, and why is said
    assert other.stages == {} and "other options, other weights" in other.discarded
    path.write_bytes(b"not a torch file")
    damaged = PartialEvaluation(path, {"step": 7})
    assert damaged.stages == {} and damaged.discarded.startswith("it is unreadable (")
    assert PartialEvaluation(tmp_path / "none.pt", {"step": 7}).discarded is None


def test_without_a_path_stages_stay_in_memory():
    partial = PartialEvaluation(None, {"step": 7})
    partial.save("log_z", {"partition": {}}, torch.Generator())  # an evaluation that is not to resume
    assert partial.path is None and "log_z" in partial.stages and "generator" in partial.stages
