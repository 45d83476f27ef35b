#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, then runs pytest.
# Used as-is by .ci/run. pytest's exit 5 ("no tests ran") counts as a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[test,md]"
if [ ! -x /usr/bin/chromium ]; then
  (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null
fi
set +e
python -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$rc"
