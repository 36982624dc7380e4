#!/usr/bin/env bash
# Start (or check) a single-node SLURM cluster on this machine: munged, slurmctld, slurmd.
# Needs root and Debian's slurm-wlm + munge (installed here with apt-get when missing).
# Idempotent: if the node already answers `sinfo` as idle/mixed/alloc, it does nothing.
#   scripts/slurm_local.sh          start and wait until the node is up
#   scripts/slurm_local.sh stop     stop the daemons
set -euo pipefail

log() { echo "[slurm_local] $*" >&2; }

if [ "$(id -u)" != 0 ]; then
  log "needs root (starts slurmctld/slurmd/munged)"; exit 1
fi

if [ "${1:-}" = "stop" ]; then
  pkill -x slurmd || true; pkill -x slurmctld || true; pkill -x munged || true
  exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  log "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq slurm-wlm munge >/dev/null
fi

node_up() { sinfo -h -N -o "%T" 2>/dev/null | grep -Eq '^(idle|mixed|allocated|completing)'; }

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
if ! pgrep -x munged >/dev/null; then
  su -s /bin/sh munge -c /usr/sbin/munged || runuser -u munge -- /usr/sbin/munged
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
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd

for _ in $(seq 1 60); do
  if node_up; then log "node ${host} up (${ncpu} CPUs, ${real_mb} MB)"; exit 0; fi
  scontrol update nodename="${host}" state=resume >/dev/null 2>&1 || true
  sleep 1
done
log "node did not come up; see /var/log/slurm/slurmctld.log and slurmd.log"
sinfo || true
exit 1
