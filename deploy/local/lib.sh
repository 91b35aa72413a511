# shellcheck shell=bash
# deploy/local/lib.sh — what up, scale, supervise, down and status share (sourced, never run).
#
# A "piece" is one process of the local stack: redis, pg-primary, pg-replica,
# s3 (the S3-compatible test server), health-N, session-N, query-N, upload-N, edge-N,
# haproxy, and the supervisor (supervise).
# For each piece the run dir holds:
#   pids/<piece>.pid         its PID (one line)
#   pids/<piece>.start       its start time from /proc/<pid>/stat, so that a reused
#                            PID is never taken for our process
#   pids/<piece>.addr        the address(es) it serves, for status
#   pieces/<piece>.cmd       the command line it was started with (NUL-separated)
#   pieces/<piece>.env       its whole environment (NUL-separated, mode 600)
#   pieces/<piece>.restarts  how often supervise restarted it since up/scale started it
#   logs/<piece>.log         its stdout and stderr (appended across runs)
# and for the whole stack:
#   stack.conf               the settings it runs with (ports, counts, dirs); scale reads them
#   stack.env                the environment up ran in: the base of every piece's environment
#   edge-secret              SHOAL_EDGE_SECRET of every edge (64 hex characters, mode 600):
#                            made by the first up, kept by down, removed by down --purge
#
# A piece with pieces/<piece>.cmd is supervised: supervise restarts it when its
# process is gone. Whoever stops a piece on purpose (down, scale, up on failure)
# first removes those files under the pieces lock (.pieces.lock, which supervise
# also holds while it restarts a piece), then signals the process. up, scale and
# down take .admin.lock, so that two of them never change one stack at once.
# The caller sets PROG (its name, for messages) before sourcing this file.

SHOAL_LOCAL_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SHOAL_REPO=$(cd "$SHOAL_LOCAL_DIR/../.." && pwd)
RUN_DIR=${SHOAL_RUN_DIR:-$SHOAL_REPO/.run/local}
[[ $RUN_DIR == /* ]] || RUN_DIR=$PWD/$RUN_DIR   # pieces and supervise may run elsewhere
PID_DIR=$RUN_DIR/pids
LOG_DIR=$RUN_DIR/logs
SPEC_DIR=$RUN_DIR/pieces
# shellcheck disable=SC2034 # used by up and down
DATA_DIR=$RUN_DIR/data
STACK_CONF=$RUN_DIR/stack.conf
STACK_ENV_FILE=$RUN_DIR/stack.env
STOP_TIMEOUT=${SHOAL_STOP_TIMEOUT:-10}   # seconds between SIGTERM and SIGKILL
WAIT=${SHOAL_WAIT:-30}                   # seconds to wait for a piece to answer
LOG_TAIL_LINES=25
HOST=127.0.0.1
HEALTH_PORT_STEP=10   # health-N: ROUTER at SHOAL_HEALTH_PORT + 10(N-1), PUB one above
# session-N and query-N publish their events (ZeroMQ PUB, SHOAL_EVENTS_BIND) this far above
# their ROUTER port: session-1 7101 -> 8101, query-1 7201 -> 8201. A fixed offset keeps every
# stack that sets only the ROUTER bases (tests/run, the chaos and bench stacks) collision-free.
EVENTS_PORT_OFFSET=1000
EDGE_SECRET_FILE=$RUN_DIR/edge-secret
# Lock file descriptors: 6 supervise's own lock, 7 the pieces lock, 8 the admin
# lock. spawn closes them in every piece, which must never hold a lock.

say() { printf '%s: %s\n' "$PROG" "$*"; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# Deadlines in microseconds of wall time (SECONDS only counts whole seconds).
now_us() { printf '%s\n' "${EPOCHREALTIME/./}"; }
deadline_in() { printf '%s\n' $(($(now_us) + $1 * 1000000)); }  # SECONDS -> deadline
before() { [ "$(now_us)" -lt "$1" ]; }                            # DEADLINE
utc_now() {  # 2026-11-22T04:48:15.123Z
  local t=$EPOCHREALTIME
  TZ=UTC printf '%(%Y-%m-%dT%H:%M:%S)T.%sZ' "${t%.*}" "${t: -6:3}"
}

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
# reap orphans quickly, and kill -0 succeeds on a zombie). A stopped (SIGSTOP)
# process is running.
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
forget_spec() { rm -f "$SPEC_DIR/$1.cmd" "$SPEC_DIR/$1.env" "$SPEC_DIR/$1.restarts"; }

# recorded_pieces: every piece with a pid file or a spec, in start order (Postgres
# primary and replica, redis, s3, healths, sessions, the other services: query-N, then
# upload-N, edges, haproxy, haproxy-old-PID, supervise); stop in the reverse order (the
# replica before the primary, every service before the stores and services it uses).
recorded_pieces() {
  local f n
  for f in "$PID_DIR"/*.pid "$SPEC_DIR"/*.cmd; do
    [ -e "$f" ] || continue
    n=${f##*/}
    n=${n%.*}
    case $n in
      pg-primary|pg-replica|redis|s3) printf '0 %s\n' "$n" ;;
      health-*) printf '1 %s\n' "$n" ;;
      session-*) printf '2 %s\n' "$n" ;;
      edge-*) printf '4 %s\n' "$n" ;;
      haproxy) printf '5 %s\n' "$n" ;;
      haproxy-old-*) printf '6 %s\n' "$n" ;;
      supervise) printf '7 %s\n' "$n" ;;
      *) printf '3 %s\n' "$n" ;;
    esac
  done | sort -u | sort -k1,1n -k2,2V | cut -d' ' -f2
}

# stack_alive: some recorded piece of RUN_DIR is running.
stack_alive() {
  local p
  for p in $(recorded_pieces); do piece_pid "$p" >/dev/null && return 0; done
  return 1
}

# ---------------------------------------------------------------- locks
# lock_pieces / unlock_pieces: the short lock around "is it running? start it"
# and "stop supervising it" (up, scale, down, supervise).
lock_pieces() {
  exec 7>>"$RUN_DIR/.pieces.lock" || die "cannot open $RUN_DIR/.pieces.lock"
  flock -w 30 7 || die "$RUN_DIR/.pieces.lock is held for more than 30 s"
}
unlock_pieces() { exec 7>&-; }

# take_admin_lock SECONDS [soft]: one up, scale or down at a time per run dir.
# Held until the script exits. With "soft", a timeout is only a warning.
take_admin_lock() {
  exec 8>>"$RUN_DIR/.admin.lock" || die "cannot open $RUN_DIR/.admin.lock"
  flock -n 8 && return 0
  say "waiting (at most $1 s) for another up, scale or down on $RUN_DIR to finish"
  flock -w "$1" 8 && return 0
  [ "${2:-}" = soft ] || die "another up, scale or down still runs on $RUN_DIR"
  warn "another up, scale or down still runs on $RUN_DIR; going on anyway"
}

