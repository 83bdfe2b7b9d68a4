#!/usr/bin/env bash
# The .deb under a real systemd (PID 1): boots a minimal Debian in a
# systemd-nspawn container, installs the package there, and checks what only
# systemd itself can show:
#   - the agent unit reaches READY=1 (Type=notify: active only after it);
#   - a model server starts as run_as under the agent unit's sandbox;
#   - replicas survive `systemctl restart gpufleet-agent` (KillMode=process);
#   - the watchdog restarts a hung agent (SIGSTOP), and the replica survives;
#   - journald carries the structured fields (REPLICA_ID, KIND);
#   - `systemctl stop` ends both units with Result=success.
#
#   packaging/systemd-check.sh path/to/gpufleet.deb
#
# Needs root, debootstrap and systemd-nspawn (installed if missing) and a
# Debian mirror. The base system is made once in $ROOTFS and copied for each
# run. Where containers
# cannot boot here, says SKIPPED and exits 0.
set -euo pipefail

deb=${1:?usage: packaging/systemd-check.sh path/to/gpufleet.deb}
ROOTFS=${ROOTFS:-/var/tmp/gpufleet-systemd-root}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

fail() {
    echo "systemd-check: FAIL: $*" >&2
    [[ -n ${inside_pid:-} ]] && in_container journalctl --no-pager -n 60 >&2 || true
    exit 1
}
step() { echo "systemd-check: $*" >&2; }
skip() {
    echo "systemd-check: SKIPPED: $*" >&2
    exit 0
}

[[ $(id -u) -eq 0 ]] || skip "not root: booting a container needs root"
if ! command -v systemd-nspawn >/dev/null || ! command -v debootstrap >/dev/null; then
    step "installing systemd-container and debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd-container debootstrap >/dev/null ||
        fail "apt-get install systemd-container debootstrap failed"
