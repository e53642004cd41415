"""The contract suite fails on the defects it exists to catch (tests/contract/broken_losses.py), and passes
the correct version of the same loss. A contract that passed everything would prove nothing."""

import pytest

from distillkit.testing.contract import LossContract

from tests.contract.broken_losses import PLUGINS


def _check(request, tmp_path, loss: str, method: str, **settings):
    cls = type("C", (LossContract,), {"loss": loss, "extra_plugins": PLUGINS, "student_input": "noise",
                                       **settings})
    contract = cls()
    engine = contract._build(request, tmp_path, contract._recipe)
    getattr(contract, method)(engine)


def test_missing_stop_gradient_on_the_teacher_fails(request, tmp_path):
    with pytest.raises(AssertionError, match=r"through \['teacher'\].*does not declare"):
        _check(request, tmp_path, "broken.no_stop_gradient", "test_generator_phase_follows_its_declared_gradient_paths")


def test_no_grad_shortcut_of_a_declared_path_fails(request, tmp_path):
    with pytest.raises(AssertionError, match=r"declares it differentiates through \['teacher'\].*never"):
        _check(request, tmp_path, "broken.no_grad_shortcut", "test_generator_phase_follows_its_declared_gradient_paths")


def test_the_correct_path_through_the_teacher_passes(request, tmp_path):
    _check(request, tmp_path, "broken.through_teacher", "test_generator_phase_follows_its_declared_gradient_paths")


@pytest.mark.parametrize("layout", [{}, {"lora": {"rank": 2}}], ids=["copy", "adapter"])
def test_critic_loss_running_the_student_with_gradient_fails(request, tmp_path, layout):
    with pytest.raises(AssertionError, match=r"critic loss back-propagates into \['student'\]"):
        _check(request, tmp_path, "broken.student_gradient_in_critic", "test_critic_phase_reaches_only_its_critics",
               critic_params=layout)
