"""The HLO reader against hand-written HLO: collectives, loops, host transfers, bytes."""

from augdiff.aot import hlo

TEXT = """HloModule jit_step, entry_computation_layout={()->f32[]}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%fused_inner (p: bf16[8,128]) -> bf16[8,128] {
  %p = bf16[8,128]{1,0} parameter(0)
  ROOT %ag = bf16[8,128]{1,0} all-gather(%p), dimensions={0}, replica_groups={{0,1}}
}

%body (t: (s32[], bf16[8,128])) -> (s32[], bf16[8,128]) {
  %t = (s32[], bf16[8,128]{1,0}) parameter(0)
  %x = bf16[8,128]{1,0} get-tuple-element(%t), index=1
  %f = bf16[8,128]{1,0} fusion(%x), kind=kLoop, calls=%fused_inner, metadata={op_name="x"}
  %snd = (bf16[], u32[], token[]) send(%x, %tok), channel_id=1, is_host_transfer=true
  ROOT %r = (s32[], bf16[8,128]{1,0}) tuple(%i, %f)
}

%cond (t: (s32[], bf16[8,128])) -> pred[] {
  %t = (s32[], bf16[8,128]{1,0}) parameter(0)
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

ENTRY %main (w: f32[256,256], x: bf16[8,128]) -> f32[] {
  %w = f32[256,256]{1,0} parameter(0)
  %x = bf16[8,128]{1,0} parameter(1)
  %ar = f32[256,256]{1,0} all-reduce(%w), replica_groups={{0,1}}, to_apply=%add
  %ars = (f32[4]{0}, f32[2,3]{1,0}) all-reduce-start(%v, %u), to_apply=%add
  %ard = (f32[4]{0}, f32[2,3]{1,0}) all-reduce-done(%ars)
  %cp = s32[16]{0} collective-permute(%y), source_target_pairs={{0,1},{1,0}}
  %wh = (s32[], bf16[8,128]{1,0}) while(%init), condition=%cond, body=%body
  ROOT %out = f32[] constant(0)
}
"""


def test_shape_bytes():
    assert hlo.shape_bytes("f32[256,256]{1,0}") == 256 * 256 * 4
    assert hlo.shape_bytes("(f32[4]{0}, bf16[2,3]{1,0})") == 16 + 12
    assert hlo.shape_bytes("f32[]") == 4
    assert hlo.shape_bytes("token[]") == 0


def test_collectives_and_their_bytes():
    p = hlo.Program.parse(TEXT)
    assert p.entry == "main"
    summary = p.collective_summary()
    assert summary["all-reduce"] == {"count": 2, "bytes": 256 * 256 * 4 + 16 + 24, "in_loop": 0}
    assert summary["collective-permute"] == {"count": 1, "bytes": 64, "in_loop": 0}
    # the all-gather sits in a fusion the while body calls: inside the loop
    assert summary["all-gather"] == {"count": 1, "bytes": 8 * 128 * 2, "in_loop": 1}
    assert [i.opcode for i in p.collectives(in_loop=True)] == ["all-gather"]


def test_loops_and_host_transfers():
    p = hlo.Program.parse(TEXT)
    assert p.loop_computations == {"body", "cond", "fused_inner"}
    assert p.loops() == 1
    assert [i.name for i in p.host_transfers(in_loop=True)] == ["snd"]
    assert p.host_transfers(in_loop=False) == []
    # the reduction computation of an all-reduce outside the loop is not a loop computation
    assert "add" not in p.loop_computations


def test_collective_kind():
    assert hlo.collective_kind("all-reduce-start") == "all-reduce"
    assert hlo.collective_kind("all-reduce-done") is None
    assert hlo.collective_kind("reduce-scatter") == "reduce-scatter"
    assert hlo.collective_kind("add") is None
