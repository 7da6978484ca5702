"""Command-line clients: `faceharmony` (a user of the app, over gRPC) and `faceharmony-admin` (an operator on the server machine)."""
