"""Launch-config choice (radial_diffusers.attention.triton_tuning): persisted per GPU model / Triton version / shape
class, never timed under CUDA-graph capture or with RADIAL_TRITON_AUTOTUNE=0, atomic cache writes; and the choice
between the portable and the Hopper (TMA) forward. Pure selection logic: fake launches, no kernels."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("triton")
from triton.runtime.errors import OutOfResources  # noqa: E402

from radial_diffusers.attention import triton_kernels as tk  # noqa: E402
from radial_diffusers.attention import triton_tuning as tt  # noqa: E402

CANDIDATES = [(128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3), (32, 32, 4, 2)]
KEY = ("NVIDIA H100 80GB HBM3", (9, 0), "fwd", 128, 128, 2, (64, 131072, 64))


class Launches:
    """A fake ``launch``: records configs; raises OutOfResources for those in ``oor``."""

    def __init__(self, oor=()):
        self.calls, self.oor = [], set(oor)

    def __call__(self, cfg):
        self.calls.append(cfg)
        if cfg in self.oor:
            raise OutOfResources(300_000, 232_448, "shared memory")


@pytest.fixture
def cache_file(monkeypatch, tmp_path):
    """A fresh in-memory cache, a tuning file of this test's own, autotuning on, not capturing."""
    monkeypatch.setattr(tt, "CACHE", tt.TuningCache())
    path = tmp_path / "sub" / "tuning.json"
    monkeypatch.setenv("RADIAL_TRITON_CACHE", str(path))
    monkeypatch.delenv("RADIAL_TRITON_AUTOTUNE", raising=False)
    monkeypatch.setattr(tt, "capturing", lambda: False)
    return path


@pytest.fixture
def timings(monkeypatch):
    """``do_bench`` replaced by a table of times per config (the fastest: CANDIDATES[2]); records what it timed."""
    table = {c: 1.0 + i for i, c in enumerate(CANDIDATES)}
    table[CANDIDATES[2]] = 0.25
    timed = []

    def fake_bench(fn, **kwargs):
        fn()
        timed.append(current["launch"].calls[-1])
        return table[timed[-1]]

    current = {}
    monkeypatch.setattr(tt.triton.testing, "do_bench", fake_bench)
    return timed, current


def test_tuned_choice_is_persisted_and_reused_by_a_new_process(cache_file, timings):
    timed, current = timings
    launch = current["launch"] = Launches(oor=[CANDIDATES[1]])
    assert tt.pick("fwd", launch, CANDIDATES, KEY, on_cuda=True) == CANDIDATES[2]
    assert timed == [CANDIDATES[0], CANDIDATES[2], CANDIDATES[3]]  # the one that does not fit is skipped
    assert launch.calls[-1] == CANDIDATES[2]  # the winner runs last: its output is the call's
    entries = json.loads(cache_file.read_text())
    (name, cfg), = entries.items()
    assert cfg == list(CANDIDATES[2]) and name.startswith(tt.triton.__version__ + "|NVIDIA H100")
    assert not list(cache_file.parent.glob("*.tmp"))  # written atomically: no temporary left behind

    # a new process (fresh memory) on the same GPU model and Triton version: read, not timed
    tt.CACHE = tt.TuningCache()
    timed.clear()
    launch = current["launch"] = Launches()
    assert tt.pick("fwd", launch, CANDIDATES, KEY, on_cuda=True) == CANDIDATES[2]
    assert timed == [] and launch.calls == [CANDIDATES[2]]

    # another GPU model tunes for itself and keeps the first entry in the file
    other = ("NVIDIA A100-SXM4-80GB", (8, 0)) + KEY[2:]
    launch = current["launch"] = Launches()
    tt.pick("fwd", launch, CANDIDATES, other, on_cuda=True)
    assert len(timed) == 4 and len(json.loads(cache_file.read_text())) == 2


