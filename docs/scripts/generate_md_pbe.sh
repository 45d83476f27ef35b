#!/usr/bin/env bash
# Grow the PBE data of the MD sets in the order that makes Table 2 and the figures usable soonest:
# a test prefix and a training prefix per molecule (for malonaldehyde the paper's 300+350 K), the
# first 2 ps of the benzene and ethane traces (Fig. 2), then the other pool combinations and
# longer prefixes. Every step resumes from its finished chunks; stop it at any time (Ctrl-C loses
# at most the chunks in flight). Costs per snapshot and worker are in docs/md-pbe.md.
# MLHK_WORKERS=1 leaves a core free (e.g. for the AIMD of reference/aimd.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
run() { mlhk-viz generate pbe "$@" --chunk-size 5 --workers "${MLHK_WORKERS:-2}"; }
for step in \
  "ethane test 50" "ethane train300 100" "malonaldehyde test 50" \
  "ethane trace 40" "malonaldehyde train300+350 60" \
  "benzene test 50" "benzene train300 100" "benzene trace 40" \
  "ethane train300+350 100" "ethane train300+400 100" \
  "malonaldehyde train300+350 100" \
  "benzene train300+350 50" "benzene train300+400 50" \
  "ethane test 100" "ethane train300 200" "malonaldehyde test 100" "malonaldehyde train300+350 200"; do
  set -- $step
  run "$1" "$2" --limit "$3"
done
