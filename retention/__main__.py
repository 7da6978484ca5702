"""`python -m faceharmony.retention`: the retention daemon (loops on the embedded defaults)."""

import sys

from faceharmony.retention.main import main

sys.exit(main())
