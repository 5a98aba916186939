#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for the Slurm workflow test
# (tests/workflow/test_slurm.py). Debian's slurm-wlm + munge; no systemd: daemons by hand.
#
#   .ci/start-slurm.sh          install if needed, configure, start (a no-op when running)
#   .ci/start-slurm.sh --stop   stop the daemons this script started (by their pid files)
#   .ci/start-slurm.sh --status print whether the cluster answers; exit 1 when it does not
#
# Environment: GENBRAIN_SLURM_DIR (state, spool, pid and log files; default
# /var/tmp/genbrain-slurm), GENBRAIN_SLURM_GPUS (fake GPUs on the node, default 2; 0 = none).
#
# Why each setting is what it is: ../shared/notes/slurm-local.md in the team's notes, in short:
# - the config lives at /etc/slurm/slurm.conf: the plugin's jobstep clears SLURM_CONF;
# - MinJobAge=600 lets Snakemake poll with squeue (there is no accounting database, sacct fails);
# - EnforcePartLimits=ALL makes sbatch refuse a request larger than the node instead of leaving
#   it pending forever;
# - fake GPUs are character devices with /dev/null's numbers listed in gres.conf, so `gpu=1`
#   requests are accepted; jobs see CUDA_VISIBLE_DEVICES but no CUDA, and run on CPU.
set -euo pipefail

DIR=${GENBRAIN_SLURM_DIR:-/var/tmp/genbrain-slurm}
GPUS=${GENBRAIN_SLURM_GPUS:-2}
CONF=/etc/slurm/slurm.conf
MARK="# written by genbrain-pipeline .ci/start-slurm.sh"

say() { echo "start-slurm: $*"; }
die() { echo "start-slurm: error: $*" >&2; exit 1; }

pid_alive() {  # pid_alive FILE: the process named in FILE runs
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

node_state() {  # the node's state as sinfo prints it (idle, mixed, down*, ...), or nothing
    timeout 10 sinfo -h -N -n "$(hostname -s)" -o %T 2>/dev/null | head -n1 || true
}

cluster_ready() {  # controller answers and the node accepts jobs
    command -v sinfo >/dev/null || return 1
    timeout 10 scontrol ping 2>/dev/null | grep -q "is UP" || return 1
    case $(node_state) in
        idle | mixed | allocated | completing) return 0 ;;
        *) return 1 ;;
    esac
}

stop_pidfile() {  # stop_pidfile NAME FILE: SIGTERM the pid in FILE, wait up to 15 s
    local name=$1 file=$2 pid
    if ! pid_alive "$file"; then
        rm -f "$file"
        return 0
    fi
    pid=$(cat "$file")
    kill "$pid"
    for _ in $(seq 150); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "$name (pid $pid) ignored SIGTERM for 15 s; sending SIGKILL"
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
    say "stopped $name (pid $pid)"
}

stop_cluster() {
    stop_pidfile slurmd "$DIR/slurmd.pid"
    stop_pidfile slurmctld "$DIR/slurmctld.pid"
    # munged only when this script started it (another service may rely on a system munged)
    if [[ -s $DIR/munged.pidfile ]]; then
        stop_pidfile munged "$(cat "$DIR/munged.pidfile")"
        rm -f "$DIR/munged.pidfile"
    fi
}

case ${1:-} in
    "") ;;
    --stop)
        [[ $EUID -eq 0 ]] || die "must run as root to stop the daemons"
        stop_cluster
        exit 0
        ;;
    --status)
        if cluster_ready; then
            say "cluster up: node $(hostname -s) is $(node_state)"
            exit 0
        fi
        say "no cluster answers (node state: '$(node_state)')"
        exit 1
        ;;
    *) die "unknown argument '$1' (expected nothing, --stop or --status)" ;;
esac

start=$SECONDS
if cluster_ready; then
    say "a Slurm cluster is already running (node $(hostname -s) is $(node_state)); nothing to do"
    exit 0
fi
[[ $EUID -eq 0 ]] || die "must run as root (installs packages, starts slurmctld/slurmd/munged)"

