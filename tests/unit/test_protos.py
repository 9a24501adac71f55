"""The protos: buf lint passes, `buf breaking` finds no incompatible change against the
released baseline image (and does find one made on purpose), the shared messages live in
content.proto, and the wire format did not change when they moved (message names, field
numbers and types, RPC paths, and the bytes of a sample request).

`protos_wire_snapshot.json` records the wire shape of every released message, enum and
RPC; this test fails when one of them changes or disappears (adding is always fine).
Print the current shape to extend the snapshot at a release:

    .venv/bin/python -m tests.unit.test_protos > tests/unit/protos_wire_snapshot.json
"""
from __future__ import annotations

import importlib
import json
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import struct_pb2
from google.protobuf.descriptor import FieldDescriptor

import genapi.v1
from genapi.v1 import admin_service_pb2, content_pb2, generation_service_pb2 as gen_pb2

from ..conftest import missing_tool

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = Path(__file__).with_name("protos_wire_snapshot.json")
LOCAL_BUF = ROOT / ".tools" / "buf" / "node_modules" / ".bin" / "buf"
# The released contract, `buf build` of protos/ at the last release (see protos/README.md).
BASELINE = ROOT / "protos" / "baseline" / "genapi-v1.binpb"

_TYPE_NAMES = {v: k[len("TYPE_"):].lower() for k, v in vars(FieldDescriptor).items() if k.startswith("TYPE_")}


def wire_shape() -> dict:
    """{"messages": {full name: {field: "number [repeated] type [type name]"}},
    "enums": {full name: {value: number}}, "rpcs": {path: "in -> [stream] out"}} over every
    genapi/v1 proto: what a client built from an older release depends on."""
    out: dict = {"messages": {}, "enums": {}, "rpcs": {}}

    def enum(e):
        out["enums"][e.full_name] = {v.name: v.number for v in e.values}

    def message(d):
        fields = {}
        for f in d.fields:
            ref = f.message_type or f.enum_type
            words = [str(f.number), "repeated" if f.is_repeated else "", _TYPE_NAMES[f.type], ref.full_name if ref else ""]
            fields[f.name] = " ".join(w for w in words if w)
        out["messages"][d.full_name] = fields
        for e in d.enum_types:
            enum(e)
        for n in d.nested_types:
            message(n)

    for mod in pkgutil.iter_modules(genapi.v1.__path__):
        if not mod.name.endswith("_pb2"):
            continue
        fd = importlib.import_module(f"genapi.v1.{mod.name}").DESCRIPTOR
        for d in fd.message_types_by_name.values():
            message(d)
        for e in fd.enum_types_by_name.values():
            enum(e)
        for s in fd.services_by_name.values():
            for m in s.methods:
                stream_in = "stream " if m.client_streaming else ""
                stream_out = "stream " if m.server_streaming else ""
                out["rpcs"][f"/{s.full_name}/{m.name}"] = (
                    f"{stream_in}{m.input_type.full_name} -> {stream_out}{m.output_type.full_name}")
    return out


