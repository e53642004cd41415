"""``python -m distillkit.testing DIR``: write the tiny offline fixtures a quick-start or test needs.

Creates ``DIR/sd15``, ``DIR/sdxl`` and ``DIR/pixel`` (tiny random-weight diffusers folders, a few MB)
and ``DIR/shapes`` (a captioned image folder). Nothing is downloaded.
"""

import argparse
from pathlib import Path

from distillkit.testing.shapes import write_shapes_dataset
from distillkit.testing.tiny import build_tiny_pixel, build_tiny_sd15, build_tiny_sdxl


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m distillkit.testing", description=__doc__)
    parser.add_argument("dir", nargs="?", default="runs/fixtures")
    root = Path(parser.parse_args().dir)
    build_tiny_sd15(root / "sd15")
    build_tiny_sdxl(root / "sdxl")
    build_tiny_pixel(root / "pixel")
    write_shapes_dataset(root / "shapes")
    print(f"wrote tiny fixtures to {root}: sd15/ sdxl/ pixel/ shapes/")


main()