def test_processes_tuning_one_key_at_once_adopt_the_first_written_entry(cache_file, timings):
    """Another process writes its winner for the key while this one is timing: this one launches and keeps that
    entry, not its own winner, so both give the same bits."""
    timed, current = timings
    theirs = CANDIDATES[3]

    def other_process_finishes_first(cfg):
        if len(launch.calls) == 1:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            cache_file.write_text(json.dumps({tt.TuningCache.file_key(KEY): list(theirs)}))
        Launches.__call__(launch, cfg)

    launch = current["launch"] = Launches()
    launch.__class__ = type("RacingLaunches", (Launches,), {"__call__": lambda self, cfg: other_process_finishes_first(cfg)})
    assert tt.pick("fwd", launch, CANDIDATES, KEY, on_cuda=True) == theirs
    assert len(timed) == len(CANDIDATES) and launch.calls[-1] == theirs  # timed its own, launched theirs
    assert json.loads(cache_file.read_text()) == {tt.TuningCache.file_key(KEY): list(theirs)}
    assert tt.CACHE.memory[KEY] == theirs


def test_a_persisted_entry_from_another_triton_version_is_not_used(cache_file, timings, monkeypatch):
    timed, current = timings
    current["launch"] = Launches()
    tt.pick("fwd", current["launch"], CANDIDATES, KEY, on_cuda=True)
    tt.CACHE = tt.TuningCache()
    monkeypatch.setattr(tt.triton, "__version__", "99.0.0")
    timed.clear()
    current["launch"] = Launches()
    tt.pick("fwd", current["launch"], CANDIDATES, KEY, on_cuda=True)
    assert len(timed) == len(CANDIDATES)  # tuned again


def test_capture_and_autotune_off_use_the_fixed_default_without_timing(cache_file, timings, monkeypatch):
    timed, current = timings
    monkeypatch.setattr(tt, "capturing", lambda: True)
    launch = current["launch"] = Launches(oor=[CANDIDATES[0]])
    assert tt.pick("fwd", launch, CANDIDATES, KEY, on_cuda=True) == CANDIDATES[1]  # first that fits
    assert timed == [] and launch.calls == CANDIDATES[:2]
    assert not cache_file.exists()  # a default is not persisted
    # the same process after the capture keeps the captured choice (eager and graph replays give the same bits)
    monkeypatch.setattr(tt, "capturing", lambda: False)
    launch = current["launch"] = Launches()
    assert tt.pick("fwd", launch, CANDIDATES, KEY, on_cuda=True) == CANDIDATES[1]
    assert timed == []

    # RADIAL_TRITON_AUTOTUNE=0: the default, nothing timed, nothing written
    tt.CACHE = tt.TuningCache()
    for off in ("0", "false", "OFF", " no "):
        monkeypatch.setenv("RADIAL_TRITON_AUTOTUNE", off)
        assert not tt.autotune_enabled()
    launch = current["launch"] = Launches()
    assert tt.pick("fwd", launch, CANDIDATES, KEY, on_cuda=True) == CANDIDATES[0]
    assert timed == [] and launch.calls == [CANDIDATES[0]] and not cache_file.exists()


def test_capture_uses_a_persisted_choice_made_before(cache_file, timings, monkeypatch):
    """A config tuned in an earlier process is found under capture too, so the graph runs the tuned kernel."""
    timed, current = timings
    current["launch"] = Launches()
    tt.pick("fwd", current["launch"], CANDIDATES, KEY, on_cuda=True)
    tt.CACHE = tt.TuningCache()
    monkeypatch.setattr(tt, "capturing", lambda: True)
    timed.clear()
    launch = current["launch"] = Launches()
    assert tt.pick("fwd", launch, CANDIDATES, KEY, on_cuda=True) == CANDIDATES[2]
    assert timed == [] and launch.calls == [CANDIDATES[2]]


