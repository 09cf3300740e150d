#!/usr/bin/env bash
# bench.sh — runs one of tickflow's benchmarks (release build, criterion or its own timing).
#
# Usage:  scripts/bench.sh <scenario> [args passed to the benchmark binary...]
#
#   indicators  cargo bench -p indicators --bench engine; then prints a markdown table of
#               the medians this run wrote (target/criterion/{engine,peer}/**/new/estimates.json),
#               per tick / per input, with the ratio to the same-run baseline (protobuf-encoding
#               one tick) and, for tickflow's indicators, to the `ta` crate; writes it to
#               target/bench/indicators.json
#   storage     cargo bench -p persister --bench storage (starts the local services with
#               `scripts/services.sh up` when KAFKA_BROKERS is unset)
#   router      cargo bench -p router --bench router_core
#   sim         cargo bench -p ingest --bench sim
#   embedded    tickflow bench embedded: `tickflow run` fed 1k/10k/100k ticks/s over 100
#               symbols on a fixed schedule, latency at a gRPC subscriber (HDR), highest rate
#               sustained, peak RSS; writes target/bench/embedded.json
#   kafka-sweep the two-hop Kafka floor swept over producer linger.ms and the broker's heap and
#               collector (see the scenario below); writes target/bench/sweep/
#   distributed tickflow bench distributed: the same through ingest, router, indicators and
#               persister on the local Kafka/PostgreSQL, next to the bare two-hop Kafka floor;
#               writes target/bench/distributed.json (starts the services if KAFKA_BROKERS is unset)
#   router-soak `tickflow bench router-soak`: the router binary alone for a long run: `ingest`
#               (simulated feed, 100 symbols) -> ticks.raw -> router -> ticks.clean at SOAK_RATE
#               ticks/s (default 20000) for SOAK_DURATION seconds (default 900); the router's RSS
#               and CPU time sampled from /proc every 30 s, its routed count from /metrics;
#               writes target/bench/router-soak.json
#
# Extra arguments go to the benchmark binary, e.g. a criterion filter:
#   scripts/bench.sh indicators peer/
# The table then shows only what this run measured (estimates older than the run are skipped).
set -euo pipefail

cd "$(dirname "$0")/.."

usage() {
    echo "usage: scripts/bench.sh <indicators|storage|router|sim|embedded|distributed|kafka-sweep|router-soak> [benchmark args...]" >&2
    exit 2
}

