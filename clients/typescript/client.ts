// A Node backend calling the FaceHarmony API over gRPC with Connect-ES (README: "Calling the API from another
// backend"). It checks health, joins the waiting list, reads the signed-in account when FACEHARMONY_TOKEN holds a
// session token, makes two calls that fail and decodes each error's google.rpc.ErrorInfo, then prints one JSON
// line of the outcomes. Nothing personal is printed: no email, no name, no token.
//
//   make stubs && node_modules/.bin/tsc -p clients/typescript
//   FACEHARMONY_TOKEN=... node build/typescript/clients/typescript/client.js 127.0.0.1:50051 ada@example.com
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import { AccountService, AccountState } from "../../gen/ts/faceharmony/v1/account_pb.js";
import { ErrorInfoSchema } from "../../gen/ts/google/rpc/error_details_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "../../gen/ts/grpc/health/v1/health_pb.js";

// Every call gets a deadline; the server sees it as grpc-timeout.
const DEADLINE_MS = 10_000;
// The domain of every ErrorInfo the service sends (errors.proto).
const ERROR_DOMAIN = "faceharmony.app";

interface Failure {
  call: string;
  code: string; // the gRPC status name, e.g. INVALID_ARGUMENT
  reason: string; // ErrorInfo.reason, e.g. AGE_ATTESTATION_REQUIRED ("" when the transport failed first)
}

// The session token goes in the `authorization: Bearer <token>` metadata of every signed-in call.
function bearer(token: string): Interceptor {
  return (next) => async (req) => {
    req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };
}

// A failed call's gRPC code and reason. Connect's gRPC transport decodes the grpc-status-details-bin trailer
// (a google.rpc.Status) into ConnectError.details; findDetails picks out the ErrorInfo.
function failure(call: string, err: unknown): Failure {
  const error = ConnectError.from(err);
  const info = error.findDetails(ErrorInfoSchema).find((detail) => detail.domain === ERROR_DOMAIN);
  const code = Code[error.code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
  return { call, code, reason: info?.reason ?? "" };
}

// Runs a call that must fail; a success is reported as such.
async function expectFailure(call: string, send: () => Promise<unknown>): Promise<Failure> {
  try {
    await send();
  } catch (err) {
    return failure(call, err);
  }
  return { call, code: "OK", reason: "" };
}

async function main(address: string, email: string, token: string | undefined): Promise<void> {
  // gRPC over HTTP/2 without TLS, as on loopback; production uses https:// and the platform's CA store.
  const transport = createGrpcTransport({ baseUrl: `http://${address}` });
  const options = { timeoutMs: DEADLINE_MS };
  const health = createClient(Health, transport);
  const accounts = createClient(AccountService, transport);

  const checked = await health.check({ service: "" }, options);
  await accounts.joinWaitlist({ name: "Node Backend", email, is16OrOlder: true }, options);

  let account: { state: string } | null = null;
  if (token) {
    const signedIn = createGrpcTransport({ baseUrl: `http://${address}`, interceptors: [bearer(token)] });
    const reply = await createClient(AccountService, signedIn).getAccount({}, options);
    account = { state: AccountState[reply.account?.state ?? AccountState.UNSPECIFIED] };
  }

  const failures = [
    // The "16 or older" attestation is required (P2).
    await expectFailure("JoinWaitlist", () => accounts.joinWaitlist({ name: "Node Backend", email }, options)),
    // A signed-in call without the authorization metadata.
    await expectFailure("GetAccount", () => accounts.getAccount({}, options)),
  ];

  const result = {
    health: HealthCheckResponse_ServingStatus[checked.status],
    joined: true,
    account,
    failures,
  };
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

const [address = "127.0.0.1:50051", email] = process.argv.slice(2);
if (!email) {
  process.stderr.write("usage: client.js HOST:PORT EMAIL  (FACEHARMONY_TOKEN: a session token, optional)\n");
  process.exit(2);
}
main(address, email, process.env.FACEHARMONY_TOKEN).catch((err: unknown) => {
  const { code, reason } = failure("", err);
  process.stderr.write(`client failed: ${code} ${reason}\n`);
  process.exit(1);
});