# ---------------------------------------------------------------- settings
# pg_default_bin_dir: the newest Debian PostgreSQL server binaries
# (/usr/lib/postgresql/<major>/bin; Debian keeps them off PATH), or nothing.
pg_default_bin_dir() {
  local d best='' v bestv=0
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/postgres" ] || continue
    v=${d%/bin}
    v=${v##*/}
    is_uint "$v" && [ "$v" -gt "$bestv" ] && bestv=$v best=$d
  done
  printf '%s\n' "$best"
}

# KEY|VARIABLE|DEFAULT|KIND. Counts may change while the stack runs (scale);
# the others are fixed until down.
SETTINGS=(
  "LB_PORT|SHOAL_PORT|8080|port"
  "EDGES|SHOAL_EDGES|2|count"
  "EDGE_PORT|SHOAL_EDGE_PORT|8081|port"
  "SESSIONS|SHOAL_SESSIONS|1|count"
  "SESSION_PORT|SHOAL_SESSION_PORT|7101|port"
  "HEALTHS|SHOAL_HEALTHS|2|count"
  "HEALTH_PORT|SHOAL_HEALTH_PORT|7001|port"
  "REDIS_PORT|SHOAL_REDIS_PORT|6390|port"
  "QUERIES|SHOAL_QUERIES|2|count0"
  "QUERY_PORT|SHOAL_QUERY_PORT|7201|port"
  "UPLOADS|SHOAL_UPLOADS|2|count0"
  "UPLOAD_PORT|SHOAL_UPLOAD_PORT|7301|port"
  "PG_PORT|SHOAL_PG_PORT|5440|port"
  "PG_REPLICA_PORT|SHOAL_PG_REPLICA_PORT|5441|port"
  "PG_DB|SHOAL_PG_DB|shoal|name"
  "PG_USER|SHOAL_PG_USER|shoal|name"
  "PG_BIN_DIR|SHOAL_PG_BIN_DIR|$(pg_default_bin_dir)|dir"
  "S3_PORT|SHOAL_S3_PORT|9300|port"
  "S3_BUCKET|SHOAL_S3_BUCKET|shoal-uploads|bucket"
  "S3_ACCESS_KEY|SHOAL_S3_ACCESS_KEY|S3RVER|key"
  "HEARTBEAT_MS|SHOAL_HEARTBEAT_MS|300|ms"
  "STATIC_DISCOVERY|SHOAL_STATIC_DISCOVERY|0|flag"
  "BIN_DIR|SHOAL_BIN_DIR|$SHOAL_REPO/build/bin|dir"
  "STATIC_DIR|SHOAL_STATIC_DIR|$SHOAL_REPO/frontend/dist|dir"
)

# load_settings up|recorded: sets LB_PORT, EDGES, ... (the keys above).
#   up        from the SHOAL_* variables, else the defaults. While a stack runs in
#             RUN_DIR, its recorded settings are the defaults, and a variable
#             that would change a port, a dir or the discovery mode is refused.
#   recorded  from RUN_DIR/stack.conf only (scale).
load_settings() {
  local mode=$1 entry key var def kind val line live=0
  declare -gA RECORDED=()
  if [ -f "$STACK_CONF" ]; then
    while IFS= read -r line; do
      [[ $line == [A-Z]*=* ]] && RECORDED[${line%%=*}]=${line#*=}
    done < "$STACK_CONF"
  fi
  if [ "$mode" = recorded ]; then
    [ ${#RECORDED[@]} -gt 0 ] || die "no stack recorded in $RUN_DIR (no stack.conf): start one with deploy/local/up"
  elif [ ${#RECORDED[@]} -gt 0 ] && stack_alive; then
    live=1
  fi
  for entry in "${SETTINGS[@]}"; do
    IFS='|' read -r key var def kind <<< "$entry"
    if [ "$mode" = recorded ]; then
      [ -n "${RECORDED[$key]+x}" ] || die "$STACK_CONF has no $key (written by an older up?): run down, then up"
      val=${RECORDED[$key]}
    elif [ -n "${!var:-}" ]; then
      val=${!var}
      case $kind in
        dir) [[ $val == /* ]] || val=$PWD/$val ;;
        flag) case $val in 0|no|false) val=0 ;; 1|yes|true) val=1 ;; esac ;;
      esac
      if [ "$live" = 1 ] && [[ $kind != count* ]] && [ -n "${RECORDED[$key]+x}" ] \
         && [ "$val" != "${RECORDED[$key]}" ]; then
        die "the stack running in $RUN_DIR has $var=${RECORDED[$key]}, not $val: run deploy/local/down first to change it"
      fi
    elif [ "$live" = 1 ] && [ -n "${RECORDED[$key]+x}" ]; then
      val=${RECORDED[$key]}
    else
      val=$def
    fi
    case $kind in
      port|ms) is_uint "$val" || die "$var must be a whole number, not '$val'" ;;
      count) { is_uint "$val" && [ "$val" -ge 1 ]; } || die "$var must be a whole number >= 1, not '$val'" ;;
      count0) is_uint "$val" || die "$var must be a whole number >= 0, not '$val'" ;;
      name) [[ $val =~ ^[a-z_][a-z0-9_]{0,62}$ ]] || die "$var must be a lower-case SQL name ([a-z_][a-z0-9_]*), not '$val'" ;;
      flag) [[ $val == [01] ]] || die "$var must be 0 or 1, not '$val'" ;;
      dir) [[ $val != *[=$'\n']* ]] || die "$var must not contain '=' or a newline: $val" ;;
      bucket) [[ $val =~ ^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$ && $val != *..* ]] \
                || die "$var must be an S3 bucket name (3-63 of a-z 0-9 . -), not '$val'" ;;
      key) [[ $val =~ ^[A-Za-z0-9_.+/=-]{1,128}$ ]] || die "$var must be 1-128 of A-Z a-z 0-9 _ . + / = -" ;;
    esac
    [ "$kind" = ms ] && [ "$val" -lt 1 ] && die "$var must be at least 1"
    printf -v "$key" '%s' "$val"
  done
  # The secret is no setting recorded in stack.conf (which is world-readable); the S3
  # piece's spec (pieces/s3.env, mode 600) keeps it for the supervisor's restarts.
  S3_SECRET_KEY=${SHOAL_S3_SECRET_KEY:-S3RVER}
  [[ $S3_SECRET_KEY =~ ^[A-Za-z0-9_.+/=-]{1,128}$ ]] || die "SHOAL_S3_SECRET_KEY must be 1-128 of A-Z a-z 0-9 _ . + / = -"
  is_uint "$WAIT" || die "SHOAL_WAIT must be a whole number of seconds, not '$WAIT'"
  is_uint "$STOP_TIMEOUT" || die "SHOAL_STOP_TIMEOUT must be a whole number of seconds, not '$STOP_TIMEOUT'"
}

# save_settings: write the current settings to RUN_DIR/stack.conf.
save_settings() {
  local entry key
  {
    printf '# written by deploy/local/%s at %s; read by scale. Do not edit: use scale, or down and up.\n' "$PROG" "$(utc_now)"
    for entry in "${SETTINGS[@]}"; do
      key=${entry%%|*}
      printf '%s=%s\n' "$key" "${!key}"
    done
  } > "$STACK_CONF.tmp" || die "cannot write $STACK_CONF.tmp"
  mv -f "$STACK_CONF.tmp" "$STACK_CONF" || die "cannot write $STACK_CONF"
}

# save_stack_env: the environment of this script becomes the base environment of
# every piece started from now on (by up, scale, and supervise's restarts).
save_stack_env() {
  (umask 077 && env -0 > "$STACK_ENV_FILE.tmp") || die "cannot write $STACK_ENV_FILE.tmp"
  mv -f "$STACK_ENV_FILE.tmp" "$STACK_ENV_FILE" || die "cannot write $STACK_ENV_FILE"
}
load_stack_env() {
  [ -f "$STACK_ENV_FILE" ] || die "$STACK_ENV_FILE is missing: run deploy/local/down, then up"
  mapfile -d '' -t STACK_ENV < "$STACK_ENV_FILE"
  # The S3 secret is no recorded setting: the stack's is the one in up's environment
  # (scale may run in a shell without it, and must give new upload instances the same).
  local kv
  S3_SECRET_KEY=S3RVER
  for kv in "${STACK_ENV[@]}"; do
    [[ $kv == SHOAL_S3_SECRET_KEY=?* ]] && S3_SECRET_KEY=${kv#*=}
  done
  return 0
}

session_events_port() { printf '%s\n' $(($(session_port "$1") + EVENTS_PORT_OFFSET)); }
query_events_port() { printf '%s\n' $(($(query_port "$1") + EVENTS_PORT_OFFSET)); }
health_port() { printf '%s\n' $((HEALTH_PORT + HEALTH_PORT_STEP * ($1 - 1))); }  # ROUTER; PUB is +1
session_port() { printf '%s\n' $((SESSION_PORT + $1 - 1)); }
edge_port() { printf '%s\n' $((EDGE_PORT + $1 - 1)); }
query_port() { printf '%s\n' $((QUERY_PORT + $1 - 1)); }
upload_port() { printf '%s\n' $((UPLOAD_PORT + $1 - 1)); }
health_endpoints() {  # every health ROUTER endpoint, comma-separated
  local i out=
  for ((i = 1; i <= HEALTHS; i++)); do out+=${out:+,}tcp://$HOST:$(health_port "$i"); done
  printf '%s\n' "$out"
}
session_endpoints() {
  local i out=
  for ((i = 1; i <= SESSIONS; i++)); do out+=${out:+,}tcp://$HOST:$(session_port "$i"); done
  printf '%s\n' "$out"
}

query_endpoints() {
  local i out=
  for ((i = 1; i <= QUERIES; i++)); do out+=${out:+,}tcp://$HOST:$(query_port "$i"); done
  printf '%s\n' "$out"
}
# event_endpoints: the events PUB endpoint of every session and query instance, comma-separated
# (SHOAL_EVENT_ENDPOINTS of the edges with SHOAL_STATIC_DISCOVERY=1).
event_endpoints() {
  local i out=
  for ((i = 1; i <= SESSIONS; i++)); do out+=${out:+,}tcp://$HOST:$(session_events_port "$i"); done
  for ((i = 1; i <= QUERIES; i++)); do out+=${out:+,}tcp://$HOST:$(query_events_port "$i"); done
  printf '%s\n' "$out"
}
upload_endpoints() {
  local i out=
  for ((i = 1; i <= UPLOADS; i++)); do out+=${out:+,}tcp://$HOST:$(upload_port "$i"); done
  printf '%s\n' "$out"
}
# s3_endpoint: the URL of the S3 test server (path-style: <endpoint>/<bucket>/<key>).
s3_endpoint() { printf 'http://%s:%s\n' "$HOST" "$S3_PORT"; }
# S3_SERVER: the start script of the S3 piece (s3rver, installed by install-deps).
S3_SERVER=$SHOAL_LOCAL_DIR/s3/s3-server

# pg_conninfo PORT: the libpq conninfo the query instances use for one server.
pg_conninfo() { printf 'host=%s port=%s dbname=%s user=%s\n' "$HOST" "$1" "$PG_DB" "$PG_USER"; }

# claim_layout: refuse ephemeral, privileged and shared ports among every port
# the settings describe (Postgres, S3, and all healths, sessions, query and upload
# instances and edges at the current counts).
claim_layout() {
  local i p
  if ! read -r EPH_LO EPH_HI < /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null; then
    EPH_LO=32768 EPH_HI=60999
  fi
  declare -gA PORT_USER=()
  claim_port "$LB_PORT" "haproxy (SHOAL_PORT)"
  claim_port "$REDIS_PORT" "redis (SHOAL_REDIS_PORT)"
  claim_port "$PG_PORT" "pg-primary (SHOAL_PG_PORT)"
  claim_port "$PG_REPLICA_PORT" "pg-replica (SHOAL_PG_REPLICA_PORT)"
  claim_port "$S3_PORT" "s3 (SHOAL_S3_PORT)"
  for ((i = 1; i <= HEALTHS; i++)); do
    p=$(health_port "$i")
    claim_port "$p" "health-$i"
    claim_port $((p + 1)) "health-$i (PUB)"
  done
  for ((i = 1; i <= SESSIONS; i++)); do
    claim_port "$(session_port "$i")" "session-$i"
    claim_port "$(session_events_port "$i")" "session-$i events (SHOAL_SESSION_PORT+$EVENTS_PORT_OFFSET)"
  done
  for ((i = 1; i <= QUERIES; i++)); do
    claim_port "$(query_port "$i")" "query-$i"
    claim_port "$(query_events_port "$i")" "query-$i events (SHOAL_QUERY_PORT+$EVENTS_PORT_OFFSET)"
  done
  for ((i = 1; i <= UPLOADS; i++)); do claim_port "$(upload_port "$i")" "upload-$i"; done
  for ((i = 1; i <= EDGES; i++)); do claim_port "$(edge_port "$i")" "edge-$i"; done
}
claim_port() {  # PORT WHO
  local p=$1 who=$2
  { [ "$p" -ge 1024 ] && [ "$p" -le 65535 ]; } || die "$who: port $p is out of range (1024-65535)"
  if [ "$p" -ge "$EPH_LO" ] && [ "$p" -le "$EPH_HI" ]; then
    die "$who: port $p is in the ephemeral range $EPH_LO-$EPH_HI (outgoing connections use it); pick one below $EPH_LO"
  fi
  [ -z "${PORT_USER[$p]:-}" ] || die "$who and ${PORT_USER[$p]} both want port $p"
  PORT_USER[$p]=$who
}

# ---------------------------------------------------------------- edge secret
# is_edge_secret TEXT: 64 hex characters (32 bytes), what the edges accept.
is_edge_secret() { [[ $1 =~ ^[0-9a-fA-F]{64}$ ]]; }

# edge_secret: the stack's SHOAL_EDGE_SECRET (RUN_DIR/edge-secret); fails when it is missing
# or malformed (up and scale call ensure_edge_secret first).
edge_secret() {
  local s=
  [ -f "$EDGE_SECRET_FILE" ] && read -r s < "$EDGE_SECRET_FILE"
  is_edge_secret "$s" || die "$EDGE_SECRET_FILE is missing or not 64 hex characters: run deploy/local/up"
  printf '%s\n' "$s"
}

# ensure_edge_secret [LIVE]: make RUN_DIR/edge-secret (mode 600) hold the stack's edge secret.
# SHOAL_EDGE_SECRET from up's environment wins (refused while a stack with another secret runs:
# LIVE=1); otherwise the one kept from an earlier up; otherwise 32 random bytes, hex-encoded.
ensure_edge_secret() {
  local live=${1:-0} have='' want=${SHOAL_EDGE_SECRET:-}
  [ -f "$EDGE_SECRET_FILE" ] && read -r have < "$EDGE_SECRET_FILE"
  if [ -n "$want" ]; then
    is_edge_secret "$want" || die "SHOAL_EDGE_SECRET must be 64 hex characters (e.g. od -An -vtx1 -N32 /dev/urandom | tr -d ' \\n')"
    [ "$want" = "$have" ] && return 0
    if [ "$live" = 1 ] && is_edge_secret "$have"; then
      die "the stack running in $RUN_DIR has another SHOAL_EDGE_SECRET ($EDGE_SECRET_FILE): run deploy/local/down first to change it"
    fi
  elif is_edge_secret "$have"; then
    return 0
  else
    want=$(od -An -vtx1 -N32 /dev/urandom | tr -d ' \n')
    is_edge_secret "$want" || die "cannot read 32 random bytes from /dev/urandom"
    [ -n "$have" ] && warn "$EDGE_SECRET_FILE is not 64 hex characters: making a new one"
    say "  edge secret: new, in $EDGE_SECRET_FILE (mode 600; every edge gets it as SHOAL_EDGE_SECRET)"
  fi
  (umask 077 && printf '%s\n' "$want" > "$EDGE_SECRET_FILE.tmp") || die "cannot write $EDGE_SECRET_FILE.tmp"
  mv -f "$EDGE_SECRET_FILE.tmp" "$EDGE_SECRET_FILE" || die "cannot write $EDGE_SECRET_FILE"
}

# ---------------------------------------------------------------- pieces
# Set for every piece by the stack, never taken from the caller's environment
# (one value for all instances would be wrong, or the stack decides it).
# The local stack's own variables (settings of these scripts, not of a service)
# are left out too.
PER_PIECE_VARS=(SHOAL_INSTANCE SHOAL_BIND SHOAL_PUB_BIND SHOAL_ADVERTISE SHOAL_HTTP_ADDR SHOAL_HTTP_PORT
  SHOAL_EVENTS_BIND SHOAL_EVENTS_ADVERTISE SHOAL_EVENT_ENDPOINTS SHOAL_EDGE_SECRET
  SHOAL_HEALTH_ENDPOINTS SHOAL_SESSION_ENDPOINTS SHOAL_QUERY_ENDPOINTS SHOAL_UPLOAD_ENDPOINTS
  SHOAL_HEARTBEAT_MS SHOAL_STATIC_DIR
  SHOAL_REDIS_HOST SHOAL_REDIS_PORT SHOAL_PG_PRIMARY SHOAL_PG_REPLICA SHOAL_TRUSTED_PROXIES
  SHOAL_S3_ENDPOINT SHOAL_S3_PATH_STYLE
  SHOAL_PORT SHOAL_EDGES SHOAL_EDGE_PORT SHOAL_SESSIONS SHOAL_SESSION_PORT SHOAL_HEALTHS SHOAL_HEALTH_PORT
  SHOAL_QUERIES SHOAL_QUERY_PORT SHOAL_UPLOADS SHOAL_UPLOAD_PORT
  SHOAL_PG_PORT SHOAL_PG_REPLICA_PORT SHOAL_PG_DB SHOAL_PG_USER SHOAL_PG_BIN_DIR SHOAL_PG_OS_USER
  SHOAL_S3_PORT SHOAL_S3_BUCKET SHOAL_S3_ACCESS_KEY SHOAL_S3_SECRET_KEY
  SHOAL_STATIC_DISCOVERY SHOAL_SUPERVISE SHOAL_SUPERVISE_INTERVAL_MS SHOAL_RUN_DIR SHOAL_BIN_DIR SHOAL_WAIT
  SHOAL_STOP_TIMEOUT SHOAL_BUILD_TYPE SHOAL_BUILD_JOBS)

# define_piece NAME: how NAME runs under the current settings. Sets PIECE_CMD
# (argv), PIECE_SET (its own variables, NAME=VALUE), PIECE_PORTS and PIECE_ADDR.
define_piece() {
  local name=$1 k=${1##*-} p e
  PIECE_SET=() PIECE_PORTS=()
  case $name in
    redis)
      PIECE_PORTS=("$REDIS_PORT") PIECE_ADDR=$HOST:$REDIS_PORT
      PIECE_CMD=("$(command -v redis-server)" --port "$REDIS_PORT" --bind "$HOST" --protected-mode yes
                 --dir "$DATA_DIR/redis" --appendonly yes --appendfsync everysec --save ''
                 --daemonize no --logfile '') ;;
    pg-primary|pg-replica)
      if [ "$name" = pg-primary ]; then p=$PG_PORT; else p=$PG_REPLICA_PORT; fi
      PIECE_PORTS=("$p") PIECE_ADDR=postgresql://$HOST:$p/$PG_DB
      # No Unix socket (every client uses TCP on loopback), logs on stderr.
      PIECE_CMD=("${PG_AS_OWNER[@]}" "$PG_BIN_DIR/postgres" -D "$DATA_DIR/$name" -p "$p"
                 -c listen_addresses="$HOST" -c unix_socket_directories= -c cluster_name="shoal-${name#pg-}"
                 -c wal_level=replica -c max_wal_senders=10 -c wal_keep_size=128MB
                 -c hot_standby=on -c hot_standby_feedback=on -c logging_collector=off
                 -c log_line_prefix='%m [%p] %q%a ')
      # The replica's upstream is given here rather than read from postgresql.auto.conf
      # (which pg_basebackup -R wrote), so a changed SHOAL_PG_PORT is followed.
      [ "$name" = pg-replica ] && PIECE_CMD+=(-c "primary_conninfo=host=$HOST port=$PG_PORT user=postgres application_name=shoal-replica") ;;
    s3)
      # s3rver behind deploy/local/s3/s3-server: path-style, data in data/s3/<bucket>/.
      # node is named here (not left to the script's #! line) so that the recorded
      # command needs no PATH; --openssl-legacy-provider: see the script.
      PIECE_PORTS=("$S3_PORT") PIECE_ADDR=$(s3_endpoint)/$S3_BUCKET
      PIECE_SET=(SHOAL_S3_ACCESS_KEY="$S3_ACCESS_KEY" SHOAL_S3_SECRET_KEY="$S3_SECRET_KEY")
      PIECE_CMD=("$(command -v node)" --openssl-legacy-provider "$S3_SERVER" --address "$HOST"
                 --port "$S3_PORT" --dir "$DATA_DIR/s3" --bucket "$S3_BUCKET") ;;
    health-*)
      p=$(health_port "$k")
      PIECE_PORTS=("$p" $((p + 1))) PIECE_ADDR=tcp://$HOST:$p,tcp://$HOST:$((p + 1))
      # health instances register with every health instance too (themselves
      # included), so each one's snapshot lists all of them
      PIECE_SET=(SHOAL_INSTANCE="$name" SHOAL_BIND="tcp://$HOST:$p" SHOAL_PUB_BIND="tcp://$HOST:$((p + 1))"
                 SHOAL_HEALTH_ENDPOINTS="$(health_endpoints)" SHOAL_HEARTBEAT_MS="$HEARTBEAT_MS")

      PIECE_CMD=("$BIN_DIR/shoal-health") ;;
    session-*)
      # ROUTER, and the PUB socket its events go out on (the edges subscribe to the
      # endpoint the instance registers; SHOAL_EVENTS_ADVERTISE defaults to the bound one)
      p=$(session_port "$k") e=$(session_events_port "$k")
      PIECE_PORTS=("$p" "$e") PIECE_ADDR=tcp://$HOST:$p,tcp://$HOST:$e
      PIECE_SET=(SHOAL_INSTANCE="$name" SHOAL_BIND="tcp://$HOST:$p" SHOAL_EVENTS_BIND="tcp://$HOST:$e"
                 SHOAL_REDIS_HOST="$HOST" SHOAL_REDIS_PORT="$REDIS_PORT"
                 SHOAL_HEALTH_ENDPOINTS="$(health_endpoints)" SHOAL_HEARTBEAT_MS="$HEARTBEAT_MS")
      PIECE_CMD=("$BIN_DIR/shoal-session") ;;
    query-*)
      p=$(query_port "$k") e=$(query_events_port "$k")
      PIECE_PORTS=("$p" "$e") PIECE_ADDR=tcp://$HOST:$p,tcp://$HOST:$e
      PIECE_SET=(SHOAL_INSTANCE="$name" SHOAL_BIND="tcp://$HOST:$p" SHOAL_EVENTS_BIND="tcp://$HOST:$e"
                 SHOAL_PG_PRIMARY="$(pg_conninfo "$PG_PORT")" SHOAL_PG_REPLICA="$(pg_conninfo "$PG_REPLICA_PORT")"
                 SHOAL_REDIS_HOST="$HOST" SHOAL_REDIS_PORT="$REDIS_PORT"
                 SHOAL_HEALTH_ENDPOINTS="$(health_endpoints)" SHOAL_HEARTBEAT_MS="$HEARTBEAT_MS")
      PIECE_CMD=("$BIN_DIR/shoal-query") ;;
    upload-*)
      # The stack's S3 test server (path-style only) and its key pair. The sweeper asks
      # the query instances, found through the registry like every other service.
      p=$(upload_port "$k")
      PIECE_PORTS=("$p") PIECE_ADDR=tcp://$HOST:$p
      PIECE_SET=(SHOAL_INSTANCE="$name" SHOAL_BIND="tcp://$HOST:$p"
                 SHOAL_S3_ENDPOINT="$(s3_endpoint)" SHOAL_S3_BUCKET="$S3_BUCKET" SHOAL_S3_PATH_STYLE=true
                 SHOAL_S3_ACCESS_KEY="$S3_ACCESS_KEY" SHOAL_S3_SECRET_KEY="$S3_SECRET_KEY"
                 SHOAL_HEALTH_ENDPOINTS="$(health_endpoints)" SHOAL_HEARTBEAT_MS="$HEARTBEAT_MS")
      [ "$STATIC_DISCOVERY" = 1 ] && [ "$QUERIES" -gt 0 ] && PIECE_SET+=(SHOAL_QUERY_ENDPOINTS="$(query_endpoints)")
      PIECE_CMD=("$BIN_DIR/shoal-upload") ;;
    edge-*)
      p=$(edge_port "$k")
      PIECE_PORTS=("$p") PIECE_ADDR=http://$HOST:$p
      # HAProxy on loopback is the only proxy in front: the edge takes the client's
      # address from the X-Forwarded-For HAProxy adds (option forwardfor).
      # One SHOAL_EDGE_SECRET for all edges: a WebSocket proof cookie one edge issued
      # (GET /api/me) opens /ws on any other (HAProxy balances each connection on its own).
      PIECE_SET=(SHOAL_INSTANCE="$name" SHOAL_HTTP_ADDR="$HOST" SHOAL_HTTP_PORT="$p"
                 SHOAL_STATIC_DIR="$STATIC_DIR" SHOAL_TRUSTED_PROXIES="$HOST"
                 SHOAL_EDGE_SECRET="$(edge_secret)"
                 SHOAL_HEALTH_ENDPOINTS="$(health_endpoints)" SHOAL_HEARTBEAT_MS="$HEARTBEAT_MS")
      [ "$STATIC_DISCOVERY" = 1 ] && PIECE_SET+=(SHOAL_SESSION_ENDPOINTS="$(session_endpoints)"
                                                 SHOAL_EVENT_ENDPOINTS="$(event_endpoints)")
      [ "$STATIC_DISCOVERY" = 1 ] && [ "$QUERIES" -gt 0 ] && PIECE_SET+=(SHOAL_QUERY_ENDPOINTS="$(query_endpoints)")
      [ "$STATIC_DISCOVERY" = 1 ] && [ "$UPLOADS" -gt 0 ] && PIECE_SET+=(SHOAL_UPLOAD_ENDPOINTS="$(upload_endpoints)")
      PIECE_CMD=("$BIN_DIR/shoal-edge") ;;
    haproxy)
      PIECE_PORTS=("$LB_PORT") PIECE_ADDR=http://$HOST:$LB_PORT
      PIECE_CMD=("$(command -v haproxy)" -db -f "$RUN_DIR/haproxy.cfg") ;;
    *) die "internal: no definition for a piece named $name" ;;
  esac
}

# save_spec NAME: write NAME's command and environment (STACK_ENV without the
# per-piece variables, plus PIECE_SET) for launch_piece and supervise.
save_spec() {
  local name=$1 kv v
  local -a env=()
  local -A skip=()
  for v in "${PER_PIECE_VARS[@]}"; do skip[$v]=1; done
  for kv in "${STACK_ENV[@]}"; do
    [ -n "${skip[${kv%%=*}]:-}" ] || env+=("$kv")
  done
  env+=("${PIECE_SET[@]}")
  (
    umask 077
    printf '%s\0' "${env[@]}" > "$SPEC_DIR/$name.env" &&
    printf '%s\0' "${PIECE_CMD[@]}" > "$SPEC_DIR/$name.cmd" &&
    printf '0\n' > "$SPEC_DIR/$name.restarts"
  ) || die "cannot write $SPEC_DIR/$name.*"
  printf '%s\n' "$PIECE_ADDR" > "$PID_DIR/$name.addr"
}

# spawn NAME HOW DESCRIPTION ARGV...: start ARGV in its own session (setsid: the
# terminal's Ctrl-C or hangup never reaches it), output appended to logs/NAME.log
# after a "==== <time> HOW NAME: DESCRIPTION" line, PID recorded in
# pids/NAME.pid (+ .start). setsid execs (no fork), so $! is the piece's own PID.
# Sets SPAWNED_PID.
spawn() {
  local name=$1 how=$2 log=$LOG_DIR/$1.log
  printf '==== %s %s %s: %s\n' "$(utc_now)" "$how" "$name" "$3" >> "$log"
  shift 3
  (
    exec 6>&- 7>&- 8>&-
    [ -n "${NAP_FD:-}" ] && exec {NAP_FD}>&-
    setsid "$@" >> "$log" 2>&1 < /dev/null &
    printf '%s\n' "$!" > "$PID_DIR/$name.pid"
  )
  read -r SPAWNED_PID < "$PID_DIR/$name.pid"
  if ! proc_stat_field "$SPAWNED_PID" 22 > "$PID_DIR/$name.start" 2>/dev/null; then
    rm -f "$PID_DIR/$name.start"
  fi
}

# launch_piece NAME HOW [EXTRA_ARGS...]: start NAME from its spec, with exactly
# the recorded environment (env -i). The log line shows the command and the
# piece's SHOAL_* variables (not those that look like secrets).
launch_piece() {
  local name=$1 how=$2 kv shown=
  shift 2
  local -a env cmd
  mapfile -d '' -t env < "$SPEC_DIR/$name.env" 2>/dev/null
  mapfile -d '' -t cmd < "$SPEC_DIR/$name.cmd" 2>/dev/null
  [ ${#cmd[@]} -gt 0 ] || return 1
  for kv in "${env[@]}"; do
    case ${kv%%=*} in
      *PASSWORD*|*SECRET*|*TOKEN*|*KEY*) ;;
      SHOAL_*) shown+=" $kv" ;;
    esac
  done
  spawn "$name" "$how" "${cmd[*]} $*  [env:$shown]" env -i "${env[@]}" "${cmd[@]}" "$@"
}

# show_log_tail NAME: the last lines a piece logged since it was last started
# (logs are appended across runs; each start writes a "==== ... starting" line).
show_log_tail() {
  local log=$LOG_DIR/$1.log from
  if [ ! -s "$log" ]; then
    printf '%s: (%s is empty or missing)\n' "$PROG" "$log" >&2
    return 0
  fi
  from=$(grep -n '^==== [^ ]* [a-z]*: \(starting\|restarting\|reloading\) ' "$log" | tail -n 1 | cut -d: -f1)
  printf '%s: ---- %s (last %d lines at most) ----\n' "$PROG" "$log" "$LOG_TAIL_LINES" >&2
  tail -n "+${from:-1}" "$log" | tail -n "$LOG_TAIL_LINES" >&2
  printf '%s: ---- end of %s ----\n' "$PROG" "$log" >&2
}

# ---------------------------------------------------------------- start, wait, stop
STARTED=()   # pieces started by this run, stopped again if a later one fails

stop_started() {
  local i
  [ ${#STARTED[@]} -gt 0 ] || return 0
  say "stopping what this run started: ${STARTED[*]}"
  for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do stop_piece "${STARTED[$i]}"; done
  STARTED=()
}

fail_start() {  # NAME MESSAGE [show log: 1|0]
  printf '%s: error: %s: %s\n' "$PROG" "$1" "$2" >&2
  [ "${3:-1}" = 1 ] && show_log_tail "$1"
  stop_started
  exit 1
}

# start_piece NAME: define NAME, record its spec and start it, unless it is
# running already (then WAS_RUNNING=1 and nothing changes). Its ports must be free.
start_piece() {
  local name=$1 p
  define_piece "$name"
  WAS_RUNNING=0
  lock_pieces
  if piece_pid "$name" >/dev/null; then
    unlock_pieces
    WAS_RUNNING=1
    return 0
  fi
  for p in "${PIECE_PORTS[@]}"; do
    if tcp_open "$p"; then
      unlock_pieces
      fail_start "$name" "port $p on $HOST is already in use by a process that is not $name (ss -ltnp 'sport = :$p')" 0
    fi
  done
  forget_piece "$name"
  save_spec "$name"
  launch_piece "$name" "$PROG: starting"
  unlock_pieces
  STARTED+=("$name")
}

# piece_ready NAME: NAME answers (after define_piece NAME).
piece_ready() {
  local p
  case $1 in
    redis) [ "$(redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] ;;
    pg-primary) pg_accepting "$PG_PORT" ;;
    pg-replica) pg_accepting "$PG_REPLICA_PORT" && [ "$(pg_sql "$PG_REPLICA_PORT" postgres \
                  'select status from pg_stat_wal_receiver' 2>/dev/null)" = streaming ] ;;
    s3) http_ok "$PIECE_ADDR?location" ;;
    edge-*) http_ok "$PIECE_ADDR/health/live" ;;
    haproxy) http_ok "$PIECE_ADDR/health/ready" ;;
    *) for p in "${PIECE_PORTS[@]}"; do tcp_open "$p" || return 1; done ;;
  esac
}
piece_ready_what() {
  case $1 in
    redis) echo PONG ;;
    pg-primary) echo "accepting connections" ;;
    pg-replica) echo "streaming from pg-primary" ;;
    s3) echo "bucket $S3_BUCKET answers" ;;
    edge-*) echo "/health/live 200" ;;
    haproxy) echo "/health/ready 200" ;;
    *) [ ${#PIECE_PORTS[@]} -gt 1 ] && echo "ports ${PIECE_PORTS[*]} open" || echo "port ${PIECE_PORTS[0]} open" ;;
  esac
}

# wait_ready NAME: wait until NAME answers. Fails (log tail, stop what this run
# started) when NAME's process is gone or after SHOAL_WAIT seconds.
wait_ready() {
  local name=$1 what t0 pid deadline
  define_piece "$name"
  what=$(piece_ready_what "$name")
  t0=$(now_us)
  deadline=$(deadline_in "$WAIT")
  until piece_ready "$name"; do
    piece_pid "$name" >/dev/null || fail_start "$name" "exited before $what (see $LOG_DIR/$name.log)"
    before "$deadline" || fail_start "$name" "no $what after ${WAIT}s (see $LOG_DIR/$name.log)"
    sleep 0.1
  done
  pid=$(piece_pid "$name") || fail_start "$name" "exited right after $what"
  say "$(printf '  %-10s PID %-7s %-24s %s in %d ms%s' "$name" "$pid" "$(show_addr "$PIECE_ADDR")" \
        "$what" $((($(now_us) - t0) / 1000)) "$([ "$WAS_RUNNING" = 1 ] && echo ' (already running)')")"
}

# stop_piece NAME: stop supervising NAME, then SIGTERM (and SIGCONT, so that a
# paused piece drains too), wait up to STOP_TIMEOUT s for the exit, then SIGKILL.
# Postgres gets SIGINT instead: its "fast" shutdown, which disconnects clients
# (SIGTERM would wait for every client to leave) and writes a checkpoint.
# Removes its pid files. Returns 1 only if the process survived SIGKILL.
stop_piece() {
  local name=$1 pid='' deadline how=SIGTERM t0
  if [ -d "$RUN_DIR" ]; then
    lock_pieces
    forget_spec "$name"
    pid=$(piece_pid "$name")
    unlock_pieces
  fi
  if [ -z "$pid" ]; then
    [[ $name == haproxy-old-* ]] || say "  $name: not running (pid file removed)"
    forget_piece "$name"
    return 0
  fi
  t0=$(now_us)
  [[ $name == pg-* ]] && how=SIGINT
  kill -"${how#SIG}" "$pid" 2>/dev/null
  kill -CONT "$pid" 2>/dev/null
  deadline=$(deadline_in "$STOP_TIMEOUT")
  while pid_running "$pid" && before "$deadline"; do sleep 0.05; done
  if pid_running "$pid"; then
    warn "$name (PID $pid) still running ${STOP_TIMEOUT}s after $how: SIGKILL"
    kill -KILL "$pid" 2>/dev/null
    how=SIGKILL
    deadline=$(deadline_in 5)
    while pid_running "$pid" && before "$deadline"; do sleep 0.05; done
    if pid_running "$pid"; then
      warn "$name (PID $pid) survived SIGKILL; pid file kept"
      return 1
    fi
  fi
  forget_piece "$name"
  say "  $name: stopped (PID $pid, $how, $((($(now_us) - t0) / 1000)) ms)"
}

# ---------------------------------------------------------------- Postgres
# A primary (pg-primary) and a streaming replica of it (pg-replica), each a plain
# `postgres` process on 127.0.0.1 with its data in <run dir>/data/pg-*. initdb
# refuses to run as root, so as root every Postgres program runs as the `postgres`
# user: one-shot commands (initdb, pg_basebackup) through runuser; the server
# itself through setpriv, which execs (runuser stays as the parent, so the
# recorded PID would not be the server's, and it SIGKILLs its child 2 s after a
# SIGTERM). Authentication: trust, on loopback only.
PG_SUPERUSER=postgres
PG_OWNER=
PG_AS_OWNER=()   # prefix of the server's command line
PG_RUN_AS=()     # prefix of one-shot commands
if [ "$(id -u)" = 0 ]; then
  PG_OWNER=${SHOAL_PG_OS_USER:-postgres}
  PG_AS_OWNER=(setpriv --reuid="$PG_OWNER" --regid="$PG_OWNER" --init-groups)
  PG_RUN_AS=(runuser -u "$PG_OWNER" --)
fi

# pg_sql PORT DB SQL: one statement as the superuser, unaligned tuples only.
pg_sql() {
  PGCONNECT_TIMEOUT=2 "$PG_BIN_DIR/psql" -X -q -A -t -h "$HOST" -p "$1" -U "$PG_SUPERUSER" -d "$2" \
    -v ON_ERROR_STOP=1 -c "$3"
}
pg_accepting() { "$PG_BIN_DIR/pg_isready" -q -t 2 -h "$HOST" -p "$1" -U "$PG_SUPERUSER" -d postgres 2>/dev/null; }

# pg_system_id DIR: the cluster's "Database system identifier" (a replica made
# from a primary has the primary's), empty when DIR holds no cluster.
pg_system_id() {
  "${PG_RUN_AS[@]}" "$PG_BIN_DIR/pg_controldata" -D "$1" 2>/dev/null |
    sed -n 's/^Database system identifier: *//p'
}

# pg_new_dir DIR: an empty directory only the server's user may enter.
pg_new_dir() {
  mkdir -p "$1" || die "cannot create $1"
  [ -z "$PG_OWNER" ] || chown "$PG_OWNER:" "$1" || die "cannot give $1 to $PG_OWNER"
  chmod 700 "$1"
}

# pg_log NAME LINE...: append lines to logs/NAME.log (the one-shot commands' output goes there too).
pg_log() { local n=$1; shift; printf '%s\n' "$@" >> "$LOG_DIR/$n.log"; }

# pg_init_primary: initdb <run dir>/data/pg-primary unless it holds a cluster
# already (then it is reused as it is: up is idempotent).
pg_init_primary() {
  local dir=$DATA_DIR/pg-primary t0 log=$LOG_DIR/pg-primary.log
  piece_pid pg-primary >/dev/null && return 0
  if [ -s "$dir/PG_VERSION" ]; then
    say "  pg-primary reusing its data dir $dir (PostgreSQL $(cat "$dir/PG_VERSION"))"
    return 0
  fi
  t0=$(now_us)
  say "  pg-primary initdb $dir (first start)"
  pg_new_dir "$dir"
  pg_log pg-primary "==== $(utc_now) $PROG: initdb $dir"
  if ! "${PG_RUN_AS[@]}" "$PG_BIN_DIR/initdb" -D "$dir" -U "$PG_SUPERUSER" --auth=trust \
       --encoding=UTF8 --locale=C.UTF-8 >> "$log" 2>&1; then
    rm -rf "$dir"
    fail_start pg-primary "initdb failed (see $log)"
  fi
  say "  pg-primary initdb done in $((($(now_us) - t0) / 1000)) ms"
}

# pg_ensure_db: the role SHOAL_PG_USER and the database SHOAL_PG_DB it owns exist
# on the primary (created when missing; the migrations create the tables).
pg_ensure_db() {
  local out
  if ! out=$(PGCONNECT_TIMEOUT=2 "$PG_BIN_DIR/psql" -X -q -h "$HOST" -p "$PG_PORT" -U "$PG_SUPERUSER" \
       -d postgres -v ON_ERROR_STOP=1 -v role="$PG_USER" -v db="$PG_DB" 2>&1 <<'SQL'
SELECT format('CREATE ROLE %I LOGIN', :'role')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
SQL
  ); then
    printf '%s\n' "$out" >&2
    fail_start pg-primary "cannot create the role $PG_USER and the database $PG_DB" 0
  fi
  say "  pg-primary role $PG_USER and database $PG_DB ready"
}

# pg_init_replica: make <run dir>/data/pg-replica a base backup of the running
# primary (pg_basebackup -R: standby.signal + the primary's address) unless it
# already is a standby of this very primary (same system identifier).
pg_init_replica() {
  local dir=$DATA_DIR/pg-replica t0 log=$LOG_DIR/pg-replica.log want have
  piece_pid pg-replica >/dev/null && return 0
  want=$(pg_system_id "$DATA_DIR/pg-primary")
  if [ -s "$dir/PG_VERSION" ] && [ -f "$dir/standby.signal" ]; then
    have=$(pg_system_id "$dir")
    if [ -n "$want" ] && [ "$have" = "$want" ]; then
      say "  pg-replica reusing its data dir $dir (a standby of this primary)"
      return 0
    fi
    say "  pg-replica $dir is a copy of another cluster (system id ${have:-?}, primary's $want): making it again"
  elif [ -e "$dir" ]; then
    say "  pg-replica $dir is not a complete standby: making it again"
  fi
  rm -rf "$dir"
  t0=$(now_us)
  say "  pg-replica pg_basebackup -R from 127.0.0.1:$PG_PORT (first start)"
  pg_new_dir "$dir"
  pg_log pg-replica "==== $(utc_now) $PROG: pg_basebackup -R into $dir"
  if ! "${PG_RUN_AS[@]}" "$PG_BIN_DIR/pg_basebackup" -h "$HOST" -p "$PG_PORT" -U "$PG_SUPERUSER" \
       -D "$dir" -R -X stream -c fast >> "$log" 2>&1; then
    rm -rf "$dir"
    fail_start pg-replica "pg_basebackup failed (see $log)"
  fi
  say "  pg-replica base backup done in $((($(now_us) - t0) / 1000)) ms"
}

# pg_replication PRIMARY_PORT: one line per standby the primary streams to:
# "name state lag=BYTES replay_lag=MS" (replay_lag 0 when idle and caught up).
pg_replication() {
  pg_sql "$1" postgres "select application_name || ' ' || state
      || ' lag=' || coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::bigint
      || ' replay_lag=' || coalesce(round(extract(epoch from replay_lag) * 1000), 0)::bigint
    from pg_stat_replication order by application_name"
}

# ---------------------------------------------------------------- HAProxy
# render_haproxy_cfg: the config for edge-1..EDGES, from haproxy.cfg.in.
render_haproxy_cfg() {
  local tpl servers='' i
  tpl=$(< "$SHOAL_LOCAL_DIR/haproxy.cfg.in") || die "cannot read $SHOAL_LOCAL_DIR/haproxy.cfg.in"
  for ((i = 1; i <= EDGES; i++)); do servers+="    server edge-$i $HOST:$(edge_port "$i")"$'\n'; done
  tpl=${tpl//@LISTEN@/$HOST:$LB_PORT}
  tpl=${tpl//@EDGE_SERVERS@/${servers%$'\n'}}
  printf '%s\n' "$tpl"
}

# listener_pids PORT: the PIDs listening on 127.0.0.1:PORT (needs ss).
listener_pids() {
  ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u
}

# haproxy_apply: make HAProxy serve edge-1..EDGES. Not running: write the config
# and start it. Running with another config: check the new one, then reload
# gracefully: a new HAProxy started with -sf OLD takes over the port and tells
# OLD to stop listening and finish its connections (at most hard-stop-after).
# OLD stays recorded as haproxy-old-OLD until it exits, so down stops it too.
haproxy_apply() {
  local cfg=$RUN_DIR/haproxy.cfg new old_cfg out old pid t0 deadline
  new=$(render_haproxy_cfg)
  if ! pid=$(piece_pid haproxy); then
    printf '%s\n' "$new" > "$cfg"
    if ! out=$(haproxy -c -f "$cfg" 2>&1); then
      printf '%s\n' "$out" >&2
      fail_start haproxy "$cfg is not a valid configuration (from haproxy.cfg.in)" 0
    fi
    start_piece haproxy
    wait_ready haproxy
    return 0
  fi
  old_cfg=$(cat "$cfg" 2>/dev/null)
  if [ "$new" = "$old_cfg" ]; then
    WAS_RUNNING=1
    wait_ready haproxy
    return 0
  fi
  printf '%s\n' "$new" > "$cfg.new"
  if ! out=$(haproxy -c -f "$cfg.new" 2>&1); then
    printf '%s\n' "$out" >&2
    rm -f "$cfg.new"
    fail_start haproxy "the new configuration is not valid (from haproxy.cfg.in)" 0
  fi
  mv -f "$cfg.new" "$cfg"
  t0=$(now_us)
  define_piece haproxy
  lock_pieces
  if ! old=$(piece_pid haproxy); then   # it died meanwhile: a plain start
    unlock_pieces
    start_piece haproxy
    wait_ready haproxy
    return 0
  fi
  cp -f "$PID_DIR/haproxy.pid" "$PID_DIR/haproxy-old-$old.pid"
  cp -f "$PID_DIR/haproxy.start" "$PID_DIR/haproxy-old-$old.start" 2>/dev/null
  printf 'draining, replaced by a reload\n' > "$PID_DIR/haproxy-old-$old.addr"
  launch_piece haproxy "$PROG: reloading" -sf "$old"
  pid=$SPAWNED_PID
  unlock_pieces
  # Done when the new process answers, owns the port and the old one let go of it.
  deadline=$(deadline_in "$WAIT")
  until pid_running "$pid" && http_ok "http://$HOST:$LB_PORT/health/ready" \
        && { ! command -v ss >/dev/null || [ "$(listener_pids "$LB_PORT" | tr '\n' ' ')" = "$pid " ]; }; do
    if ! pid_running "$pid" || ! before "$deadline"; then
      lock_pieces
      if pid_running "$pid"; then kill -TERM "$pid" 2>/dev/null; fi
      mv -f "$PID_DIR/haproxy-old-$old.pid" "$PID_DIR/haproxy.pid"
      mv -f "$PID_DIR/haproxy-old-$old.start" "$PID_DIR/haproxy.start" 2>/dev/null
      rm -f "$PID_DIR/haproxy-old-$old.addr"
      unlock_pieces
      printf '%s\n' "$old_cfg" > "$cfg"
      fail_start haproxy "the reloaded HAProxy (PID $pid) did not take over port $LB_PORT; PID $old keeps serving the old configuration"
    fi
    sleep 0.05
  done
  say "$(printf '  %-10s PID %-7s %-24s reloaded in %d ms (PID %s finishes its connections)' haproxy "$pid" \
        "$PIECE_ADDR" $((($(now_us) - t0) / 1000)) "$old")"
  forget_dead_old_haproxies
}

forget_dead_old_haproxies() {
  local f n
  for f in "$PID_DIR"/haproxy-old-*.pid; do
    [ -e "$f" ] || continue
    n=${f##*/}
    n=${n%.pid}
    piece_pid "$n" >/dev/null || forget_piece "$n"
  done
}

# show_addr ADDR: an address for people: a second endpoint on the same host
# (a health instance's PUB) is shortened to " pub :PORT".
show_addr() { local a=$1; printf '%s\n' "${a//,tcp:\/\/$HOST:/ pub :}"; }

# ---------------------------------------------------------------- checks
# tcp_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# http_code URL: the HTTP status (000 when nothing answers), 2 s limit.
http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" 2>/dev/null || true; }
http_ok() { [ "$(http_code "$1")" = 200 ]; }

# vmrss_kib PID: resident set size from /proc/PID/status, in KiB.
vmrss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null; }
