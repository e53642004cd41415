"""The shared contracts under SiD's own losses: the fake score in both layouts (a full copy, an adapter on the
shared base) trained by ``sid.sid``, the conv head trained by ``sid.gan_head``, and ``sid.sid`` itself with
every role an adapter on one base (student and fake score), few-step. (``tests/contract`` checks each SiD loss
once more with the default settings, on SD1.5 and SDXL.)"""

from distillkit.testing.contract import CriticContract, LossContract

NOISE = {"first_input": "sigma_noise"}


class TestFakeScoreCopyTrainedBySiD(CriticContract):
    critic = "core.fake_score"
    loss = "sid.sid"
    student_input = "noise"
    student = NOISE


class TestFakeScoreAdapterTrainedBySiD(CriticContract):
    critic = "core.fake_score"
    params = {"lora": {"rank": 2}}
    loss = "sid.sid"
    student_input = "noise"
    student = NOISE


class TestGANHeadTrainedBySiDA(CriticContract):
    critic = "core.gan_head"
    params = {"num_convs": 1}
    loss = "sid.gan_head"
    loss_params = {"weighting": "none"}
    companions = {"fake_score": {"name": "core.fake_score", "params": {"lora": {"rank": 2}}}}
    student_input = "noise"
    student = NOISE


class TestSiDWithEveryRoleAnAdapterOnOneBase(LossContract):
    """Two student timesteps (the few-step path), a LoRA student and a LoRA fake score on the teacher's UNet:
    the teacher must still be called with no adapter active, and its weights must not move."""

    loss = "sid.sid"
    student_input = "noise"
    student = {**NOISE, "lora": {"rank": 2}}
    critic_params = {"lora": {"rank": 2}}
