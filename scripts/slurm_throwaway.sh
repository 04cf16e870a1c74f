#!/usr/bin/env bash
# A throwaway one-node Slurm cluster for tests and trials: munged, slurmctld and slurmd, all
# configured, logging and keeping state in DIR, on free loopback ports; nothing in /etc is touched.
# Prints the path of its slurm.conf: export SLURM_CONF=<that path> and sbatch/squeue/scancel use it.
#
#   export SLURM_CONF=$(scripts/slurm_throwaway.sh start /tmp/slurm)
#   sbatch --wait --array=0-2 ... ; squeue
#   scripts/slurm_throwaway.sh stop /tmp/slurm
#
# Needs Debian's `slurm-wlm` and `munge` packages (apt-get install --no-install-recommends slurm-wlm
# munge) and root: slurmd starts jobs as the submitting user, which only root may do.
set -euo pipefail
cmd=${1:?usage: slurm_throwaway.sh start|stop DIR}
dir=${2:?usage: slurm_throwaway.sh start|stop DIR}
case $cmd in
  start)
    for b in munged slurmctld slurmd sinfo; do
      command -v "$b" >/dev/null || [ -x "/usr/sbin/$b" ] || {
        echo "no $b (apt-get install --no-install-recommends slurm-wlm munge)" >&2
        exit 3
      }
    done
    [ "$(id -u)" = 0 ] || { echo "slurm_throwaway.sh needs root (slurmd runs jobs as their user)" >&2; exit 3; }
    export PATH="$PATH:/usr/sbin"
    mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
    dir=$(cd "$dir" && pwd)
    chmod 0700 "$dir/munge"
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 0400 "$dir/munge/munge.key"
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
      --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed"
    ports=$(python3 -c 'import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))')
    read -r ctld_port node_port <<<"$ports"
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    : >"$dir/plugstack.conf"
    cat >"$dir/slurm.conf" <<EOF
# Throwaway one-node cluster (scripts/slurm_throwaway.sh); everything lives in $dir.
ClusterName=sftbench
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$node_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
PlugStackConfig=$dir/plugstack.conf
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=600
NodeName=sftnode NodeAddr=127.0.0.1 NodeHostname=$(hostname) CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -f "$SLURM_CONF" -i
    slurmd -f "$SLURM_CONF" -N sftnode
    for _ in $(seq 60); do
      state=$(sinfo -h -N -o %T 2>/dev/null || true)
      if [ "$state" = idle ]; then
        echo "$SLURM_CONF"
        exit 0
      fi
      sleep 1
    done
    echo "the throwaway Slurm cluster did not come up (node state: '${state:-none}'); logs in $dir" >&2
    exit 1
    ;;
  stop)
    for f in slurmd.pid slurmctld.pid munge/munged.pid; do
      if [ -s "$dir/$f" ]; then kill "$(cat "$dir/$f")" 2>/dev/null || true; fi
    done
    ;;
  *)
    echo "usage: slurm_throwaway.sh start|stop DIR" >&2
    exit 2
    ;;
esac
