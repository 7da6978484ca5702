"""Thin gRPC servicers: translate messages, call faceharmony.server.logic, translate back."""
