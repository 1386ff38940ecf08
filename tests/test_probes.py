"""The measurement probes: state bytes, step peak memory, launches, bandwidth, environment."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch

from workbench.harness import bandwidth, cache, environment, launches, measure, memory

CPU = torch.device("cpu")
MiB = 1 << 20


def _adamax(n: int, numel: int, device: torch.device, foreach: bool) -> torch.optim.Adamax:
    """A torch.optim.Adamax over n params of numel fp32 elements, stepped once (state exists)."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(numel, generator=gen).to(device).requires_grad_() for _ in range(n)]
    for p in params:
        p.grad = torch.randn(numel, generator=gen).to(device)
    opt = torch.optim.Adamax(params, foreach=foreach)
    opt.step()
    return opt


# ---- state_bytes ----------------------------------------------------------------------------


def test_state_bytes_adamax_fp32_is_two_buffers_plus_steps() -> None:
    params = [torch.randn(s, requires_grad=True) for s in [(1000,), (30, 40), (7,)]]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = torch.optim.Adamax(params)
    opt.step()
    steps = [opt.state[p]["step"] for p in params]
    assert all(s.dtype == torch.float32 and s.numel() == 1 for s in steps)
    numel = sum(p.numel() for p in params)
    assert memory.state_bytes(opt) == 2 * numel * 4 + len(params) * 4


def test_state_bytes_counts_a_shared_storage_once_at_full_size() -> None:
    p = torch.zeros(4, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.1)
    buf = torch.zeros(100, dtype=torch.float64)
    opt.state[p] = {
        "whole": buf,
        "view": buf[10:20],  # same storage: no extra bytes
        "nested": [buf[:5], torch.zeros(3, dtype=torch.float16)],
        "step": torch.tensor(1.0),
        "lr": 0.1,  # not a tensor: ignored
    }
    assert memory.state_bytes(opt) == 100 * 8 + 3 * 2 + 4


# ---- step_peak_bytes, CPU -------------------------------------------------------------------


def test_cpu_peak_adamax_foreach_vs_forloop() -> None:
    """DESIGN.md's numbers: on CPU, torch's foreach Adamax (10 x 1M fp32) holds a params-sized
    temporary (40 MB) above its inputs; the forloop one a single param's worth (4 MB)."""
    foreach = _adamax(10, 1_000_000, CPU, foreach=True)
    peak_foreach = memory.step_peak_bytes(foreach.step, CPU)
    del foreach
    forloop = _adamax(10, 1_000_000, CPU, foreach=False)
    peak_forloop = memory.step_peak_bytes(forloop.step, CPU)
    assert peak_foreach == pytest.approx(40e6, abs=0.5e6)
    assert peak_forloop == pytest.approx(4e6, abs=0.5e6)


def test_cpu_peak_is_the_memory_timeline_peak() -> None:
    """The running sum of raw allocation events agrees with the categorised timeline that
    `export_memory_timeline` writes (which starts from the live tensors' total)."""
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    opt = _adamax(4, 250_000, CPU, foreach=True)
    prof = memory._profile_cpu_step(opt.step)
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline("cpu")
    totals = [sum(row) for row in sizes]
    assert (
        memory._peak_from_profile(prof, CPU)
        == max(totals) - totals[0]
        == pytest.approx(4e6, abs=1e4)
    )


def test_cpu_peak_of_an_in_place_step_is_zero() -> None:
    p, g = torch.randn(1_000_000), torch.randn(1_000_000)
    assert memory.step_peak_bytes(lambda: p.add_(g, alpha=-0.1), CPU) == 0


def test_cpu_peak_sees_a_temporary() -> None:
    x = torch.randn(2 * MiB)  # 8 MiB of fp32

    def step() -> None:
        x.add_((x * 0.5).sum())  # the product is an 8 MiB temporary

    peak = memory.step_peak_bytes(step, CPU)
    assert peak is not None and 8 * MiB <= peak < 8 * MiB + 64 * 1024


def test_cpu_peak_is_a_running_max_not_a_total() -> None:
    def step() -> torch.Tensor:
        big = torch.empty(2 * MiB)  # 8 MiB, freed before the next allocation
        del big
        return torch.empty(MiB)  # 4 MiB

    peak = memory.step_peak_bytes(step, CPU)
    assert peak is not None and 8 * MiB <= peak < 9 * MiB


def test_cpu_peak_starts_from_the_level_before_the_step() -> None:
    """Replacing a held buffer frees an old tensor: the peak is the new one, not new - old."""
    held = [torch.empty(MiB)]

    def step() -> None:
        held[0] = torch.ones(MiB)  # allocate 4 MiB, then free the old 4 MiB

    assert memory.step_peak_bytes(step, CPU) == pytest.approx(4 * MiB, abs=1024)


