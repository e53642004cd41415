"""A toy world with an exact answer: a text-conditioned Gaussian mixture over 3×16×16 images.

The true distribution, every prompt's moments and the perfect denoiser are known in closed form, so a
distillation method can be judged exactly, in minutes on a CPU (see ``docs/toy-world.md``).

* :mod:`distillkit.toy.world` — the mixture, exact samples, closed-form moments;
* :mod:`distillkit.toy.exact` — the exact teacher E[x0 | x_t, prompt];
* :mod:`distillkit.toy.folder` / :mod:`distillkit.toy.backbone` — the model folder and the ``toy`` /
  ``toy_exact`` families;
* :mod:`distillkit.toy.metrics` — exact sample metrics and their noise floor;
* :mod:`distillkit.toy.denoising` — the ``core.denoising`` loss ``distillkit teach`` trains with.
"""

from pathlib import Path

#: the shipped folders: the world alone (untrained UNet config) and the world with its trained teacher
ASSETS = Path(__file__).parent / "assets"
WORLD_FOLDER = ASSETS / "world"
TEACHER_FOLDER = ASSETS / "teacher"
