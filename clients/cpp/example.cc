// Calls the genapi gRPC API from C++ (grpc++, protoc-generated stubs): ListModels, a
// streaming Generate printing text and usage, Embed and Rerank, and an unknown model to
// show the error model (status code plus google.rpc.ErrorInfo from the
// grpc-status-details-bin trailer).
//
//   build/example [TARGET [MODEL [EMBED_MODEL [RERANK_MODEL]]]]
//   (defaults 127.0.0.1:50051, genapi-tiny-chat, all-MiniLM-L6-v2, all-MiniLM-L6-v2-rerank)
//
// GENAPI_API_KEY, when set, is sent as "authorization: Bearer <key>" metadata.
#include <chrono>
#include <cstdlib>
#include <iomanip>
#include <iostream>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "genapi/v1/embedding_service.grpc.pb.h"
#include "genapi/v1/generation_service.grpc.pb.h"
#include "genapi/v1/model_service.grpc.pb.h"
#include "genapi/v1/rerank_service.grpc.pb.h"
#include "google/rpc/code.pb.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"

namespace {

namespace v1 = genapi::v1;

// Prepares one call: a deadline (sent to the core as grpc-timeout) and the API key, if
// any. context.TryCancel() from another thread would end the call early.
void Prepare(grpc::ClientContext& context, std::chrono::seconds timeout) {
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  if (const char* key = std::getenv("GENAPI_API_KEY"); key != nullptr && *key != '\0') {
    context.AddMetadata("authorization", std::string("Bearer ") + key);
  }
}

// One line for a failed RPC: canonical code name and the ErrorInfo reason and param that
// the core attaches to every error. grpc++ hands over the grpc-status-details-bin
// trailer as Status::error_details(): a serialized google.rpc.Status.
std::string Describe(const grpc::Status& status) {
  std::string reason, param;
  google::rpc::Status details;
  if (details.ParseFromString(status.error_details())) {
    for (const auto& any : details.details()) {
      google::rpc::ErrorInfo info;
      if (any.UnpackTo(&info)) {
        reason = info.reason();
        auto it = info.metadata().find("param");
        if (it != info.metadata().end()) param = it->second;
      }
    }
  }
  return "error: code=" + google::rpc::Code_Name(static_cast<google::rpc::Code>(status.error_code())) +
         " reason=" + reason + " param=" + param + " message=\"" + status.error_message() + "\"";
}

grpc::Status ListModels(v1::ModelService::Stub& stub) {
  grpc::ClientContext context;
  Prepare(context, std::chrono::seconds(10));
  v1::ListModelsResponse response;
  grpc::Status status = stub.ListModels(&context, v1::ListModelsRequest(), &response);
  for (const auto& m : response.models()) {
    std::cout << "model: " << m.id() << " task=" << v1::ModelTask_Name(m.task())
              << " context_length=" << m.context_length() << "\n";
  }
  return status;
}

grpc::Status Generate(v1::GenerationService::Stub& stub, const std::string& model) {
  v1::GenerateRequest request;
  request.set_model(model);
  auto* message = request.add_messages();
  message->set_role(v1::ROLE_USER);
  message->add_content()->set_text("Say hello in one sentence.");
  request.mutable_sampling()->set_temperature(0);
  request.mutable_stopping()->set_max_tokens(16);

  grpc::ClientContext context;
  Prepare(context, std::chrono::seconds(60));
  auto reader = stub.Generate(&context, request);
  v1::GenerateResponse event, last;
  bool started = false;
  while (reader->Read(&event)) {
    switch (event.event_case()) {
      case v1::GenerateResponse::kStarted:
        started = true;
        std::cout << "text: ";
        break;
      case v1::GenerateResponse::kText:
        std::cout << event.text().text() << std::flush;
        break;
      case v1::GenerateResponse::kFinished:
        std::cout << "\nfinish_reason: " << v1::FinishReason_Name(event.finished().reason()) << "\n";
        break;
      default:
        break;
    }
    last = event;
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) {
    if (started) std::cout << "\n";
    return status;
  }
  const auto& u = last.usage();
  std::cout << "usage: prompt_tokens=" << u.prompt_tokens() << " completion_tokens=" << u.completion_tokens()
            << " total_tokens=" << u.total_tokens() << "\n";
  return status;
}

// Embeds two texts; each vector comes back as a packed float list.
grpc::Status Embed(v1::EmbeddingService::Stub& stub, const std::string& model) {
  v1::EmbedRequest request;
  request.set_model(model);
  request.add_inputs()->set_text("The cat sat on the mat.");
  request.add_inputs()->set_text("Paris is in France.");
  grpc::ClientContext context;
  Prepare(context, std::chrono::seconds(30));
  v1::EmbedResponse response;
  grpc::Status status = stub.Embed(&context, request, &response);
  if (!status.ok()) return status;
  std::cout << std::fixed << std::setprecision(4);
  for (const auto& e : response.embeddings()) {
    std::cout << "embedding: index=" << e.index() << " dimensions=" << e.values_size() << " head=";
    for (int i = 0; i < e.values_size() && i < 3; ++i) std::cout << (i ? "," : "") << e.values(i);
    std::cout << "\n";
  }
  std::cout << "embedding_usage: prompt_tokens=" << response.usage().prompt_tokens() << "\n";
  return status;
}

// Scores three documents against a query; the results come sorted by relevance.
grpc::Status Rerank(v1::RerankService::Stub& stub, const std::string& model) {
  v1::RerankRequest request;
  request.set_model(model);
  request.set_query("What is the capital of France?");
  for (const char* document : {"Paris is the capital of France.", "Bananas are yellow.",
                               "Berlin is the capital of Germany."}) {
    request.add_documents(document);
  }
  request.set_return_documents(true);
  grpc::ClientContext context;
  Prepare(context, std::chrono::seconds(30));
  v1::RerankResponse response;
  grpc::Status status = stub.Rerank(&context, request, &response);
  for (const auto& r : response.results()) {
    std::cout << "rerank: index=" << r.index() << " relevance_score=" << std::fixed << std::setprecision(4)
              << r.relevance_score() << " document=" << std::quoted(r.document()) << "\n";
  }
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string target = argc > 1 ? argv[1] : "127.0.0.1:50051";
  const std::string model = argc > 2 ? argv[2] : "genapi-tiny-chat";
  const std::string embed_model = argc > 3 ? argv[3] : "all-MiniLM-L6-v2";
  const std::string rerank_model = argc > 4 ? argv[4] : "all-MiniLM-L6-v2-rerank";
  // Plaintext on loopback; grpc::SslCredentials behind a TLS-terminating proxy.
  auto channel = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  auto models = v1::ModelService::NewStub(channel);
  auto gen = v1::GenerationService::NewStub(channel);

  grpc::Status status = ListModels(*models);
  if (status.ok()) status = Generate(*gen, model);
  if (status.ok()) status = Embed(*v1::EmbeddingService::NewStub(channel), embed_model);
  if (status.ok()) status = Rerank(*v1::RerankService::NewStub(channel), rerank_model);
  if (!status.ok()) {
    std::cout << Describe(status) << std::endl;
    return 1;
  }
  // The error case: an unknown model is NOT_FOUND with reason model_not_found.
  status = Generate(*gen, "no-such-model");
  if (status.ok()) {
    std::cout << "error: none (expected NOT_FOUND)" << std::endl;
    return 1;
  }
  std::cout << Describe(status) << std::endl;
  return 0;
}
