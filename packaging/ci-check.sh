#!/usr/bin/env bash
# CI check of the packaging: both systemd units verify cleanly, the .deb
# builds and holds what it should, installs (and reinstalls, the upgrade
# path) on this machine, and the installed binary runs, parses the shipped
# configs and speaks sd_notify. Run as root on a throwaway Debian/Ubuntu
# machine: it installs packages (cargo-deb, systemd, gpufleet) there.
# Idempotent; exits non-zero with a line saying what failed.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

fail() {
    echo "ci-check: FAIL: $*" >&2
    exit 1
}
step() { echo "ci-check: $*" >&2; }

[[ $(id -u) -eq 0 ]] || fail "must run as root: it installs the .deb with dpkg -i (run it on a throwaway machine)"
command -v dpkg-deb >/dev/null 2>&1 || fail "dpkg-deb not found: this check needs a Debian-based machine"
command -v cargo >/dev/null 2>&1 || fail "cargo not found on PATH"

# --- tools ------------------------------------------------------------------
if ! command -v systemd-analyze >/dev/null 2>&1; then
    step "installing systemd (for systemd-analyze)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null ||
        fail "apt-get install systemd failed"
fi
if ! command -v lintian >/dev/null 2>&1; then
    step "installing lintian"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lintian >/dev/null ||
        fail "apt-get install lintian failed"
fi
if ! command -v cargo-deb >/dev/null 2>&1; then
    step "installing cargo-deb"
    cargo install cargo-deb --locked || fail "cargo install cargo-deb failed"
fi

# systemd-analyze verify exits 0 on unknown keys and unparsable values (it
# only warns), so any output at all counts as a failure.
verify_units() {
    local out
    if ! out=$(systemd-analyze verify "$@" 2>&1) || [[ -n $out ]]; then
        echo "$out" >&2
        fail "systemd-analyze verify $*"
    fi
}

# --- units, before packaging: ExecStart must exist, so point it at a copy ----
step "verifying the units (ExecStart pointed at a stand-in binary)"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
install -m 0755 /bin/true "$scratch/gpufleet"
for unit in gpufleet-agent gpufleet-coordinator gpufleet-gateway; do
    sed "s#/usr/bin/gpufleet #$scratch/gpufleet #" "systemd/$unit.service" >"$scratch/$unit.service"
done
verify_units "$scratch/gpufleet-agent.service" "$scratch/gpufleet-coordinator.service" "$scratch/gpufleet-gateway.service"

