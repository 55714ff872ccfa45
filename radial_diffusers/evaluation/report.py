"""The eval report folder: an HTML page that opens from disk with no network, and the same numbers as JSON.

Layout of ``OUT/``::

    index.html          the page: settings, the table, per sample the side-by-side video, a frame strip and the
                        PSNR / SSIM per-frame plots; the recall heat map (layer x step) and the mask picture
    report.json         every number of the page (EvalResult.to_dict())
    videos/sample-<i>.mp4   dense | radial | ... side by side (H.264, the variants in the table's order)
    frames/sample-<i>.png   six frames of each variant, one row per variant, labelled
    mask.png            the radial mask of the first radial variant, with frame boundaries

Plots and heat maps are inline SVG (no script, no external file). The folder is written to a temporary sibling and
moved into place when complete, so a crash never leaves half a report.
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .._io import _UMASK, check_replaceable, replace_dir, taken, write_mp4
from ..mask_image import write_png
from .metrics import finite_mean

__all__ = ["write_report", "line_plot_svg", "heatmap_svg"]

_COLOURS = ("#222222", "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
_STRIP_FRAMES = 6


def _fmt(x, spec: str = ".3f") -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "inf (identical)"
    return format(x, spec)


def line_plot_svg(series: dict[str, list[float]], *, title: str, ylabel: str, width: int = 520,
                  height: int = 220) -> str:
    """An inline SVG line plot: one polyline per series over the frame index (infinite values are drawn at the
    top edge and said so in the legend)."""
    left, right, top, bottom = 48, 12, 24, 34
    finite = [v for ys in series.values() for v in ys if v is not None and math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    n = max((len(ys) for ys in series.values()), default=1)
    pw, ph = width - left - right, height - top - bottom

    def x(i: int) -> float:
        return left + (pw * i / max(1, n - 1))

    def y(v: float) -> float:
        v = hi if not math.isfinite(v) else v
        return top + ph * (1 - (v - lo) / (hi - lo))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{html.escape(title)}">',
             f'<text x="{left}" y="15" font-size="13" font-weight="bold">{html.escape(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        parts.append(f'<text x="{left - 4}" y="{y(v) + 4:.1f}" font-size="10" text-anchor="end">{v:.3g}</text>')
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>')
    for k in range(min(n, 6)):
        i = round(k * (n - 1) / max(1, min(n, 6) - 1))
        parts.append(f'<text x="{x(i):.1f}" y="{top + ph + 14}" font-size="10" text-anchor="middle">{i}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 4}" font-size="11" text-anchor="middle">frame</text>')
    parts.append(f'<text x="12" y="{top + ph / 2}" font-size="11" text-anchor="middle" '
                 f'transform="rotate(-90 12 {top + ph / 2})">{html.escape(ylabel)}</text>')
    for j, (name, ys) in enumerate(series.items()):
        colour = _COLOURS[(j + 1) % len(_COLOURS)]
        pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(ys) if v is not None)
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        infinite = " (inf: identical)" if any(v is not None and math.isinf(v) for v in ys) else ""
        parts.append(f'<text x="{left + 8}" y="{top + 14 + 13 * j}" font-size="11" fill="{colour}">'
                     f'{html.escape(name)}{infinite}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _heat_colour(v: float) -> str:
    """0.5 (or less) -> dark red, 1 -> pale yellow."""
    t = min(1.0, max(0.0, (v - 0.5) / 0.5))
    r, g, b = 120 + 135 * t, 20 + 215 * t, 20 + 150 * t
    return f"rgb({r:.0f},{g:.0f},{b:.0f})"


def heatmap_svg(matrix: list[list[float | None]], *, title: str, dense: list[list[bool]] | None = None,
                cell: int = 28) -> str:
    """An inline SVG heat map of ``matrix[layer][step]`` (recall in [0, 1]), the value in each cell's tooltip;
    cells where ``dense`` is true (the config runs them dense) are outlined."""
    layers = len(matrix)
    steps = max((len(r) for r in matrix), default=0)
    cw = max(8, min(cell, 720 // max(1, steps)))
    ch = max(8, min(cell, 400 // max(1, layers)))
    left, top = 64, 26
    width = max(left + cw * steps + 150, 24 + 8 * len(title))  # bold 13 px text: about 8 px a character
    height = max(top + ch * layers + 40, top + 110)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{html.escape(title)}">',
             f'<text x="{left}" y="15" font-size="13" font-weight="bold">{html.escape(title)}</text>']
    for l, row in enumerate(matrix):
        parts.append(f'<text x="{left - 6}" y="{top + ch * l + ch * 0.75:.1f}" font-size="10" '
                     f'text-anchor="end">layer {l}</text>')
        for s, v in enumerate(row):
            x, y = left + cw * s, top + ch * l
            fill = "#ddd" if v is None else _heat_colour(v)
            outline = ' stroke="#2060ff" stroke-width="1.5"' if dense and dense[l][s] else ""
            tip = "n/a" if v is None else f"{v:.4f}"
            parts.append(f'<rect x="{x}" y="{y}" width="{cw - 1}" height="{ch - 1}" fill="{fill}"{outline}>'
                         f'<title>layer {l}, step {s}: recall {tip}</title></rect>')
    for s in range(0, steps, max(1, steps // 10)):
        parts.append(f'<text x="{left + cw * s + cw / 2:.1f}" y="{top + ch * layers + 12}" font-size="10" '
                     f'text-anchor="middle">{s}</text>')
    parts.append(f'<text x="{left + cw * steps / 2:.1f}" y="{top + ch * layers + 28}" font-size="11" '
                 f'text-anchor="middle">denoising step</text>')
    lx = left + cw * steps + 16
    for k in range(6):
        v = 0.5 + 0.1 * k
        parts.append(f'<rect x="{lx}" y="{top + 14 * k}" width="12" height="12" fill="{_heat_colour(v)}"/>'
                     f'<text x="{lx + 16}" y="{top + 14 * k + 10}" font-size="10">{v:.1f}{" or less" if k == 0 else ""}'
                     f'</text>')
    if dense:
        parts.append(f'<rect x="{lx}" y="{top + 90}" width="12" height="12" fill="none" stroke="#2060ff" '
                     f'stroke-width="1.5"/><text x="{lx + 16}" y="{top + 100}" font-size="10">runs dense</text>')
    parts.append("</svg>")
    return "".join(parts)


def _side_by_side(videos: list[np.ndarray]) -> np.ndarray:
    """``(F, H, sum W + gaps, 3)`` uint8, a 4-pixel white gap between videos; even sizes for H.264."""
    f, h = videos[0].shape[:2]
    gap = np.full((f, h, 4, 3), 255, np.uint8)
    parts = []
    for i, v in enumerate(videos):
        parts += ([gap] if i else []) + [v]
    out = np.concatenate(parts, axis=2)
    return out[:, : out.shape[1] // 2 * 2, : out.shape[2] // 2 * 2]


def _write_mp4(frames: np.ndarray, path: Path, fps: int) -> None:
    write_mp4(frames, path, fps)


def _strip(videos: dict[str, np.ndarray], path: Path) -> None:
    """Six evenly spaced frames per variant, a row each, the variant's name on the left."""
    from PIL import Image, ImageDraw

    from ..mask_image import _font

    names = list(videos)
    f, h, w = next(iter(videos.values())).shape[:3]
    idx = np.linspace(0, f - 1, _STRIP_FRAMES).round().astype(int)
    scale = max(1, 96 // h)
    label_w, head = 150, 18
    tile_h, tile_w = h * scale, w * scale
    image = Image.new("RGB", (label_w + (tile_w + 4) * len(idx), head + (tile_h + 4) * len(names)), "white")
    draw = ImageDraw.Draw(image)
    font = _font(13)
    for j, i in enumerate(idx):
        draw.text((label_w + j * (tile_w + 4), 2), f"frame {i}", fill=(20, 20, 24), font=font)
    for r, name in enumerate(names):
        y = head + r * (tile_h + 4)
        draw.text((6, y + tile_h // 2 - 7), name, fill=(20, 20, 24), font=font)
        for j, i in enumerate(idx):
            tile = Image.fromarray(videos[name][i]).resize((tile_w, tile_h), Image.NEAREST)
            image.paste(tile, (label_w + j * (tile_w + 4), y))
    write_png(image, path)


def _table(result) -> str:
    dense = next((v for v in result.variants if v.kind == "dense"), None)
    head = ("<tr><th>variant</th><th>PSNR vs dense (dB)</th><th>SSIM vs dense</th><th>recall</th><th>density</th>"
            "<th>s / step</th><th>sparse s / step</th><th>speed-up vs dense</th><th>notes</th></tr>")
    rows = [head]
    for v in result.variants:
        speed = (dense.step_seconds / v.step_seconds if dense and dense.step_seconds and v.step_seconds else None)
        notes = []
        if v.status != "ok":
            notes.append(f'<span class="fail">failed: {html.escape(v.error or "")}</span>')
        for other, same in v.identical_to.items():
            notes.append(f"{'bit-identical to' if same else 'differs from'} {html.escape(other)}")
        rows.append(f"<tr><td>{html.escape(v.name)}</td><td>{_fmt(v.psnr_mean, '.2f')}</td>"
                    f"<td>{_fmt(v.ssim_mean, '.4f')}</td><td>{_fmt(v.recall, '.4f')}</td><td>{_fmt(v.density)}</td>"
                    f"<td>{_fmt(v.step_seconds)}</td><td>{_fmt(v.sparse_step_seconds)}</td>"
                    f"<td>{_fmt(speed, '.2f')}{'x' if speed else ''}</td><td>{'; '.join(notes)}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _sample_table(result) -> str:
    """PSNR / SSIM vs dense per sample (the mean over prompts hides a hard prompt behind an easy one: a dark video
    scores high whatever is drawn on it)."""
    compared = [v for v in result.variants if v.status == "ok" and v.psnr]
    if len(result.samples) < 2 or not compared:
        return ""
    head = "<tr><th>sample</th>" + "".join(f"<th>{html.escape(v.name)}<br>PSNR (dB) / SSIM</th>" for v in compared)
    rows = [head + "</tr>"]
    for i, sample in enumerate(result.samples):
        cells = []
        for v in compared:
            psnr = finite_mean(v.psnr[i])
            ssim = sum(v.ssim[i]) / len(v.ssim[i])
            cells.append(f"<td>{'inf' if psnr == math.inf else _fmt(psnr, '.2f')} / {_fmt(ssim, '.4f')}</td>")
        rows.append(f"<tr><td>{i}: {html.escape(sample['prompt'])} (seed {sample['seed']})</td>{''.join(cells)}</tr>")
    return "<h2>Per sample</h2><table>" + "".join(rows) + "</table>"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #1a1a1a; max-width: 1400px; }
table { border-collapse: collapse; margin: 8px 0 16px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; font-size: 13px; text-align: right; }
th { background: #f2f2f2; } td:first-child, td:last-child { text-align: left; }
.fail { color: #b00020; } .labels { display: flex; font-size: 13px; font-weight: bold; }
.labels div { overflow: hidden; white-space: nowrap; text-overflow: ellipsis; }
.side { max-width: 100%; } .side video { width: 100%; height: auto; display: block; } .strip { max-width: 100%; }
.sample { border-top: 1px solid #ddd; margin-top: 18px; padding-top: 8px; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; } code { background: #f4f4f4; padding: 1px 4px; }
img.pixelated { image-rendering: pixelated; }
"""


def write_report(result, out: str | Path, *, fps: int = 16, overwrite: bool = False) -> Path:
    """Write ``result`` (an :class:`~radial_diffusers.evaluation.run.EvalResult`) to the folder ``out`` atomically
    and return the path of ``index.html``. ``out`` must not exist or must be empty unless ``overwrite``, which
    replaces an earlier report folder only (never the current folder, one above it or a folder of other files)."""
    out = Path(out).expanduser().resolve()  # a link to a folder is written through; "." has a name
    if taken(out) and not overwrite:
        raise FileExistsError(f"{out} exists; choose a new folder or pass overwrite=True (CLI: --overwrite)")
    if out.exists():
        check_replaceable(out, "report.json", "report folder of eval", option="overwrite=True")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes it 0700; the report is an ordinary folder
    try:
        _write(result, tmp, fps)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "index.html"


def _write(result, folder: Path, fps: int) -> None:
    (folder / "videos").mkdir()
    (folder / "frames").mkdir()
    data = result.to_dict()
    (folder / "report.json").write_text(json.dumps(data, indent=1) + "\n")
    ok = [v for v in result.variants if v.status == "ok" and result.videos.get(v.name)]
    body = [f"<h1>radial-diffusers eval: {html.escape(str(result.settings.get('pipeline', '')))}</h1>"]
    settings = ", ".join(f"{k} {html.escape(str(v))}" for k, v in result.settings.items() if k != "suggestion")
    env = ", ".join(f"{k} {html.escape(str(v))}" for k, v in result.environment.items())
    body.append(f"<p><b>Settings:</b> {settings}<br><b>Machine:</b> {env}</p>")
    body.append("<p>PSNR and SSIM compare each variant's decoded video with the dense video of the same prompt and "
                "seed (frame by frame, data range 1). Recall is the share of the softmax mass the radial mask keeps, "
                "measured on sampled query rows of every attention call along the dense trajectory, averaged over "
                "the calls the variant runs sparse. Step times are measured in this run; the first step and the "
                "first sparse one are warm-up and not counted.</p>")
    body.append(_table(result))
    body.append(_sample_table(result))
    suggestion = result.settings.get("suggestion")
    if suggestion:
        body.append("<h2>Suggested config</h2><p>From the recall measured along the dense trajectory (target "
                    f"{suggestion['min_recall']}): <code>{html.escape(_config_text(suggestion['config']))}</code>, "
                    "evaluated above as <b>suggested</b>.</p>")
        if suggestion.get("notes"):
            body.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in suggestion["notes"]) + "</ul>")
    if result.mask_picture is not None:
        from ..mask_image import save_mask_picture

        mask, info = result.mask_picture
        save_mask_picture(mask, folder / "mask.png", info, max_side=1024)
    for label, rec in result.recall.items():
        dense = rec.get("dense_cells")
        body.append("<h2>Attention recall, layer x step</h2>")
        if "error" in rec:
            body.append(f'<p class="fail">The recall pass of the mask ({html.escape(label)}) failed: '
                        f'{html.escape(rec["error"])}</p>')
            continue
        body.append(heatmap_svg(rec["matrix"], title=f"recall of the mask ({label}); density {_fmt(rec['density'])}",
                                dense=dense["cells"] if dense else None))
        if dense:
            body.append(f"<p>Outlined: the cells the <b>{html.escape(dense['variant'])}</b> variant runs dense.</p>")
    if (folder / "mask.png").exists():
        body.append('<h2>The radial mask</h2><img class="pixelated" src="mask.png" alt="radial block mask" '
                    'style="max-width:640px">')
    for i, sample in enumerate(result.samples):
        body.append(f'<div class="sample"><h2>Sample {i}: &ldquo;{html.escape(sample["prompt"])}&rdquo;, seed '
                    f'{sample["seed"]}</h2>')
        if ok:
            vids = [result.videos[v.name][i] for v in ok]
            side = _side_by_side(vids)
            _write_mp4(side, folder / "videos" / f"sample-{i}.mp4", fps)
            _strip({v.name: result.videos[v.name][i] for v in ok}, folder / "frames" / f"sample-{i}.png")
            from PIL import Image

            write_png(Image.fromarray(side[0]), folder / "frames" / f"sample-{i}-poster.png")
            # labels and video in one box that shrinks as a whole on a narrow page: each label spans its panel
            # (and the 4-pixel gap after it) as a share of the side-by-side width, so they stay over their panels
            scale = max(1, 256 // vids[0].shape[2])
            total = sum(v.shape[2] for v in vids) + 4 * (len(vids) - 1)
            labels = "".join(
                f'<div style="flex:0 0 {100 * (vid.shape[2] + (4 if j < len(vids) - 1 else 0)) / total:.4f}%">'
                f'{html.escape(v.name)}</div>' for j, (v, vid) in enumerate(zip(ok, vids)))
            body.append(f'<div class="side" style="width:{total * scale}px"><div class="labels">{labels}</div>'
                        f'<video src="videos/sample-{i}.mp4" controls loop autoplay muted playsinline '
                        f'poster="frames/sample-{i}-poster.png"></video></div>')
            body.append(f'<p><img class="strip" src="frames/sample-{i}.png" alt="frames of each variant"></p>')
        compared = [v for v in ok if v.psnr]
        if compared:
            psnr = {v.name: v.psnr[i] for v in compared}
            ssim = {v.name: v.ssim[i] for v in compared}
            body.append('<div class="plots">' + line_plot_svg(psnr, title="PSNR vs dense, per frame", ylabel="dB")
                        + line_plot_svg(ssim, title="SSIM vs dense, per frame", ylabel="SSIM") + "</div>")
        body.append("</div>")
    failed = [v for v in result.variants if v.status != "ok"]
    for v in failed:
        body.append(f'<p class="fail"><b>{html.escape(v.name)} failed:</b> {html.escape(v.error or "")}</p>')
    body.append('<p>The numbers are in <a href="report.json">report.json</a>.</p>')
    page = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>radial-diffusers eval</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")
    (folder / "index.html").write_text(page, encoding="utf-8")


def _config_text(config: dict) -> str:
    keys = ("dense_layers", "dense_steps", "last_dense_steps", "decay_factor", "block_size", "adjacent", "sink")
    return "RadialConfig(" + ", ".join(f"{k}={config[k]!r}" for k in keys if k in config) + ")"
