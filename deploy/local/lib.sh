# shellcheck shell=bash
# deploy/local/lib.sh — helpers shared by up, down and status (sourced, never run).
#
# A "piece" is one process the local stack runs (redis, session-N, edge-N, haproxy).
# For each piece, the run dir holds:
#   pids/<piece>.pid    its PID (one line)
#   pids/<piece>.start  its start time from /proc/<pid>/stat, so that a reused PID
#                       is never taken for our process
#   pids/<piece>.addr   the address it serves, for status
#   logs/<piece>.log    its stdout and stderr (appended across runs)
# The caller sets PROG (its name, for messages) before sourcing this file.

SHOAL_LOCAL_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SHOAL_REPO=$(cd "$SHOAL_LOCAL_DIR/../.." && pwd)
RUN_DIR=${SHOAL_RUN_DIR:-$SHOAL_REPO/.run/local}
PID_DIR=$RUN_DIR/pids
LOG_DIR=$RUN_DIR/logs
# shellcheck disable=SC2034 # used by up and down
DATA_DIR=$RUN_DIR/data
STOP_TIMEOUT=${SHOAL_STOP_TIMEOUT:-10}   # seconds between SIGTERM and SIGKILL
LOG_TAIL_LINES=25

say() { printf '%s: %s\n' "$PROG" "$*"; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# Deadlines in microseconds of wall time (SECONDS only counts whole seconds).
now_us() { printf '%s\n' "${EPOCHREALTIME/./}"; }
deadline_in() { printf '%s\n' $(($(now_us) + $1 * 1000000)); }  # SECONDS -> deadline
before() { [ "$(now_us)" -lt "$1" ]; }                            # DEADLINE

# proc_stat_field PID N: field N (N >= 3) of /proc/PID/stat. The command name
# (field 2) may hold spaces, so everything up to the last ") " is cut first.
proc_stat_field() {
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  s=${s##*) }
  # shellcheck disable=SC2086
  set -- $s "$2"
  local n=${!#}
  [ "$n" -ge 3 ] || return 1
  n=$((n - 2))
  printf '%s\n' "${!n}"
}

# pid_running PID: the process exists and is not a zombie (PID 1 here may not
# reap orphans quickly, and kill -0 succeeds on a zombie).
pid_running() {
  local state
  kill -0 "$1" 2>/dev/null || return 1
  state=$(proc_stat_field "$1" 3) || return 1
  [ "$state" != Z ] && [ "$state" != X ]
}

# piece_pid NAME: prints the PID of NAME and returns 0 when the process recorded
# in its pid file is still running (and is the same process: same start time).
piece_pid() {
  local f=$PID_DIR/$1.pid pid start=
  [ -f "$f" ] || return 1
  read -r pid < "$f" || return 1
  is_uint "$pid" || return 1
  pid_running "$pid" || return 1
  [ -s "$PID_DIR/$1.start" ] && read -r start < "$PID_DIR/$1.start"
  if [ -n "$start" ] && [ "$(proc_stat_field "$pid" 22)" != "$start" ]; then
    return 1
  fi
  printf '%s\n' "$pid"
}

forget_piece() { rm -f "$PID_DIR/$1.pid" "$PID_DIR/$1.start" "$PID_DIR/$1.addr"; }

# recorded_pieces: every piece with a pid file, in start order
# (redis, sessions, edges, haproxy, anything else); stop in the reverse order.
recorded_pieces() {
  local f n
  [ -d "$PID_DIR" ] || return 0
  for f in "$PID_DIR"/*.pid; do
    [ -e "$f" ] || continue
    n=$(basename "$f" .pid)
    case $n in
      redis) printf '0 %s\n' "$n" ;;
      session-*) printf '1 %s\n' "$n" ;;
      edge-*) printf '2 %s\n' "$n" ;;
      haproxy) printf '3 %s\n' "$n" ;;
      *) printf '4 %s\n' "$n" ;;
    esac
  done | sort -k1,1n -k2,2V | cut -d' ' -f2
}

# stop_piece NAME: SIGTERM, wait up to STOP_TIMEOUT s for the exit, then SIGKILL.
# Removes the pid files. Returns 1 only if the process survived SIGKILL.
stop_piece() {
  local name=$1 pid deadline how=SIGTERM t0
  if ! pid=$(piece_pid "$name"); then
    say "  $name: not running (pid file removed)"
    forget_piece "$name"
    return 0
  fi
  t0=$(now_us)
  kill -TERM "$pid" 2>/dev/null
  deadline=$(deadline_in "$STOP_TIMEOUT")
  while pid_running "$pid" && before "$deadline"; do sleep 0.1; done
  if pid_running "$pid"; then
    warn "$name (PID $pid) still running ${STOP_TIMEOUT}s after SIGTERM: SIGKILL"
    kill -KILL "$pid" 2>/dev/null
    how=SIGKILL
    deadline=$(deadline_in 5)
    while pid_running "$pid" && before "$deadline"; do sleep 0.1; done
    if pid_running "$pid"; then
      warn "$name (PID $pid) survived SIGKILL; pid file kept"
      return 1
    fi
  fi
  forget_piece "$name"
  say "  $name: stopped (PID $pid, $how, $((($(now_us) - t0) / 1000)) ms)"
}

# show_log_tail NAME: the last lines a piece logged since up last started it
# (logs are appended across runs; up writes a "==== ... up: starting" line).
show_log_tail() {
  local log=$LOG_DIR/$1.log from
  if [ ! -s "$log" ]; then
    printf '%s: (%s is empty or missing)\n' "$PROG" "$log" >&2
    return 0
  fi
  from=$(grep -n '^==== .* up: starting ' "$log" | tail -n 1 | cut -d: -f1)
  printf '%s: ---- %s (last %d lines at most) ----\n' "$PROG" "$log" "$LOG_TAIL_LINES" >&2
  tail -n "+${from:-1}" "$log" | tail -n "$LOG_TAIL_LINES" >&2
  printf '%s: ---- end of %s ----\n' "$PROG" "$log" >&2
}

# tcp_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# http_code URL: the HTTP status (000 when nothing answers), 2 s limit.
http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" 2>/dev/null || true; }

# vmrss_kib PID: resident set size from /proc/PID/status, in KiB.
vmrss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null; }