# The sandbox must not loosen unnoticed: systemd-analyze security scores
# each unit (0 safest, 10 most exposed); docs/install.md says what is left
# open in the agent's and why.
exposure() {
    systemd-analyze security --offline=true --no-pager "$1" 2>/dev/null |
        sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p'
}
for pair in gpufleet-agent:5.5 gpufleet-coordinator:2.0; do
    unit=${pair%%:*} most=${pair##*:}
    score=$(exposure "$scratch/$unit.service")
    if [[ -z $score ]]; then
        step "SKIPPED: systemd-analyze security --offline is not available here (systemd < 252)"
        break
    fi
    awk -v s="$score" -v m="$most" 'BEGIN { exit !(s <= m) }' ||
        fail "$unit.service: systemd-analyze security exposure $score, above $most"
    step "$unit.service exposure $score (at most $most)"
done

# The units let each role write only its StateDirectory= under /var/lib, so
# the shipped configs must keep their state there, or the role cannot start.
config_value() { sed -n "s/^$2 *= *\"\(.*\)\".*/\1/p" "$1" | tail -n 1; }
unit_state_dir() { echo "/var/lib/$(sed -n 's/^StateDirectory=//p' "$1" | head -n 1)"; }
check_state_dir() {
    local config=$1 key=$2 unit=$3 have want
    have=$(config_value "$config" "$key")
    want=$(unit_state_dir "$unit")
    [[ $have == "$want" ]] ||
        fail "$config: $key = \"$have\", but $unit lets the service write only $want (StateDirectory=); set $key = \"$want\""
}
check_state_dir packaging/config/agent.toml state_dir systemd/gpufleet-agent.service
check_state_dir packaging/config/coordinator.toml data_dir systemd/gpufleet-coordinator.service

# --- build ------------------------------------------------------------------
step "building the .deb (release; this takes a while on a cold cache)"
deb=$(packaging/build-deb.sh | tail -n 1) || fail "packaging/build-deb.sh failed"
step "built $deb"

# --- lintian: Debian's own checks, at the pedantic level ---------------------
step "lintian --pedantic $(basename "$deb")"
if ! lint=$(lintian --pedantic --fail-on error,warning,pedantic "$deb" 2>&1); then
    echo "$lint" >&2
    fail "lintian found problems in $deb"
fi

# --- inspect ----------------------------------------------------------------
info=$(dpkg-deb -I "$deb") || fail "dpkg-deb -I $deb"
contents=$(dpkg-deb -c "$deb") || fail "dpkg-deb -c $deb"
control="$scratch/control"
rm -rf "$control"
dpkg-deb -e "$deb" "$control" || fail "dpkg-deb -e $deb"

grep -q '^ Package: gpufleet$' <<<"$info" || fail "control file: Package is not gpufleet"
for script in postinst prerm postrm; do
    [[ -x $control/$script ]] || fail "the .deb has no executable $script maintainer script"
done
for path in \
    ./usr/bin/gpufleet \
    ./etc/gpufleet/agent.toml \
    ./etc/gpufleet/coordinator.toml \
    ./etc/gpufleet/gateway.toml \
    ./usr/share/doc/gpufleet/gateway.md \
    ./usr/lib/sysusers.d/gpufleet.conf \
    ./usr/share/doc/gpufleet/install.md \
    ./usr/share/doc/gpufleet/copyright \
    ./usr/share/doc/gpufleet/changelog.Debian.gz \
    ./usr/share/man/man1/gpufleet.1.gz \
    ./usr/share/man/man1/gpufleet-node-ls.1.gz \
    ./usr/share/bash-completion/completions/gpufleet \
    ./usr/share/zsh/vendor-completions/_gpufleet \
    ./usr/share/fish/vendor_completions.d/gpufleet.fish \
    ./usr/share/doc/gpufleet/examples/llama.toml; do
    grep -q " $path\$" <<<"$contents" || fail "the .deb does not contain $path"
done
for unit in gpufleet-agent gpufleet-coordinator gpufleet-gateway; do
    grep -Eq " \./(usr/)?lib/systemd/system/$unit\.service\$" <<<"$contents" ||
        fail "the .deb does not contain the unit $unit.service"
done
grep -Eq '^-rwxr-xr-x (root/root|0/0) .* \./usr/bin/gpufleet$' <<<"$contents" ||
    fail "/usr/bin/gpufleet is not root-owned mode 0755 in the .deb"
for conf in /etc/gpufleet/agent.toml /etc/gpufleet/coordinator.toml /etc/gpufleet/gateway.toml; do
    grep -qx "$conf" "$control/conffiles" 2>/dev/null ||
        fail "$conf is not a conffile (operator edits would be overwritten on upgrade)"
done
for script in postinst prerm postrm; do
    sh -n "$control/$script" || fail "the $script maintainer script is not valid sh"
done
# Exactly once: a stray debhelper token (in a comment, say) duplicates the
# generated snippets.
[[ $(grep -c 'deb-systemd-helper enable gpufleet-agent.service' "$control/postinst") -eq 1 ]] ||
    fail "postinst does not enable gpufleet-agent.service exactly once"
grep -Eq '^ *systemd-sysusers .* gpufleet\.conf$' "$control/postinst" ||
    fail "postinst does not create the gpufleet user (systemd-sysusers gpufleet.conf)"

# --- install, then reinstall (the upgrade path of the maintainer scripts) ---
for pass in install reinstall; do
    step "dpkg -i ($pass)"
    dpkg -i "$deb" >&2 || fail "dpkg -i $deb ($pass)"
done
dpkg -s gpufleet | grep -q '^Status: install ok installed$' || fail "dpkg says gpufleet is not installed"

version=$(/usr/bin/gpufleet --version) || fail "/usr/bin/gpufleet --version"
want="gpufleet $(dpkg-deb -f "$deb" Version | sed 's/-[^-]*$//')"
[[ $version == "$want" ]] || fail "/usr/bin/gpufleet --version says '$version', expected '$want'"
step "installed: $version"

getent passwd gpufleet >/dev/null || fail "the gpufleet system user was not created"
getent passwd gpufleet-models >/dev/null || fail "the gpufleet-models user (run_as of the packaged agent.toml) was not created"
for group in video render; do
    id -nG gpufleet-models | tr ' ' '\n' | grep -qx "$group" || fail "gpufleet-models is not in the $group group (GPU devices)"
done
[[ $(stat -c %U /var/lib/gpufleet-models 2>/dev/null) == gpufleet-models ]] || fail "/var/lib/gpufleet-models (home of the model servers' user) is missing or not theirs"
grep -q '^run_as = "gpufleet-models"' /etc/gpufleet/agent.toml || fail "the packaged agent.toml does not run model servers as gpufleet-models"
[[ -d /var/lib/gpufleet && -d /var/lib/gpufleet/coordinator ]] || fail "the state dir /var/lib/gpufleet was not created"
[[ $(stat -c %U /var/lib/gpufleet/coordinator) == gpufleet ]] || fail "/var/lib/gpufleet/coordinator is not owned by gpufleet"
[[ -L /etc/systemd/system/multi-user.target.wants/gpufleet-agent.service ]] ||
    fail "gpufleet-agent.service is not enabled after install"
[[ ! -e /etc/systemd/system/multi-user.target.wants/gpufleet-coordinator.service ]] ||
    fail "gpufleet-coordinator.service was enabled on install (it is opt-in, one per fleet)"
[[ ! -e /etc/systemd/system/multi-user.target.wants/gpufleet-gateway.service ]] ||
    fail "gpufleet-gateway.service was enabled on install (it is opt-in)"

step "verifying the installed units"
unitdir=$(dirname "$(dpkg -L gpufleet | grep '/systemd/system/gpufleet-agent.service$')")
verify_units "$unitdir/gpufleet-agent.service" "$unitdir/gpufleet-coordinator.service" "$unitdir/gpufleet-gateway.service"

# --- the installed binary with the shipped configs, as systemd starts it ----
# Each role runs with its conffile on free loopback ports and must send
# READY=1 on a notify socket, then STOPPING=1 and exit 0 on SIGTERM: the
# coordinator and the gateway as the gpufleet user, the agent as root with
# no coordinator reachable (an agent must be harmless before it is configured).
smoke() {
    local role=$1
    step "starting the installed $role with NOTIFY_SOCKET (expects READY=1, then STOPPING=1)"
    python3 - "$scratch" "$role" <<'PY' || fail "the installed $role did not speak sd_notify as a Type=notify unit needs"
import os, shutil, signal, socket, subprocess, sys, time
scratch, role = sys.argv[1], sys.argv[2]

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

sock_path = os.path.join(scratch, f"{role}-notify.sock")
rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
rx.bind(sock_path)
os.chmod(sock_path, 0o777)
rx.settimeout(0.2)
state = os.path.join(scratch, f"{role}-state")
os.makedirs(state)
if role == "coordinator":
    shutil.chown(state, "gpufleet", "gpufleet")
    cmd = ["setpriv", "--reuid=gpufleet", "--regid=gpufleet", "--init-groups",
           "/usr/bin/gpufleet", "coordinator", "--config", "/etc/gpufleet/coordinator.toml",
           "--listen", f"127.0.0.1:{free_port()}", "--http-listen", f"127.0.0.1:{free_port()}",
           "--data-dir", state]
elif role == "gateway":
    cmd = ["setpriv", "--reuid=gpufleet", "--regid=gpufleet", "--init-groups",
           "/usr/bin/gpufleet", "gateway", "--config", "/etc/gpufleet/gateway.toml",
           "--listen", f"127.0.0.1:{free_port()}",
           "--coordinator", f"http://127.0.0.1:{free_port()}"]
else:
    cmd = ["/usr/bin/gpufleet", "agent", "--config", "/etc/gpufleet/agent.toml",
           "--state-dir", state, "--http-listen", f"127.0.0.1:{free_port()}",
           "--coordinator", f"http://127.0.0.1:{free_port()}", "--gpu-backend", "simulated"]
proc = subprocess.Popen(cmd, env={"PATH": "/usr/bin:/bin", "NOTIFY_SOCKET": sock_path})

def wait_for(assignment, within):
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            msg = rx.recv(4096).decode()
        except socket.timeout:
            if proc.poll() is not None and assignment != "STOPPING=1":
                sys.exit(f"{role} exited {proc.returncode} before {assignment}")
            continue
        print(f"ci-check: {role} notified {msg!r}", file=sys.stderr)
        if assignment in msg.split("\n"):
            return
    sys.exit(f"no {assignment} from the {role} within {within}s")

try:
    wait_for("READY=1", 30)
    proc.send_signal(signal.SIGTERM)
    wait_for("STOPPING=1", 10)
    if proc.wait(timeout=15) != 0:
        sys.exit(f"{role} exited {proc.returncode} after SIGTERM")
finally:
    if proc.poll() is None:
        proc.kill()
PY
}
if command -v python3 >/dev/null 2>&1 && command -v setpriv >/dev/null 2>&1; then
    chmod 0755 "$scratch"
    smoke coordinator
    smoke agent
    smoke gateway
else
    echo "ci-check: SKIP: python3 or setpriv not found, so the sd_notify smoke runs of the installed binary did not run" >&2
fi

# --- under a real systemd (PID 1, in a container) ---------------------------
bash packaging/systemd-check.sh "$deb" || fail "packaging/systemd-check.sh"

step "OK: units verify, $(basename "$deb") builds, installs, reinstalls and runs"
