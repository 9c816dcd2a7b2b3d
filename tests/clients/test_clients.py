"""`surgeguard run` driven by real Kafka clients, the way a user would drive it.

Events are produced with kcat (the command-line client) and with Python's confluent-kafka, and the
outputs are read back with both, against a real broker. Each test class runs its own pipeline:
a config file in a temp dir with its own topic names and consumer group, and its own
`surgeguard run` process, which creates the topics, is stopped with SIGTERM at the end and must
exit 0.

Run (from the repository root):

    scripts/kafka run-with python3 -m unittest discover -s tests/clients -v

Needs: a broker in SURGEGUARD_TEST_BROKERS=host:port (`scripts/kafka run-with` sets it), the
built binary (SURGEGUARD_BIN, default target/debug/surgeguard), `kcat` on PATH and the
confluent-kafka package. Without a broker every test fails and says so.
"""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("SURGEGUARD_BIN", ROOT / "target" / "debug" / "surgeguard"))
if not BIN.is_absolute():
    BIN = ROOT / BIN

TOPICS = ["requests", "outcomes", "telemetry", "admin", "decisions", "limits", "breakers", "predictions", "alerts", "dlq", "changelog"]
T0 = datetime(2026, 11, 30, 9, 0, 0, tzinfo=timezone.utc)
TIERS = ["enterprise", "free", "pro"]
REQUEST_TYPES = ["batch", "critical_business", "standard"]


def brokers():
    b = os.environ.get("SURGEGUARD_TEST_BROKERS", "").strip()
    if not b:
        raise AssertionError(
            "SURGEGUARD_TEST_BROKERS is not set: these tests need a Kafka broker. Run them as "
            "`scripts/kafka run-with python3 -m unittest discover -s tests/clients -v`, which starts one, "
            "or set SURGEGUARD_TEST_BROKERS=host:port."
        )
    return b