def buf(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Runs the buf pinned by build.sh (.tools/buf), else one on PATH."""
    binary = str(LOCAL_BUF) if LOCAL_BUF.exists() else shutil.which("buf")
    if binary is None:
        missing_tool("buf is not installed (build.sh installs it into .tools/buf when npm is available)")
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_buf_lint_passes():
    r = buf("lint", cwd=ROOT / "protos")
    assert r.returncode == 0, f"buf lint failed:\n{r.stdout}{r.stderr}"


def breaking(protos: Path) -> tuple[int, list[dict]]:
    """`buf breaking` of the module at `protos` against BASELINE: exit code and the
    reported violations ({"type": rule, "message", "path", ...})."""
    r = buf("breaking", str(protos), "--against", str(BASELINE), "--error-format", "json")
    assert r.returncode in (0, 100), f"buf breaking did not run:\n{r.stdout}{r.stderr}"  # 100: violations
    return r.returncode, [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def test_protos_are_compatible_with_the_released_baseline():
    code, violations = breaking(ROOT / "protos")
    assert code == 0 and not violations, violations


def edited_copy(tmp_path: Path, file: str, old: str, new: str) -> Path:
    """A copy of protos/ (buf.yaml and the .proto files) with `old` replaced in one file."""
    copy = tmp_path / "protos"
    shutil.copytree(ROOT / "protos", copy, ignore=shutil.ignore_patterns("baseline", "*.md"))
    path = copy / "genapi" / "v1" / file
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return copy


@pytest.mark.parametrize("file, old, new, rule", [
    ("common.proto", "uint32 prompt_tokens = 1;", "uint32 prompt_tokens = 9;", "FIELD_NO_DELETE"),
    ("common.proto", "uint32 total_tokens = 3;", "string total_tokens = 3;", "FIELD_SAME_TYPE"),
    ("model_service.proto", "string owned_by = 6;", "string owner = 6;", "FIELD_SAME_NAME"),
    ("model_service.proto", "  rpc GetModel(GetModelRequest) returns (GetModelResponse);\n", "", "RPC_NO_DELETE"),
], ids=["renumbered-field", "retyped-field", "renamed-field", "removed-rpc"])
def test_buf_breaking_fails_on_an_incompatible_change(tmp_path, file, old, new, rule):
    code, violations = breaking(edited_copy(tmp_path, file, old, new))
    assert code == 100 and rule in {v["type"] for v in violations}, violations


def test_buf_breaking_accepts_an_added_field(tmp_path):
    last = "  uint32 reasoning_tokens = 4;\n"  # Usage's last field
    added = last + "  // Tokens read from a prompt cache.\n  uint32 cached_tokens = 5;\n"
    code, violations = breaking(edited_copy(tmp_path, "common.proto", last, added))
    assert code == 0 and not violations, violations


MOVED = ["Role", "ImageDetail", "ImagePart", "AudioPart", "ContentPart", "ToolCall", "ChatMessage", "Tool",
         "ToolChoiceMode", "ToolChoice", "ResponseFormatType", "ResponseFormat", "FinishReason"]


@pytest.mark.parametrize("name", MOVED)
def test_shared_types_live_in_content_proto(name):
    t = getattr(content_pb2, name)
    assert t.DESCRIPTOR.full_name == f"genapi.v1.{name}"  # same name on the wire
    assert t.DESCRIPTOR.file.name == "genapi/v1/content.proto"
    assert not any(m.name == name for m in gen_pb2.DESCRIPTOR.message_types_by_name.values())
    assert name not in gen_pb2.DESCRIPTOR.enum_types_by_name


def test_engine_stats_moved_to_admin_service_and_old_rpc_is_deprecated():
    admin = admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].methods_by_name["GetEngineStats"]
    old = gen_pb2.DESCRIPTOR.services_by_name["GenerationService"].methods_by_name["GetEngineStats"]
    assert admin.full_name == "genapi.v1.AdminService.GetEngineStats"
    assert admin_service_pb2.GetEngineStatsRequest.DESCRIPTOR.file.name == "genapi/v1/admin_service.proto"
    assert (old.input_type, old.output_type) == (admin.input_type, admin.output_type)
    assert old.GetOptions().deprecated and not admin.GetOptions().deprecated


def test_image_part_source_is_a_oneof():
    part = content_pb2.ImagePart(url="https://example.com/a.png")
    assert part.WhichOneof("source") == "url"
    part.data = b"\x89PNG"
    assert part.WhichOneof("source") == "data" and part.url == ""
    assert content_pb2.ImagePart().WhichOneof("source") is None


def sample_request() -> gen_pb2.GenerateRequest:
    """Exercises every moved message, both ImagePart sources and an audio part."""
    params = struct_pb2.Struct()
    params.update({"type": "object", "properties": {"city": {"type": "string"}}})
    schema = struct_pb2.Struct()
    schema.update({"type": "object"})
    c = content_pb2
    req = gen_pb2.GenerateRequest(request_id="req_1", model="tiny-chat")
    req.messages.add(role=c.ROLE_SYSTEM, content=[c.ContentPart(text="be brief")])
    req.messages.add(role=c.ROLE_USER, name="ann", content=[
        c.ContentPart(text="what is in these?"),
        c.ContentPart(image=c.ImagePart(url="https://example.com/cat.png", detail=c.IMAGE_DETAIL_HIGH)),
        c.ContentPart(image=c.ImagePart(data=b"\x89PNG\r\n\x1a\n\x00", mime_type="image/png",
                                        detail=c.IMAGE_DETAIL_LOW)),
        c.ContentPart(image=c.ImagePart(url="data:image/gif;base64,R0lGOD")),
        c.ContentPart(audio=c.AudioPart(data=b"RIFF\x00", format="wav")),
    ])
    req.messages.add(role=c.ROLE_ASSISTANT,
                     tool_calls=[c.ToolCall(id="call_1", name="weather", arguments='{"city":"Paris"}')])
    req.messages.add(role=c.ROLE_TOOL, tool_call_id="call_1", content=[c.ContentPart(text="sunny")])
    req.sampling.temperature = 0.5
    req.sampling.seed = 7
    req.sampling.logit_bias[42] = -100.0
    req.stopping.max_tokens = 16
    req.stopping.stop.append("END")
    req.output.n = 2
    req.tools.add(name="weather", description="d", parameters=params, strict=True)
    req.tool_choice.function_name = "weather"
    req.response_format.type = c.RESPONSE_FORMAT_TYPE_JSON_SCHEMA
    req.response_format.name = "s"
    req.response_format.schema.CopyFrom(schema)
    req.response_format.strict = True
    return req


# sample_request() serialized (deterministic) by the stubs of the protos before the move,
# when ImagePart.url/data were plain fields and everything lived in generation_service.proto.
SAMPLE_BEFORE_MOVE = bytes.fromhex(
    "0a057265715f31120974696e792d636861741a0e0801120a0a0862652062726965661a8d01080312130a11776861742069"
    "7320696e2074686573653f1221121f0a1b68747470733a2f2f6578616d706c652e636f6d2f6361742e706e672002121a12"
    "18120989504e470d0a1a0a001a09696d6167652f706e6720011220121e0a1c646174613a696d6167652f6769663b626173"
    "6536342c52306c474f44120e1a0c0a05524946460012037761761a03616e6e1a27080422230a0663616c6c5f3112077765"
    "61746865721a107b2263697479223a225061726973227d1a13080512070a0573756e6e792a0663616c6c5f3122100d0000"
    "003f18073207082a150000c8c22a0708101203454e44320218023a520a07776561746865721201641a420a2e0a0a70726f"
    "7065727469657312202a1e0a1c0a046369747912142a120a100a047479706512081a06737472696e670a100a0474797065"
    "12081a066f626a656374200142091207776561746865724a1b08031201731a120a100a047479706512081a066f626a6563"
    "742001"
)


def test_generate_request_bytes_did_not_change():
    req = sample_request()
    assert req.SerializeToString(deterministic=True) == SAMPLE_BEFORE_MOVE
    parsed = gen_pb2.GenerateRequest.FromString(SAMPLE_BEFORE_MOVE)  # old bytes, new stubs
    assert parsed == req
    images = [p.image for p in parsed.messages[1].content if p.HasField("image")]
    assert [i.WhichOneof("source") for i in images] == ["url", "data", "url"]


def test_released_wire_shape_is_unchanged():
    released, now = json.loads(SNAPSHOT.read_text()), wire_shape()
    for kind in ("messages", "enums", "rpcs"):
        for name, shape in released[kind].items():
            assert name in now[kind], f"{kind[:-1]} {name} was removed or renamed"
            if kind == "rpcs":
                assert now[kind][name] == shape, f"rpc {name} changed"
                continue
            for member, value in shape.items():
                assert now[kind][name].get(member) == value, f"{name}.{member} changed: {value!r} -> " \
                                                             f"{now[kind][name].get(member)!r}"


def dump_shape(shape: dict) -> str:
    """JSON with one message, enum or RPC per line, so a diff shows what changed."""
    lines = []
    for kind in ("messages", "enums", "rpcs"):
        items = [f"    {json.dumps(k)}: {json.dumps(v, sort_keys=True)}" for k, v in sorted(shape[kind].items())]
        lines.append(f'  "{kind}": {{\n' + ",\n".join(items) + "\n  }")
    return "{\n" + ",\n".join(lines) + "\n}\n"


if __name__ == "__main__":
    sys.stdout.write(dump_shape(wire_shape()))


def test_moved_types_stay_importable_from_generation_service_for_one_release():
    """Code written against the previous release (types in generation_service_pb2) still
    runs: the public imports re-export the very same classes and enum values."""
    assert gen_pb2.ChatMessage is content_pb2.ChatMessage
    assert gen_pb2.ContentPart is content_pb2.ContentPart
    assert gen_pb2.ROLE_USER == content_pb2.ROLE_USER
    assert gen_pb2.FinishReason.Name(gen_pb2.FINISH_REASON_STOP) == "FINISH_REASON_STOP"
    assert gen_pb2.GetEngineStatsRequest is admin_service_pb2.GetEngineStatsRequest
