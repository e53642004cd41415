"""ADD plugin tests: offline, CPU, tiny models from ``distillkit.testing``.

The hub variables are set before anything imports transformers (see distillkit's own conftest).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytest_plugins = ["distillkit.testing.fixtures"]

import pytest  # noqa: E402
import torch  # noqa: E402

STUDENT_TIMESTEPS = [999, 749, 499, 249]
RESOLUTION = 64


@pytest.fixture
def build_env(tiny_sd15):
    """A BuildEnv on the tiny SD1.5 backbone (teacher CFG 3, student copied from the teacher)."""
    from distillkit import BuildEnv, Student, Teacher

    teacher = Teacher(tiny_sd15, tiny_sd15.teacher_unet, 3.0)
    student = Student.from_teacher(tiny_sd15, tiny_sd15.teacher_unet, STUDENT_TIMESTEPS)
    return BuildEnv(backbone=tiny_sd15, teacher=teacher, student=student, resolution=RESOLUTION,
                    device=torch.device("cpu"))


@pytest.fixture
def tiny_disc_params() -> dict:
    """Discriminator params that need no weight file: the tiny ViT, the backbone's own text embedding."""
    return {"feature_network": "tiny", "text_encoder": "backbone", "image_encoder": "same"}