fi
# Anything mounted below a directory (a debootstrap or a container that was
# killed leaves /proc mounted there) is unmounted before the directory is
# copied or removed: `rm -rf` cannot remove a mounted /proc, and `cp -a` would
# copy the host's.
unmount_below() {
    local dir=$1 mounts
    mounts=$(awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
    for m in $mounts; do umount -l "$m" 2>/dev/null || umount -lf "$m" || fail "cannot unmount $m"; done
}
remove_tree() {
    unmount_below "$1"
    rm -rf "$1" || fail "cannot remove $1"
}

# One run at a time makes or uses the base: two checks at once would remove
# each other's trees.
exec {lock}>"$ROOTFS.lock"
flock -w 1800 "$lock" || fail "another systemd check holds $ROOTFS.lock"

# The base is made in a side directory and moved into place only when
# debootstrap finished, so an interrupted run never leaves a half-made base
# that a later run would take for whole.
done_mark=$ROOTFS/.gpufleet-base-complete
if [[ ! -e $done_mark ]]; then
    step "debootstrap of a minimal Debian into $ROOTFS (a few minutes, once)"
    partial=$ROOTFS.partial
    remove_tree "$partial"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus bookworm "$partial" "$MIRROR" \
        >"$ROOTFS.log" 2>&1 {lock}>&- || {
        remove_tree "$partial"
        fail "debootstrap failed; see $ROOTFS.log"
    }
    unmount_below "$partial"
    [[ -x $partial/usr/lib/systemd/systemd ]] || fail "debootstrap made no systemd; see $ROOTFS.log"
    touch "$partial/.gpufleet-base-complete"
    remove_tree "$ROOTFS"
    mv "$partial" "$ROOTFS"
fi
unmount_below "$ROOTFS"
# Every run boots a fresh copy of the never-booted base: nothing an earlier
# run installed or changed is there.
run_root=$ROOTFS.run
# A container left booted by a run that was killed (no trap ran) would hold
# the copy and the ports its units listen on.
if [[ -s $run_root.pid ]] && kill -0 "$(cat "$run_root.pid")" 2>/dev/null; then
    step "stopping the container a killed run left (pid $(cat "$run_root.pid"))"
    kill "$(cat "$run_root.pid")" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$(cat "$run_root.pid")" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$(cat "$run_root.pid")" 2>/dev/null || true
fi
remove_tree "$run_root"
cp -a "$ROOTFS" "$run_root"
cp "$deb" "$run_root/root/gpufleet.deb"

log=$(mktemp)
# The container does not inherit the lock: one left running must not keep
# every later check waiting.
systemd-nspawn --keep-unit --register=no --console=pipe -q -D "$run_root" -b >"$log" 2>&1 {lock}>&- &
nspawn=$!
echo "$nspawn" >"$run_root.pid"
cleanup() {
    kill "$nspawn" 2>/dev/null || true
    wait "$nspawn" 2>/dev/null || true
    rm -f "$log" "$run_root.pid"
    remove_tree "$run_root"
}
trap cleanup EXIT

# The container's PID 1 is the systemd child of systemd-nspawn.
inside_pid=
for _ in $(seq 1 100); do
    inside_pid=$(pgrep -P "$nspawn" -x systemd || true)
    [[ -n $inside_pid ]] && break
    kill -0 "$nspawn" 2>/dev/null || skip "systemd-nspawn could not boot a container here: $(tail -n 3 "$log")"
    sleep 0.1
done
[[ -n $inside_pid ]] || skip "no systemd came up in the container: $(tail -n 3 "$log")"
in_container() { nsenter -t "$inside_pid" -a "$@"; }
# `kill` is a shell builtin there: the minimal system has no /bin/kill.
signal() { in_container sh -c "kill $1 $2" 2>/dev/null; }
for _ in $(seq 1 100); do
    state=$(in_container systemctl is-system-running 2>/dev/null || true)
    [[ $state == running || $state == degraded ]] && break
    sleep 0.2
done
[[ $state == running || $state == degraded ]] || skip "the container's systemd did not finish booting (state '$state')"
step "systemd is PID 1 in the container ($state)"

step "dpkg -i inside the container"
in_container env DEBIAN_FRONTEND=noninteractive dpkg -i /root/gpufleet.deb >&2 ||
    fail "dpkg -i in the container"
in_container systemctl is-active --quiet gpufleet-agent ||
    fail "the agent is not active after install: no READY=1 (Type=notify)"
step "agent active after install: READY=1 arrived"

# Simulated GPUs (the container has no driver) and a short watchdog, so a
# hung agent is caught in seconds; everything else is the packaged unit.
in_container sh -euc '
mkdir -p /etc/systemd/system/gpufleet-agent.service.d
cat >/etc/systemd/system/gpufleet-agent.service.d/check.conf <<EOC
[Service]
ExecStart=
ExecStart=/usr/bin/gpufleet agent --config /etc/gpufleet/agent.toml --gpu-backend simulated --simulated-gpus 2
WatchdogSec=5s
EOC
mkdir -p /srv/models/tiny
head -c 1048576 /dev/zero >/srv/models/tiny/weights.bin
cat >/root/tiny.toml <<EOC
name = "tiny"
weights = "/srv/models/tiny/weights.bin"
replicas = 1
[server]
preset = "vllm"
command = ["/usr/bin/gpufleet", "demo", "server", "--port", "{port}", "--weights", "{weights}"]
gpus = 1
gpu_memory = "10GiB"
EOC
systemctl daemon-reload
systemctl enable --now gpufleet-coordinator
systemctl restart gpufleet-agent
' >&2 || fail "configuring the units in the container"

replica_field() { # field of the first replica, from the CLI's JSON
    in_container gpufleet replica ls -o json 2>/dev/null |
        sed -n "s/.*\"$1\": *\"\\{0,1\\}\\([^\",]*\\)\"\\{0,1\\}.*/\\1/p;T;q"
}
wait_ready() {
    for _ in $(seq 1 150); do
        [[ $(replica_field state) == ready ]] && return 0
        sleep 0.2
    done
    return 1
}
for _ in $(seq 1 100); do
    in_container gpufleet model apply -f /root/tiny.toml >/dev/null 2>&1 && break
    sleep 0.2
done
wait_ready || fail "the replica did not become ready under the agent unit"
pid=$(replica_field pid)
user=$(in_container stat -c %U "/proc/$pid")
[[ $user == gpufleet-models ]] || fail "the replica runs as '$user', not the packaged run_as gpufleet-models"
step "replica ready, pid $pid, as $user, inside the agent's sandbox"

in_container systemctl restart gpufleet-agent
signal -0 "$pid" || fail "systemctl restart gpufleet-agent killed the replica (KillMode=process)"
wait_ready && [[ $(replica_field pid) == "$pid" ]] ||
    fail "the restarted agent did not re-adopt replica pid $pid"
step "replica survived systemctl restart gpufleet-agent and was re-adopted"

agent=$(in_container systemctl show -p MainPID --value gpufleet-agent)
signal -STOP "$agent"
for _ in $(seq 1 100); do
    now=$(in_container systemctl show -p MainPID --value gpufleet-agent)
    [[ $now != "$agent" && $now != 0 ]] && break
    sleep 0.2
done
[[ $now != "$agent" && $now != 0 ]] || fail "the watchdog did not restart the hung agent (pid $agent)"
journal() { in_container journalctl --no-pager "$@"; } # read whole, then grep:
# `journalctl | grep -q` fails under pipefail when grep stops reading early.
agent_journal=$(journal -u gpufleet-agent)
grep -q "Watchdog timeout" <<<"$agent_journal" || fail "no watchdog timeout in the journal"
signal -0 "$pid" || fail "the watchdog restart killed the replica"
step "watchdog restarted the hung agent; the replica kept running"

agent_json=$(journal -u gpufleet-agent -o json)
grep -q '"REPLICA_ID":"' <<<"$agent_json" || fail "the agent's journal entries carry no REPLICA_ID field"
coordinator_json=$(journal -u gpufleet-coordinator -o json)
grep -q '"KIND":"model-applied"' <<<"$coordinator_json" ||
    fail "the coordinator's journal entries carry no KIND field"
step "journald has the structured fields"

for unit in gpufleet-agent gpufleet-coordinator; do
    in_container systemctl stop "$unit"
    result=$(in_container systemctl show -p Result --value "$unit")
    [[ $result == success ]] || fail "systemctl stop $unit: Result=$result"
done
signal -0 "$pid" || fail "stopping the agent stopped the replica"
step "OK: READY, sandboxed replica, restart, watchdog, journald, clean stop under systemd"
