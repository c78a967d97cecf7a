"""The arithmetic of a row of ``augdiff compile`` on a stub compiled program (no libtpu): HBM
per chip, fits, the largest batch and the one-line report, against the definitions."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp

from augdiff.aot import chips
from augdiff.aot.compile import GIB, compile_program, one_line
from augdiff.aot.programs import Program


class _Compiled:
    def __init__(self, arg: int, out: int, temp: int, alias: int = 0):
        self.m = types.SimpleNamespace(argument_size_in_bytes=arg, output_size_in_bytes=out,
                                       temp_size_in_bytes=temp, alias_size_in_bytes=alias)

    def memory_analysis(self):
        return self.m

    def as_text(self):
        return "ENTRY %main () -> f32[] {\n  ROOT %c = f32[] constant(0)\n}\n"


def _program(compiled, batch: int, weights: int, rows_bytes: int) -> Program:
    fn = types.SimpleNamespace(lower=lambda *a: types.SimpleNamespace(compile=lambda: compiled))
    args = (jax.ShapeDtypeStruct((weights // 4,), jnp.float32),
            jax.ShapeDtypeStruct((rows_bytes,), jnp.uint8))
    return Program("stub step", "train", fn, args, batch, "image", lambda: 2e12)


def _topology(n: int = 4) -> chips.Topology:
    devices = tuple(types.SimpleNamespace(process_index=0, coords=(i, 0, 0)) for i in range(n))
    return chips.Topology("v5e:2x2", chips.CHIPS["v5e"], devices, 1)


def test_a_program_over_the_chip_does_not_fit_and_says_its_bytes():
    weights, per_row, rows = 4 * GIB, 100 * 2**20, 160  # 40 rows per chip
    total = weights + 40 * per_row  # 8 GiB... then the temporaries of a huge batch
    compiled = _Compiled(arg=weights + 40 * 2**20, out=1024, temp=total - weights - 40 * 2**20
                         - 1024 + 10 * GIB)
    row = compile_program(_program(compiled, rows, weights, 40 * 2**20), _topology())
    want_total = weights + 40 * 2**20 + 1024 + (total - weights - 40 * 2**20 - 1024 + 10 * GIB)
    assert row["hbm_gib"] * GIB == want_total
    assert not row["fits"]  # 18 GiB > 16 GiB
    line = one_line(row)
    assert "stub step" in line and f"{want_total:,.0f} bytes" in line
    # largest batch: (16 GiB − weights) / bytes per row, times the chips
    per_row_bytes = (want_total - weights) / 40
    assert row["max_batch"] == int((16 * GIB - weights) // per_row_bytes) * 4
    # the floor: FLOPs per unit / the chip's bf16 peak
    assert abs(row["floor_ms_per_unit"] - 1e3 * 2e12 / 197e12) < 1e-9


def test_a_program_within_the_chip_fits():
    compiled = _Compiled(arg=GIB, out=0, temp=GIB, alias=0)
    row = compile_program(_program(compiled, 8, GIB // 2, 2**20), _topology())
    assert row["fits"] and row["hbm_gib"] == 2.0
