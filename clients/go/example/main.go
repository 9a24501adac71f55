// Command example calls the genapi gRPC API from Go: ListModels, a streaming Generate
// printing text and usage, and an unknown model to show the error model (status code
// plus google.rpc.ErrorInfo from the grpc-status-details-bin trailer).
//
//	example [TARGET [MODEL]]    (defaults 127.0.0.1:50051 and genapi-tiny-chat)
//
// GENAPI_API_KEY, when set, is sent as "authorization: Bearer <key>" metadata.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
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

func main() {
	target, model := "127.0.0.1:50051", "genapi-tiny-chat"
	if len(os.Args) > 1 {
		target = os.Args[1]
	}
	if len(os.Args) > 2 {
		model = os.Args[2]
	}
	// Plaintext on loopback (WithInsecure: Debian's grpc-go 1.33 predates
	// credentials/insecure); use credentials.NewTLS behind a TLS-terminating proxy.
	conn, err := grpc.Dial(target, grpc.WithInsecure())
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(2)
	}
	defer conn.Close()
	models, gen := genapiv1.NewModelServiceClient(conn), genapiv1.NewGenerationServiceClient(conn)

	if err := listModels(models); err != nil {
		fmt.Println(describe(err))
		os.Exit(1)
	}
	if err := generate(gen, model); err != nil {
		fmt.Println(describe(err))
		os.Exit(1)
	}
	// The error case: an unknown model is NOT_FOUND with reason model_not_found.
	if err := generate(gen, "no-such-model"); err != nil {
		fmt.Println(describe(err))
	} else {
		fmt.Println("error: none (expected NOT_FOUND)")
		os.Exit(1)
	}
}
