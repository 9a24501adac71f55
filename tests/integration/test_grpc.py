"""The typed gRPC API through generated stubs: Generate, models, health, reflection, errors."""
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from genapi.v1 import admin_service_pb2, admin_service_pb2_grpc, content_pb2
from genapi.v1 import generation_service_pb2 as pb
from genapi.v1 import generation_service_pb2_grpc as pb_grpc
from genapi.v1 import model_service_pb2, model_service_pb2_grpc
from genapi.deltas import WHOLE

from ..conftest import MODEL


def user(text):
    return content_pb2.ChatMessage(role=content_pb2.ROLE_USER, content=[content_pb2.ContentPart(text=text)])


@pytest.fixture
def gen(grpc_channel):
    return pb_grpc.GenerationServiceStub(grpc_channel)


def error_info(err: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(err)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


def test_generate_stream_event_order_and_usage(gen):
    req = pb.GenerateRequest(model=MODEL, messages=[user("Tell me about the harbour.")],
                             sampling=pb.SamplingOptions(temperature=0), stopping=pb.StoppingOptions(max_tokens=12))
    events = list(gen.Generate(req))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "started" and kinds[-1] == "finished" and kinds.count("finished") == 1
    assert set(kinds[1:-1]) <= {"text"}
    assert events[0].started.max_tokens == 12 and events[0].usage.prompt_tokens > 0
    last = events[-1]
    assert last.finished.reason == content_pb2.FINISH_REASON_LENGTH
    assert last.usage.completion_tokens == 12
    assert last.usage.total_tokens == last.usage.prompt_tokens + 12
    running = [e.usage.completion_tokens for e in events]
    assert running == sorted(running)  # running usage never goes back
    assert "".join(e.text.text for e in events if e.HasField("text"))


def test_generate_is_deterministic_at_temperature_zero(gen):
    req = pb.GenerateRequest(model=MODEL, messages=[user("Same input twice")],
                             sampling=pb.SamplingOptions(temperature=0), stopping=pb.StoppingOptions(max_tokens=16))
    texts = ["".join(e.text.text for e in gen.Generate(req) if e.HasField("text")) for _ in range(2)]
    assert texts[0] == texts[1] and texts[0]


def by_choice(events):
    """choice -> (text, logprob tokens, finish reason) of a Generate stream."""
    out = {}
    for e in events:
        text, tokens, reason = out.get(e.choice_index, ("", [], None))
        if e.HasField("text"):
            text, tokens = text + e.text.text, tokens + [(lp.token, lp.logprob) for lp in e.text.logprobs]
        if e.HasField("finished"):
            reason = e.finished.reason
        out[e.choice_index] = (text, tokens, reason)
    return out


def test_a_caller_reading_the_whole_answer_gets_few_messages_with_the_same_answer(gen):
    """genapi.deltas.WHOLE (the shim's non-streamed requests): started, one merged text
    delta per choice and the finishes, instead of one message per token; the same text,
    logprobs, finish reasons and final usage as the per-token stream."""
    req = pb.GenerateRequest(model=MODEL, messages=[user("Tell me about the harbour.")],
                             sampling=pb.SamplingOptions(temperature=0), stopping=pb.StoppingOptions(max_tokens=12),
                             output=pb.OutputOptions(n=2, logprobs=True))
    per_token = list(gen.Generate(req))
    whole = list(gen.Generate(req, metadata=[WHOLE]))
    kinds = [e.WhichOneof("event") for e in whole]
    assert kinds[0] == "started" and sorted(kinds[1:]) == ["finished", "finished", "text", "text"], kinds
    assert len(per_token) > len(whole)
    assert by_choice(whole) == by_choice(per_token)
    assert all(len(t) == 12 for _, t, _ in by_choice(whole).values())
    assert whole[-1].usage == per_token[-1].usage and whole[-1].usage.completion_tokens == 24


def test_unknown_model_is_not_found_with_error_info(gen):
    with pytest.raises(grpc.RpcError) as ei:
        list(gen.Generate(pb.GenerateRequest(model="no-such-model", messages=[user("hi")])))
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(ei.value)
    assert info.reason == "model_not_found" and info.metadata["param"] == "model"


def test_an_empty_model_name_is_invalid_argument(gen):
    with pytest.raises(grpc.RpcError) as ei:  # as the REST endpoints answer it
        list(gen.Generate(pb.GenerateRequest(model="", messages=[user("hi")])))
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(ei.value).metadata["param"] == "model"


def test_prompt_longer_than_context_is_invalid_argument(gen):
    req = pb.GenerateRequest(model=MODEL, messages=[user("word " * 5000)])
    with pytest.raises(grpc.RpcError) as ei:
        list(gen.Generate(req))
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(ei.value).reason == "context_length_exceeded"
    assert "2048" in ei.value.details()  # names the limit


def test_out_of_range_sampling_is_invalid_argument(gen):
    req = pb.GenerateRequest(model=MODEL, messages=[user("hi")], sampling=pb.SamplingOptions(temperature=3))
    with pytest.raises(grpc.RpcError) as ei:
        list(gen.Generate(req))
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(ei.value).metadata["param"] == "temperature"


def test_models_list_and_get(grpc_channel):
    stub = model_service_pb2_grpc.ModelServiceStub(grpc_channel)
    models = stub.ListModels(model_service_pb2.ListModelsRequest()).models
    assert [m.id for m in models] == [MODEL]
    m = stub.GetModel(model_service_pb2.GetModelRequest(id=MODEL)).model
    assert m.context_length == 2048 and m.backend == "torch"
    with pytest.raises(grpc.RpcError) as ei:
        stub.GetModel(model_service_pb2.GetModelRequest(id="nope"))
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("service_name", ["", "genapi.v1.GenerationService", "genapi.v1.ModelService",
                                          "genapi.v1.AdminService"])
def test_health_per_service(grpc_channel, service_name):
    stub = health_pb2_grpc.HealthStub(grpc_channel)
    resp = stub.Check(health_pb2.HealthCheckRequest(service=service_name))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(grpc_channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(grpc_channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"genapi.v1.GenerationService", "genapi.v1.ModelService", "genapi.v1.AdminService",
            "genapi.v1.TranscriptionService", "grpc.health.v1.Health"} <= names


def test_reflection_v1_answers_as_current_clients_ask(grpc_channel):
    """grpcurl and Postman call grpc.reflection.v1 (wire-identical to v1alpha, whose
    messages encode the call here)."""
    call = grpc_channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="genapi.v1.GenerationService")]
    listed, described = list(call(iter(requests), timeout=10))
    assert "genapi.v1.GenerationService" in {s.name for s in listed.list_services_response.service}
    files = described.file_descriptor_response.file_descriptor_proto
    assert any(b"GenerationService" in f for f in files)


