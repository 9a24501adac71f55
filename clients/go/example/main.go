// Command example calls the genapi gRPC API from Go: ListModels, a streaming Generate
// printing text and usage, Embed and Rerank, and an unknown model to show the error
// model (status code plus google.rpc.ErrorInfo from the grpc-status-details-bin trailer).
//
//	example [TARGET [MODEL [EMBED_MODEL [RERANK_MODEL]]]]
//	(defaults 127.0.0.1:50051, genapi-tiny-chat, all-MiniLM-L6-v2, all-MiniLM-L6-v2-rerank)
//
// GENAPI_API_KEY, when set, is sent as "authorization: Bearer <key>" metadata.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	genapiv1 "genapi/gen/genapi/v1"

	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// callContext bounds one RPC by a deadline (sent to the core as grpc-timeout) and
// carries the API key, if any.
func callContext(timeout time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	if key := os.Getenv("GENAPI_API_KEY"); key != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
	}
	return ctx, cancel
}

// describe prints a failed RPC as one line: canonical code name and the ErrorInfo
// reason and param that the core attaches to every error.
func describe(err error) string {
	st, _ := status.FromError(err)
	reason, param := "", ""
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			reason, param = info.GetReason(), info.GetMetadata()["param"]
		}
	}
	return fmt.Sprintf("error: code=%s reason=%s param=%s message=%q",
		code.Code(st.Code()).String(), reason, param, st.Message())
}

func listModels(client genapiv1.ModelServiceClient) error {
	ctx, cancel := callContext(10 * time.Second)
	defer cancel()
	resp, err := client.ListModels(ctx, &genapiv1.ListModelsRequest{})
	if err != nil {
		return err
	}
	for _, m := range resp.GetModels() {
		fmt.Printf("model: %s task=%s context_length=%d\n", m.GetId(), m.GetTask(), m.GetContextLength())
	}
	return nil
}

// generate streams one completion; cancelling ctx (or the deadline passing) ends the
// call, and the core then stops generating for it.
func generate(client genapiv1.GenerationServiceClient, model string) error {
	ctx, cancel := callContext(60 * time.Second)
	defer cancel()
	stream, err := client.Generate(ctx, &genapiv1.GenerateRequest{
		Model: model,
		Messages: []*genapiv1.ChatMessage{{
			Role:    genapiv1.Role_ROLE_USER,
			Content: []*genapiv1.ContentPart{{Part: &genapiv1.ContentPart_Text{Text: "Say hello in one sentence."}}},
		}},
		Sampling: &genapiv1.SamplingOptions{Temperature: proto.Float32(0)},
		Stopping: &genapiv1.StoppingOptions{MaxTokens: proto.Uint32(16)},
	})
	if err != nil {
		return err
	}
	var last *genapiv1.GenerateResponse
	started := false
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if started {
				fmt.Println()
			}
			return err
		}
		last = ev
		switch e := ev.GetEvent().(type) {
		case *genapiv1.GenerateResponse_Started:
			started = true
			fmt.Print("text: ")
		case *genapiv1.GenerateResponse_Text:
			fmt.Print(e.Text.GetText())
		case *genapiv1.GenerateResponse_Finished:
			fmt.Printf("\nfinish_reason: %s\n", e.Finished.GetReason())
		}
	}
	u := last.GetUsage()
	fmt.Printf("usage: prompt_tokens=%d completion_tokens=%d total_tokens=%d\n",
		u.GetPromptTokens(), u.GetCompletionTokens(), u.GetTotalTokens())
	return nil
}

// embed embeds two texts; each vector comes back as a packed float list.
func embed(client genapiv1.EmbeddingServiceClient, model string) error {
	ctx, cancel := callContext(30 * time.Second)
	defer cancel()
	resp, err := client.Embed(ctx, &genapiv1.EmbedRequest{
		Model: model,
		Inputs: []*genapiv1.EmbeddingInput{
			{Input: &genapiv1.EmbeddingInput_Text{Text: "The cat sat on the mat."}},
			{Input: &genapiv1.EmbeddingInput_Text{Text: "Paris is in France."}},
		},
	})
	if err != nil {
		return err
	}
	for _, e := range resp.GetEmbeddings() {
		var head []string
		for i, v := range e.GetValues() {
			if i == 3 {
				break
			}
			head = append(head, fmt.Sprintf("%.4f", v))
		}
		fmt.Printf("embedding: index=%d dimensions=%d head=%s\n", e.GetIndex(), len(e.GetValues()), strings.Join(head, ","))
	}
	fmt.Printf("embedding_usage: prompt_tokens=%d\n", resp.GetUsage().GetPromptTokens())
	return nil
}

// rerank scores three documents against a query; the results come sorted by relevance.
func rerank(client genapiv1.RerankServiceClient, model string) error {
	ctx, cancel := callContext(30 * time.Second)
	defer cancel()
	resp, err := client.Rerank(ctx, &genapiv1.RerankRequest{
		Model:           model,
		Query:           "What is the capital of France?",
		Documents:       []string{"Paris is the capital of France.", "Bananas are yellow.", "Berlin is the capital of Germany."},
		ReturnDocuments: true,
	})
	if err != nil {
		return err
	}
	for _, r := range resp.GetResults() {
		fmt.Printf("rerank: index=%d relevance_score=%.4f document=%q\n", r.GetIndex(), r.GetRelevanceScore(), r.GetDocument())
	}
	return nil
}

func main() {
	args := []string{"127.0.0.1:50051", "genapi-tiny-chat", "all-MiniLM-L6-v2", "all-MiniLM-L6-v2-rerank"}
	copy(args, os.Args[1:])
	target, model, embedModel, rerankModel := args[0], args[1], args[2], args[3]
	// Plaintext on loopback (WithInsecure: Debian's grpc-go 1.33 predates
	// credentials/insecure); use credentials.NewTLS behind a TLS-terminating proxy.
	conn, err := grpc.Dial(target, grpc.WithInsecure())
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(2)
	}
	defer conn.Close()
	models, gen := genapiv1.NewModelServiceClient(conn), genapiv1.NewGenerationServiceClient(conn)

	for _, call := range []func() error{
		func() error { return listModels(models) },
		func() error { return generate(gen, model) },
		func() error { return embed(genapiv1.NewEmbeddingServiceClient(conn), embedModel) },
		func() error { return rerank(genapiv1.NewRerankServiceClient(conn), rerankModel) },
	} {
		if err := call(); err != nil {
			fmt.Println(describe(err))
			os.Exit(1)
		}
	}
	// The error case: an unknown model is NOT_FOUND with reason model_not_found.
	if err := generate(gen, "no-such-model"); err != nil {
		fmt.Println(describe(err))
	} else {
		fmt.Println("error: none (expected NOT_FOUND)")
		os.Exit(1)
	}
}
