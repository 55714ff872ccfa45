"""Diffusers' own model test suites (``--level models``) or pipeline test suites (``--level pipelines``), run with the
stock attention processors and then with radial attention installed on every video transformer / pipeline they build
(``bench/_diffusers_suites_plugin.py``); prints a table of both.

The model suites' dummy inputs have 1-2 latent frames, where the radial mask at ``--block-size`` 16 keeps every block
for most families (the radial processors must then reproduce the stock outputs); ``--frames`` also runs copies of the
test files rewritten to that many latent frames, where it is sparse for all (lowest densities at 6 frames: Wan 0.31,
HunyuanVideo 0.77, LTX-Video 0.86, ...; the table's last column says how many tests ran sparse). Needs a Diffusers
checkout for its ``tests/`` (the wheel has none) and the test extras its suites import::

    git clone --depth 1 https://github.com/huggingface/diffusers /tmp/diffusers
    python bench/diffusers_suites.py --diffusers /tmp/diffusers                 # about 10 minutes on 2 CPU cores
    python bench/diffusers_suites.py --diffusers /tmp/diffusers --families wan --frames 0   # the original files only

The pipeline suites' dummy inputs are as small; ``--frames`` other than 0 also runs copies with larger sides (and,
where they had few, more frames), fixed per file in ``PIPELINE_SUITES``, where the mask is sparse. Their text encoders
and tokenizers come from the hub: without it, ``--offline-hub DIR`` builds random stand-ins there
(``bench/diffusers_offline_hub.py``) and runs offline. The pipeline suites also import ``parameterized`` and
``requests_mock``::

    python bench/diffusers_suites.py --diffusers /tmp/diffusers --level pipelines --offline-hub /tmp/rd-hub

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
    "ltx2": ("test_models_transformer_ltx2.py", [(r"num_frames = 2\b", "num_frames = {f}")]),
    "cogvideox": ("test_models_transformer_cogvideox.py",
                  [(r"num_frames = [12]\b", "num_frames = {f}"), (r"return \([12], 4, 8, 8\)", "return ({f}, 4, 8, 8)")]),
    "mochi": ("test_models_transformer_mochi.py",
              [(r"num_frames = 2\b", "num_frames = {f}"), (r"\(4, 2, 16, 16\)", "(4, {f}, 16, 16)")]),
    # the dummy configs' learnable position embedding holds 4 latent frames: widened to 16 with the frames
    "cosmos": ("test_models_transformer_cosmos.py",
               [(r"num_frames = 1\b", "num_frames = {f}"), (r"\(4, 1, 16, 16\)", "(4, {f}, 16, 16)"),
                (r'"max_size": \(4, 32, 32\)', '"max_size": (16, 32, 32)')]),
}

# family -> [(test file under tests/pipelines/, side scale, {frames: frames}) ...]: the rewritten copy multiplies the
# dummy inputs' 16 / 32-pixel sides by the scale and maps the listed frame counts (CogVideoX, LTX-Video and Mochi
# have few latent frames at their dummy counts), so that the mask at block 16 is sparse.
PIPELINE_SUITES: dict[str, list[tuple[str, int, dict[int, int]]]] = {
    "wan": [("wan/test_wan.py", 4, {}), ("wan/test_wan_image_to_video.py", 4, {}), ("wan/test_wan_22.py", 4, {}),
            ("wan/test_wan_22_image_to_video.py", 4, {}), ("wan/test_wan_video_to_video.py", 4, {})],
    "wan-vace": [("wan/test_wan_vace.py", 4, {})],
    "skyreels-v2": [("skyreels_v2/test_skyreels_v2.py", 4, {}),
                    ("skyreels_v2/test_skyreels_v2_image_to_video.py", 4, {}),
                    ("skyreels_v2/test_skyreels_v2_df.py", 4, {}),
                    ("skyreels_v2/test_skyreels_v2_df_image_to_video.py", 4, {}),
                    ("skyreels_v2/test_skyreels_v2_df_video_to_video.py", 4, {})],
    "hunyuan": [("hunyuan_video/test_hunyuan_video.py", 2, {}), ("hunyuan_video/test_hunyuan_image2video.py", 2, {}),
                ("hunyuan_video/test_hunyuan_skyreels_image2video.py", 2, {})],
    "hunyuan1.5": [("hunyuan_video1_5/test_hunyuan_1_5.py", 2, {})],
    "ltx": [("ltx/test_ltx.py", 2, {9: 17}), ("ltx/test_ltx_image2video.py", 2, {9: 17}),
            ("ltx/test_ltx_condition.py", 2, {9: 17})],
    "ltx2": [("ltx2/test_ltx2.py", 2, {5: 9}), ("ltx2/test_ltx2_image2video.py", 2, {5: 9}),
             ("ltx2/test_ltx2_condition.py", 2, {5: 9}), ("ltx2/test_ltx2_in_context.py", 2, {5: 9}),
             ("ltx2/test_ltx2_hdr.py", 2, {5: 9})],
    "cogvideox": [("cogvideo/test_cogvideox.py", 4, {8: 9}), ("cogvideo/test_cogvideox_image2video.py", 4, {8: 9}),
                  ("cogvideo/test_cogvideox_video2video.py", 4, {8: 9}),
                  ("cogvideo/test_cogvideox_fun_control.py", 4, {8: 9})],
    "mochi": [("mochi/test_mochi.py", 4, {7: 13})],
    # no model suite: Diffusers has no Kandinsky 5 transformer test file
    "kandinsky5": [("kandinsky5/test_kandinsky5.py", 4, {5: 17}), ("kandinsky5/test_kandinsky5_i2v.py", 4, {})],
    # their dummy configs' learnable position embedding holds 4 latent frames (13 frames at the Wan VAE's 4x)
    "cosmos": [("cosmos/test_cosmos2_video2world.py", 4, {9: 13}), ("cosmos/test_cosmos2_5_predict.py", 4, {3: 13})],
}
_SIDES = "16|32"

_COUNTS = re.compile(r"(\d+) (passed|failed|skipped|errors?|xpassed|xfailed)")
_FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.M)


def rewrite(text: str, rules: list[tuple[str, str]], frames: int) -> str | None:
    """The test file with its dummy inputs at ``frames`` latent frames, or ``None`` when a rule no longer matches."""
    for pattern, replacement in rules:
        text, n = re.subn(pattern, replacement.format(f=frames, f256=frames * 256), text)
        if n == 0:
            return None
    return text


def rewrite_pipeline(text: str, scale: int, frames: dict[int, int]) -> str | None:
    """A pipeline test file with its dummy inputs' sides (height / width entries and variables, image and video
    shapes) times ``scale`` and its ``num_frames`` mapped by ``frames``; ``None`` when no side was found."""
    total = 0

    def sub(pattern: str, replace) -> None:
        nonlocal text, total
        text, n = re.subn(pattern, replace, text, flags=re.M)
        total += n

    def side(m: str) -> str:
        return str(int(m) * scale)

    def frame(m: str) -> str:
        return str(frames.get(int(m), int(m))) if m.isdigit() else m

    sub(rf'("(?:height|width)": )({_SIDES}),', lambda m: m[1] + side(m[2]) + ",")
    sub(rf"^(\s*(?:image_)?(?:height|width) = )({_SIDES})\b", lambda m: m[1] + side(m[2]))
    sub(rf"\((\w+), 3, ({_SIDES}), ({_SIDES})\)", lambda m: f"({frame(m[1])}, 3, {side(m[2])}, {side(m[3])})")
    sub(rf'(Image\.new\("(?:RGB|L)", \()({_SIDES}), ({_SIDES})\)', lambda m: f"{m[1]}{side(m[2])}, {side(m[3])})")
    sub(rf"(torch\.rand\(\(1, 3, )({_SIDES}), ({_SIDES})\)", lambda m: f"{m[1]}{side(m[2])}, {side(m[3])})")
    if total == 0:
        return None
    # CogVideoX image-to-video refuses sizes other than its transformer's sample size times 8
    text = re.sub(r"(sample_(?:width|height)=)2,", lambda m: f"{m[1]}{2 * scale},", text)
    if frames:
        text = re.sub(r'("num_frames": )(\d+),', lambda m: m[1] + frame(m[2]) + ",", text)
    return text


def run_pytest(tests_root: Path, files: list[Path], *, radial: bool, block: int, workers: int,
               count_file: Path, level: str = "models",
               env_extra: dict[str, str] | None = None) -> tuple[dict[str, int], list[str], str]:
    """Run pytest on ``files``; returns (counts by outcome, failed test ids, the tail of the output)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
               RD_SUITES_BLOCK=str(block), RD_SUITES_OFF="0" if radial else "1", RD_SUITES_COUNT=str(count_file),
               RD_SUITES_LEVEL=level, **(env_extra or {}))
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


