"""What a run was measured on, for its manifest; and what the device could not measure.

`capture_environment` never raises: every key is always present, and a value it could not get is
None with the reason under `environment["unavailable"][key]`. A manifest that silently lacks the
GPU clock is how two runs on differently-clocked boxes get compared as if they were alike.

`environment["machine"]` is the machine's fingerprint (MACHINE_KEYS: what sets absolute step
times and stays put across reboots; not the hostname, which CI runners of one type do not share)
and `environment["machine_id"]` a short hash of it: `workbench compare --metric time` refuses two
runs whose fingerprints differ.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

_REPO_DIR = Path(__file__).resolve().parent  # git finds the enclosing work tree from here

GPU_KEYS = (
    "gpu_name",
    "gpu_driver",
    "gpu_memory_bytes",
    "gpu_sm_clock_mhz",
    "gpu_sm_clock_max_mhz",
    "gpu_power_w",
    "gpu_power_limit_w",
    "gpu_temperature_c",
)
# The fingerprint's fields: two runs that differ in one of them were timed on different machines.
MACHINE_KEYS = ("cpu_model", "logical_cores", "memory_gib", "gpu_name", "torch")


def capture_environment(device: torch.device | str | None = None) -> dict[str, Any]:
    """Software, host and (where present) GPU facts; GPU facts are for `device` or cuda:current."""
    device = None if device is None else torch.device(device)
    env: dict[str, Any] = {}
    unavailable: dict[str, str] = {}

    def put(key: str, getter: Callable[[], Any]) -> None:
        try:
            env[key] = getter()
        except Exception as exc:  # a manifest must be written whatever one query does
            env[key] = None
            unavailable[key] = f"{type(exc).__name__}: {exc}"

    sha, dirty, git_reason = _git_state()
    env["git_sha"], env["git_dirty"] = sha, dirty
    if git_reason:
        env["git_commit_time"] = None
        unavailable["git_sha"] = unavailable["git_dirty"] = unavailable["git_commit_time"] = (
            git_reason
        )
    else:
        # the committer date, ISO 8601: `workbench history` orders runs by it (a rebuilt old
        # commit sorts where it belongs, not where it ran)
        put("git_commit_time", lambda: _git("show", "-s", "--format=%cI", "HEAD"))

    put("python", lambda: platform.python_version())
    put("torch", lambda: torch.__version__)
    put("torch_cuda", lambda: torch.version.cuda)  # None on CPU builds: that is the fact
    put("numpy", lambda: importlib.metadata.version("numpy"))
    # By distribution metadata, not import: importing triton here would fix TRITON_INTERPRET
    # before the harness decides it. PyTorch's CUDA wheels ship it as pytorch-triton.
    put("triton", lambda: _first_version("triton", "pytorch-triton", "pytorch-triton-rocm"))
    put("cpu_model", _cpu_model)
    put("logical_cores", os.cpu_count)
    put("torch_threads", torch.get_num_threads)
    put("memory_bytes", _total_memory)
    put("hostname", socket.gethostname)
    put("os", lambda: f"{platform.system()} {platform.release()} ({platform.platform()})")

    for key in GPU_KEYS:
        env[key] = None
    gpu_reason = _no_gpu_reason(device)
    if gpu_reason:
        unavailable.update(dict.fromkeys(GPU_KEYS, gpu_reason))
    else:
        try:
            _gpu_facts(
                device or torch.device("cuda", torch.cuda.current_device()), env, unavailable
            )
        except Exception as exc:  # a broken driver must not cost the run its manifest
            for key in GPU_KEYS:
                if env[key] is None:
                    unavailable[key] = f"{type(exc).__name__}: {exc}"

    env["machine"] = machine_fingerprint(env)
    env["machine_id"] = machine_id(env["machine"])
    env["unavailable"] = unavailable
    return env


def machine_fingerprint(env: Mapping[str, Any]) -> dict[str, Any]:
    """The MACHINE_KEYS of an environment as capture_environment gives it. Memory is rounded to
    GiB: the memory the kernel reserves moves the exact total between boots of one machine type."""
    memory = env.get("memory_bytes")
    return {
        "cpu_model": env.get("cpu_model"),
        "logical_cores": env.get("logical_cores"),
        "memory_gib": None if memory is None else round(memory / 2**30),
        "gpu_name": env.get("gpu_name"),
        "torch": env.get("torch"),
    }


def machine_id(fingerprint: Mapping[str, Any]) -> str:
    """A short stable hash of a fingerprint: equal fingerprints, equal ids, in any process."""
    # sorted JSON and sha256, not hash(): Python salts its string hash per process
    text = json.dumps(dict(fingerprint), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def capabilities(device: torch.device | str) -> dict[str, str | None]:
    """Each measurement the harness takes, mapped to None where `device` can give it, else why not.

    For the run manifest, so a missing column reads as "could not" rather than "forgot".
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    not_cuda = f"device is {device.type}, not CUDA"
    caps: dict[str, str | None] = {
        "latency_cuda_events": None if cuda else f"{not_cuda}: timed with time.perf_counter",
        "peak_allocator_stats": None
        if cuda
        else f"{not_cuda}: no allocator counters; peak from torch.profiler memory events",
        "peak_profiler_memory": None
        if device.type == "cpu"
        else "not needed: the allocator's peak counter is exact",
        "kernel_launches": None
        if cuda
        else f"{not_cuda}: counts top-level aten ops dispatched, not kernels",
        "stream_bandwidth": None,
        "gpu_telemetry": None,
    }
    if device.type not in ("cuda", "cpu"):
        caps["peak_profiler_memory"] = f"no memory probe for {device.type}"
        caps["kernel_launches"] = f"no launch probe for {device.type}"
    caps["gpu_telemetry"] = _no_gpu_reason(device) or _nvml_reason()
    return caps


