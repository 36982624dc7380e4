#!/usr/bin/env bash
# Start (or check) a single-node SLURM cluster on this machine: munged, slurmctld, slurmd.
# Needs root and Debian's slurm-wlm + munge (installed here with apt-get when missing).
# Idempotent: if the node already answers `sinfo` as idle/mixed/alloc, it does nothing.
#   scripts/slurm_local.sh          start and wait until the node is up
#   scripts/slurm_local.sh status   exit 0 when the node is up, 1 otherwise (starts nothing)
#   scripts/slurm_local.sh stop     cancel the cluster's jobs and stop the daemons this script started
#                                   (by their PIDs, recorded in /run/slurm/started-by-slurm_local;
#                                   daemons it did not start are left alone)
set -euo pipefail

log() { echo "[slurm_local] $*" >&2; }
node_up() { sinfo -h -N -o "%T" 2>/dev/null | grep -Eq '^(idle|mixed|allocated|completing)'; }
STARTED=/run/slurm/started-by-slurm_local   # lines: <daemon> <pid file>

if [ "${1:-}" = "status" ]; then
  node_up; exit $?
fi

if [ "$(id -u)" != 0 ]; then
  log "needs root (starts slurmctld/slurmd/munged)"; exit 1
fi

if [ "${1:-}" = "stop" ]; then
  if [ ! -s "$STARTED" ]; then log "no daemons started by this script are running"; exit 0; fi
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u || true)
  if [ -n "$jobs" ]; then log "cancelling jobs: $(echo $jobs)"; scancel $jobs 2>/dev/null || true; fi
  # slurmd and slurmctld first, munged (their authentication) last
  for daemon in slurmd slurmctld munged; do
    pidfile=$(awk -v d="$daemon" '$1 == d {print $2}' "$STARTED")
    [ -n "$pidfile" ] && [ -s "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      log "stopped $daemon (PID $pid)"
    fi
  done
  rm -f "$STARTED"
  exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  log "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq slurm-wlm munge >/dev/null
fi

if node_up; then log "cluster already up"; exit 0; fi

host=$(hostname -s)
ncpu=$(nproc)
mem_mb=$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)
real_mb=$(( mem_mb * 9 / 10 ))

# munge
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
mkdir -p /run/slurm
if ! pgrep -x munged >/dev/null; then
  su -s /bin/sh munge -c /usr/sbin/munged || runuser -u munge -- /usr/sbin/munged
  echo "munged /run/munge/munged.pid" >> "$STARTED"
fi

# slurm
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
cat > /etc/slurm/slurm.conf <<EOF
ClusterName=local
SlurmctldHost=${host}
AuthType=auth/munge
# a requeued job may start again once its old credential has expired (default 120 s): 10 s here
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/backfill
KillWait=10
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
NodeName=${host} CPUs=${ncpu} RealMemory=${real_mb} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
if ! pgrep -x slurmctld >/dev/null; then slurmctld; echo "slurmctld /run/slurm/slurmctld.pid" >> "$STARTED"; fi
if ! pgrep -x slurmd >/dev/null; then slurmd; echo "slurmd /run/slurm/slurmd.pid" >> "$STARTED"; fi

for _ in $(seq 1 60); do
  if node_up; then log "node ${host} up (${ncpu} CPUs, ${real_mb} MB)"; exit 0; fi
  scontrol update nodename="${host}" state=resume >/dev/null 2>&1 || true
  sleep 1
done
log "node did not come up; see /var/log/slurm/slurmctld.log and slurmd.log"
sinfo || true
exit 1
