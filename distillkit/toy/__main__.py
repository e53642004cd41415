"""``python -m distillkit.toy data OUT``: write exact toy samples as an image folder for training.

``python -m distillkit.toy world OUT`` writes the default world folder (no trained UNet).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distillkit.toy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="write exact samples of a toy world as PNGs + metadata.jsonl")
    data.add_argument("out")
    data.add_argument("--model", default=None, help="toy model folder whose world to sample (default: the shipped "
                                                    "world folder)")
    data.add_argument("--count", type=int, default=4096)
    data.add_argument("--seed", type=int, default=0)
    world = sub.add_parser("world", help="write the default world folder (world tensors + untrained UNet config)")
    world.add_argument("out")
    args = parser.parse_args(argv)

    from distillkit.toy import WORLD_FOLDER
    from distillkit.toy.folder import read_world, write_toy_folder
    from distillkit.toy.world import default_world

    if args.command == "data":
        from distillkit.toy.data import write_dataset

        w = read_world(args.model or WORLD_FOLDER)
        out = write_dataset(w, args.out, args.count, args.seed)
        print(f"wrote {args.count} exact samples of {len(w.prompts)} prompts to {out}")
    else:
        out = write_toy_folder(args.out, default_world())
        print(f"wrote the default toy world to {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
