#!/usr/bin/env bash
# A single-node Apache Kafka broker (KRaft, broker+controller in one JVM) for tests, run from
# jars that Maven fetches from Maven Central (see pom.xml and README.md beside this file).
#
#   kafka.sh install            fetch the jars once into the cache and prepare a formatted
#                               template and a class-data-sharing archive; prints the lib dir
#   kafka.sh start DIR PORT     format DIR (first time only) and start a broker on 127.0.0.1:PORT;
#                               returns once it serves; pid in DIR/kafka.pid, log in DIR/kafka.log
#   kafka.sh stop DIR           SIGTERM, then SIGKILL after KAFKA_STOP_TIMEOUT seconds
#   kafka.sh status DIR         exit 0 if the broker of DIR is running
#   kafka.sh wait-partitions PORT [SECONDS]
#                               wait until every partition of every topic answers (ListOffsets
#                               through Kafka's GetOffsetShell: one JVM start, ~1.5-3 s); useful
#                               after a restart, when `start` returns before all leaders are back
#   kafka.sh run CLASS ARGS...  run a class from the same classpath, e.g.
#                               org.apache.kafka.tools.TopicCommand --bootstrap-server ... --list
#   kafka.sh version            print the Kafka version (from pom.xml)
#
# Environment (all optional):
#   XDG_CACHE_HOME         cache root (default ~/.cache); everything goes to rtc/kafka-VERSION/
#   JAVA_HOME              java to use (default: java on PATH; Kafka 4 needs 17+)
#   KAFKA_CONTROLLER_PORT  port of the KRaft controller listener (default: a free port picked in
#                          20000-32767, below Linux's ephemeral range, and reused for DIR)
#   KAFKA_HEAP_OPTS        default "-Xms64m -Xmx256m"
#   KAFKA_JVM_OPTS         default: serial GC, C1-only JIT (much faster start on 2 cores)
#   KAFKA_EXTRA_JVM_OPTS   appended to the above
#   KAFKA_CDS=0            do not build or use the class-data-sharing archive
#   KAFKA_FORMAT=tool      format DIR with kafka.tools.StorageTool instead of copying the template
#                          formatted at install (always so when KAFKA_PROPS is set)
#   KAFKA_START_TIMEOUT    seconds to wait for "Kafka Server started" (default 60)
#   KAFKA_STOP_TIMEOUT     seconds to wait after SIGTERM before SIGKILL (default 20)
#   KAFKA_PROPS            extra server.properties lines (newline-separated), appended last so
#                          they override ours (e.g. "auto.create.topics.enable=true")
#   KAFKA_LOG_LEVEL        root log level (default WARN); the "started" line is always logged
#   KAFKA_WAIT_PARTITIONS=1  make `start` also run wait-partitions when DIR already had topics
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$HERE/pom.xml"
LOG4J_CONF="$HERE/log4j2.properties"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM" | head -1)"
[ -n "$KAFKA_VERSION" ] || { echo "kafka.sh: no <kafka.version> in $POM" >&2; exit 2; }
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/rtc/kafka-$KAFKA_VERSION"
LIB="$CACHE/lib"
JAVA="java"
[ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ] && JAVA="$JAVA_HOME/bin/java"
# Bump when what `prepare` makes changes.
PREP_REV=1

die() { echo "kafka.sh: $*" >&2; exit 1; }
now_ms() { date +%s%3N; }