def test_unreadable_or_stale_cache_files_are_retuned(cache_file, timings):
    timed, current = timings
    cache_file.parent.mkdir(parents=True)
    cache_file.write_text("{ not json")
    current["launch"] = Launches()
    tt.pick("fwd", current["launch"], CANDIDATES, KEY, on_cuda=True)
    assert len(timed) == 4 and json.loads(cache_file.read_text())  # rewritten as valid JSON
    # an entry naming a config no longer offered (e.g. after an upgrade of our candidate lists) is ignored
    cache_file.write_text(json.dumps({tt.TuningCache.file_key(KEY): [256, 256, 8, 9]}))
    tt.CACHE = tt.TuningCache()
    timed.clear()
    current["launch"] = Launches()
    assert tt.pick("fwd", current["launch"], CANDIDATES, KEY, on_cuda=True) == CANDIDATES[2]
    assert len(timed) == 4
    # entries that are not configs (a hand edit, a truncated write of another tool) are tuned again, not raised on
    for bad in (["a", "b", "c", "d"], [None, 1, 2, 3], [True, 64, 4, 3], [128, 0, 8, 3], [128, 64, 8], 7):
        cache_file.write_text(json.dumps({tt.TuningCache.file_key(KEY): bad}))
        tt.CACHE = tt.TuningCache()
        timed.clear()
        current["launch"] = Launches()
        assert tt.pick("fwd", current["launch"], CANDIDATES, KEY, on_cuda=True) == CANDIDATES[2], bad
        assert len(timed) == 4 and json.loads(cache_file.read_text())[tt.TuningCache.file_key(KEY)] == [64, 64, 4, 3]


def test_persist_waits_for_a_process_writing_the_file_and_adopts_its_entry(cache_file):
    """The read-merge-write of ``persist`` holds a lock: a writer that holds it first (another process finishing its
    tuning) wins, and the waiting one adopts its entry instead of overwriting it."""
    import threading

    cache_file.parent.mkdir(parents=True)
    other_key = KEY[:-1] + ((1, 1, 1),)
    result = {}
    with tt._locked(cache_file):
        waiting = threading.Thread(target=lambda: result.update(cfg=tt.TuningCache().persist(KEY, CANDIDATES[0],
                                                                                                 CANDIDATES)))
        waiting.start()
        waiting.join(0.5)
        assert waiting.is_alive()  # blocked on the lock
        cache_file.write_text(json.dumps({tt.TuningCache.file_key(KEY): list(CANDIDATES[3]),
                                          tt.TuningCache.file_key(other_key): list(CANDIDATES[1])}))
    waiting.join(30)
    assert result["cfg"] == CANDIDATES[3]
    assert json.loads(cache_file.read_text()) == {tt.TuningCache.file_key(KEY): list(CANDIDATES[3]),
                                                  tt.TuningCache.file_key(other_key): list(CANDIDATES[1])}
    # a new key is merged beside the entries of others, and no temporary file is left behind
    assert tt.TuningCache().persist(KEY[:-1] + ((2, 2, 2),), CANDIDATES[2], CANDIDATES) == CANDIDATES[2]
    assert len(json.loads(cache_file.read_text())) == 3
    assert not list(cache_file.parent.glob("*.tmp"))


def test_an_unwritable_cache_warns_and_keeps_the_choice_for_the_process(monkeypatch, tmp_path, timings):
    timed, current = timings
    monkeypatch.setattr(tt, "CACHE", tt.TuningCache())
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("RADIAL_TRITON_CACHE", str(blocker / "tuning.json"))  # its parent is a file
    monkeypatch.setattr(tt, "capturing", lambda: False)
    current["launch"] = Launches()
    with pytest.warns(UserWarning, match="RADIAL_TRITON_CACHE"):
        assert tt.pick("fwd", current["launch"], CANDIDATES, KEY, on_cuda=True) == CANDIDATES[2]
    current["launch"] = Launches()
    assert tt.pick("fwd", current["launch"], CANDIDATES, KEY, on_cuda=True) == CANDIDATES[2]


def test_nothing_fits_raises_and_caches_nothing(cache_file):
    launch = Launches(oor=CANDIDATES)
    with pytest.raises(RuntimeError, match="no Triton fwd config fits this device"):
        tt.pick("fwd", launch, CANDIDATES, KEY, on_cuda=False)
    assert launch.calls == CANDIDATES and tt.CACHE.memory == {}


