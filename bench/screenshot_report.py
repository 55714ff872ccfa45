"""Render an eval report (``radial-diffusers eval --out DIR``) to a PNG with headless Chromium, to look at it as a
person would, or to attach it to an issue; and check that every picture and video on the page loads in the
browser.

    python bench/screenshot_report.py outputs/eval outputs/eval.png [--width 1300 --height 2600]

Before the screenshot it opens a copy of the page with a probe script added and lists each ``<img>`` (loaded, and its
pixel width) and ``<video>`` (ready state, pixel width, decode error): a missing file, a broken PNG or an mp4 the
browser cannot decode is named and the script exits 1 (2: the page or Chromium failed). The report itself is not
modified. Needs Debian's ``chromium`` (``apt-get install chromium``); the test suite runs it when Chromium is
installed and otherwise checks the page and its assets without a browser.
"""

from __future__ import annotations

import argparse
import html
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Appended to a copy of the page: once everything has loaded (videos need a moment more to decode a frame), one line
# per image / video into <pre id="asset-probe">, which --dump-dom prints.
_PROBE = """<script>
addEventListener("load", () => setTimeout(() => {
  const lines = [];
  for (const im of document.images)
    lines.push(["img", im.getAttribute("src"), im.complete && im.naturalWidth > 0 ? "ok" : "broken",
                im.naturalWidth].join("\\t"));
  for (const v of document.querySelectorAll("video"))
    lines.push(["video", v.getAttribute("src"), v.readyState >= 2 && v.videoWidth > 0 && !v.error ? "ok" : "broken",
                v.videoWidth, "readyState=" + v.readyState + (v.error ? " error=" + v.error.code : "")].join("\\t"));
  const pre = document.createElement("pre");
  pre.id = "asset-probe";
  pre.textContent = lines.join("\\n");
  document.body.appendChild(pre);
}, 1000));
</script>"""


def find_browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _headless(browser: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
                          check=True, capture_output=True, text=True, timeout=180)


def probe_assets(report: Path, browser: str) -> list[dict]:
    """Each ``<img>`` and ``<video>`` of ``report/index.html`` as the browser loaded it: ``{"kind", "src", "ok",
    "width", "detail"}`` (``width`` in pixels: the image's or the video's own, 0 when it did not load). The probed
    copy of the page goes to a temporary folder with a ``<base>`` pointing at ``report``, so the assets load from
    where the report keeps them."""
    page = (report / "index.html").read_text(encoding="utf-8")
    if "</body>" not in page or "<head>" not in page:
        raise ValueError(f"{report / 'index.html'} has no <head> or </body>: not a report page")
    base = f'<head><base href="{html.escape(report.resolve().as_uri())}/">'
    probed = page.replace("<head>", base, 1).replace("</body>", _PROBE + "</body>", 1)
    with tempfile.TemporaryDirectory(prefix="report-probe-") as tmp:
        copy = Path(tmp) / "index.html"
        copy.write_text(probed, encoding="utf-8")
        dom = _headless(browser, "--virtual-time-budget=10000", "--dump-dom", copy.as_uri()).stdout
    found = re.search(r'<pre id="asset-probe">(.*?)</pre>', dom, re.S)
    if found is None:
        raise RuntimeError("the probe did not run: the page never finished loading in Chromium")
    assets = []
    for line in filter(None, html.unescape(found.group(1)).split("\n")):
        kind, src, state, width, *detail = line.split("\t")
        assets.append({"kind": kind, "src": src, "ok": state == "ok", "width": int(width),
                       "detail": detail[0] if detail else ""})
    return assets


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report", help="the report folder (holds index.html)")
    p.add_argument("png", help="where the screenshot goes")
    p.add_argument("--width", type=int, default=1300)
    p.add_argument("--height", type=int, default=2600)
    args = p.parse_args(argv)
    report = Path(args.report)
    if not (report / "index.html").is_file():
        p.error(f"{report / 'index.html'} does not exist: pass the folder `radial-diffusers eval --out` wrote")
    browser = find_browser()
    if browser is None:
        print("no Chromium found: install it with `apt-get install chromium` (Debian)", file=sys.stderr)
        return 1
    try:
        assets = probe_assets(report, browser)
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(f"error: Chromium failed (exit {exc.returncode}): {(exc.stderr or '').strip()[-500:]}", file=sys.stderr)
        return 2
    except subprocess.TimeoutExpired:
        print("error: Chromium did not finish loading the page in 180 s", file=sys.stderr)
        return 2
    for a in assets:
        print(f"{a['kind']:5s} {a['src']}: {'loaded' if a['ok'] else 'DID NOT LOAD'}, {a['width']} px wide"
              + (f" ({a['detail']})" if a["detail"] else ""))
    _headless(browser, f"--screenshot={Path(args.png).resolve()}", f"--window-size={args.width},{args.height}",
              (report / "index.html").resolve().as_uri())
    print(f"wrote {args.png}")
    broken = [a["src"] for a in assets if not a["ok"]]
    if broken:
        print(f"{len(broken)} of {len(assets)} pictures / videos did not load: {', '.join(broken)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
