"""``distillkit validate`` on bad recipe files: exit code 2, every problem in one message, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

from distillkit.cli import main

# Five problems of three stages: a missing section (stage 1), a non-finite weight (stage 1), a critic named as a
# loss and a misspelt loss (names, stage 2), an impossible output folder and device (checks of the machine).
MANY = ('[run]\noutput_dir = "runs/{nme}"\n[data]\nimages = "imgs"\n[train]\ndevice = "banana"\n'
        '[[losses]]\nname = "add.discriminator"\nweight = nan\n[[losses]]\nname = "add.adversarail"\n')
EXPECTED = ["6 problem(s)", "run.output_dir: unknown placeholder '{nme}'", "model: missing required key, e.g. [model]",
            "losses[0].weight: must be a finite number (got nan)", "losses[0].name: 'add.discriminator' is a critic",
            "losses[1].name: unknown loss 'add.adversarail'; did you mean 'add.adversarial'?",
            "train.device: 'banana' is not a device"]


def test_validate_reports_problems_of_every_stage_at_once(tmp_path, capsys):
    bad = tmp_path / "many.toml"
    bad.write_text(MANY)
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    for phrase in EXPECTED:
        assert phrase in err, (phrase, err)


def test_the_same_through_the_real_entry_point_prints_no_traceback(tmp_path):
    bad = tmp_path / "many.toml"
    bad.write_text(MANY)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore", "COLUMNS": "400"}
    res = subprocess.run([sys.executable, "-m", "distillkit", "validate", str(bad)], capture_output=True, text=True,
                         env=env, timeout=600)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert all(phrase in res.stderr for phrase in EXPECTED), res.stderr


def test_a_byte_order_mark_is_no_problem_and_yaml_is_named(tmp_path, capsys):
    toml = ('[model]\nfamily = "sd15"\npretrained = "org/teacher"\n[data]\nimages = "imgs"\n[train]\ndevice = "cpu"\n'
            '[[losses]]\nname = "core.regression"\n')
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf" + toml.encode())
    assert main(["validate", str(bom)]) == 0
    yaml = tmp_path / "recipe.yaml"
    yaml.write_text("model:\n  family: sd15\n")
    assert main(["validate", str(yaml)]) == 2
    assert "this looks like YAML; recipes are TOML" in capsys.readouterr().err
