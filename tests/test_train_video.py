"""Tests for lora_training.video: dataset scanning and clip decoding on tiny synthetic videos."""

from __future__ import annotations

import json
from pathlib import Path

import imageio
import imageio.v3 as iio
import numpy as np
import pytest
import torch

from lora_training import video as video_mod
from lora_training.video import Clip, ClipError, ScanReport, read_clip, scan_dataset

STEP = 6  # brightness step between consecutive synthetic frames


def write_mp4(path: Path, frames: np.ndarray, fps: float = 24) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimwrite(path, frames, fps=fps, codec="libx264", quality=9, macro_block_size=1)
    return path


def ramp_frames(n: int, h: int = 32, w: int = 48) -> np.ndarray:
    """Flat grey frames whose brightness encodes the frame index (i * STEP)."""
    return np.stack([np.full((h, w, 3), i * STEP, np.uint8) for i in range(n)])


def frame_index(clip: torch.Tensor) -> list[int]:
    return [round(v / STEP) for v in clip.float().mean(dim=(1, 2, 3)).tolist()]


def touch(path: Path, text: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    if text is not None:
        path.with_suffix(".txt").write_text(text)


# ---------------------------------------------------------------- scan_dataset, folder mode


def test_folder_scan_pairs_captions_and_reports_skips(tmp_path):
    touch(tmp_path / "b.mp4", "  second clip \n")
    touch(tmp_path / "a.MOV", "first clip")
    touch(tmp_path / "sub" / "c.webm", "nested")
    touch(tmp_path / "d.mp4")  # no caption
    touch(tmp_path / "e.mkv", " \n\t")  # empty caption
    touch(tmp_path / ".hidden.mp4", "hidden")
    touch(tmp_path / ".cache" / "x.mp4", "in a hidden folder")
    (tmp_path / "notes.txt").write_text("not a video")
    (tmp_path / "image.png").write_bytes(b"")

    report = scan_dataset(tmp_path)
    assert isinstance(report, ScanReport)
    assert report.clips == [
        Clip(tmp_path / "a.MOV", "first clip"),
        Clip(tmp_path / "b.mp4", "second clip"),
        Clip(tmp_path / "sub" / "c.webm", "nested"),
    ]
    assert report.skipped == [
        ("d.mp4", "missing caption (expected d.txt)"),
        ("e.mkv", "empty caption"),
    ]


def test_root_missing_or_not_a_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        scan_dataset(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        scan_dataset(tmp_path / "file")


def test_no_usable_clip(tmp_path):
    touch(tmp_path / "a.mp4")
    touch(tmp_path / "b.mp4", "")
    with pytest.raises(ValueError, match=r"no usable clip.*2 skipped.*a\.mp4: missing caption.*b\.mp4: empty"):
        scan_dataset(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no usable clip.*no video found"):
        scan_dataset(tmp_path / "empty")


# ---------------------------------------------------------------- scan_dataset, manifest mode


def test_jsonl_manifest(tmp_path):
    data = tmp_path / "data"
    touch(data / "v1.mp4")
    touch(data / "clips" / "v2.mp4")
    touch(tmp_path / "elsewhere" / "v3.mp4")
    lines = [
        json.dumps({"video": "v1.mp4", "caption": "one"}),
        "",
        json.dumps({"file_name": "clips/v2.mp4", "text": " two "}),
        "{not json",
        json.dumps({"path": "v1.mp4"}),
        json.dumps({"caption": "no video"}),
        json.dumps({"video": "missing.mp4", "prompt": "gone"}),
        json.dumps({"video": str(tmp_path / "elsewhere" / "v3.mp4"), "prompt": "absolute"}),
        json.dumps(["a", "list"]),
    ]
    (data / "train.jsonl").write_text("\n".join(lines) + "\n")

    report = scan_dataset(tmp_path, "data/train.jsonl")  # relative to root; videos relative to data/
    assert report.clips == [
        Clip(data / "v1.mp4", "one"),
        Clip(data / "clips" / "v2.mp4", "two"),
        Clip(tmp_path / "elsewhere" / "v3.mp4", "absolute"),
    ]
    refs = [ref for ref, _ in report.skipped]
    reasons = [why for _, why in report.skipped]
    assert refs == ["train.jsonl:4", "train.jsonl:5", "train.jsonl:6", "train.jsonl:7", "train.jsonl:9"]
    assert reasons[0].startswith("line 4: not valid JSON")
    assert reasons[1:3] == ["line 5: no caption field", "line 6: no video field"]
    assert reasons[3].startswith("line 7: video not found") and "missing.mp4" in reasons[3]
    assert reasons[4] == "line 9: not a JSON object"

    # An absolute manifest path works too.
    assert scan_dataset(tmp_path, data / "train.jsonl").clips == report.clips


def test_csv_manifest(tmp_path):
    touch(tmp_path / "a.mp4")
    touch(tmp_path / "b.gif")
    (tmp_path / "meta.csv").write_text(
        'file_name,prompt\na.mp4,"a dog, running"\nmissing.mp4,lost\nb.gif,\nb.gif,  a gif \n'
    )
    report = scan_dataset(tmp_path, "meta.csv")
    assert report.clips == [Clip(tmp_path / "a.mp4", "a dog, running"), Clip(tmp_path / "b.gif", "a gif")]
    assert [ref for ref, _ in report.skipped] == ["meta.csv:3", "meta.csv:4"]
    assert report.skipped[0][1].startswith("line 3: video not found")
    assert report.skipped[1][1] == "line 4: empty caption"


def test_csv_manifest_without_needed_columns(tmp_path):
    (tmp_path / "meta.csv").write_text("name,desc\na.mp4,x\n")
    with pytest.raises(ValueError, match="caption column"):
        scan_dataset(tmp_path, "meta.csv")


def test_manifest_errors(tmp_path):
    with pytest.raises(ValueError, match="manifest .*does not exist"):
        scan_dataset(tmp_path, "nope.jsonl")
    (tmp_path / "m.json").write_text("[]")
    with pytest.raises(ValueError, match="unknown extension"):
        scan_dataset(tmp_path, "m.json")
    (tmp_path / "m.jsonl").write_text(json.dumps({"video": "missing.mp4", "caption": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"no usable clip.*1 skipped.*line 1: video not found"):
        scan_dataset(tmp_path, "m.jsonl")


# ---------------------------------------------------------------- read_clip


@pytest.fixture(scope="module")
def ramp_video(tmp_path_factory) -> Path:
    """40 frames, 24 fps, 32x48, brightness = 6 * frame index."""
    return write_mp4(tmp_path_factory.mktemp("vid") / "ramp.mp4", ramp_frames(40), fps=24)


def test_read_clip_consecutive_frames(ramp_video):
    clip = read_clip(ramp_video, num_frames=12, height=16, width=24)
    assert clip.shape == (12, 16, 24, 3) and clip.dtype == torch.uint8
    assert frame_index(clip) == list(range(12))


def test_read_clip_fps_subsampling(ramp_video):
    clip = read_clip(ramp_video, num_frames=14, height=32, width=48, fps=8)  # every 3rd of 24 fps
    assert clip.shape == (14, 32, 48, 3)
    assert frame_index(clip) == list(range(0, 40, 3))
    clip = read_clip(ramp_video, num_frames=5, height=8, width=8, fps=16)  # 1.5 source frames per step
    assert frame_index(clip) == [round(i * 1.5) for i in range(5)]


def test_read_clip_too_short(ramp_video):
    with pytest.raises(ClipError, match="too short: 40 frames at 24 fps, need 41 frames"):
        read_clip(ramp_video, num_frames=41, height=8, width=8)
    with pytest.raises(ClipError, match="too short: 40 frames at 24 fps, need 15 frames at 8 fps"):
        read_clip(ramp_video, num_frames=15, height=8, width=8, fps=8)  # needs source frame 42


def test_read_clip_resize_and_center_crop(tmp_path):
    # 64x96 source: red | green | blue bands of 16, 64, 16 columns.  Covering 32x32 scales to 32x48 and
    # crops 8 columns off each side, which is exactly the red and blue bands.
    frame = np.zeros((64, 96, 3), np.uint8)
    frame[:, :16, 0] = 255
    frame[:, 16:80, 1] = 255
    frame[:, 80:, 2] = 255
    path = write_mp4(tmp_path / "bands.mp4", np.stack([frame] * 3))

    clip = read_clip(path, num_frames=2, height=32, width=32).float()
    assert clip.shape == (2, 32, 32, 3)
    inner = clip[:, :, 2:-2]
    assert inner[..., 1].min() > 180 and inner[..., 0].max() < 60 and inner[..., 2].max() < 60

    # Without cropping (same aspect ratio) the borders stay.
    full = read_clip(path, num_frames=1, height=32, width=48).float()[0]
    assert full[:, :4, 0].mean() > 180 and full[:, -4:, 2].mean() > 180 and full[:, 20:28, 1].mean() > 180


def test_read_clip_upscales_small_source(ramp_video):
    clip = read_clip(ramp_video, num_frames=2, height=64, width=64)  # 32x48 -> 64x96 -> crop 64x64
    assert clip.shape == (2, 64, 64, 3)
    assert frame_index(clip) == [0, 1]


def test_read_clip_gif_grayscale(tmp_path):
    frames = np.stack([np.full((16, 24), i * 20, np.uint8) for i in range(8)])  # mode L gif
    path = tmp_path / "g.gif"
    iio.imwrite(path, frames, duration=100, loop=0, plugin="pillow")  # 10 fps
    clip = read_clip(path, num_frames=4, height=16, width=24, fps=5)
    assert clip.shape == (4, 16, 24, 3) and clip.dtype == torch.uint8
    assert clip.float().mean(dim=(1, 2, 3)).tolist() == [0, 40, 80, 120]


def test_read_clip_corrupt_or_missing(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ClipError, match="unreadable video: ") as info:
        read_clip(bad, num_frames=2, height=8, width=8)
    assert "\n" not in str(info.value)
    with pytest.raises(ClipError, match="unreadable video: file not found"):
        read_clip(tmp_path / "missing.mp4", num_frames=2, height=8, width=8)


@pytest.mark.parametrize(
    "kwargs",
    [dict(num_frames=0), dict(num_frames=True), dict(height=-1), dict(width=1.5), dict(fps=0), dict(fps=-2.0),
     dict(fps=float("nan")), dict(fps="8")],
)
def test_read_clip_bad_arguments(ramp_video, kwargs):
    args = dict(num_frames=2, height=8, width=8, fps=None) | kwargs
    with pytest.raises(ValueError):
        read_clip(ramp_video, **args)


class FakeReader:
    """Stands in for imageio's ffmpeg reader: counts how many frames were decoded."""

    def __init__(self, n: int, meta: dict):
        self.n, self.meta, self.decoded, self.closed = n, meta, 0, False

    def get_meta_data(self) -> dict:
        return self.meta

    def __iter__(self):
        for i in range(self.n):
            self.decoded += 1
            yield np.full((4, 4, 3), i, np.uint8)

    def close(self) -> None:
        self.closed = True


def test_read_clip_stops_decoding_early_and_handles_missing_fps(tmp_path, monkeypatch):
    path = tmp_path / "long.mp4"
    path.write_bytes(b"")
    readers: list[FakeReader] = []

    meta = {"fps": 30.0}

    def fake_get_reader(uri, fmt):
        readers.append(FakeReader(10_000, dict(meta)))
        return readers[-1]

    monkeypatch.setattr(video_mod.imageio, "get_reader", fake_get_reader)
    clip = read_clip(path, num_frames=4, height=4, width=4, fps=10)
    assert clip[:, 0, 0, 0].tolist() == [0, 3, 6, 9]
    assert readers[-1].decoded == 10 and readers[-1].closed

    meta["fps"] = None  # no fps metadata: frames are taken as consecutive
    clip = read_clip(path, num_frames=4, height=4, width=4, fps=10)
    assert clip[:, 0, 0, 0].tolist() == [0, 1, 2, 3]
    assert readers[-1].decoded == 4 and readers[-1].closed
