#!/usr/bin/env bash
# services.sh — local backing services for tickflow development, tests and CI.
#
# Starts, on 127.0.0.1 only and without Docker:
#   * Apache Kafka 4.x, single node in KRaft mode (broker+controller); the jars
#     come from Maven Central via `mvn` and are cached in
#     ${TICKFLOW_CACHE:-~/.cache/tickflow}/kafka-<version>/libs
#   * PostgreSQL (Debian package; a throwaway cluster in the state dir)
#   * Redis (Debian package; our own redis-server on its own port)
#
# Usage:  scripts/services.sh up|down|status|env|kafka-stop|kafka-start
#         scripts/services.sh kafka-run <java main class> [args...]
#                 (runs a Kafka tool, e.g. org.apache.kafka.tools.ConsoleProducer)
#   eval "$(scripts/services.sh up)"   # progress goes to stderr, exports to stdout
#   source "${TICKFLOW_SERVICES_DIR:-/tmp/tickflow-services}/env.sh"
#
# `up` is idempotent: services already running from the state dir are reused.
# A service already named by the environment (KAFKA_BROKERS, DATABASE_URL,
# REDIS_URL) with a value other than ours is used as is and not started.
#
# Settings (environment):
#   TICKFLOW_SERVICES_DIR  state dir             (/tmp/tickflow-services)
#   TICKFLOW_CACHE         download cache        ($HOME/.cache/tickflow)
#   TICKFLOW_KAFKA_VERSION Kafka version         (4.1.1)
#   TICKFLOW_KAFKA_PORT    Kafka client port     (19092; controller = port+1)
#   TICKFLOW_PG_PORT       PostgreSQL port       (15432)
#   TICKFLOW_REDIS_PORT    Redis port            (16379)
#   TICKFLOW_KAFKA_JVM_OPTS the broker's heap and collector
#                          ("-Xms512m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20")
#   TICKFLOW_KAFKA_NETWORK_THREADS, TICKFLOW_KAFKA_IO_THREADS
#                          the broker's num.network.threads and num.io.threads (2, 4)
#   (read when Kafka starts: `kafka-stop`, then `kafka-start` with new values)
set -euo pipefail

STATE=${TICKFLOW_SERVICES_DIR:-/tmp/tickflow-services}
CACHE=${TICKFLOW_CACHE:-$HOME/.cache/tickflow}
KAFKA_VERSION=${TICKFLOW_KAFKA_VERSION:-4.1.1}
KAFKA_PORT=${TICKFLOW_KAFKA_PORT:-19092}
KAFKA_CPORT=${TICKFLOW_KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}
PG_PORT=${TICKFLOW_PG_PORT:-15432}
REDIS_PORT=${TICKFLOW_REDIS_PORT:-16379}
# A fixed 512 MiB G1 heap: the winner of `scripts/bench.sh kafka-sweep` on a 2-core host (see
# BENCHMARKS.md); ZGC and Shenandoah cost more CPU than two cores spare.
KAFKA_JVM_OPTS=${TICKFLOW_KAFKA_JVM_OPTS:--Xms512m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20}
KAFKA_NETWORK_THREADS=${TICKFLOW_KAFKA_NETWORK_THREADS:-2}
KAFKA_IO_THREADS=${TICKFLOW_KAFKA_IO_THREADS:-4}

KAFKA_HOME=$CACHE/kafka-$KAFKA_VERSION
KAFKA_LIBS=$KAFKA_HOME/libs
KAFKA_DIR=$STATE/kafka
PG_DIR=$STATE/postgres
REDIS_DIR=$STATE/redis

OUR_KAFKA=127.0.0.1:$KAFKA_PORT
OUR_PG=postgres://postgres@127.0.0.1:$PG_PORT/tickflow
OUR_REDIS=redis://127.0.0.1:$REDIS_PORT