# ---- launches -------------------------------------------------------------------------------


def _foreach_and_loop(ts: list[torch.Tensor]) -> tuple[Callable[[], object], Callable[[], object]]:
    return (lambda: torch._foreach_mul_(ts, 0.5)), (lambda: [t.mul_(0.5) for t in ts])


def test_cpu_launches_count_top_level_aten_ops() -> None:
    ts = [torch.randn(100) for _ in range(10)]
    foreach, loop = _foreach_and_loop(ts)
    assert launches.launch_unit(CPU) == "aten_ops"
    # the CPU foreach op runs per-tensor aten ops inside itself: those do not count
    assert launches.kernel_launches(foreach, CPU) == 1
    assert launches.kernel_launches(loop, CPU) == 10
    # a composite op (linear: t, addmm, ...) is one dispatch from Python
    w, x = torch.randn(4, 8), torch.randn(2, 8)
    assert launches.kernel_launches(lambda: torch.nn.functional.linear(x, w), CPU) == 1


def test_cpu_launches_count_each_fused_c_kernel_call_once() -> None:
    """The fused backend's C kernels bypass the dispatcher; each call is still one launch, and
    the copies a param that is not one dense block goes through count besides it."""
    from workbench.optim import Adam

    def fused_step_launches(params: list[torch.Tensor]) -> int | None:
        for p in params:
            p.grad = torch.randn_like(p)
        opt = Adam(params, backend="fused")
        opt.step()  # state (and the kernel's build) outside the count
        return launches.kernel_launches(opt.step, CPU)

    dense = [torch.randn(100, requires_grad=True) for _ in range(3)]
    strided = torch.randn(4, 6)[:, ::2].requires_grad_()
    assert fused_step_launches(dense) == 1
    assert fused_step_launches([*dense, strided]) > 1


def test_cpu_launches_foreach_adamax_dispatches_fewer_ops() -> None:
    foreach = _adamax(10, 1000, CPU, foreach=True)
    forloop = _adamax(10, 1000, CPU, foreach=False)
    assert launches.kernel_launches(foreach.step, CPU) < launches.kernel_launches(forloop.step, CPU)


def test_trace_writes_a_chrome_trace_with_each_step(tmp_path: Path) -> None:
    x = torch.randn(1000)
    path = launches.trace(lambda: x.mul_(0.5), CPU, tmp_path / "sub" / "trace.json", steps=2)
    events = json.loads(path.read_text())["traceEvents"]
    names = {e.get("name") for e in events}
    assert {"workbench.step#0", "workbench.step#1", "aten::mul_"} <= names


# ---- bandwidth ------------------------------------------------------------------------------


def test_achieved_bandwidth_arithmetic() -> None:
    assert bandwidth.achieved_bandwidth(3e9, 1.5) == 2e9
    with pytest.raises(ValueError):
        bandwidth.achieved_bandwidth(1e9, 0.0)


def test_cpu_stream_bandwidth_is_plausible() -> None:
    bw = bandwidth.stream_bandwidth(CPU)
    # any machine this runs on streams between 0.5 GB/s and 2 TB/s
    assert 0.5e9 < bw < 2e12