def test_engine_stats_rpc(grpc_channel):
    admin = admin_service_pb2_grpc.AdminServiceStub(grpc_channel)
    stats = admin.GetEngineStats(admin_service_pb2.GetEngineStatsRequest()).engines
    assert stats[0].model == MODEL and stats[0].cache_slots_total == 32
    assert admin.GetEngineStats(admin_service_pb2.GetEngineStatsRequest(model=MODEL)).engines[0].model == MODEL
    with pytest.raises(grpc.RpcError) as e:
        admin.GetEngineStats(admin_service_pb2.GetEngineStatsRequest(model="nope"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_deprecated_generation_engine_stats_still_answers(gen, grpc_channel):
    """GenerationService.GetEngineStats is deprecated for one release: same path, same
    messages, same answer as AdminService.GetEngineStats."""
    method = pb.DESCRIPTOR.services_by_name["GenerationService"].methods_by_name["GetEngineStats"]
    assert method.GetOptions().deprecated
    old = gen.GetEngineStats(admin_service_pb2.GetEngineStatsRequest(model=MODEL)).engines
    assert [e.model for e in old] == [MODEL] and old[0].cache_slots_total == 32
    with pytest.raises(grpc.RpcError) as e:
        gen.GetEngineStats(admin_service_pb2.GetEngineStatsRequest(model="nope"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