[[ $# -ge 1 ]] || usage
scenario=$1
shift

TARGET=${CARGO_TARGET_DIR:-target}

# Prints the markdown table of this run's indicator medians and writes the JSON report.
indicators_report() {
    local since=$1
    python3 - "$TARGET" "$since" <<'PY'
import glob, json, os, platform, sys, time

target, since = sys.argv[1], float(sys.argv[2])
BASELINE = "engine/baseline_protobuf_encode"
rows = {}
for est in sorted(glob.glob(os.path.join(target, "criterion", "*", "**", "new", "estimates.json"),
                            recursive=True)):
    if os.path.getmtime(est) < since:
        continue  # left by an earlier run: not comparable with this run's baseline
    with open(os.path.join(os.path.dirname(est), "benchmark.json")) as f:
        meta = json.load(f)
    gid = meta["group_id"]
    if gid not in ("engine", "peer"):
        continue
    with open(est) as f:
        median = json.load(f)["median"]
    elements = (meta.get("throughput") or {}).get("Elements") or 1
    ci = median["confidence_interval"]
    rows[meta["full_id"]] = {
        "id": meta["full_id"],
        "elements_per_iteration": elements,
        "median_ns": median["point_estimate"] / elements,
        "ci95_low_ns": ci["lower_bound"] / elements,
        "ci95_high_ns": ci["upper_bound"] / elements,
    }
if not rows:
    sys.exit(f"no estimates written by this run under {target}/criterion/{{engine,peer}}")

base = rows.get(BASELINE, {}).get("median_ns")
for r in rows.values():
    r["vs_baseline"] = r["median_ns"] / base if base else None
    r["vs_ta"] = None
    if r["id"].startswith("peer/"):
        peer = rows.get("peer/ta/" + r["id"].split("/", 2)[2])
        if peer:
            r["vs_ta"] = r["median_ns"] / peer["median_ns"]

def order(r):
    i = r["id"]
    if i.startswith("engine/"):
        # 1_symbol before 100_symbols, the baseline last.
        digits = "".join(c for c in i.rsplit("/", 1)[1].split("_")[0] if c.isdigit())
        return (0, i == BASELINE, int(digits or 0), i)
    case = i.split("/", 2)[2]
    return (1, "+" in case, case, not i.startswith("peer/tickflow/"))

def ns(x):
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"

def ratio(x):
    return "—" if x is None else f"{x:.2f}x"

print()
print("| benchmark | median (ns per tick / input) | 95% CI of the median | vs baseline | vs ta |")
print("|---|---:|---:|---:|---:|")
for r in sorted(rows.values(), key=order):
    print(f"| {r['id']} | {ns(r['median_ns'])} | {ns(r['ci95_low_ns'])}–{ns(r['ci95_high_ns'])} "
          f"| {ratio(r['vs_baseline'])} | {ratio(r['vs_ta'])} |")
print()
print(f"baseline: {BASELINE} (protobuf-encoding one tick), same run"
      + ("" if base else " — NOT MEASURED in this run, no ratios"))

cpu = ""
try:
    with open("/proc/cpuinfo") as f:
        cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
except OSError:
    pass
report = {
    "scenario": "indicators",
    "command": "cargo bench -p indicators --bench engine",
    "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "machine": {"cpus": os.cpu_count(), "cpu": cpu, "kernel": platform.release()},
    "unit": "ns per tick (engine) / ns per input (peer); medians of criterion's samples",
    "baseline": BASELINE,
    "results": sorted(rows.values(), key=order),
}
os.makedirs(os.path.join(target, "bench"), exist_ok=True)
out = os.path.join(target, "bench", "indicators.json")
with open(out, "w") as f:
    json.dump(report, f, indent=2)
    f.write("\n")
print(f"wrote {out}")
PY
}

case "$scenario" in
    indicators)
        # Whole seconds, a second early: mtimes on some filesystems are coarse.
        since=$(($(date +%s) - 1))
        cargo bench -p indicators --bench engine -- "$@"
        indicators_report "$since"
        ;;
    storage)
        if [[ -z "${KAFKA_BROKERS:-}" ]]; then
            eval "$(scripts/services.sh up)"
        fi
        cargo bench -p persister --bench storage -- "$@"
        ;;
    router)
        cargo bench -p router --bench router_core -- "$@"
        ;;
    sim)
        cargo bench -p ingest --bench sim -- "$@"
        ;;
    embedded)
        cargo build --release --workspace --bins --all-features
        "$TARGET/release/tickflow" bench embedded "$@"
        ;;
    distributed)
        if [[ -z "${KAFKA_BROKERS:-}" ]]; then
            eval "$(scripts/services.sh up)"
        fi
        cargo build --release --workspace --bins --all-features
        "$TARGET/release/tickflow" bench distributed "$@"
        ;;
    router-soak)
        if [[ -z "${KAFKA_BROKERS:-}" ]]; then
            eval "$(scripts/services.sh up)"
        fi
        cargo build --release --workspace --bins --all-features
        "$TARGET/release/tickflow" bench router-soak --rate "${SOAK_RATE:-20000}" \
            --duration "${SOAK_DURATION:-900}s" --out "$TARGET/bench" "$@"
        ;;
    kafka-sweep)
        # The two-hop Kafka floor (tickflow's producer and consumer, relayed over two topics)
        # swept over the producers' linger (TICKFLOW_KAFKA_LINGER) at the current broker
        # settings, then over the broker's heap and collector, then over its network and I/O
        # thread counts (Kafka restarted for each) at SWEEP_LINGER; one summary table at the
        # end. SWEEP_LINGERS, SWEEP_JVMS (name=options;...) and SWEEP_THREADS ("network,io"
        # pairs) override the lists (set one empty to skip it); extra arguments go to
        # `tickflow bench distributed --floor-only` (e.g. --rates).
        if [[ -z "${KAFKA_BROKERS:-}" ]]; then
            eval "$(scripts/services.sh up)"
        fi
        cargo build --release --workspace --bins --all-features
        out=$TARGET/bench/sweep
        rm -rf "$out" && mkdir -p "$out"
        floor() { # name, then env assignments for the bench
            local name=$1
            shift
            env "$@" "$TARGET/release/tickflow" bench distributed --floor-only \
                --out "$out/$name" "${BENCH_ARGS[@]}" >"$out/$name.txt" 2>&1 ||
                { tail -20 "$out/$name.txt" >&2; exit 1; }
            echo "swept $name" >&2
        }
        BENCH_ARGS=("$@")
        # `auto` is tickflow's default: 0 ms under TICKFLOW_KAFKA_LINGER_AUTO_RATE messages/s
        # per producer, TICKFLOW_KAFKA_LINGER_AUTO_MS above it.
        for l in ${SWEEP_LINGERS-0 0.2 1 2 5 auto}; do
            floor "linger=$l,jvm=current" TICKFLOW_KAFKA_LINGER="$l"
        done
        IFS=';' read -r -a jvms <<<"${SWEEP_JVMS-g1-512m=-Xms512m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20;g1-2g=-Xms2g -Xmx2g -XX:+UseG1GC -XX:MaxGCPauseMillis=20;zgc-2g=-Xms2g -Xmx2g -XX:+UseZGC;shenandoah-2g=-Xms2g -Xmx2g -XX:+UseShenandoahGC}"
        restore=${TICKFLOW_KAFKA_JVM_OPTS:-}
        for j in "${jvms[@]}"; do
            scripts/services.sh kafka-stop
            TICKFLOW_KAFKA_JVM_OPTS="${j#*=}" scripts/services.sh kafka-start
            floor "linger=${SWEEP_LINGER:-0},jvm=${j%%=*}" TICKFLOW_KAFKA_PROPERTIES="linger.ms=${SWEEP_LINGER:-0}"
        done
        for t in ${SWEEP_THREADS-1,1 1,2 2,4 3,8}; do
            scripts/services.sh kafka-stop
            TICKFLOW_KAFKA_NETWORK_THREADS=${t%,*} TICKFLOW_KAFKA_IO_THREADS=${t#*,} \
                scripts/services.sh kafka-start
            floor "linger=${SWEEP_LINGER:-0},threads=$t" TICKFLOW_KAFKA_PROPERTIES="linger.ms=${SWEEP_LINGER:-0}"
        done
        scripts/services.sh kafka-stop
        if [[ -n $restore ]]; then
            TICKFLOW_KAFKA_JVM_OPTS=$restore scripts/services.sh kafka-start
        else
            scripts/services.sh kafka-start
        fi
        python3 - "$out" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
print("| setting | " + " | ".join(f"{r} ticks/s p50 / p99 (received)" for r in
      [x["rate"] for x in json.load(open(sorted(glob.glob(f"{out}/*/kafka-floor.json"))[0]))["rates"]]) + " |")
print("|---|" + "---:|" * len(json.load(open(sorted(glob.glob(f"{out}/*/kafka-floor.json"))[0]))["rates"]))
def ms(ns): return f"{ns / 1e6:.2f} ms"
for path in sorted(glob.glob(f"{out}/*/kafka-floor.json"), key=os.path.getmtime):
    name = os.path.basename(os.path.dirname(path))
    cells = []
    for r in json.load(open(path))["rates"]:
        runs = r["runs"]
        med = lambda f: sorted(f(x) for x in runs)[len(runs) // 2]
        cells.append(f'{ms(med(lambda x: x["from_recv"]["p50_ns"]))} / {ms(med(lambda x: x["from_recv"]["p99_ns"]))} '
                     f'({100 * med(lambda x: x["received"]) / max(1, med(lambda x: x["expected"])):.0f} %)')
    print(f"| {name} | " + " | ".join(cells) + " |")
PY
        ;;
    *)
        usage
        ;;
esac