def test_probe_takes_the_faster_of_copy_and_in_place_update(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An optimizer step updates in place; on CPUs a copy also pays write-allocate reads that no
    byte count sees, so the in-place pass can be the ceiling. Bytes: 2x the buffer for the copy,
    3x for the update (two reads, one write)."""
    seen: list[float] = []
    timings = iter([0.010, 0.012])  # copy: 10 ms, in-place update: 12 ms

    def fake_median(one_pass, warmup, reps, min_s):
        one_pass()
        seen.append(min_s)
        return next(timings)

    monkeypatch.setattr(bandwidth, "_median_cpu_s", fake_median)
    bw = bandwidth.stream_bandwidth(CPU, nbytes=4 * MiB, min_s=1.0)
    assert bw == pytest.approx(3 * 4 * MiB / 0.012)  # 1.05 GB/s beats the copy's 0.84
    assert seen == [0.5, 0.5]  # the probe's time is shared between its two passes


def test_cpu_default_buffer_is_twice_the_measured_cache(monkeypatch) -> None:
    monkeypatch.setattr(cache, "_measured", {"bytes": 128 * MiB})
    assert bandwidth._cpu_default_bytes() == 256 * MiB
    monkeypatch.setattr(cache, "_measured", {"bytes": 8 * MiB})
    assert bandwidth._cpu_default_bytes() == 64 * MiB  # never below the floor


def test_parse_cache_size() -> None:
    assert cache._parse_size("32768K") == 32 * MiB
    assert cache._parse_size("2M") == 2 * MiB
    assert cache._parse_size("4096") == 4096


# ---- environment ----------------------------------------------------------------------------


def test_environment_has_every_key_and_a_reason_for_each_none() -> None:
    env = environment.capture_environment()
    expected = {
        "git_sha", "git_dirty", "python", "torch", "torch_cuda", "numpy", "triton", "cpu_model",
        "logical_cores", "torch_threads", "hostname", "os", *environment.GPU_KEYS, "unavailable",
    }  # fmt: skip
    assert expected <= env.keys()
    json.dumps(env)  # goes into manifest.json as is
    assert env["torch"] == torch.__version__
    assert env["logical_cores"] >= 1 and env["torch_threads"] == torch.get_num_threads()
    for key, value in env.items():
        if value is None and key != "torch_cuda":  # torch_cuda is None on CPU builds: a fact
            assert env["unavailable"].get(key), key
    if not torch.cuda.is_available():
        assert all(env[k] is None for k in environment.GPU_KEYS)


def test_environment_git_state_of_this_checkout() -> None:
    env = environment.capture_environment()
    if env["git_sha"] is None:
        pytest.skip(f"package is not in a git checkout: {env['unavailable']['git_sha']}")
    assert re.fullmatch(r"[0-9a-f]{40}", env["git_sha"])
    assert isinstance(env["git_dirty"], bool)
    # the committer date of HEAD, with its zone: `workbench history` orders runs by it
    committed = datetime.fromisoformat(env["git_commit_time"])
    assert committed.tzinfo is not None and committed <= datetime.now(timezone.utc)


def test_environment_outside_git_gives_none_and_a_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(environment, "_REPO_DIR", tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    env = environment.capture_environment()
    assert env["git_sha"] is None and env["git_dirty"] is None and env["git_commit_time"] is None
    assert env["unavailable"]["git_sha"] and env["unavailable"]["git_commit_time"]


def test_capabilities_on_cpu_name_what_is_missing() -> None:
    caps = environment.capabilities(CPU)
    for key in (
        "latency_cuda_events",
        "peak_allocator_stats",
        "gpu_telemetry",
    ):
        assert caps[key], key
    assert caps["stream_bandwidth"] is None and caps["peak_profiler_memory"] is None
    assert "aten ops" in caps["kernel_launches"]
    assert environment.capabilities("cpu") == caps  # the runner passes device strings


def test_probes_take_device_strings() -> None:
    x, y = torch.randn(1000), torch.randn(1000)
    assert launches.launch_unit("cpu") == "aten_ops"
    assert launches.kernel_launches(lambda: x.add_(y), "cpu") == 1
    assert memory.step_peak_bytes(lambda: x.add_(y), "cpu") == 0
    # a Python scalar operand is wrapped in a 0-dim tensor: the probe sees even that
    assert 0 < memory.step_peak_bytes(lambda: x.mul_(0.5), "cpu") < 64


# ---- CUDA -----------------------------------------------------------------------------------

CUDA = torch.device("cuda")


@pytest.mark.cuda
def test_cuda_peak_sees_a_temporary_and_not_the_inputs() -> None:
    x = torch.randn(2 * MiB, device=CUDA)
    assert memory.step_peak_bytes(lambda: x.add_(1.0), CUDA) == 0
    peak = memory.step_peak_bytes(lambda: x.add_((x * 0.5).sum()), CUDA)
    assert peak is not None and 8 * MiB <= peak < 9 * MiB


@pytest.mark.cuda
def test_cuda_state_bytes_and_foreach_peak() -> None:
    opt = _adamax(10, 1_000_000, CUDA, foreach=True)
    assert memory.state_bytes(opt) == 2 * 10_000_000 * 4 + 10 * 4
    peak = memory.step_peak_bytes(opt.step, CUDA)
    # a grads-sized temporary, as on CPU; the caching allocator may hand out blocks up to 1 MiB
    # larger than asked when the remainder is too small to split
    assert peak is not None and 39e6 <= peak <= 48e6


@pytest.mark.cuda
def test_cuda_launches_count_device_kernels() -> None:
    ts = [torch.randn(1000, device=CUDA) for _ in range(10)]
    foreach, loop = _foreach_and_loop(ts)
    assert launches.launch_unit(CUDA) == "cuda_kernels"
    assert launches.kernel_launches(foreach, CUDA) == 1  # one multi-tensor-apply launch
    assert launches.kernel_launches(loop, CUDA) == 10
    assert launches.kernel_launches(lambda: ts[0] * 2, CUDA) == 1


@pytest.mark.cuda
def test_cuda_launches_include_triton_kernels() -> None:
    from torch.profiler import ProfilerActivity, profile

    from workbench.optim import Adamax

    params = [torch.randn(n, device=CUDA, requires_grad=True) for n in (1000, 10, 300)]
    params.append(torch.randn(50, device=CUDA, dtype=torch.float64, requires_grad=True))
    for p in params:
        p.grad = torch.randn_like(p)
    opt = Adamax(params, backend="fused")
    opt.step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        opt.step()
        torch.cuda.synchronize()
    triton = [
        e for e in prof.events() if "adamax_kernel" in e.name and launches._is_device_kernel(e)
    ]
    # one launch per (device, dtype) group: none of these lengths is a multiple of 16, so no
    # group is split into an aligned and a ragged launch
    assert len(triton) == 2
    assert launches._count_cuda_kernels(prof.events()) >= 2


@pytest.mark.cuda
def test_cuda_stream_bandwidth_and_environment() -> None:
    assert bandwidth.stream_bandwidth(CUDA) > 100e9  # any datacenter GPU streams faster
    env = environment.capture_environment(CUDA)
    assert env["gpu_name"] and env["torch_cuda"]
    assert environment.capabilities(CUDA)["latency_cuda_events"] is None


def test_the_in_window_monitors_turn_pass_times_into_rates_and_their_spread() -> None:
    from workbench.harness.bandwidth import DispatchMonitor, StreamMonitor

    stream, ops = StreamMonitor(torch.device("cpu")), DispatchMonitor()
    seconds = [0.010, 0.011, 0.012, 0.013, 0.020]  # one slow pass: the median is not the mean
    fields = stream.window_fields(seconds)
    assert fields["probe_window_bw"] == pytest.approx(stream.bytes_per_pass / 0.012)
    rates = sorted(stream.bytes_per_pass / s for s in seconds)
    assert fields["probe_window_spread"] == pytest.approx((rates[3] - rates[1]) / rates[2])
    fields = ops.window_fields(seconds)
    assert fields["probe_window_ops"] == pytest.approx(DispatchMonitor.OPS / 0.012)
    before = ops.x.clone()
    ops.step()
    assert torch.equal(ops.x, before)  # add and subtract in turn: a pass changes nothing


def test_probes_and_the_monitor_share_one_pair_of_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    # allocating and faulting in four caches' worth for every probe cost minutes of a quick run
    made: list[int] = []
    real = bandwidth._stream_buffers

    def counting(device: torch.device, nbytes: int | None = None):
        made.append(1)
        return real(device, 1 << 20)

    monkeypatch.setattr(bandwidth, "_BUFFERS", {})
    monkeypatch.setattr(bandwidth, "_stream_buffers", counting)
    monitor = bandwidth.StreamMonitor(CPU)
    for _ in range(3):
        assert bandwidth.stream_bandwidth(CPU, reps=2, min_s=0.0) > 0
    assert bandwidth.StreamMonitor(CPU).src is monitor.src
    assert len(made) == 1
    bandwidth.stream_bandwidth(CPU, nbytes=1 << 16, reps=2, min_s=0.0)  # a size of its own
    assert len(made) == 2


def test_the_cache_is_the_largest_size_clearly_faster_than_memory() -> None:
    # this project's VM: sysfs says 480 MiB, the readings say 128 MiB (GB/s per working set)
    readings = {8: 66, 16: 74, 32: 78, 64: 77, 128: 47, 256: 39, 512: 38}
    assert cache.cached_size({s * MiB: r * 1e9 for s, r in readings.items()}) == 128 * MiB
    # a dip below the margin in between does not end the cache early: the largest size counts
    readings = {8: 70, 16: 42, 32: 60, 64: 38, 128: 38}
    assert cache.cached_size({s * MiB: r * 1e9 for s, r in readings.items()}) == 32 * MiB
    # nothing faster than memory: the smallest size measured
    assert cache.cached_size({8 * MiB: 40e9, 16 * MiB: 41e9, 32 * MiB: 40e9}) == 8 * MiB


def test_the_measured_cache_is_one_of_the_sizes_and_recorded(monkeypatch) -> None:
    monkeypatch.setattr(cache, "_measured", None)
    monkeypatch.setattr(cache, "last_level_cache_bytes", lambda: 16 * MiB)  # keep it quick
    found = cache.cpu_cache()
    sizes = [8 * MiB, 16 * MiB, 32 * MiB]  # 8 MiB doubling up to twice sysfs's
    assert list(found["readings_gb_s"]) == ["8 MiB", "16 MiB", "32 MiB"]
    assert found["bytes"] in sizes[:2] and found["sysfs_last_level_bytes"] == 16 * MiB
    assert cache.cpu_cache() is found  # measured once per process
    assert measure.copies_for(found["bytes"], CPU) == measure.CACHE_MULTIPLE