def _radial_summary(count_file: Path) -> str:
    """'objects given radial attention; tests whose calls ran sparse (lowest mask density)' from the plugin's lines."""
    lines = count_file.read_text().splitlines() if count_file.exists() else []
    sparse = [line for line in lines if not line.endswith("sparse_calls=0")]
    densities = [float(d) for d in re.findall(r"density=([\d.]+)", "\n".join(sparse))]
    tests = len({line.split()[1] for line in sparse})
    return f"{len(lines)}; {tests}" + (f" (density {min(densities):.2f})" if densities else "")


def _test_files(args, tests: Path) -> list[tuple[str, str, Path | None]]:
    """(family, dummy inputs, test file or None with the reason) of the run: the shipped files and their rewritten
    copies, written into the ``tests`` copy."""
    files: list[tuple[str, str, Path | None]] = []
    for family in args.families:
        if args.level == "models":
            name, rules = SUITES[family]
            plan = [(Path("models") / "transformers" / name, rules, None)]
        else:
            plan = [(Path("pipelines") / rel, scale, frames) for rel, scale, frames in PIPELINE_SUITES[family]]
        for rel, how, frames in plan:
            original = args.diffusers / "tests" / rel
            label = rel.name if args.level == "pipelines" else "as shipped"
            if not original.is_file():
                files.append((family, f"{label}: missing from this checkout", None))
                continue
            files.append((family, label, tests / rel))
            if not args.frames:
                continue
            if args.level == "models":
                text, geometry = rewrite(original.read_text(), how, args.frames), f"{args.frames} latent frames"
            else:
                text = rewrite_pipeline(original.read_text(), how, frames)
                geometry = f"{label}, sides x{how}" + (f", frames {frames}" if frames else "")
            if text is None:
                files.append((family, f"{label}: rewrite not applicable", None))
                continue
            long = tests / rel.parent / f"test_rd_long_{rel.name.removeprefix('test_')}"
            long.write_text(text)
            files.append((family, geometry, long))
    return files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--diffusers", required=True, type=Path, help="a Diffusers checkout (its tests/ folder is used)")
    p.add_argument("--level", choices=("models", "pipelines"), default="models",
                   help="Diffusers' model suites (radial attention on each transformer) or pipeline suites (on each "
                        "pipeline)")
    p.add_argument("--families", help=f"comma-separated (default: all), of: {', '.join(SUITES)} (models); "
                                      f"{', '.join(PIPELINE_SUITES)} (pipelines)")
    p.add_argument("--frames", type=int, default=6,
                   help="models: latent frames of the rewritten copies; pipelines: any value but 0 runs the rewritten "
                        "copies (sizes per file); 0: the shipped files only")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2, help="pytest-xdist workers (1: none)")
    p.add_argument("--offline-hub", type=Path, metavar="DIR",
                   help="build random stand-ins of the hub repositories the pipeline suites load in DIR and run "
                        "offline with HF_HOME=DIR (a machine without the hub)")
    args = p.parse_args(argv)
    suites = args.diffusers / "tests" / ("models/transformers" if args.level == "models" else "pipelines")
    if not suites.is_dir():
        p.error(f"{suites} does not exist: pass a Diffusers checkout "
                "(git clone --depth 1 https://github.com/huggingface/diffusers)")
    known = SUITES if args.level == "models" else PIPELINE_SUITES
    args.families = [f.strip() for f in (args.families or ",".join(known)).split(",") if f.strip()]
    unknown = [f for f in args.families if f not in known]
    if unknown:
        p.error(f"unknown families {unknown}: choose from {', '.join(known)}")
    if args.frames < 0:
        p.error("--frames must be >= 0")
    env_extra = {}
    if args.offline_hub is not None:
        from diffusers_offline_hub import build

        build(args.offline_hub)
        env_extra = dict(HF_HOME=str(args.offline_hub.resolve()), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")

    with tempfile.TemporaryDirectory(prefix="rd-suites-") as tmp:
        tests = Path(tmp) / "tests"
        shutil.copytree(args.diffusers / "tests", tests)
        files = _test_files(args, tests)
        what = "models given radial attention" if args.level == "models" else "pipelines given radial attention"
        print(f"| family | dummy inputs | stock: passed / failed / error / skipped | radial (block "
              f"{args.block_size}): passed / failed / error / skipped | {what}; tests that ran sparse |")
        print("|---|---|---|---|---|")
        regressions = []
        for family, geometry, path in files:
            if path is None:
                print(f"| {family} | {geometry} | - | - | - |")
                continue
            count_file = Path(tmp) / f"count-{path.stem}"
            run = dict(block=args.block_size, workers=args.workers, count_file=count_file, level=args.level,
                       env_extra=env_extra)
            stock, stock_failed, _ = run_pytest(tests, [path], radial=False, **run)
            radial, radial_failed, tail = run_pytest(tests, [path], radial=True, **run)
            print(f"| {family} | {geometry} | {_fmt(stock)} | {_fmt(radial)} | {_radial_summary(count_file)} |",
                  flush=True)
            new = [t for t in radial_failed if t not in stock_failed]
            if new or (stock.get("passed") and not radial.get("passed")):  # a crash with ours only counts too
                regressions.append((family, geometry, new, tail))
        for family, geometry, new, tail in regressions:
            print(f"\n{family} ({geometry}): failing only with radial attention: {new or 'no summary'}\n{tail}")
    return 1 if regressions else 0


if __name__ == "__main__":
    sys.exit(main())
