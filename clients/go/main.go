// Command client is a Go backend calling the FaceHarmony API over gRPC with the stubs of `make stubs`
// (README: "Calling the API from another backend"). It does what clients/typescript/client.ts does: checks
// health, joins the waiting list, reads the signed-in account when FACEHARMONY_TOKEN holds a session token,
// makes two calls that fail and decodes each error's google.rpc.ErrorInfo, then prints one JSON line of the
// outcomes. Nothing personal is printed: no email, no name, no token.
//
// In module mode (go.mod here: the stubs by a replace to ../../gen/go; `go mod tidy` fetches grpc-go and
// genproto once), from the repository root:
//
//	make stubs LANGS=go && cd clients/go && go mod tidy
//	FACEHARMONY_TOKEN=... go run . 127.0.0.1:50051 ada@example.com
//
// Offline, GOPATH mode over Debian's Go libraries, as tests/test_other_backends.py builds it: README, "Calling
// the API from another backend".
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	fh "github.com/faceharmony/backend/gen/go/faceharmony/v1"
)

// deadline bounds every call; the server sees it as grpc-timeout.
const deadline = 10 * time.Second

// errorDomain is the domain of every ErrorInfo the service sends (errors.proto).
const errorDomain = "faceharmony.app"

type failure struct {
	Call   string `json:"call"`
	Code   string `json:"code"`   // the gRPC status name, e.g. INVALID_ARGUMENT
	Reason string `json:"reason"` // ErrorInfo.reason, e.g. AGE_ATTESTATION_REQUIRED ("" when the transport failed first)
}

type account struct {
	State string `json:"state"`
}

type result struct {
	Health   string    `json:"health"`
	Joined   bool      `json:"joined"`
	Account  *account  `json:"account"`
	Failures []failure `json:"failures"`
}

var wordBoundary = regexp.MustCompile(`([a-z])([A-Z])`)

// failureOf reads a failed call's gRPC code and the reason of its ErrorInfo, which grpc-go decodes from the
// grpc-status-details-bin trailer (a google.rpc.Status).
func failureOf(call string, err error) failure {
	st := status.Convert(err)
	code := strings.ToUpper(wordBoundary.ReplaceAllString(st.Code().String(), "${1}_${2}"))
	out := failure{Call: call, Code: code}
	for _, detail := range st.Details() {
		if info, ok := detail.(*errdetails.ErrorInfo); ok && info.GetDomain() == errorDomain {
			out.Reason = info.GetReason()
		}
	}
	return out
}

// expectFailure runs a call that must fail; a success is reported as such.
func expectFailure(call string, send func(ctx context.Context) error) failure {
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	if err := send(ctx); err != nil {
		return failureOf(call, err)
	}
	return failure{Call: call, Code: "OK"}
}

// signedIn adds the session token as `authorization: Bearer <token>` metadata.
func signedIn(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

// run makes the calls; on an unexpected failure it names the step that failed.
func run(address, email, token string) (*result, string, error) {
	// Plaintext, as on loopback; production dials with TLS credentials.
	conn, err := grpc.Dial(address, grpc.WithInsecure())
	if err != nil {
		return nil, "dial", err
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	accounts := fh.NewAccountServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()

	checked, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return nil, "Health/Check", err
	}
	join := &fh.JoinWaitlistRequest{Name: "Go Backend", Email: email, Is_16OrOlder: true}
	if _, err := accounts.JoinWaitlist(ctx, join); err != nil {
		return nil, "JoinWaitlist", err
	}
	out := &result{Health: checked.GetStatus().String(), Joined: true}
	if token != "" {
		reply, err := accounts.GetAccount(signedIn(ctx, token), &fh.GetAccountRequest{})
		if err != nil {
			return nil, "GetAccount", err
		}
		state := strings.TrimPrefix(reply.GetAccount().GetState().String(), "ACCOUNT_STATE_")
		out.Account = &account{State: state}
	}
	out.Failures = []failure{
		// The "16 or older" attestation is required (P2).
		expectFailure("JoinWaitlist", func(ctx context.Context) error {
			_, err := accounts.JoinWaitlist(ctx, &fh.JoinWaitlistRequest{Name: "Go Backend", Email: email})
			return err
		}),
		// A signed-in call without the authorization metadata.
		expectFailure("GetAccount", func(ctx context.Context) error {
			_, err := accounts.GetAccount(ctx, &fh.GetAccountRequest{})
			return err
		}),
	}
	return out, "", nil
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: client HOST:PORT EMAIL  (FACEHARMONY_TOKEN: a session token, optional)")
		os.Exit(2)
	}
	out, step, err := run(os.Args[1], os.Args[2], os.Getenv("FACEHARMONY_TOKEN"))
	if err != nil {
		f := failureOf(step, err)
		fmt.Fprintf(os.Stderr, "client failed: %s: %s %s\n", f.Call, f.Code, f.Reason)
		os.Exit(1)
	}
	line, err := json.Marshal(out)
	if err != nil {
		fmt.Fprintln(os.Stderr, "client failed:", err)
		os.Exit(1)
	}
	fmt.Println(string(line))
}
