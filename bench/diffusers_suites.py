"""Diffusers' own model test suites, run with the stock attention processors and then with radial attention
installed on every video transformer they build (``bench/_diffusers_suites_plugin.py``); prints a table of both.

The suites' dummy inputs have 1-2 latent frames, where the radial mask keeps every block (the radial processors must
then reproduce the stock outputs); ``--frames`` also runs copies of the test files rewritten to that many latent
frames, where the mask at ``--block-size`` 16 is genuinely sparse (Wan 0.31 at 6 frames, HunyuanVideo 0.80, Mochi
0.17, ...). Needs a Diffusers checkout for its ``tests/`` (the wheel has none) and the test extras its suites import::

    git clone --depth 1 https://github.com/huggingface/diffusers /tmp/diffusers
    python bench/diffusers_suites.py --diffusers /tmp/diffusers                 # about 5 minutes on 2 CPU cores
    python bench/diffusers_suites.py --diffusers /tmp/diffusers --families wan --frames 0   # the original files only

Tests that need a GPU, the hub or optional packages skip in both runs. Exit status 1 when a test passes with the stock
processors and fails with radial attention.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# family -> (test file under tests/models/transformers/, [(pattern, replacement)] rewriting its dummy inputs to
# {f} latent frames; the pattern must match in the file or the long copy is reported as not applicable).
SUITES: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "wan": ("test_models_transformer_wan.py",
            [(r"num_frames = 2\b", "num_frames = {f}"), (r"\(4, 2, 16, 16\)", "(4, {f}, 16, 16)")]),
    "wan-vace": ("test_models_transformer_wan_vace.py",
                 [(r"num_frames = 2\b", "num_frames = {f}"), (r"\(16, 2, 16, 16\)", "(16, {f}, 16, 16)")]),
    "skyreels-v2": ("test_models_transformer_skyreels_v2.py",
                    [(r"num_frames = 2\b", "num_frames = {f}"), (r"\(4, 1, 16, 16\)", "(4, {f}, 16, 16)")]),
    "hunyuan": ("test_models_transformer_hunyuan_video.py",
                [(r"num_frames = 1\b", "num_frames = {f}"), (r"\(4, 1, 16, 16\)", "(4, {f}, 16, 16)"),
                 (r"\(8, 1, 16, 16\)", "(8, {f}, 16, 16)")]),
    "hunyuan1.5": ("test_models_transformer_hunyuan_1_5.py",
                   [(r"num_frames = 1\b", "num_frames = {f}"), (r"\(4, 1, 8, 8\)", "(4, {f}, 8, 8)")]),
    "ltx": ("test_models_transformer_ltx.py",
            [(r"num_frames = 2\b", "num_frames = {f}"), (r"\(512, 4\)", "({f256}, 4)")]),
    "cogvideox": ("test_models_transformer_cogvideox.py",
                  [(r"num_frames = [12]\b", "num_frames = {f}"), (r"return \([12], 4, 8, 8\)", "return ({f}, 4, 8, 8)")]),
    "mochi": ("test_models_transformer_mochi.py",
              [(r"num_frames = 2\b", "num_frames = {f}"), (r"\(4, 2, 16, 16\)", "(4, {f}, 16, 16)")]),
}

_COUNTS = re.compile(r"(\d+) (passed|failed|skipped|errors?|xpassed|xfailed)")
_FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.M)


def rewrite(text: str, rules: list[tuple[str, str]], frames: int) -> str | None:
    """The test file with its dummy inputs at ``frames`` latent frames, or ``None`` when a rule no longer matches."""
    for pattern, replacement in rules:
        text, n = re.subn(pattern, replacement.format(f=frames, f256=frames * 256), text)
        if n == 0:
            return None
    return text


def run_pytest(tests_root: Path, files: list[Path], *, radial: bool, block: int, workers: int,
               count_file: Path) -> tuple[dict[str, int], list[str], str]:
    """Run pytest on ``files``; returns (counts by outcome, failed test ids, the tail of the output)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
               RD_SUITES_BLOCK=str(block), RD_SUITES_OFF="0" if radial else "1", RD_SUITES_COUNT=str(count_file))
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "_diffusers_suites_plugin", "-p", "no:cacheprovider",
           *(["-n", str(workers)] if workers > 1 else []), *map(str, files)]
    proc = subprocess.run(cmd, cwd=tests_root.parent, env=env, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    summary = [line for line in out.splitlines() if re.search(r"\d+ (passed|failed|skipped)", line)]
    counts: dict[str, int] = {}
    for n, kind in _COUNTS.findall(summary[-1] if summary else ""):
        counts[kind.rstrip("s") if kind.startswith("error") else kind] = int(n)
    return counts, sorted(set(_FAILED.findall(out))), out[-3000:]


def _fmt(c: dict[str, int]) -> str:
    return " / ".join(str(c.get(k, 0)) for k in ("passed", "failed", "error", "skipped"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--diffusers", required=True, type=Path, help="a Diffusers checkout (its tests/ folder is used)")
    p.add_argument("--families", default=",".join(SUITES), help=f"comma-separated, of: {', '.join(SUITES)}")
    p.add_argument("--frames", type=int, default=6, help="latent frames of the rewritten copies (0: none)")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2, help="pytest-xdist workers (1: none)")
    args = p.parse_args(argv)
    source = args.diffusers / "tests" / "models" / "transformers"
    if not source.is_dir():
        p.error(f"{source} does not exist: pass a Diffusers checkout "
                "(git clone --depth 1 https://github.com/huggingface/diffusers)")
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in SUITES]
    if unknown:
        p.error(f"unknown families {unknown}: choose from {', '.join(SUITES)}")
    if args.frames < 0:
        p.error("--frames must be >= 0")

    with tempfile.TemporaryDirectory(prefix="rd-suites-") as tmp:
        tests = Path(tmp) / "tests"
        shutil.copytree(args.diffusers / "tests", tests)
        files: list[tuple[str, str, Path | None]] = []
        for family in families:
            name, rules = SUITES[family]
            original = source / name
            if not original.is_file():
                files.append((family, "missing from this checkout", None))
                continue
            files.append((family, "as shipped", tests / "models" / "transformers" / name))
            if args.frames:
                text = rewrite(original.read_text(), rules, args.frames)
                if text is None:
                    files.append((family, f"{args.frames} frames: rewrite not applicable", None))
                    continue
                long = tests / "models" / "transformers" / f"test_rd_long_{name.removeprefix('test_')}"
                long.write_text(text)
                files.append((family, f"{args.frames} latent frames", long))

        print(f"| family | dummy inputs | stock: passed / failed / error / skipped | radial (block "
              f"{args.block_size}): passed / failed / error / skipped | models given radial attention |")
        print("|---|---|---|---|---|")
        regressions = []
        for family, geometry, path in files:
            if path is None:
                print(f"| {family} | {geometry} | - | - | - |")
                continue
            count_file = Path(tmp) / f"count-{path.stem}"
            stock, stock_failed, _ = run_pytest(tests, [path], radial=False, block=args.block_size,
                                                workers=args.workers, count_file=count_file)
            radial, radial_failed, tail = run_pytest(tests, [path], radial=True, block=args.block_size,
                                                     workers=args.workers, count_file=count_file)
            applied = len(count_file.read_text().splitlines()) if count_file.exists() else 0
            print(f"| {family} | {geometry} | {_fmt(stock)} | {_fmt(radial)} | {applied} |", flush=True)
            new = [t for t in radial_failed if t not in stock_failed]
            if new or (stock.get("passed") and not radial.get("passed")):  # a crash with ours only counts too
                regressions.append((family, geometry, new, tail))
        for family, geometry, new, tail in regressions:
            print(f"\n{family} ({geometry}): failing only with radial attention: {new or 'no summary'}\n{tail}")
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
