"""Render an eval report (``radial-diffusers eval --out DIR``) to a PNG with headless Chromium, to look at it as a
person would, or to attach it to an issue.

    python bench/screenshot_report.py outputs/eval outputs/eval.png [--width 1300 --height 2600]

Needs Debian's ``chromium`` (``apt-get install chromium``); the test suite renders a report the same way when it is
installed and otherwise checks the page and its assets without a browser.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report", help="the report folder (holds index.html)")
    p.add_argument("png", help="where the screenshot goes")
    p.add_argument("--width", type=int, default=1300)
    p.add_argument("--height", type=int, default=2600)
    args = p.parse_args(argv)
    index = Path(args.report) / "index.html"
    if not index.is_file():
        p.error(f"{index} does not exist: pass the folder `radial-diffusers eval --out` wrote")
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        print("no Chromium found: install it with `apt-get install chromium` (Debian)", file=sys.stderr)
        return 1
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={Path(args.png).resolve()}", f"--window-size={args.width},{args.height}",
                    index.resolve().as_uri()], check=True, capture_output=True, timeout=180)
    print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
