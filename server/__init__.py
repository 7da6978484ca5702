"""The FaceHarmony API server: gRPC services over the shared infrastructure in faceharmony.core."""