def ts(seconds):
    """RFC 3339 event time: 2026-11-30T09:00:00Z plus `seconds`."""
    t = T0 + timedelta(seconds=seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def request(rid, user, tier, seconds, request_type="standard", **extra):
    v = {"id": rid, "ts": ts(seconds), "user_id": user, "tier": tier, "request_type": request_type}
    v.update(extra)
    return v


def kcat(*args, stdin=None, timeout=60):
    """Runs kcat against the test broker; returns stdout, fails the test on a non-zero exit."""
    exe = shutil.which("kcat") or shutil.which("kafkacat")
    if exe is None:
        raise AssertionError("kcat is not installed (apt-get install -y kcat)")
    cmd = [exe, "-b", brokers(), *args]
    p = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited with {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def produce(topic, records, timeout=30):
    """Produces (key, value) pairs with confluent-kafka; value may be bytes, str or a JSON-able
    object. Returns the (partition, offset) each landed at, in order."""
    producer = Producer({"bootstrap.servers": brokers(), "linger.ms": 5, "enable.idempotence": True})
    placed = [None] * len(records)
    errors = []

    def report(i):
        def cb(err, msg):
            if err is not None:
                errors.append(f"record {i}: {err}")
            else:
                placed[i] = (msg.partition(), msg.offset())
        return cb

    for i, (key, value) in enumerate(records):
        if not isinstance(value, (bytes, str)):
            value = json.dumps(value)
        while True:
            try:
                producer.produce(topic, key=key, value=value, on_delivery=report(i))
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    left = producer.flush(timeout)
    assert left == 0, f"{left} records to {topic} not delivered within {timeout} s"
    assert not errors, f"delivery failed: {errors[:5]}"
    return placed


def read(topic, done, timeout=30.0):
    """Reads `topic` from the beginning with confluent-kafka until `done(messages)` holds and every
    partition has been read to its end (so duplicates after the last wanted message show up too),
    or until `timeout` passes. Returns the messages read."""
    consumer = Consumer({
        "bootstrap.servers": brokers(),
        "group.id": f"reader-{uuid.uuid4()}",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
    })
    try:
        meta = consumer.list_topics(topic, timeout=10)
        parts = sorted(meta.topics[topic].partitions)
        assert parts, f"topic {topic} has no partitions"
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        msgs, at_end = [], set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = consumer.poll(0.2)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(m.partition())
                    if len(at_end) == len(parts) and done(msgs):
                        break
                    continue
                raise AssertionError(f"consumer error on {topic}: {m.error()}")
            at_end.discard(m.partition())
            msgs.append(m)
        return msgs
    finally:
        consumer.close()


def values(msgs):
    return [json.loads(m.value()) for m in msgs]


def wait_for(what, check, timeout=30.0, every=0.5):
    """Calls `check()` until it returns something truthy; fails with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


class PipelineMixin:
    """One pipeline per test class: config, topics, group and a `surgeguard run` process.

    If setting up fails (no broker, no binary, topics never created), every test of the class
    fails with the reason rather than being skipped. Tests run in name order (test_1_..., ...),
    the last one stops the service with SIGTERM and wants exit code 0."""

    NAME = "clients"
    setup_error = None
    service = None

    @classmethod
    def setUpClass(cls):
        cls.tmp = Path(tempfile.mkdtemp(prefix=f"surgeguard-{cls.NAME}-"))
        cls.prefix = f"{cls.NAME}-{os.getpid()}-{time.time_ns() % 1_000_000_000}"
        cls.log_path = cls.tmp / "surgeguard.log"
        try:
            cls._start()
        except Exception as e:  # noqa: BLE001 - reported by every test of the class
            cls.setup_error = str(e) if isinstance(e, AssertionError) else f"{type(e).__name__}: {e}"

    @classmethod
    def _start(cls):
        b = brokers()
        if not BIN.is_file():
            raise AssertionError(f"surgeguard binary {BIN} not found (set SURGEGUARD_BIN or build it)")
        lines = ["[topics]"] + [f'{t} = "{cls.prefix}.{t}"' for t in TOPICS]
        # Event time only: the events carry fixed times, which the wall clock must not overtake
        # during the tests' pauses.
        lines += ["", "[kafka]", f'group_id = "{cls.prefix}"', "replication_factor = 1", "wall_clock_after_idle_ms = 0", "",
                  "[kafka.partitions]", "requests = 3", "decisions = 3", ""]
        cls.config = cls.tmp / "pipeline.toml"
        cls.config.write_text("\n".join(lines))
        cls.log = open(cls.log_path, "wb")
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"), NO_COLOR="1")
        cls.service = subprocess.Popen(
            [str(BIN), "run", "--config", str(cls.config), "--brokers", b],
            stdin=subprocess.DEVNULL, stdout=cls.log, stderr=subprocess.STDOUT, env=env,
        )
        admin = AdminClient({"bootstrap.servers": b})
        wanted = {cls.topic(t) for t in TOPICS}
        deadline = time.monotonic() + 30
        while True:
            if cls.service.poll() is not None:
                raise AssertionError(f"surgeguard run exited with {cls.service.returncode} at start-up:\n{cls.log_text()}")
            present = set(admin.list_topics(timeout=10).topics)
            if wanted <= present:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"topics not created within 30 s, missing {sorted(wanted - present)}:\n{cls.log_text()}")
            time.sleep(0.2)

    @classmethod
    def tearDownClass(cls):
        if cls.service is not None and cls.service.poll() is None:
            cls.service.kill()
            cls.service.wait(10)
        if getattr(cls, "log", None):
            cls.log.close()
        if os.environ.get("KEEP") != "1":
            shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def topic(cls, t):
        return f"{cls.prefix}.{t}"

    @classmethod
    def log_text(cls, last=80):
        try:
            lines = cls.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-last:])

    def setUp(self):
        if self.setup_error:
            self.fail(self.setup_error)
        if self.service is None or self.service.poll() is not None:
            self.fail(f"surgeguard run is not running (exit {self.service and self.service.returncode}):\n{self.log_text()}")

    def run(self, result=None):
        # On a failure, show what the service logged.
        before = (len(result.failures), len(result.errors)) if result is not None else None
        out = super().run(result)
        if result is not None and before != (len(result.failures), len(result.errors)) and not self.setup_error:
            print(f"\n--- surgeguard run log ({self.log_path}), last lines ---\n{self.log_text()}\n--- end of log ---", flush=True)
        return out

    def test_9_stops_cleanly_on_sigterm(self):
        self.service.send_signal(signal.SIGTERM)
        try:
            code = self.service.wait(30)
        except subprocess.TimeoutExpired:
            self.fail(f"surgeguard run did not stop within 30 s of SIGTERM:\n{self.log_text()}")
        self.assertEqual(code, 0, f"surgeguard run exited with {code} on SIGTERM:\n{self.log_text()}")
        self.assertIn("stopped", self.log_text(5), "no final 'stopped' log line")


class KcatRequestsTest(PipelineMixin, unittest.TestCase):
    """Request events produced by kcat; decisions read back with kcat."""

    NAME = "kcat"

    def test_1_kcat_requests_get_the_right_decisions(self):
        free, pro = f"free-{self.prefix}", f"pro-{self.prefix}"
        lines = []
        # Free tier: 60 per minute, grace 10 per hour. 75 requests inside one minute (every 0.5 s).
        for i in range(75):
            lines.append((free, request(f"{free}-r{i}", free, "free", i * 0.5)))
        # Pro: 600 per minute; 100 requests in the same minute are all allowed.
        for i in range(100):
            lines.append((pro, request(f"{pro}-r{i}", pro, "pro", i * 0.5)))
        # kcat keeps the order of its input; keys are user ids, so each user's requests land in
        # order on one partition.
        lines.sort(key=lambda kv: kv[1]["ts"])
        stdin = "".join(f"{k}:{json.dumps(v, separators=(',', ':'))}\n" for k, v in lines)
        kcat("-P", "-t", self.topic("requests"), "-K:", stdin=stdin)

        def decisions():
            out = kcat("-C", "-t", self.topic("decisions"), "-e", "-o", "beginning", "-J", "-q")
            recs = [json.loads(line) for line in out.splitlines() if line.strip()]
            return recs if len(recs) >= len(lines) else None

        recs = wait_for(f"{len(lines)} decisions on {self.topic('decisions')}", decisions, timeout=45, every=1)
        self.assertEqual(len(recs), len(lines), "one decision per request, no more")

        by_user = defaultdict(list)
        ids = Counter()
        for r in recs:
            d = json.loads(r["payload"])
            self.assertEqual(r["key"], d["user_id"], f"decision keyed by user_id: {r}")
            for field in ("request_id", "ts", "user_id", "tier", "request_type", "decision", "limit", "remaining", "reset_s", "policy", "severity"):
                self.assertIn(field, d, f"decision lacks {field}: {d}")
            self.assertIsInstance(d["limit"], int)
            self.assertIsInstance(d["remaining"], int)
            self.assertIsInstance(d["reset_s"], int)
            self.assertTrue(0 <= d["remaining"] <= d["limit"], d)
            self.assertTrue(0 <= d["reset_s"] <= 70, f"reset_s beyond window + one sub-bucket: {d}")
            self.assertEqual(d["severity"], "normal", d)
            by_user[d["user_id"]].append((r["partition"], r["offset"], d))
            ids[d["request_id"]] += 1
        self.assertEqual(set(ids), {v["id"] for _, v in lines}, "every request decided")
        self.assertEqual(max(ids.values()), 1, "no request decided twice")
        self.assertEqual(set(by_user), {free, pro})

        free_ds = [d for _, _, d in sorted(by_user[free], key=lambda x: x[:2])]
        self.assertEqual(len({p for p, _, _ in by_user[free]}), 1, "one user's decisions share a partition")
        counts = Counter(d["decision"] for d in free_ds)
        self.assertEqual(counts, Counter({"allow": 60, "allow_with_grace": 10, "throttle": 5}), f"free user: {counts}")
        # In order: 60 allowed, then 10 graced, then 5 throttled (the requests' own order).
        self.assertEqual([d["request_id"] for d in free_ds], [f"{free}-r{i}" for i in range(75)], "decisions in request order")
        self.assertEqual([d["decision"] for d in free_ds], ["allow"] * 60 + ["allow_with_grace"] * 10 + ["throttle"] * 5)
        self.assertEqual([d["remaining"] for d in free_ds[:60]], list(range(59, -1, -1)), "remaining counts down")
        for d in free_ds:
            self.assertEqual((d["tier"], d["request_type"], d["limit"], d["policy"]), ("free", "standard", 60, "60;w=60"), d)
            if d["decision"] == "throttle":
                self.assertEqual(d.get("strategy"), {"delay": {"seconds": 1}}, d)
            else:
                self.assertNotIn("strategy", d, d)

        pro_ds = [d for _, _, d in by_user[pro]]
        self.assertEqual(Counter(d["decision"] for d in pro_ds), Counter({"allow": 100}))
        for d in pro_ds:
            self.assertEqual((d["tier"], d["limit"], d["policy"]), ("pro", 600, "600;w=60"), d)
        self.assertEqual(min(d["remaining"] for d in pro_ds), 500)


class ConfluentProducerTest(PipelineMixin, unittest.TestCase):
    """Telemetry and outcomes produced with confluent-kafka; limits, breaker states and alerts
    read back with confluent-kafka, and the compacted limits topic with kcat."""

    NAME = "pyclient"
    scenario = None

    @classmethod
    def run_scenario(cls):
        """Telemetry at cpu 0.95, then four server errors from ai_primary. Done once per class:
        the kcat test reads what this left on the limits topic."""
        if cls.scenario is not None:
            return cls.scenario
        s = cls.scenario = {}
        produce(cls.topic("telemetry"), [("host-1", {
            "ts": ts(0), "source": "host-1", "cpu": 0.95, "memory": 0.5,
            "db_connections_in_use": 10, "db_connections_max": 200,
        })])

        def critical_limit(msgs):
            return any(m.key() == b"pro/standard" and json.loads(m.value())["severity"] == "critical" for m in msgs)

        s["limits_after_telemetry"] = read(cls.topic("limits"), critical_limit, timeout=30)
        # Only now the outcomes: they are on another topic, and the order matters for the limits.
        produce(cls.topic("outcomes"), [("ai_primary", {
            "ts": ts(1 + i), "dependency": "ai_primary", "ok": False, "error": "server_error",
            "latency_ms": 250, "request_id": f"req-{i}",
        }) for i in range(4)])
        s["breakers"] = read(cls.topic("breakers"), lambda msgs: any(json.loads(m.value())["state"] == "open" for m in msgs), timeout=30)
        s["alerts"] = read(cls.topic("alerts"), lambda msgs: len(msgs) >= 1, timeout=30)
        s["limits"] = read(cls.topic("limits"), lambda msgs: any(json.loads(m.value())["multipliers"]["api"] == 0.5 for m in msgs), timeout=30)
        return s

    def test_1_limits_follow_telemetry(self):
        s = self.run_scenario()
        msgs = s["limits_after_telemetry"]
        keys = [m.key().decode() for m in msgs]
        vals = values(msgs)
        all_keys = {f"{t}/{r}" for t in TIERS for r in REQUEST_TYPES}
        # The first event makes surgeguard publish every limit, reason "initial", first.
        initial = vals[: len(all_keys)]
        self.assertEqual({v["key"] for v in initial}, all_keys, f"initial limits first: {keys}")
        self.assertTrue(all(v["reason"] == "initial" and v["severity"] == "normal" for v in initial), initial)
        for k, v in zip(keys, vals):
            self.assertEqual(k, v["key"], "limits keyed by tier/request_type")
        pro0 = next(v for v in initial if v["key"] == "pro/standard")
        self.assertEqual((pro0["baseline_rpm"], pro0["adjusted_rpm"]), (600, 600), pro0)

        crit = [v for v in vals[len(all_keys):] if v["key"] == "pro/standard"]
        self.assertEqual(len(crit), 1, f"one update for pro/standard after the telemetry: {crit}")
        u = crit[0]
        self.assertEqual(u["adjusted_rpm"], 180, f"600 × 0.3: {u}")
        self.assertEqual(u["severity"], "critical", u)
        self.assertEqual(u["multipliers"]["resource"], 0.3, u)
        self.assertEqual(u["multipliers"]["db"], 1.0, u)
        self.assertEqual(u["ts"], "2026-11-30T09:00:00.000Z", u)
        self.assertNotEqual(u["reason"], "initial")
        # The severity changed, so every key was published again.
        self.assertEqual({v["key"] for v in vals[len(all_keys):]}, all_keys)

    def test_2_breaker_opens_with_fallback_and_alert(self):
        s = self.run_scenario()
        states = [(m.key().decode(), json.loads(m.value())) for m in s["breakers"]]
        for k, v in states:
            self.assertEqual(k, v["dependency"], "breakers keyed by dependency")
        opened = [v for k, v in states if k == "ai_primary" and v["state"] == "open"]
        self.assertEqual(len(opened), 1, f"ai_primary opens once: {states}")
        b = opened[0]
        self.assertEqual((b["dependency"], b["state"], b["previous"]), ("ai_primary", "open", "closed"), b)
        self.assertEqual(b["fallback"][0], {"kind": "alternative", "dependency": "ai_secondary"}, b)
        self.assertEqual(b["failure_weight"], 10.0, b)
        self.assertEqual(b["calls"], 4, b)
        self.assertEqual(b["ts"], ts(4), "tripped by the fourth outcome")
        self.assertIn("retry_at", b)

        alerts = [(m.key().decode(), json.loads(m.value())) for m in s["alerts"]]
        tripped = [v for k, v in alerts if v["rule"] == "breaker_tripped"]
        self.assertEqual(len(tripped), 1, f"alerts: {alerts}")
        self.assertTrue(all(k == v["rule"] for k, v in alerts), "alerts keyed by rule")
        a = tripped[0]
        self.assertEqual(a["severity"], "high", a)
        self.assertIn("ai_primary", a["title"], a)
        self.assertIn("ai_secondary", a["suggested_action"], a)

        # The open breaker halves the api multiplier: pro/standard 600 × 0.3 × 0.5 = 90, clamped
        # to minimum_guaranteed 100.
        last = [v for v in values(s["limits"]) if v["key"] == "pro/standard"][-1]
        self.assertEqual((last["adjusted_rpm"], last["multipliers"]["api"], last["severity"]), (100, 0.5, "critical"), last)

    def test_3_kcat_reads_the_compacted_limits_topic(self):
        self.run_scenario()
        admin = AdminClient({"bootstrap.servers": brokers()})
        res = ConfigResource(ConfigResource.Type.TOPIC, self.topic("limits"))
        conf = admin.describe_configs([res])[res].result(timeout=10)
        self.assertEqual(conf["cleanup.policy"].value, "compact")

        out = kcat("-C", "-t", self.topic("limits"), "-e", "-o", "beginning", "-q", "-f", "%k\\t%s\\n")
        latest = {}
        for line in out.splitlines():
            key, _, value = line.partition("\t")
            v = json.loads(value)  # a valid JSON value
            self.assertEqual(key, v["key"], line)
            self.assertIn("/", key)
            latest[key] = v
        self.assertEqual(set(latest), {f"{t}/{r}" for t in TIERS for r in REQUEST_TYPES})
        self.assertEqual(latest["pro/standard"]["adjusted_rpm"], 100, latest["pro/standard"])
        self.assertEqual(latest["free/standard"]["adjusted_rpm"], 10, "free: 60 × 0.3 × 0.5 = 9, clamped to 10")


class PoisonInputTest(PipelineMixin, unittest.TestCase):
    """1000 malformed messages among 1000 good ones, produced with confluent-kafka."""

    NAME = "poison"

    def test_1_malformed_input_goes_to_the_dlq_and_good_input_is_decided_once(self):
        good, bad = [], []
        for i in range(1000):
            user = f"user-{i % 50}"
            good.append((user, request(f"good-{i}", user, ["free", "pro", "enterprise"][i % 3], i * 0.05)))
        kinds = ["invalid_json", "negative_cost", "bad_ts", "cpu"]
        for i in range(1000):
            kind = kinds[i % 4]
            key = f"bad-{kind}-{i}"
            if kind == "invalid_json":
                bad.append(("requests", key, f'{{"id":"bad-{i}","ts":', "invalid_json"))
            elif kind == "negative_cost":
                bad.append(("requests", key, json.dumps(request(f"bad-{i}", key, "pro", i * 0.05, cost=-1)), "invalid_field"))
            elif kind == "bad_ts":
                v = request(f"bad-{i}", key, "pro", 0)
                v["ts"] = "30/11/2026 09:00"
                bad.append(("requests", key, json.dumps(v), "invalid_timestamp"))
            else:
                bad.append(("telemetry", key, json.dumps({
                    "ts": ts(i * 0.05), "source": key, "cpu": 1.5, "memory": 0.4,
                    "db_connections_in_use": 5, "db_connections_max": 200,
                }), "invalid_field"))

        # Interleave: one bad after each good one, each going to its own topic.
        reqs, tel = [], []
        for g, b in zip(good, bad):
            reqs.append(("good", g[0], g[1]))
            (reqs if b[0] == "requests" else tel).append((b[0], b[1], b[2]))
        placed_req = produce(self.topic("requests"), [(k, v) for _, k, v in reqs])
        placed_tel = produce(self.topic("telemetry"), [(k, v) for _, k, v in tel])
        where = {}
        for (kind, k, v), p in zip(reqs, placed_req):
            if kind != "good":
                where[k] = (self.topic("requests"), p)
        for (_, k, v), p in zip(tel, placed_tel):
            where[k] = (self.topic("telemetry"), p)
        bad_by_key = {k: (v, exc) for _, k, v, exc in bad}
        self.assertEqual(len(where), 1000)

        dlq = read(self.topic("dlq"), lambda msgs: len(msgs) >= 1000, timeout=60)
        self.assertEqual(len(dlq), 1000, f"{len(dlq)} of 1000 malformed messages on the DLQ")
        seen = Counter()
        for m in dlq:
            key = m.key().decode()
            self.assertIn(key, bad_by_key, f"DLQ record with an unknown key {key!r}")
            seen[key] += 1
            value, exc = bad_by_key[key]
            self.assertEqual(m.value(), value.encode(), f"original value kept for {key}")
            headers = {}
            for name, hv in m.headers() or []:
                headers[name] = hv.decode() if hv is not None else None
            for h in ("exception", "message", "topic", "partition", "offset"):
                self.assertIn(f"__streams.errors.{h}", headers, f"{key}: headers {headers}")
            topic, (partition, offset) = where[key]
            self.assertEqual(headers["__streams.errors.exception"], exc, f"{key}: {headers}")
            self.assertTrue(headers["__streams.errors.message"], headers)
            self.assertEqual(headers["__streams.errors.topic"], topic, headers)
            self.assertEqual(headers["__streams.errors.partition"], str(partition), headers)
            self.assertEqual(headers["__streams.errors.offset"], str(offset), headers)
            if key.startswith("bad-cpu"):
                self.assertIn("cpu", headers["__streams.errors.message"], headers)
            if key.startswith("bad-negative_cost"):
                self.assertIn("cost", headers["__streams.errors.message"], headers)
        self.assertEqual(set(seen), set(bad_by_key), "every malformed message dead-lettered")
        self.assertEqual(max(seen.values()), 1, "each dead-lettered once")

        good_ids = {v["id"] for _, v in good}
        decided = read(self.topic("decisions"), lambda msgs: len(msgs) >= 1000, timeout=60)
        ids = Counter(json.loads(m.value())["request_id"] for m in decided)
        self.assertEqual(set(ids), good_ids, f"missing {sorted(good_ids - set(ids))[:5]}, extra {sorted(set(ids) - good_ids)[:5]}")
        dup = [i for i, n in ids.items() if n > 1]
        self.assertEqual(dup, [], "decided more than once")
        for m in decided:
            self.assertEqual(m.key().decode(), json.loads(m.value())["user_id"])


if __name__ == "__main__":
    unittest.main()
