# Shared by the benchmark scripts (sourced): tools, the library test binary,
# page-cache residency checks and medians.

# Installs a Debian package when its command is missing: need CMD [PACKAGE].
need() { command -v "$1" >/dev/null || apt-get install -y "${2:-$1}" >/dev/null; }

# Stops when PATH's directory is on a RAM filesystem, where nothing is ever cold.
refuse_ram_fs() {
  case $(stat -f -c %T "$(dirname "$1")") in
    tmpfs|ramfs) echo "$1 is on a RAM filesystem: nothing is ever cold there" >&2; exit 1 ;;
  esac
}

# Builds the library's tests (release) and copies the binary to DEST: the
# target dir may be rewritten by other builds while a benchmark runs.
copy_lib_tests() {
  local built
  built=$(cargo test --release --lib --no-run 2>&1 | sed -n 's/.*Executable unittests src\/lib.rs (\(.*\))$/\1/p' | tail -1)
  [ -x "$built" ] || { echo "could not find the test binary" >&2; exit 1; }
  cp "$built" "$1"
}

resident_pct() { vmtouch "$1" | sed -n 's/.*Resident Pages:.* \([0-9.]*\)%$/\1/p'; }

# Drops PATH from the page cache and stops unless it is then 0% resident.
evict_cold() {
  sync
  vmtouch -e -q "$1"
  local pct
  pct=$(resident_pct "$1")
  [ "$pct" = 0 ] || { echo "eviction left $pct% of $1 resident; cannot measure cold" >&2; exit 1; }
}

# Stops unless PATH is at least 99.5% resident after LABEL read it: a large
# folio of a file just read sometimes leaves the cache with no reclaim
# counted (seen in a Firecracker guest, kernel 6.18), with every tool.
check_warm() {
  local label=$1 path=$2 pages
  pages=$(vmtouch "$path" | sed -n 's/.*Resident Pages: \([0-9]*\)\/\([0-9]*\) .*/\1 \2/p')
  set -- $pages
  [ $(($1 * 1000)) -ge $(($2 * 995)) ] || { echo "$label left $path partly cold ($1 of $2 pages)" >&2; exit 1; }
}

# The median of the numbers on stdin (separated by spaces or newlines).
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

# Ends the processes a fleet benchmark started: every pid listed in
# WORK/pids (then SIGKILL for what is left), and the demo model servers run
# from WORK's private copy of the binary, which an agent leaves running by
# design (a restarted agent adopts them).
end_fleet() {
  local work=$1 p
  while read -r p; do kill "$p" 2>/dev/null || true; done <"$work/pids"
  sleep 1
  while read -r p; do kill -9 "$p" 2>/dev/null || true; done <"$work/pids"
  for p in $(pgrep -f "^$work/gpufleet demo server" || true); do kill "$p" 2>/dev/null || true; done
}
