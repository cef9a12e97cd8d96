# Sourced by the other scripts: where the repository is and which Python runs it.
# A virtual environment at .venv (made by install-deps.sh when the system Python is
# "externally managed", as Debian 12's is) wins over whatever python3 is on PATH.
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -x $REPO/.venv/bin/python ]]; then
  PYTHON=$REPO/.venv/bin/python
  export PATH=$REPO/.venv/bin:$PATH
else
  PYTHON=${PYTHON:-$(command -v python3 || echo python3)}
fi
export PYTHON
# pytest from the same environment (plain `pytest`, never `python -m pytest`, so the repository
# root is not put on sys.path ahead of the installed packages).
if [[ -x $(dirname "$PYTHON")/pytest ]]; then
  PYTEST=$(dirname "$PYTHON")/pytest
else
  PYTEST=pytest
fi