def _git_state() -> tuple[str | None, bool | None, str | None]:
    """(sha, dirty, reason it is missing). Untracked files count as dirty: they can change a run."""
    try:
        sha = _git("rev-parse", "HEAD")
        dirty = bool(_git("status", "--porcelain"))
    except FileNotFoundError:
        return None, None, "git is not installed"
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        return None, None, f"not in a git work tree ({type(exc).__name__})"
    return sha, dirty, None


def _git(*args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(_REPO_DIR), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    return out.stdout.strip()


def _first_version(*distributions: str) -> str:
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    raise importlib.metadata.PackageNotFoundError(" / ".join(distributions))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _total_memory() -> int:
    """Physical memory in bytes: POSIX sysconf, else psutil (where sysconf lacks the names)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        import psutil  # an ImportError goes to `unavailable` like any failed query

        return int(psutil.virtual_memory().total)


def _no_gpu_reason(device: torch.device | None) -> str | None:
    if device is not None and device.type != "cuda":
        return f"device is {device.type}"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return None


def _nvml_reason() -> str | None:
    try:
        import pynvml
    except ImportError:
        return "pynvml not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except Exception as exc:
        return f"NVML: {exc}"
    return None


def _gpu_facts(device: torch.device, env: dict[str, Any], unavailable: dict[str, str]) -> None:
    """GPU facts from NVML; name and memory fall back to torch when NVML is missing."""
    try:
        props = torch.cuda.get_device_properties(device)
        env["gpu_name"], env["gpu_memory_bytes"] = props.name, props.total_memory
    except Exception as exc:
        props = None
        unavailable["gpu_name"] = unavailable["gpu_memory_bytes"] = f"torch: {exc}"

    reason = _nvml_reason()
    if reason:
        for key in GPU_KEYS:
            if env[key] is None:
                unavailable[key] = reason
        return

    import pynvml

    pynvml.nvmlInit()
    try:
        handle = _nvml_handle(pynvml, props, device.index or 0)
        queries: dict[str, Callable[[], Any]] = {
            "gpu_name": lambda: _text(pynvml.nvmlDeviceGetName(handle)),
            "gpu_driver": lambda: _text(pynvml.nvmlSystemGetDriverVersion()),
            "gpu_memory_bytes": lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
            "gpu_sm_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "gpu_sm_clock_max_mhz": lambda: pynvml.nvmlDeviceGetMaxClockInfo(
                handle, pynvml.NVML_CLOCK_SM
            ),
            "gpu_power_w": lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1e3,  # mW
            "gpu_power_limit_w": lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1e3,
            "gpu_temperature_c": lambda: pynvml.nvmlDeviceGetTemperature(
                handle, pynvml.NVML_TEMPERATURE_GPU
            ),
        }
        for key, query in queries.items():
            try:
                env[key] = query()
                unavailable.pop(key, None)
            except Exception as exc:  # e.g. power readings unsupported on some boards
                if env[key] is None:
                    unavailable[key] = f"NVML: {exc}"
    except Exception as exc:
        for key in GPU_KEYS:
            if env[key] is None:
                unavailable[key] = f"NVML: {exc}"
    finally:
        pynvml.nvmlShutdown()


def _nvml_handle(pynvml: Any, props: Any, torch_index: int) -> Any:
    """NVML's handle for torch's device: by UUID, since CUDA_VISIBLE_DEVICES renumbers devices
    for torch but not for NVML. Falls back to the torch index when UUIDs are not available."""
    uuid = str(getattr(props, "uuid", "") or "").removeprefix("GPU-")
    if uuid:
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            if _text(pynvml.nvmlDeviceGetUUID(handle)).removeprefix("GPU-") == uuid:
                return handle
    return pynvml.nvmlDeviceGetHandleByIndex(torch_index)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


if __name__ == "__main__":  # python -m workbench.harness.environment: eyeball a box
    import json

    json.dump(capture_environment(), sys.stdout, indent=2, default=str)
    print()
