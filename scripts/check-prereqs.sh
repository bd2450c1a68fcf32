#!/usr/bin/env bash
# Checks what `make setup` cannot install itself, and says how to get it.
set -u
py="${1:-python3.11}"
fail=0
if ! command -v "$py" >/dev/null 2>&1; then
  echo "ERROR: $py not found. MedFakeDet needs Python 3.11 (e.g. 'apt-get install python3.11 python3.11-venv'," >&2
  echo "       or pyenv install 3.11), or run 'make PYTHON=/path/to/python3.11 setup'." >&2
  fail=1
elif ! "$py" -c 'import sys, venv; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null; then
  echo "ERROR: $py is $("$py" --version 2>&1), not Python 3.11 with venv (torch==2.14.1 is pinned for 3.11)." >&2
  fail=1
fi
if ! command -v java >/dev/null 2>&1; then
  echo "ERROR: java not found. TorchServe 0.12 needs a JDK 17 ('apt-get install openjdk-17-jdk-headless')." >&2
  fail=1
else
  major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)
  if [ -z "$major" ] || [ "$major" -lt 17 ]; then
    echo "ERROR: java is version ${major:-unknown}; TorchServe 0.12 needs JDK 17 or newer." >&2
    fail=1
  fi
fi
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  echo "WARNING: nginx not found: 'make serve' and the integration tests need it ('apt-get install nginx')." >&2
fi
exit $fail