# --- install -----------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v munged >/dev/null || ! command -v sinfo >/dev/null; then
    command -v apt-get >/dev/null || die "Slurm is not installed and there is no apt-get"
    say "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    mkdir -p "$DIR/log"
    aptlog=$DIR/log/apt.log
    # no service starts from postinst scripts (there is no init system to start them with)
    policy=/usr/sbin/policy-rc.d
    made_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
    fi
    apt_install() {
        apt-get install -y -q -o DPkg::Lock::Timeout=300 --no-install-recommends \
            slurm-wlm munge >>"$aptlog" 2>&1
    }
    if ! apt_install; then
        say "apt-get install failed; updating the package lists and retrying"
        apt-get update -q -o DPkg::Lock::Timeout=300 >>"$aptlog" 2>&1 || true
        if ! apt_install; then
            [[ $made_policy -eq 1 ]] && rm -f "$policy"
            tail -n 5 "$aptlog" >&2
            die "apt-get install slurm-wlm munge failed (log: $aptlog)"
        fi
    fi
    [[ $made_policy -eq 1 ]] && rm -f "$policy"
    say "installed $(dpkg-query -W -f '${Package} ${Version}' slurm-wlm) and munge"
fi

# A half-started cluster (stale pid files, a node stuck down): stop what this script started.
stop_cluster >/dev/null

# --- munge -------------------------------------------------------------------------------
mkdir -p "$DIR"/{state,spool,log}
if ! timeout 5 munge -n 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1; then
    id munge >/dev/null 2>&1 || die "the munge package created no 'munge' user"
    if [[ ! -s /etc/munge/munge.key ]]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        say "created /etc/munge/munge.key"
    fi
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    rm -f /run/munge/munged.pid
    runuser -u munge -- munged --pid-file=/run/munge/munged.pid \
        || die "munged did not start (see /var/log/munge/munged.log)"
    echo /run/munge/munged.pid >"$DIR/munged.pidfile"
    timeout 5 munge -n | timeout 5 unmunge >/dev/null || die "munge credentials do not round-trip"
    say "started munged (pid $(cat /run/munge/munged.pid))"
fi

# --- configuration -----------------------------------------------------------------------
host=$(hostname -s)
cpus=$(nproc)
mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
[[ -n $mem ]] || die "slurmd -C printed no RealMemory"
mem=$((mem > 2048 ? mem - 1024 : mem))  # leave ~1 GB to the system and to Snakemake itself

mkdir -p /etc/slurm
gres_node=""
rm -f /etc/slurm/gres.conf
if [[ $GPUS -gt 0 ]]; then
    mkdir -p "$DIR/dev"
    ok=1
    for ((k = 0; k < GPUS; k++)); do
        [[ -c $DIR/dev/fakegpu$k ]] || mknod "$DIR/dev/fakegpu$k" c 1 3 2>/dev/null || ok=0
    done
    if [[ $ok -eq 1 ]]; then
        echo "Name=gpu File=$DIR/dev/fakegpu[0-$((GPUS - 1))]" >/etc/slurm/gres.conf
        gres_node="Gres=gpu:$GPUS"
    else
        say "cannot create device files (mknod refused): no fake GPUs"
        GPUS=0
    fi
fi

if [[ -e $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
    mv "$CONF" "$CONF.bak.$(date +%s)"
    say "moved the existing $CONF aside"
fi
cat >"$CONF" <<EOF
$MARK
# single node, no accounting, no cgroups; see the script's header for why.
ClusterName=genbrain
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=600
EnforcePartLimits=ALL
SchedulerType=sched/backfill
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
$([[ $GPUS -gt 0 ]] && echo "GresTypes=gpu")
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem $gres_node State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
say "wrote $CONF: node $host, $cpus CPUs, ${mem} MB, $GPUS fake GPUs, partition 'local'"

# --- daemons -----------------------------------------------------------------------------
# -c: a fresh controller state (no jobs or node states left over from an earlier cluster)
slurmctld -c || die "slurmctld did not start (see $DIR/log/slurmctld.log)"
slurmd || die "slurmd did not start (see $DIR/log/slurmd.log)"
for _ in $(seq 60); do
    cluster_ready && break
    sleep 0.5
done
if ! cluster_ready; then
    tail -n 5 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
    die "node $host is '$(node_state)', not idle, 30 s after start (logs in $DIR/log)"
fi
say "started slurmctld (pid $(cat "$DIR/slurmctld.pid"))" \
    "and slurmd (pid $(cat "$DIR/slurmd.pid")): node $host is $(node_state)" \
    "after $((SECONDS - start)) s; stop with $0 --stop"
