#!/usr/bin/env bash
# One `sweep` worker per array task, all on one PostgreSQL database; each takes the next free trial
# slot or final run from it, so any number of tasks (and a resubmitted or preempted one) is safe.
#
#   export SFT_BENCH_DB_PASSWORD=...            # or ~/.pgpass on the nodes; never in the URL here
#   mkdir -p logs
#   sbatch --array=0-7 scripts/slurm_sweep.sh experiments/paper.toml postgresql://sft@dbhost/sftbench
#
# Arguments after RESULTS_DIR go to `sweep` as they are (e.g. --data-dir /scratch/cifar); $PYTHON
# names the interpreter (default: python on the node's PATH). sbatch passes the environment along.
#
# Results: each task writes runs.csv and records/ from the shared database into RESULTS_DIR (put it
# on a shared file system so the report sees every prediction file).
#SBATCH --job-name=sft-sweep
#SBATCH --cpus-per-task=8
#SBATCH --mem=16G
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@120
#SBATCH --requeue
#SBATCH --output=logs/sweep-%A_%a.log
set -euo pipefail
config=${1:?usage: sbatch --array=0-N scripts/slurm_sweep.sh CONFIG.toml POSTGRES_URL [RESULTS_DIR [SWEEP OPTIONS...]]}
storage=${2:?usage: sbatch --array=0-N scripts/slurm_sweep.sh CONFIG.toml POSTGRES_URL [RESULTS_DIR [SWEEP OPTIONS...]]}
results=${3:-results}
shift $(($# < 3 ? $# : 3))
cd "${SLURM_SUBMIT_DIR:-.}"
# SIGTERM (Slurm's --signal, preemption, scancel) hands the run in progress back: exit 143, and a
# requeued task resumes. A SIGKILLed task's claim is freed after [workers] stale_after_seconds.
exec "${PYTHON:-python}" cli.py sweep --config "$config" --storage "$storage" --results-dir "$results" \
  --threads "${SLURM_CPUS_PER_TASK:-1}" --quiet --no-report "$@"
