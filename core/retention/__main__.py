"""`python -m faceharmony.core.retention`: the retention daemon (loops on the embedded defaults)."""

from faceharmony.core.retention.daemon import entry

entry()