def test_shape_classes_and_cache_location(monkeypatch, tmp_path):
    assert tt.shape_class(48, 75_600, 37) == (64, 131072, 64)
    assert tt.shape_class(40, 69_120, 40) == tt.shape_class(64, 65_537, 64)  # one bucket
    assert tt.shape_class(1, 1, 0) == (1, 1, 1)
    monkeypatch.delenv("RADIAL_TRITON_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert tt.cache_path() == tmp_path / "radial_diffusers" / "triton_configs.json"
    monkeypatch.setenv("RADIAL_TRITON_CACHE", "~/x.json")
    assert tt.cache_path().name == "x.json" and "~" not in str(tt.cache_path())


# ----------------------------------------------------------------------------------------------------------------
# portable vs Hopper (TMA) forward
# ----------------------------------------------------------------------------------------------------------------


def test_variant_choice(monkeypatch):
    monkeypatch.delenv("RADIAL_TRITON_KERNEL", raising=False)
    choose = tk.choose_variant
    ok = None
    assert choose("auto", ok, torch.bfloat16, (9, 0)) == "tma"
    assert choose("auto", ok, torch.float16, (9, 0)) == "tma"
    assert choose("auto", ok, torch.bfloat16, (10, 0)) == "portable"  # built and checked for sm_90 only
    assert choose("auto", ok, torch.bfloat16, (8, 9)) == "portable"  # no TMA before Hopper
    assert choose("auto", ok, torch.float32, (9, 0)) == "portable"
    assert choose("auto", ok, torch.bfloat16, None) == "portable"  # CPU / interpreter
    assert choose("auto", "strides", torch.bfloat16, (9, 0)) == "portable"
    assert choose("portable", ok, torch.bfloat16, (9, 0)) == "portable"
    assert choose("tma", ok, torch.float32, None) == "tma"  # forced: the interpreter runs it too
    with pytest.raises(ValueError, match="cannot run these inputs: strides.*RADIAL_TRITON_KERNEL=portable"):
        choose("tma", "strides", torch.bfloat16, (9, 0))
    with pytest.raises(ValueError, match="RADIAL_TRITON_KERNEL='hopper'.*auto"):
        choose("hopper", ok, torch.bfloat16, (9, 0))


@pytest.mark.parametrize("capability, ws_offered", [((9, 0), True), ((10, 0), False), ((12, 0), False)])
def test_warp_specialized_configs_are_offered_on_hopper_only(monkeypatch, capability, ws_offered):
    # Triton 3.9 fails the sm_100 build of the warp-specialized configs (a PassManager error, not OutOfResources,
    # so tuning would stop on it): off sm_90 a forced Hopper kernel tunes over its other configs only.
    seen = {}
    monkeypatch.setattr(tk, "interpreting", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
    monkeypatch.setattr(tk.triton_tuning, "device_kind", lambda: ("gpu", capability))
    monkeypatch.setattr(tk.triton_tuning, "pick", lambda kind, launch, cands, key, on_cuda: seen.update({kind: cands}))
    for kind in ("fwd_tma", "dq_tma"):
        tk._pick(kind, None, 128, 64, 2, (8, 4096, 8))
        every = tk.candidate_configs(kind, 128, 64, 2)
        assert any(len(c) == 5 and c[4] for c in every)  # the kernel has warp-specialized configs
        assert seen[kind] == (every if ws_offered else [c for c in every if len(c) < 5 or not c[4]])


def test_tma_eligibility_names_the_problem():
    from radial_diffusers.attention import triton_tma

    x = torch.randn(2, 64, 3, 32, dtype=torch.float16)
    assert triton_tma.ineligible((x, x, x), 0.2) is None
    assert "unit-stride" in triton_tma.ineligible((x.transpose(-1, -2).contiguous().transpose(-1, -2),), 0.2)
    odd = torch.randn(2, 64, 3, 36, dtype=torch.float16)[..., :30]  # rows of 72 bytes: strides not 16-byte multiples
    assert "16 bytes" in triton_tma.ineligible((odd,), 0.2)
    assert "positive" in triton_tma.ineligible((x,), -0.2)
    tiny = torch.randn(1, 64, 2, 4, dtype=torch.float16)
    assert "under 16 bytes" in triton_tma.ineligible((tiny,), 0.2)
    shifted = torch.randn(64 * 3 * 32 + 1, dtype=torch.float16)[1:].view(1, 64, 3, 32)
    assert "aligned" in triton_tma.ineligible((shifted,), 0.2)
    # the upstream gradient of (out * w).sum() with w of shape (D,): strides (0, 0, 0, 1)
    broadcast = torch.randn(32, dtype=torch.float16).expand(2, 64, 3, 32)
    assert "broadcast" in triton_tma.ineligible((x, broadcast), 0.2)
    one = torch.randn(64, 3, 32, dtype=torch.float16).as_strided((1, 64, 3, 32), (0, 96, 32, 1))
    assert triton_tma.ineligible((one,), 0.2) is None  # a size-1 dimension may have any stride


def test_gpu_bench_tuner_log_records_each_timed_candidate(cache_file, timings, capsys):
    """bench/attention.py's _TunerLog (what the GPU check prints per geometry): every candidate the tuner times, with
    its time and the chosen one marked, per tuning key; a key chosen before is listed once, untimed; the real
    ``pick`` and ``do_bench`` are back afterwards."""
    import importlib.util

    from scripts import REPO

    spec = importlib.util.spec_from_file_location("bench_attention", REPO / "bench" / "attention.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    _, current = timings
    launch = current["launch"] = Launches(oor=[CANDIDATES[1]])
    real_pick, real_bench = tt.pick, tt.triton.testing.do_bench
    fp8_key = KEY[:2] + ("fwdfp8",) + KEY[3:]
    with bench._TunerLog() as log:
        for key in (KEY, KEY, fp8_key):  # the second call finds the choice in memory
            assert tk.triton_tuning.pick("fwd", launch, CANDIDATES, key, on_cuda=True) == CANDIDATES[2]
        timed = [CANDIDATES[0], CANDIDATES[2], CANDIDATES[3]]  # the one that does not fit is skipped
        assert [(label, [c for c, _ in cfgs], chosen) for label, cfgs, chosen in log.records] == [
            ("fwd", timed, CANDIDATES[2]), ("fwdfp8", timed, CANDIDATES[2])]
        assert [ms for _, ms in log.records[0][1]] == [1.0, 0.25, 4.0]
        log.print_and_clear()
        assert not log.records
        tk.triton_tuning.pick("fwd", launch, CANDIDATES, KEY, on_cuda=True)  # seen before: not listed again
        assert not log.records
    assert tt.pick is real_pick and tt.triton.testing.do_bench is real_bench
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].strip() == "tuner fwd         128x64x8x3 1.000 ms, 64x64x4x3 0.250 ms (chosen), 32x32x4x2 4.000 ms"
    assert lines[1].strip().startswith("tuner fwdfp8      128x64x8x3 1.000 ms, 64x64x4x3 0.250 ms (chosen)")
    fresh = bench._TunerLog()
    with fresh:  # a new log (another geometry) finds the key in the process's memory: listed once, untimed
        tk.triton_tuning.pick("fwd", launch, CANDIDATES, KEY, on_cuda=True)
    fresh.print_and_clear()
    assert capsys.readouterr().out.strip() == "tuner fwd         64x64x4x3 (not timed: chosen before, or tuning off)"


def test_gpu_bench_reports_a_failing_case_and_goes_on(monkeypatch, capsys):
    """The GPU check has minutes of device time: a case that raises (a compile error, out of resources) is a FAIL row
    naming the error, and the other cases still run; a CUDA error (the context is unusable after it) stops the run."""
    import importlib.util

    from scripts import REPO

    spec = importlib.util.spec_from_file_location("bench_attention", REPO / "bench" / "attention.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bench, "DEVICE", "cpu")
    calls = []

    def compile_error(*args, **kwargs):
        calls.append(args[0].shape)
        raise tk.triton.compiler.errors.CompilationError("kernel.py", None, "ptxas: out of registers")

    monkeypatch.setattr(bench.rd, "block_sparse_attention", compile_error)
    assert bench.check(["torch"]) is False
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("torch")]
    assert len(rows) == len(calls) == 6  # 3 cases x 2 dtypes, each run and reported
    assert all("FAIL CompilationError" in row and "out of registers" in row for row in rows)

    def cuda_error(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(bench.rd, "block_sparse_attention", cuda_error)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        bench.check(["torch"])
