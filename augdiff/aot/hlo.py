"""What a compiled XLA program holds, read from its HLO text (``compiled.as_text()``).

The optimised HLO of a program is a list of computations (``%name (...) -> ... { ... }``, one
``ENTRY``); an instruction reads ``%x = <result shape> <opcode>(<operands>), <attributes>``.
This module finds

- the **collectives** (all-reduce, all-gather, reduce-scatter, all-to-all,
  collective-permute, and their asynchronous ``-start`` halves; a ``-done`` is not counted
  again) with the bytes of their results;
- the computations run by a **loop** (a ``while``'s body and condition and everything they
  call), so that a collective or a host transfer inside a sampling loop can be told from one
  outside it;
- **host transfers** (``send``/``recv`` with ``is_host_transfer=true``, and host callbacks as
  custom calls) and **convolutions**.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
    "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1,
    "s4": 1, "u4": 1,
}
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s+\(.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([a-z][a-z0-9\-]*)\((.*)$")
_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_CALLED = re.compile(r"\b(?:calls|to_apply|body|condition|branch_computations|"
                     r"true_computation|false_computation)=(\{[^}]*\}|%?[\w.\-]+)")


@dataclasses.dataclass(frozen=True)
class Instruction:
    computation: str
    name: str
    opcode: str
    result_bytes: int
    text: str


def shape_bytes(shape_text: str) -> int:
    """Bytes of an HLO result shape (an array or a tuple of arrays)."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape_text):
        if dtype not in DTYPE_BYTES:
            continue
        n = 1
        for d in dims.split(","):
            if d:
                n *= int(d)
        total += n * DTYPE_BYTES[dtype]
    return total


@dataclasses.dataclass
class Program:
    """The parsed HLO of one compiled program."""

    computations: dict[str, list[Instruction]]
    calls: dict[str, set[str]]
    entry: str
    loop_computations: set[str]

    @classmethod
    def parse(cls, text: str) -> Program:
        computations: dict[str, list[Instruction]] = {}
        calls: dict[str, set[str]] = {}
        entry, current = "", None
        bodies: set[str] = set()
        for line in text.splitlines():
            head = _HEADER.match(line)
            if head and "=" not in line.split("(")[0]:
                current = head.group(2)
                computations[current] = []
                calls[current] = set()
                if head.group(1):
                    entry = current
                continue
            if current is None:
                continue
            if line.strip() == "}":
                current = None
                continue
            m = _INSTR.match(line)
            if not m:
                continue
            name, result, opcode, rest = m.groups()
            computations[current].append(
                Instruction(current, name, opcode, shape_bytes(result), line.strip()))
            for group in _CALLED.findall(rest):
                for callee in group.strip("{}").split(","):
                    callee = callee.strip().lstrip("%")
                    if callee:
                        calls[current].add(callee)
            if opcode == "while":
                for key in ("body", "condition"):
                    found = re.search(rf"\b{key}=%?([\w.\-]+)", rest)
                    if found:
                        bodies.add(found.group(1))
        loop = set()
        todo = list(bodies)
        while todo:
            c = todo.pop()
            if c in loop:
                continue
            loop.add(c)
            todo.extend(calls.get(c, ()))
        return cls(computations, calls, entry, loop)

    def instructions(self) -> list[Instruction]:
        return [i for insts in self.computations.values() for i in insts]

    def collectives(self, *, in_loop: bool | None = None) -> list[Instruction]:
        """Collective instructions (``-done`` halves excluded); ``in_loop`` filters by whether
        a ``while`` runs them."""
        out = []
        for inst in self.instructions():
            kind = collective_kind(inst.opcode)
            if kind is None:
                continue
            if in_loop is not None and (inst.computation in self.loop_computations) != in_loop:
                continue
            out.append(inst)
        return out

    def collective_summary(self) -> dict[str, dict[str, int]]:
        """``{kind: {"count": n, "bytes": b, "in_loop": k}}`` over the program's collectives."""
        out: dict[str, dict[str, int]] = {}
        for inst in self.collectives():
            kind = collective_kind(inst.opcode) or inst.opcode
            row = out.setdefault(kind, {"count": 0, "bytes": 0, "in_loop": 0})
            row["count"] += 1
            row["bytes"] += inst.result_bytes
            row["in_loop"] += int(inst.computation in self.loop_computations)
        return out

    def host_transfers(self, *, in_loop: bool | None = None) -> list[Instruction]:
        """Sends/receives to the host and host-callback custom calls."""
        out = []
        for inst in self.instructions():
            host = ("is_host_transfer=true" in inst.text
                    or (inst.opcode == "custom-call" and "callback" in inst.text.lower()))
            if not host:
                continue
            if in_loop is not None and (inst.computation in self.loop_computations) != in_loop:
                continue
            out.append(inst)
        return out

    def opcode_counts(self) -> Counter:
        return Counter(i.opcode for i in self.instructions())

    def loops(self) -> int:
        return self.opcode_counts().get("while", 0)


def collective_kind(opcode: str) -> str | None:
    """``'all-reduce'`` for ``all-reduce`` / ``all-reduce-start``; None for ``-done`` and others."""
    if opcode.endswith("-done"):
        return None
    base = opcode[:-len("-start")] if opcode.endswith("-start") else opcode
    return base if base in COLLECTIVES else None
