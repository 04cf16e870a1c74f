#!/usr/bin/env bash
# Start one `sweep` worker per host over ssh, all on one PostgreSQL database, and wait for them.
#
#   scripts/ssh_sweep.sh experiments/paper.toml postgresql://sft@dbhost/sftbench node1 node2 node3
#
# Each host needs this repository at the same path, its environment, and the password in its
# ~/.pgpass (never on the command line: it would show in `ps`). Logs: logs/ssh-HOST.log here.
# Ctrl-C here stops every worker cleanly (SIGINT over ssh -t: exit 130, the runs in progress are
# handed back); the same command resumes.
set -euo pipefail
config=${1:?usage: ssh_sweep.sh CONFIG.toml POSTGRES_URL HOST...}
storage=${2:?usage: ssh_sweep.sh CONFIG.toml POSTGRES_URL HOST...}
shift 2
[ $# -gt 0 ] || { echo "usage: ssh_sweep.sh CONFIG.toml POSTGRES_URL HOST..." >&2; exit 2; }
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p logs
pids=()
for host in "$@"; do
  ssh -tt "$host" "cd $(printf %q "$repo") && python cli.py sweep --config $(printf %q "$config") \
    --storage $(printf %q "$storage") --quiet --no-report" >"logs/ssh-$host.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { echo "worker on ${*:i+1:1} exited with $?; see logs/ssh-${*:i+1:1}.log" >&2; status=1; }
done
# One last pass here writes runs.csv from the database and the report.
python cli.py sweep --config "$config" --storage "$storage" --quiet
exit $status
