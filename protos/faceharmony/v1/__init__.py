"""The FaceHarmony API contract (package faceharmony.v1): code generated from the .proto files here by protos/generate.py. Do not edit the _pb2 files by hand."""
