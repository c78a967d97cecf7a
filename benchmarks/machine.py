"""The machine a benchmark ran on: CPU model, vector extensions, load, library versions.

Every benchmark prints :func:`describe` with its figures: CPUs differ between runs (an AVX2
machine and an AVX-512 + AMX machine give different XLA convolution timings), so a figure
means little without it, and the ratio to a peer measured in the same run is what counts.
"""

from __future__ import annotations

import os
import platform
from typing import Any

VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni",
                "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "neon", "sve")


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """CPU model name and the vector extensions among :data:`VECTOR_FLAGS` it reports."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), "x86_64"):
                    model = val.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(val.split())
    except OSError:
        pass
    return model, [f for f in VECTOR_FLAGS if f in flags]


def describe() -> dict[str, Any]:
    """A JSON-ready description of the machine and the software measured."""
    model, flags = cpu_model_and_flags()
    info: dict[str, Any] = {"cpu_model": model, "vector_extensions": flags,
                            "cpu_count": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
                            "platform": platform.platform(),
                            "python": platform.python_version()}
    for mod in ("jax", "jaxlib", "flax", "torch", "diffusers"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 (absent or broken peer: record and go on)
            info[mod] = None
    try:
        import jax

        info["backend"] = jax.default_backend()
        info["devices"] = [d.device_kind for d in jax.devices()]
    except Exception:  # noqa: BLE001
        pass
    return info


def headline(info: dict[str, Any]) -> str:
    """One line: CPU model, vector extensions, cores, load average."""
    return (f"CPU: {info['cpu_model']} [{' '.join(info['vector_extensions'])}], "
            f"{info['cpu_count']} cores, load avg {info['load_avg_1m']:.2f}; "
            f"backend {info.get('backend')} {info.get('devices', [''])[0]}")