# ---------------------------------------------------------------- helpers
log() { echo "[services] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
# timed <label> <command...>: run a step and report how long it took
# (a failing step ends the script through set -e / die)
timed() {
  local label=$1 t0 dt
  shift
  t0=$(now_ms)
  "$@"
  dt=$(($(now_ms) - t0))
  log "$(printf '%-24s %d.%03ds' "$label" $((dt / 1000)) $((dt % 1000)))"
}
# tcp_open <host> <port>: true if something accepts connections there
tcp_open() { timeout 2 bash -c "exec 9<>/dev/tcp/$1/$2" 2>/dev/null; }
# host_port <url-or-host:port> <default port>: prints "host port"
host_port() {
  local s=${1#*://}
  s=${s##*@}; s=${s%%/*}; s=${s%%\?*}; s=${s%%,*}
  local h=${s%:*} p=${s##*:}
  [[ $s == *:* ]] || p=$2
  echo "$h $p"
}
pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# "external" = the environment names a service that is not ours
kafka_external() { [[ -n ${KAFKA_BROKERS:-} && $KAFKA_BROKERS != "$OUR_KAFKA" ]]; }
pg_external() { [[ -n ${DATABASE_URL:-} && $DATABASE_URL != "$OUR_PG" ]]; }
redis_external() { [[ -n ${REDIS_URL:-} && $REDIS_URL != "$OUR_REDIS" ]]; }

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1; }
# postgres refuses to run as root: run its tools as the postgres OS user then
as_pg() {
  if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# ---------------------------------------------------------------- packages
# Install whatever is missing with one apt-get update + install.
ensure_packages() {
  local pkgs=()
  if ! kafka_external; then
    command -v java >/dev/null || pkgs+=(openjdk-17-jre-headless)
    [[ -f $KAFKA_HOME/.complete ]] || command -v mvn >/dev/null || pkgs+=(maven)
  fi
  if ! pg_external && [[ ! -x "$(pg_bin)/initdb" ]]; then pkgs+=(postgresql); fi
  if ! redis_external && ! command -v redis-server >/dev/null; then pkgs+=(redis-server); fi
  ((${#pkgs[@]})) || return 0
  local t0=$(now_ms)

  [[ $(id -u) == 0 ]] || die "missing packages (${pkgs[*]}); install them or run as root"
  log "installing: ${pkgs[*]}"
  # Keep the packages' own system services from starting (removed afterwards).
  local policy=""
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy"
  fi
  local rc=0
  {
    DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
  } </dev/null >"$STATE/apt.log" 2>&1 || rc=$?
  [[ -z $policy ]] || rm -f "$policy"
  ((rc == 0)) || { tail -n 30 "$STATE/apt.log" >&2; die "apt-get failed (log: $STATE/apt.log)"; }
  local dt=$(($(now_ms) - t0))
  log "$(printf '%-24s %d.%03ds' "apt-get install" $((dt / 1000)) $((dt % 1000)))"
}

# ---------------------------------------------------------------- Kafka
# Resolve kafka_2.13 (+ kafka-tools for the console tools, + a log4j2 binding
# for slf4j) and all runtime dependencies from Maven Central into the cache.
fetch_kafka() {
  [[ -f $KAFKA_HOME/.complete ]] && return 0
  mkdir -p "$KAFKA_HOME"
  cat >"$KAFKA_HOME/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>tickflow</groupId>
  <artifactId>kafka-libs</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId>
      <version>$KAFKA_VERSION</version>
      <exclusions>
        <!-- only needed by the Connect tooling; pulls in Jetty/Jersey -->
        <exclusion><groupId>org.apache.kafka</groupId><artifactId>connect-runtime</artifactId></exclusion>
        <exclusion><groupId>com.fasterxml.jackson.jakarta.rs</groupId><artifactId>*</artifactId></exclusion>
      </exclusions>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>2.24.3</version>
    </dependency>
  </dependencies>
</project>
EOF
  rm -rf "$KAFKA_LIBS.tmp"
  mvn -B -f "$KAFKA_HOME/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS.tmp" </dev/null >"$KAFKA_HOME/mvn.log" 2>&1 ||
    { tail -n 30 "$KAFKA_HOME/mvn.log" >&2; die "mvn could not fetch Kafka $KAFKA_VERSION (log: $KAFKA_HOME/mvn.log)"; }
  [[ -f $KAFKA_LIBS.tmp/kafka_2.13-$KAFKA_VERSION.jar ]] || die "kafka_2.13 jar missing after mvn"
  rm -rf "$KAFKA_LIBS" && mv "$KAFKA_LIBS.tmp" "$KAFKA_LIBS"
  touch "$KAFKA_HOME/.complete"
}

kafka_running() {
  pid_alive "$KAFKA_DIR/kafka.pid" &&
    grep -q kafka.Kafka "/proc/$(cat "$KAFKA_DIR/kafka.pid")/cmdline" 2>/dev/null
}

write_kafka_config() {
  mkdir -p "$KAFKA_DIR/data"
  cat >"$KAFKA_DIR/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CPORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CPORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DIR/data
num.partitions=12
auto.create.topics.enable=true
offsets.topic.replication.factor=1
# One broker: a few partitions for consumer offsets are plenty and make the first group
# join fast (the default of 50 takes seconds to create on a busy 2-core machine).
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=$KAFKA_NETWORK_THREADS
num.io.threads=$KAFKA_IO_THREADS
EOF
  cat >"$KAFKA_DIR/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF
}

# Kafka's Uuid: 16 random bytes, URL-safe base64 without padding, not starting with '-'
random_cluster_id() {
  local id
  while :; do
    id=$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
    [[ $id == -* ]] || { echo "$id"; return; }
  done
}

format_kafka() {
  [[ -f $KAFKA_DIR/data/meta.properties ]] && return 0
  java -Xmx256m -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" -cp "$KAFKA_LIBS/*" \
    kafka.tools.StorageTool format -t "$(random_cluster_id)" \
    -c "$KAFKA_DIR/server.properties" --standalone </dev/null >>"$KAFKA_DIR/format.log" 2>&1 ||
    { cat "$KAFKA_DIR/format.log" >&2; die "kafka storage format failed"; }
}

start_kafka() {
  tcp_open 127.0.0.1 "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by another process"
  # setsid: detach from our session; the inner shell records its own pid, then
  # becomes java. All fds point to files so `$(services.sh up)` cannot hang.
  setsid bash -c 'echo $$ >"$0/kafka.pid"; exec "$@"' "$KAFKA_DIR" \
    java $KAFKA_JVM_OPTS -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_DIR/server.properties" \
    </dev/null >>"$KAFKA_DIR/kafka.log" 2>&1 &
  local i
  for ((i = 0; i < 600; i++)); do # up to 120 s
    if ((i > 5)) && ! kafka_running; then
      tail -n 40 "$KAFKA_DIR/kafka.log" >&2
      die "kafka exited during startup (log: $KAFKA_DIR/kafka.log)"
    fi
    if grep -q "Kafka Server started" "$KAFKA_DIR/kafka.log" 2>/dev/null &&
      tcp_open 127.0.0.1 "$KAFKA_PORT"; then
      return 0
    fi
    sleep 0.2
  done
  die "kafka did not start within 120 s (log: $KAFKA_DIR/kafka.log)"
}

up_kafka() {
  if kafka_external; then log "kafka: using KAFKA_BROKERS=$KAFKA_BROKERS"; KAFKA_URL=$KAFKA_BROKERS; return; fi
  KAFKA_URL=$OUR_KAFKA
  if kafka_running && tcp_open 127.0.0.1 "$KAFKA_PORT"; then
    log "kafka: already running (pid $(cat "$KAFKA_DIR/kafka.pid")), reusing"
    return
  fi
  if [[ -f $KAFKA_HOME/.complete ]]; then
    log "kafka: $KAFKA_VERSION jars cached in $KAFKA_LIBS"
  else
    timed "kafka: fetch jars (mvn)" fetch_kafka
  fi
  write_kafka_config
  [[ -f $KAFKA_DIR/data/meta.properties ]] || timed "kafka: format storage" format_kafka
  timed "kafka: start" start_kafka
  log "kafka: up at $OUR_KAFKA (pid $(cat "$KAFKA_DIR/kafka.pid"), log $KAFKA_DIR/kafka.log)"
}

# ---------------------------------------------------------------- PostgreSQL
pg_running() {
  [[ -f $PG_DIR/data/PG_VERSION ]] && as_pg "$(pg_bin)/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1
}

init_pg() {
  [[ -f $PG_DIR/data/PG_VERSION ]] && return 0
  if [[ $(id -u) == 0 ]]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  fi
  mkdir -p "$PG_DIR/data" "$PG_DIR/run"
  [[ $(id -u) != 0 ]] || chown -R postgres: "$PG_DIR"
  chmod 700 "$PG_DIR/data"
  as_pg "$(pg_bin)/initdb" -D "$PG_DIR/data" -U postgres --auth=trust \
    --encoding=UTF8 --locale=C </dev/null >"$PG_DIR/initdb.log" 2>&1 ||
    { cat "$PG_DIR/initdb.log" >&2; die "initdb failed"; }
  cat >>"$PG_DIR/data/postgresql.conf" <<EOF

# tickflow local services
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_DIR/run'
EOF
}

start_pg() {
  tcp_open 127.0.0.1 "$PG_PORT" && die "port $PG_PORT is taken by another process"
  as_pg "$(pg_bin)/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w -t 60 start \
    </dev/null >/dev/null 2>&1 || { tail -n 30 "$PG_DIR/postgres.log" >&2; die "postgres did not start"; }
  local i
  for ((i = 0; i < 100; i++)); do
    "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && return 0
    sleep 0.2
  done
  die "postgres not ready"
}

create_db() {
  local psql=("$(pg_bin)/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -qAtX)
  [[ $("${psql[@]}" -c "select 1 from pg_database where datname='tickflow'") == 1 ]] ||
    "${psql[@]}" -c "create database tickflow" >/dev/null
}

up_pg() {
  if pg_external; then log "postgres: using DATABASE_URL=$DATABASE_URL"; PG_URL=$DATABASE_URL; return; fi
  PG_URL=$OUR_PG
  if pg_running; then
    log "postgres: already running, reusing"
  else
    timed "postgres: initdb" init_pg
    timed "postgres: start" start_pg
  fi
  create_db
  log "postgres: up at $OUR_PG (log $PG_DIR/postgres.log)"
}

# ---------------------------------------------------------------- Redis
redis_running() {
  pid_alive "$REDIS_DIR/redis.pid" && redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG
}

start_redis() {
  tcp_open 127.0.0.1 "$REDIS_PORT" && die "port $REDIS_PORT is taken by another process"
  mkdir -p "$REDIS_DIR"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes --dir "$REDIS_DIR" \
    --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" \
    --save '' --appendonly no </dev/null >>"$REDIS_DIR/redis.log" 2>&1 ||
    { tail -n 20 "$REDIS_DIR/redis.log" >&2; die "redis-server failed"; }
  local i
  for ((i = 0; i < 100; i++)); do
    redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && return 0
    sleep 0.1
  done
  die "redis not ready (log: $REDIS_DIR/redis.log)"
}

up_redis() {
  if redis_external; then log "redis: using REDIS_URL=$REDIS_URL"; REDIS_URL_OUT=$REDIS_URL; return; fi
  REDIS_URL_OUT=$OUR_REDIS
  if redis_running; then
    log "redis: already running (pid $(cat "$REDIS_DIR/redis.pid")), reusing"
  else
    timed "redis: start" start_redis
    log "redis: up at $OUR_REDIS (pid $(cat "$REDIS_DIR/redis.pid"))"
  fi
}

# ---------------------------------------------------------------- commands
cmd_up() {
  local t0
  t0=$(now_ms)
  mkdir -p "$STATE" "$CACHE"
  ensure_packages
  up_kafka
  up_pg
  up_redis
  cat >"$STATE/env.sh.tmp" <<EOF
export KAFKA_BROKERS=$KAFKA_URL
export DATABASE_URL=$PG_URL
export REDIS_URL=$REDIS_URL_OUT
export TICKFLOW_KAFKA_BROKERS=$KAFKA_URL
export TICKFLOW_STORE=$PG_URL
export TICKFLOW_REDIS_URL=$REDIS_URL_OUT
EOF
  mv "$STATE/env.sh.tmp" "$STATE/env.sh"
  local dt=$(($(now_ms) - t0))
  log "$(printf 'all services up in %d.%03ds; env in %s' $((dt / 1000)) $((dt % 1000)) "$STATE/env.sh")"
}

stop_kafka() {
  if kafka_running; then
    local pid i
    pid=$(cat "$KAFKA_DIR/kafka.pid")
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then log "kafka: still running after 30 s, killing"; kill -KILL "$pid" || true; fi
    log "kafka: stopped"
  fi
}

# Stops our Kafka but keeps its data (failure tests); `kafka-start` brings it back.
cmd_kafka_stop() { stop_kafka; }
cmd_kafka_start() {
  kafka_running && { log "kafka: already running"; return; }
  [[ -f $KAFKA_DIR/server.properties ]] || die "no kafka state in $KAFKA_DIR: run up first"
  write_kafka_config # thread counts from the environment of this start
  timed "kafka: start" start_kafka
}

# Stops our PostgreSQL but keeps its data (failure tests); `pg-start` brings it back.
cmd_pg_stop() {
  pg_external && die "postgres is external ($DATABASE_URL); not stopping it"
  pg_running || { log "postgres: not running"; return; }
  as_pg "$(pg_bin)/pg_ctl" -D "$PG_DIR/data" -m fast -w stop </dev/null >/dev/null 2>&1 || die "postgres did not stop"
  log "postgres: stopped"
}
cmd_pg_start() {
  pg_external && die "postgres is external ($DATABASE_URL); not starting it"
  pg_running && { log "postgres: already running"; return; }
  [[ -f $PG_DIR/data/PG_VERSION ]] || die "no postgres state in $PG_DIR: run up first"
  timed "postgres: start" start_pg
}

cmd_down() {
  stop_kafka
  if pg_running; then
    as_pg "$(pg_bin)/pg_ctl" -D "$PG_DIR/data" -m fast -w stop </dev/null >/dev/null 2>&1 || true
    log "postgres: stopped"
  fi
  if pid_alive "$REDIS_DIR/redis.pid"; then
    local pid i
    pid=$(cat "$REDIS_DIR/redis.pid")
    redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    log "redis: stopped"
  fi
  rm -rf "$STATE"
  log "removed $STATE"
}

cmd_status() {
  local h p rc=0
  if kafka_external; then
    read -r h p < <(host_port "$KAFKA_BROKERS" 9092)
    if tcp_open "$h" "$p"; then echo "kafka    up    $KAFKA_BROKERS (external)"; else echo "kafka    down  $KAFKA_BROKERS (external)"; rc=1; fi
  elif kafka_running && tcp_open 127.0.0.1 "$KAFKA_PORT"; then
    echo "kafka    up    $OUR_KAFKA (pid $(cat "$KAFKA_DIR/kafka.pid"))"
  else echo "kafka    down"; rc=1; fi

  if pg_external; then
    read -r h p < <(host_port "$DATABASE_URL" 5432)
    if tcp_open "$h" "$p"; then echo "postgres up    $DATABASE_URL (external)"; else echo "postgres down  $DATABASE_URL (external)"; rc=1; fi
  elif pg_running && "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; then
    echo "postgres up    $OUR_PG"
  else echo "postgres down"; rc=1; fi

  if redis_external; then
    read -r h p < <(host_port "$REDIS_URL" 6379)
    if tcp_open "$h" "$p"; then echo "redis    up    $REDIS_URL (external)"; else echo "redis    down  $REDIS_URL (external)"; rc=1; fi
  elif redis_running; then
    echo "redis    up    $OUR_REDIS (pid $(cat "$REDIS_DIR/redis.pid"))"
  else echo "redis    down"; rc=1; fi
  return $rc
}

cmd_env() {
  [[ -f $STATE/env.sh ]] || die "no $STATE/env.sh; run '$0 up' first"
  cat "$STATE/env.sh"
}

cmd_kafka_run() {
  [[ $# -ge 1 ]] || die "usage: $0 kafka-run <main class> [args...]"
  [[ -f $KAFKA_HOME/.complete ]] || { mkdir -p "$CACHE"; fetch_kafka; }
  exec java -Xmx256m -cp "$KAFKA_LIBS/*" "$@"
}

case ${1:-} in
  up) { cmd_up; } >&2 && cat "$STATE/env.sh" ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  kafka-run) shift; cmd_kafka_run "$@" ;;
  kafka-stop) cmd_kafka_stop ;;
  kafka-start) cmd_kafka_start ;;
  pg-stop) cmd_pg_stop ;;
  pg-start) cmd_pg_start ;;
  *) echo "usage: $0 up|down|status|env|kafka-stop|kafka-start|pg-stop|pg-start|kafka-run <class> [args...]" >&2; exit 2 ;;
esac
