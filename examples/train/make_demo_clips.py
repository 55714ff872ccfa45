"""Write a few short synthetic captioned clips (moving coloured tiles) for the tiny training demo.

    python examples/train/make_demo_clips.py examples/train/demo_clips
"""

import argparse
from pathlib import Path

import imageio
import numpy as np

CAPTIONS = ["a cat dancing on the beach at sunset", "a dog running in the snow", "a red car on a city street"]
DEFAULT_OUT = "examples/train/demo_clips"


def main(out: str) -> None:
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    for i, caption in enumerate(CAPTIONS):
        rng = np.random.default_rng(i)
        tiles = rng.integers(0, 255, (8, 8, 3)).astype(np.uint8)
        frames = [np.kron(np.roll(tiles, t // 4, axis=1), np.ones((12, 12, 1), np.uint8)) for t in range(48)]
        imageio.mimwrite(root / f"clip{i}.mp4", frames, fps=16, macro_block_size=1)
        (root / f"clip{i}.txt").write_text(caption + "\n")
    print(f"wrote {len(CAPTIONS)} clips to {root}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default=DEFAULT_OUT,
                        help=f"folder for clip<i>.mp4 + clip<i>.txt (created; default: {DEFAULT_OUT})")
    main(parser.parse_args().out)
