// Calls the genapi gRPC API from TypeScript on Node (@grpc/grpc-js, ts-proto types):
// ListModels, a streaming Generate printing text and usage, Embed and Rerank, and an
// unknown model to show the error model (status code plus google.rpc.ErrorInfo from
// grpc-status-details-bin).
//
//   node dist/example.js [TARGET [MODEL [EMBED_MODEL [RERANK_MODEL]]]]
//   (defaults 127.0.0.1:50051, genapi-tiny-chat, all-MiniLM-L6-v2, all-MiniLM-L6-v2-rerank)
//
// GENAPI_API_KEY, when set, is sent as "authorization: Bearer <key>" metadata.
import { credentials, Metadata, ServiceError } from "@grpc/grpc-js";

import { finishReasonToJSON, Role } from "./gen/genapi/v1/content";
import { modelTaskToJSON } from "./gen/genapi/v1/common";
import { EmbedRequest, EmbedResponse, EmbeddingServiceClient } from "./gen/genapi/v1/embedding_service";
import { GenerateRequest, GenerateResponse, GenerationServiceClient } from "./gen/genapi/v1/generation_service";
import { ListModelsResponse, ModelServiceClient } from "./gen/genapi/v1/model_service";
import { RerankRequest, RerankResponse, RerankServiceClient } from "./gen/genapi/v1/rerank_service";
import { Code, codeToJSON } from "./gen/google/rpc/code";
import { ErrorInfo } from "./gen/google/rpc/error_details";
import { Status } from "./gen/google/rpc/status";

const ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo";

/** Call metadata: the API key, if any. */
function authMetadata(): Metadata {
  const md = new Metadata();
  const key = process.env.GENAPI_API_KEY;
  if (key) md.set("authorization", `Bearer ${key}`);
  return md;
}

/** A deadline `seconds` from now (sent to the core as grpc-timeout). */
function deadline(seconds: number): Date {
  return new Date(Date.now() + seconds * 1000);
}

/** One line for a failed RPC: canonical code name and the ErrorInfo reason and param
 * that the core attaches to every error (decoded from the grpc-status-details-bin trailer). */
function describe(err: ServiceError): string {
  let reason = "";
  let param = "";
  const [raw] = err.metadata?.get("grpc-status-details-bin") ?? [];
  if (raw instanceof Buffer) {
    for (const detail of Status.decode(raw).details) {
      if (detail.typeUrl === ERROR_INFO_TYPE) {
        const info = ErrorInfo.decode(detail.value);
        reason = info.reason;
        param = info.metadata.param ?? "";
      }
    }
  }
  // grpc-js's status enum has google.rpc.Code's numbers.
  return `error: code=${codeToJSON(err.code as number as Code)} reason=${reason} param=${param} message=${JSON.stringify(err.details)}`;
}

function listModels(client: ModelServiceClient): Promise<ListModelsResponse> {
  return new Promise((resolve, reject) =>
    client.listModels({}, authMetadata(), { deadline: deadline(10) }, (err, resp) => (err ? reject(err) : resolve(resp))),
  );
}

/** Embeds two texts; each vector comes back as a packed float list. */
function embed(client: EmbeddingServiceClient, model: string): Promise<EmbedResponse> {
  const request = EmbedRequest.fromPartial({
    model,
    inputs: [{ text: "The cat sat on the mat." }, { text: "Paris is in France." }],
  });
  return new Promise((resolve, reject) =>
    client.embed(request, authMetadata(), { deadline: deadline(30) }, (err, resp) => (err ? reject(err) : resolve(resp))),
  );
}

/** Scores three documents against a query; the results come sorted by relevance. */
function rerank(client: RerankServiceClient, model: string): Promise<RerankResponse> {
  const request = RerankRequest.fromPartial({
    model,
    query: "What is the capital of France?",
    documents: ["Paris is the capital of France.", "Bananas are yellow.", "Berlin is the capital of Germany."],
    returnDocuments: true,
  });
  return new Promise((resolve, reject) =>
    client.rerank(request, authMetadata(), { deadline: deadline(30) }, (err, resp) => (err ? reject(err) : resolve(resp))),
  );
}

/** Streams one completion; `call.cancel()` would end it early, and the core then stops
 * generating for it. Resolves with the last event (its usage is the request's total). */
function generate(client: GenerationServiceClient, model: string): Promise<GenerateResponse | undefined> {
  const request = GenerateRequest.fromPartial({
    model,
    messages: [{ role: Role.ROLE_USER, content: [{ text: "Say hello in one sentence." }] }],
    sampling: { temperature: 0 },
    stopping: { maxTokens: 16 },
  });
  return new Promise((resolve, reject) => {
    let last: GenerateResponse | undefined;
    const call = client.generate(request, authMetadata(), { deadline: deadline(60) });
    call.on("data", (ev: GenerateResponse) => {
      last = ev;
      if (ev.started) process.stdout.write("text: ");
      if (ev.text) process.stdout.write(ev.text.text);
      if (ev.finished) process.stdout.write(`\nfinish_reason: ${finishReasonToJSON(ev.finished.reason)}\n`);
    });
    call.on("error", (err: ServiceError) => {
      if (last) process.stdout.write("\n");
      reject(err);
    });
    call.on("end", () => resolve(last));
  });
}

async function main(): Promise<number> {
  const target = process.argv[2] ?? "127.0.0.1:50051";
  const model = process.argv[3] ?? "genapi-tiny-chat";
  const embedModel = process.argv[4] ?? "all-MiniLM-L6-v2";
  const rerankModel = process.argv[5] ?? "all-MiniLM-L6-v2-rerank";
  // Plaintext on loopback; credentials.createSsl() behind a TLS-terminating proxy.
  const creds = credentials.createInsecure();
  const models = new ModelServiceClient(target, creds);
  const gen = new GenerationServiceClient(target, creds);
  const embeddings = new EmbeddingServiceClient(target, creds);
  const reranker = new RerankServiceClient(target, creds);
  try {
    for (const m of (await listModels(models)).models) {
      console.log(`model: ${m.id} task=${modelTaskToJSON(m.task)} context_length=${m.contextLength}`);
    }
    const u = (await generate(gen, model))?.usage;
    console.log(`usage: prompt_tokens=${u?.promptTokens} completion_tokens=${u?.completionTokens} total_tokens=${u?.totalTokens}`);
    const embedded = await embed(embeddings, embedModel);
    for (const e of embedded.embeddings) {
      const head = e.values.slice(0, 3).map((v) => v.toFixed(4)).join(",");
      console.log(`embedding: index=${e.index} dimensions=${e.values.length} head=${head}`);
    }
    console.log(`embedding_usage: prompt_tokens=${embedded.usage?.promptTokens}`);
    for (const r of (await rerank(reranker, rerankModel)).results) {
      console.log(`rerank: index=${r.index} relevance_score=${r.relevanceScore.toFixed(4)} document=${JSON.stringify(r.document)}`);
    }
  } catch (err) {
    console.log(describe(err as ServiceError));
    return 1;
  }
  // The error case: an unknown model is NOT_FOUND with reason model_not_found.
  try {
    await generate(gen, "no-such-model");
    console.log("error: none (expected NOT_FOUND)");
    return 1;
  } catch (err) {
    console.log(describe(err as ServiceError));
    return 0;
  } finally {
    for (const client of [models, gen, embeddings, reranker]) client.close();
  }
}

main().then((code) => (process.exitCode = code));