# Inputs of install: the pom (jars), this script's prepare step and the java binary (the CDS
# archive is only valid for the JVM that wrote it).
pom_stamp() { cksum <"$POM" | cut -d' ' -f1; }
prep_dir() {
  local javabin
  javabin="$(readlink -f "$(command -v "$JAVA")" 2>/dev/null || echo "$JAVA")"
  echo "$CACHE/prep-$(pom_stamp)-$(echo "$javabin $PREP_REV" | cksum | cut -d' ' -f1)"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

pick_port() {
  local p i
  for i in $(seq 1 50); do
    p=$((20000 + RANDOM % 12768))
    port_busy "$p" || { echo "$p"; return 0; }
  done
  die "no free port found"
}

new_uuid() {
  # A Kafka Uuid: 16 random bytes, base64url without padding (22 chars), not starting with '-'.
  local id
  while :; do
    id="$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    case "$id" in -*) ;; *) echo "$id"; return ;; esac
  done
}

write_props() {
  local dir="$1" port="$2" cport="$3"
  cat >"$dir/server.properties" <<EOF
# Written by kafka.sh start; rewritten on every start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
# One node: every replication factor and ISR minimum is 1.
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
num.partitions=1
# Topics are made through the admin API; a client asking for an unknown topic gets an error.
auto.create.topics.enable=false
# Tests: no 3 s wait before the first rebalance of a consumer group.
group.initial.rebalance.delay.ms=0
# After a crash (SIGKILL) the restarted controller keeps the old broker registration alive for a
# session timeout before it accepts the new one: 9 s by default, 4 s here.
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=500
# Small machine (2 cores).
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=2
background.threads=4
# 1 MB instead of 10 MB preallocated (sparse, mmapped) offset/time index per partition.
log.index.size.max.bytes=1048576
# The log cleaner (rtc.control is compacted) allocates this on the heap at start: 128 MB by
# default, which alone filled most of a 256 MB heap. 16 MB dedupes ~0.7 M keys per pass.
log.cleaner.dedupe.buffer.size=16777216
EOF
  if [ -n "${KAFKA_PROPS:-}" ]; then
    printf '# KAFKA_PROPS\n%s\n' "$KAFKA_PROPS" >>"$dir/server.properties"
  fi
}

# JAVA_OPTS for the broker and the storage tool; $1 = a CDS archive to use, or empty.
java_opts() {
  # shellcheck disable=SC2206
  JAVA_OPTS=(${KAFKA_HEAP_OPTS:--Xms64m -Xmx256m}
    ${KAFKA_JVM_OPTS:--XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:-UsePerfData -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true}
    ${KAFKA_EXTRA_JVM_OPTS:-}
    "-Dlog4j2.configurationFile=$LOG4J_CONF" -Dlog4j2.disable.jmx=true)
  if [ -n "${1:-}" ]; then
    JAVA_OPTS+=("-XX:SharedArchiveFile=$1" -Xlog:cds=off -Xlog:cds+dynamic=off)
  fi
}

# Starts `kafka.Kafka DIR/server.properties` in the background (pid in DIR/kafka.pid) and waits
# until it logs "Kafka Server started" and PORT accepts connections. Uses JAVA_OPTS.
launch() {
  local dir="$1" port="$2" timeout="$3" pid logstart deadline
  : >>"$dir/kafka.log"
  logstart="$(wc -l <"$dir/kafka.log")"
  # setsid: the broker outlives the caller's process group (test harnesses, Ctrl-C).
  setsid "$JAVA" "${JAVA_OPTS[@]}" -cp "$LIB/*" kafka.Kafka "$dir/server.properties" \
    >>"$dir/kafka.log" 2>&1 </dev/null 9>&- &
  pid=$!
  echo "$pid" >"$dir/kafka.pid"
  deadline=$(( $(now_ms) + timeout * 1000 ))
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      wait "$pid" 2>/dev/null || true
      rm -f "$dir/kafka.pid"
      echo "kafka.sh: broker exited during start; last lines of $dir/kafka.log:" >&2
      tail -n 40 "$dir/kafka.log" >&2
      return 1
    fi
    if tail -n +"$((logstart + 1))" "$dir/kafka.log" | grep -q "Kafka Server started" \
        && port_busy "$port"; then
      return 0
    fi
    if [ "$(now_ms)" -ge "$deadline" ]; then
      echo "kafka.sh: broker not ready within ${timeout}s; last lines of $dir/kafka.log:" >&2
      tail -n 40 "$dir/kafka.log" >&2
      cmd_stop "$dir" >/dev/null 2>&1 || true
      return 1
    fi
    sleep 0.1
  done
}

storage_format() {
  local dir="$1" out
  if ! out="$("$JAVA" "${JAVA_OPTS[@]}" -cp "$LIB/*" kafka.tools.StorageTool format \
      -t "$(new_uuid)" -c "$dir/server.properties" 2>&1)"; then
    echo "$out" >&2
    die "formatting $dir/data failed"
  fi
}

# Once per install: a formatted data dir to copy (saves a JVM start per new DIR) and a dynamic
# CDS archive from one broker run (about halves the broker's start time on 2 cores).
prepare() {
  local prep="$1" tmp port cport
  tmp="$prep.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp/tpl" "$tmp/train"
  echo "kafka.sh: preparing a data template and a CDS archive in $prep (once)" >&2
  java_opts ""
  write_props "$tmp/tpl" 1 2
  storage_format "$tmp/tpl"
  if [ "${KAFKA_CDS:-1}" != 0 ]; then
    cp -r "$tmp/tpl/data" "$tmp/train/data"
    port="$(pick_port)"
    cport="$(pick_port)"
    [ "$port" != "$cport" ] || cport="$(pick_port)"
    write_props "$tmp/train" "$port" "$cport"
    java_opts ""
    JAVA_OPTS+=("-XX:ArchiveClassesAtExit=$tmp/broker.jsa" -Xlog:cds=off -Xlog:cds+dynamic=off)
    # The archive is written when the JVM exits, so stop it gently and give it time.
    if launch "$tmp/train" "$port" 120; then
      KAFKA_STOP_TIMEOUT=90 cmd_stop "$tmp/train" 2>/dev/null
    fi
    if [ -s "$tmp/broker.jsa" ]; then
      mv "$tmp/broker.jsa" "$tmp/tpl/broker.jsa"
    else
      echo "kafka.sh: no CDS archive made (see $tmp/train/kafka.log); starting without one" >&2
    fi
  fi
  rm -rf "$prep"
  mv "$tmp/tpl" "$prep"
  rm -rf "$tmp"
}

cmd_install() {
  local stamp prep
  stamp="$(pom_stamp)"
  prep="$(prep_dir)"
  if [ -f "$LIB/.complete" ] && [ "$(cat "$LIB/.complete")" = "$stamp" ] && [ -d "$prep" ]; then
    echo "$LIB"
    return 0
  fi
  command -v "$JAVA" >/dev/null || die "java not found (Kafka 4 needs Java 17+)"
  mkdir -p "$CACHE"
  # One installer at a time (tests may start several brokers at once).
  exec 9>"$CACHE/.install.lock"
  flock 9
  if ! { [ -f "$LIB/.complete" ] && [ "$(cat "$LIB/.complete")" = "$stamp" ]; }; then
    command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
    local tmp="$CACHE/lib.tmp.$$"
    rm -rf "$tmp"
    echo "kafka.sh: fetching Apache Kafka $KAFKA_VERSION jars into $LIB (once)" >&2
    if ! mvn -B -Dstyle.color=never -f "$POM" -Dmaven.repo.local="$CACHE/m2" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" \
        >"$CACHE/install.log" 2>&1; then
      tail -n 30 "$CACHE/install.log" >&2
      rm -rf "$tmp"
      die "mvn dependency:copy-dependencies failed (full output in $CACHE/install.log)"
    fi
    [ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ] || die "kafka_2.13-$KAFKA_VERSION.jar missing in $tmp"
    echo "$stamp" >"$tmp/.complete"
    rm -rf "$LIB" "$CACHE"/prep-*
    mv "$tmp" "$LIB"
  fi
  [ -d "$prep" ] || prepare "$prep"
  exec 9>&-
  echo "$LIB"
}

pid_of() { [ -f "$1/kafka.pid" ] && cat "$1/kafka.pid"; }
# DIR as an absolute path, the form the broker's command line names it in (as it is when missing).
abs_dir() { (cd "$1" 2>/dev/null && pwd) || echo "$1"; }
# Whether pid $1 is the broker of DIR $2 (not some other process, another DIR's broker included,
# that got a stale pid's number).
is_broker() {
  [ -n "$1" ] && tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | grep -qxF "$2/server.properties"
}
alive() { local pid; pid="$(pid_of "$1")" && is_broker "$pid" "$1"; }

cmd_start() {
  [ $# -eq 2 ] || die "usage: kafka.sh start DIR PORT"
  local dir="$1" port="$2" cport t0 prep jsa=""
  t0="$(now_ms)"
  [[ "$port" =~ ^[0-9]+$ ]] || die "PORT must be a number: $port"
  mkdir -p "$dir"
  dir="$(abs_dir "$dir")"
  alive "$dir" && die "a broker already runs from $dir (pid $(pid_of "$dir"))"
  port_busy "$port" && die "127.0.0.1:$port is already in use"
  cmd_install >/dev/null
  prep="$(prep_dir)"
  [ "${KAFKA_CDS:-1}" != 0 ] && [ -s "$prep/broker.jsa" ] && jsa="$prep/broker.jsa"

  # The controller port: from the environment, else the one kept from an earlier start of DIR
  # when still free, else a new one. (The quorum is static, so it may change between starts.)
  cport="${KAFKA_CONTROLLER_PORT:-}"
  if [ -z "$cport" ] && [ -f "$dir/controller.port" ]; then
    cport="$(cat "$dir/controller.port")"
    if port_busy "$cport"; then cport=""; fi
  fi
  [ -n "$cport" ] || cport="$(pick_port)"
  [ "$cport" != "$port" ] || cport="$(pick_port)"
  [ "$cport" != "$port" ] || die "controller port equals PORT ($port)"
  echo "$cport" >"$dir/controller.port"
  write_props "$dir" "$port" "$cport"
  java_opts "$jsa"

  if [ ! -f "$dir/data/meta.properties" ]; then
    if [ -z "${KAFKA_PROPS:-}" ] && [ "${KAFKA_FORMAT:-template}" != tool ] \
        && [ -f "$prep/data/meta.properties" ]; then
      # The template, with this DIR's own cluster and directory ids. (Its metadata checkpoint
      # holds only the feature levels, which depend on nothing in DIR.)
      rm -rf "$dir/data"
      cp -r "$prep/data" "$dir/data"
      sed -i -e "s/^cluster.id=.*/cluster.id=$(new_uuid)/" \
        -e "s/^directory.id=.*/directory.id=$(new_uuid)/" "$dir/data/meta.properties"
    else
      storage_format "$dir"
    fi
  fi

  local had_topics=0
  compgen -G "$dir/data/*-[0-9]*" | grep -qv '/__cluster_metadata-0$' && had_topics=1

  echo "==== kafka.sh start $(date -Is) port=$port controller=$cport" >>"$dir/kafka.log"
  launch "$dir" "$port" "${KAFKA_START_TIMEOUT:-60}" || exit 1
  if [ "$had_topics" = 1 ] && [ "${KAFKA_WAIT_PARTITIONS:-0}" = 1 ]; then
    cmd_wait_partitions "$port" "${KAFKA_START_TIMEOUT:-60}" \
      || { tail -n 40 "$dir/kafka.log" >&2; die "partitions not all served after restart"; }
  fi
  echo "kafka.sh: broker ready on 127.0.0.1:$port (pid $(pid_of "$dir"), controller 127.0.0.1:$cport) in $(( $(now_ms) - t0 )) ms" >&2
}

cmd_stop() {
  [ $# -eq 1 ] || die "usage: kafka.sh stop DIR"
  local dir="$1" pid timeout deadline t0
  t0="$(now_ms)"
  dir="$(abs_dir "$dir")"
  pid="$(pid_of "$dir" || true)"
  if ! is_broker "$pid" "$dir"; then
    rm -f "$dir/kafka.pid"
    echo "kafka.sh: no broker running from $dir" >&2
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  timeout="${KAFKA_STOP_TIMEOUT:-20}"
  deadline=$(( $(now_ms) + timeout * 1000 ))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$(now_ms)" -ge "$deadline" ]; then
      echo "kafka.sh: pid $pid still alive after ${timeout}s, sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
      break
    fi
    sleep 0.1
  done
  rm -f "$dir/kafka.pid"
  echo "kafka.sh: broker stopped (pid $pid) in $(( $(now_ms) - t0 )) ms" >&2
}

cmd_status() {
  [ $# -eq 1 ] || die "usage: kafka.sh status DIR"
  local dir
  dir="$(abs_dir "$1")"
  if alive "$dir"; then echo "running (pid $(pid_of "$dir"))"; else echo "stopped"; return 1; fi
}

cmd_wait_partitions() {
  [ $# -ge 1 ] || die "usage: kafka.sh wait-partitions PORT [SECONDS]"
  # GetOffsetShell's admin client retries NOT_LEADER/LEADER_NOT_AVAILABLE until every partition
  # answers, or until its own 60 s API timeout.
  timeout "${2:-60}" "$0" run org.apache.kafka.tools.GetOffsetShell \
    --bootstrap-server "127.0.0.1:$1" >/dev/null
}

cmd_run() {
  [ $# -ge 1 ] || die "usage: kafka.sh run CLASS [ARGS...]"
  cmd_install >/dev/null
  local cls="$1" prep cds=()
  shift
  prep="$(prep_dir)"
  # The broker's archive serves the tools too (same classpath; kafka-clients classes mostly).
  [ "${KAFKA_CDS:-1}" != 0 ] && [ -s "$prep/broker.jsa" ] \
    && cds=("-XX:SharedArchiveFile=$prep/broker.jsa" -Xlog:cds=off -Xlog:cds+dynamic=off)
  exec "$JAVA" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:-UsePerfData "${cds[@]}" \
    "-Dlog4j2.configurationFile=$HERE/log4j2-tools.properties" -cp "$LIB/*" "$cls" "$@"
}

case "${1:-}" in
  install) shift; cmd_install "$@" ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  status) shift; cmd_status "$@" ;;
  run) shift; cmd_run "$@" ;;
  wait-partitions) shift; cmd_wait_partitions "$@" ;;
  version) echo "$KAFKA_VERSION" ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
