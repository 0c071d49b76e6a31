#!/usr/bin/env bash
# A single-node SLURM cluster on this machine (munge + slurmctld + slurmd, no systemd, no cgroups),
# for the launcher=slurm tests. Idempotent: exits 0 once `sinfo` shows the node idle.
#   scripts/slurm-localhost.sh        install (Debian: slurmctld slurmd slurm-client munge) and start
#   scripts/slurm-localhost.sh stop   stop the three daemons (by their pid files)
set -euo pipefail

CONF=/etc/slurm/slurm.conf
RUN=/run/slurm
LOG=/var/log/slurm
NODE=$(hostname -s)
WAIT_S=${SLURM_WAIT_S:-60}

die() { echo "slurm-localhost: $*" >&2; exit 1; }
say() { echo "slurm-localhost: $*"; }

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pidfile() {
  if alive "$1"; then
    local pid; pid=$(cat "$1"); kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    say "stopped $2 (pid $pid)"
  fi
  rm -f "$1"
}

if [[ ${1:-start} == stop ]]; then
  stop_pidfile $RUN/slurmd.pid slurmd
  stop_pidfile $RUN/slurmctld.pid slurmctld
  stop_pidfile /run/munge/munged.pid munged
  exit 0
fi
[[ ${1:-start} == start ]] || die "usage: $0 [start|stop]"
[[ $(id -u) == 0 ]] || die "must run as root (installs packages, writes /etc/slurm, starts daemons)"

# 1. packages (slurm-wlm is a metapackage over these plus optional plugins; these suffice)
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || die "slurmctld/slurmd/munged missing and no apt-get to install them"
  say "installing slurmctld slurmd slurm-client munge"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    slurmctld slurmd slurm-client munge >/tmp/slurm-localhost-apt.log 2>&1 \
    || die "apt-get install failed; see /tmp/slurm-localhost-apt.log"
fi

# 2. munge: a key, then munged as the munge user
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
  if command -v mungekey >/dev/null; then mungekey --create --force --keyfile=/etc/munge/munge.key
  else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
fi
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
if ! alive /run/munge/munged.pid; then
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid </dev/null >/dev/null 2>&1 \
    || die "munged did not start; see /var/log/munge/munged.log"
fi
munge -n | unmunge >/dev/null || die "munge does not round-trip a credential (munge -n | unmunge)"

# 3. slurm.conf: one node (this host at 127.0.0.1, its CPUs and memory as slurmd -C sees them), one partition
hw=$(slurmd -C | head -1) || die "slurmd -C failed"
hw=${hw#NodeName=* }   # CPUs=.. Boards=.. SocketsPerBoard=.. CoresPerSocket=.. ThreadsPerCore=.. RealMemory=..
install -d -m 0755 /etc/slurm $RUN $LOG /var/spool/slurmctld /var/spool/slurmd
new=$(mktemp)
cat >"$new" <<EOF
# written by scripts/slurm-localhost.sh: a single-node test cluster
ClusterName=localhost
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=30   # a requeued job waits this long before it starts again (default 120 s)
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5   # a quick start for requeued (time-eligible) jobs
ReturnToService=2
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
MinJobAge=300
NodeName=$NODE NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
changed=0
if [[ -s $CONF ]] && ! head -1 $CONF | grep -q "written by scripts/slurm-localhost.sh"; then
  rm -f "$new"; die "$CONF exists and is not ours (a real cluster's?): refusing to overwrite it"
fi
if ! cmp -s "$new" $CONF; then mv "$new" $CONF; chmod 0644 $CONF; changed=1; else rm -f "$new"; fi

# 4. the daemons (they fork into the background and outlive this script)
if [[ $changed == 1 ]]; then
  stop_pidfile $RUN/slurmd.pid slurmd
  stop_pidfile $RUN/slurmctld.pid slurmctld
fi
if ! alive $RUN/slurmctld.pid; then
  slurmctld </dev/null >>$LOG/slurmctld.out 2>&1 || die "slurmctld did not start: $(tail -5 $LOG/slurmctld.log)"
fi
if ! alive $RUN/slurmd.pid; then
  slurmd </dev/null >>$LOG/slurmd.out 2>&1 || die "slurmd did not start: $(tail -5 $LOG/slurmd.log)"
fi

# 5. wait for the node to be idle (or mixed/allocated: already running jobs)
state=""
for _ in $(seq $((WAIT_S * 2))); do
  state=$(sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1 || true)
  case $state in idle|mixed|allocated|completing) say "node $NODE is $state ($(sinfo -V))"; exit 0 ;; esac
  sleep 0.5
done
die "node $NODE not idle after ${WAIT_S}s (state: ${state:-no answer}); see $LOG/slurmctld.log and $LOG/slurmd.log"
