"""``distillkit.utils.seeded``: the same draws under a seed, and the caller's stream left where it was."""

import torch

from distillkit.utils import seeded


def test_seeded_repeats_draws_and_restores_the_callers_stream():
    torch.manual_seed(123)
    expected_after = torch.rand(3)
    torch.manual_seed(123)
    with seeded(7):
        first = torch.rand(4)
    assert torch.equal(torch.rand(3), expected_after), "seeded() moved the caller's RNG stream"
    torch.manual_seed(999)  # a different outer state must not change what the seeded body draws
    with seeded(7):
        again = torch.rand(4)
    assert torch.equal(first, again)
    with seeded(8):
        assert not torch.equal(torch.rand(4), first)


def test_seeded_none_draws_from_the_callers_stream():
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    with seeded(None):
        assert torch.equal(torch.rand(2), expected)
