#!/bin/bash
# mbsearch workers as a SLURM job array: every task runs the same `mbsearch run` command against one
# PostgreSQL study, and Optuna's storage hands out the trials. See docs/cluster.md.
#
#   export MBSEARCH_STORAGE=postgresql://nas:PASSWORD@dbhost:5432/nas   # never on the command line
#   sbatch --export=ALL docs/cluster/slurm-workers.sh
#
# Each task is one worker with its own cores; workers on one node serialize their CPU timing through the
# host lock, which lives in a node-wide folder (MBSEARCH_LOCK_DIR below: not TMPDIR, which many sites make
# private to each job), and a latency is never reused on another kind of device (the cache key holds the
# device fingerprint: CPU model, cores, runtime, threads). A study's nodes must share one fingerprint: a
# node that differs is refused at its start with one line (use a partition of identical nodes). A task that
# is preempted or killed leaves its trial to the heartbeat: it is marked failed after --grace-period and
# the same candidate is retried by another worker. Resubmitting the array continues the study.
#SBATCH --job-name=mbsearch
#SBATCH --array=0-7
#SBATCH --cpus-per-task=2
#SBATCH --mem=8G
#SBATCH --time=04:00:00
#SBATCH --output=mbsearch-%A_%a.log
#SBATCH --signal=B:TERM@60
set -euo pipefail

: "${MBSEARCH_STORAGE:?set MBSEARCH_STORAGE=postgresql://USER:PASSWORD@HOST:PORT/DB (docs/cluster.md)}"
STUDY="${STUDY:-v3-cpu-fashion-mnist}"
TRIALS="${TRIALS:-500}"                  # complete trials for the whole array, not per task
# Per-task CSVs and caches on the node's own disk (SQLite caches do not belong on a network file system);
# the study itself lives in PostgreSQL, and `mbsearch report STUDY --storage ...` reads it from anywhere.
RUNS_DIR="${RUNS_DIR:-${TMPDIR:-/tmp}/mbsearch-${SLURM_ARRAY_JOB_ID:-0}-${SLURM_ARRAY_TASK_ID:-0}}"
THREADS="${SLURM_CPUS_PER_TASK:-2}"
# Further run flags (a budget, a data folder) for every task, e.g. EXTRA_ARGS="--train-size 4000".
read -r -a EXTRA <<< "${EXTRA_ARGS:-}"
# The host timing lock, shared by every job on the node (any user: mbsearch makes the folder and its files
# world-writable). /var/tmp is node-local and, unlike TMPDIR or /tmp, not made private per job.
export MBSEARCH_LOCK_DIR="${MBSEARCH_LOCK_DIR:-/var/tmp/mbsearch-locks}"

export OMP_NUM_THREADS="$THREADS"  # the node may have more cores than this task was given
# `exec` so that SLURM's TERM reaches mbsearch, which stops cleanly. It is sent 60 s before the time limit
# to the batch shell itself (`B:` in --signal; without it only job steps get it, and this script runs none).
# ${EXTRA[@]+...}: an empty array under `set -u` is an error in bash before 4.4.
exec mbsearch run --space v3 --target cpu --study "$STUDY" --trials "$TRIALS" \
    --runs-dir "$RUNS_DIR" --threads 1 --train-threads "$THREADS" ${EXTRA[@]+"${EXTRA[@]}"}
