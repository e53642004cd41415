"""distillkit's contract suites, run on this plugin's loss and critic.

Each class inherits the contract's tests; the class attributes say how to run them cheaply (tiny
adapter rank, narrow head). The loss and the critic are found through the installed entry point, as a
user's recipe finds them, so these tests also check the packaging.
"""

from distillkit.testing import CriticContract, LossContract

CHEAP = {"rank": 2, "head_channels": 8}


class TestAnchoredGAN(LossContract):
    """Gradient paths as declared (student and, through it, the frozen critic; no teacher), the critic phase
    reaching only the critic, and one engine step moving the right weights."""

    loss = "template.anchored_gan"
    critic_params = CHEAP


class TestNoisyDiscriminatorAdapter(CriticContract):
    """As an adapter on the shared base: owns exactly its adapter and head, round-trips them through a
    checkpoint, trains while the teacher's output stays bit-identical."""

    critic = "template.noisy_discriminator"
    loss = "template.anchored_gan"
    params = CHEAP


class TestNoisyDiscriminatorCopy(TestNoisyDiscriminatorAdapter):
    """As a full trainable copy of the teacher's UNet."""

    params = {"body": "copy", "head_channels": 8}
