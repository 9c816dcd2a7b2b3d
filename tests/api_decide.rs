//! The API's per-user and admin endpoints on the mock cluster, with two instances in one group:
//! `POST /v1/decide` answers from the limiter the stream uses (and the stream sees its counts),
//! only the owner of a user's partition answers (421 elsewhere, naming the partition librdkafka's
//! producer puts the user in), `GET /v1/users/{id}` with RateLimit fields, the admin endpoints
//! with their token, published as events every instance applies, and bad input refused (a body
//! not typed `application/json` with 415). The connection limits: a half-open connection closed
//! after the header timeout, and connections beyond the cap waiting for a slot.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use surgeguard::api::listener::{HEADER_TIMEOUT, Limits};
use surgeguard::config::Config;
use surgeguard::kafka::topics;

struct Http {
    agent: ureq::Agent,
    base: String,
}

/// Status, headers we look at, body.
struct Reply {
    status: u16,
    ct: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
    /// Asserts an application/problem+json answer with `status`.
    fn problem(&self, status: u16) -> Value {
        assert_eq!((self.status, self.ct.as_str()), (status, "application/problem+json"), "{}", self.body);
        let v = self.json();
        assert_eq!(v["status"], status, "{v}");
        v
    }
}

impl Http {
    fn new(addr: &str) -> Self {
        Http { agent: ureq::Agent::config_builder().http_status_as_error(false).build().into(), base: format!("http://{addr}") }
    }

    fn reply(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>, what: &str) -> Reply {
        let mut r = r.unwrap_or_else(|e| panic!("{what}: {e}"));
        let headers = r.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect();
        let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let body = r.body_mut().read_to_string().unwrap_or_default();
        Reply { status: r.status().as_u16(), ct, headers, body }
    }

    fn get(&self, path: &str) -> Reply {
        Self::reply(self.agent.get(format!("{}{path}", self.base)).call(), path)
    }

    fn post(&self, path: &str, body: &str, token: Option<&str>) -> Reply {
        self.post_as(path, body, token, Some("application/json"))
    }

    /// A POST with `content_type` (none: no Content-Type).
    fn post_as(&self, path: &str, body: &str, token: Option<&str>, content_type: Option<&str>) -> Reply {
        let mut rq = self.agent.post(format!("{}{path}", self.base));
        if let Some(ct) = content_type {
            rq = rq.header("content-type", ct);
        }
        if let Some(t) = token {
            rq = rq.header("authorization", format!("Bearer {t}"));
        }
        Self::reply(rq.send(body), path)
    }

    fn put(&self, path: &str, body: &str, token: &str) -> Reply {
        self.put_as(path, body, token, Some("application/json"))
    }

    fn put_as(&self, path: &str, body: &str, token: &str, content_type: Option<&str>) -> Reply {
        let mut rq = self.agent.put(format!("{}{path}", self.base)).header("authorization", format!("Bearer {token}")).header("x-actor", "test-operator");
        if let Some(ct) = content_type {
            rq = rq.header("content-type", ct);
        }
        Self::reply(rq.send(body), path)
    }

    /// `method` on `path` with an empty body and no token.
    fn any(&self, method: &str, path: &str) -> Reply {
        let url = format!("{}{path}", self.base);
        let r = match method {
            "get" => self.agent.get(url).call(),
            "delete" => self.agent.delete(url).call(),
            "post" => self.agent.post(url).send(""),
            "put" => self.agent.put(url).send(""),
            "patch" => self.agent.patch(url).send(""),
            other => panic!("method {other}"),
        };
        Self::reply(r, path)
    }

    fn delete(&self, path: &str, token: &str) -> Reply {
        Self::reply(self.agent.delete(format!("{}{path}", self.base)).header("authorization", format!("Bearer {token}")).call(), path)
    }

    /// Polls `path` until `ok` holds for its JSON (200), for up to 30 s.
    fn wait_for(&self, path: &str, ok: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_up_to(path, Duration::from_secs(30), ok)
    }

    fn wait_for_up_to(&self, path: &str, limit: Duration, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let r = self.get(path);
            if r.status == 200 && ok(&r.json()) {
                return r.json();
            }
            assert!(Instant::now() < deadline, "GET {path}: {} {}", r.status, r.body);
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// The start of a request head, never finished.
const PARTIAL_HEAD: &[u8] = b"POST /v1/decide HTTP/1.1\r\nHost: x\r\n";

/// Reads `s` until the server closes it (EOF or reset); an error if it is still open at `deadline`.
fn closed_by(s: &mut TcpStream, deadline: Instant) -> Result<(), String> {
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("still open".into());
        }
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match s.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe) => return Ok(()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return Err("still open".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Sends `GET /ok` on `s` and reads the answer (`ok`); whether it came within `within`.
fn answered(s: &mut TcpStream, within: Duration) -> bool {
    if s.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n").is_err() {
        return false;
    }
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"\r\n\r\nok") {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// `serve_router` on a free port with `limits`, `GET /ok` its only route; its address, the
/// sender that stops it, and its task.
async fn serve_ok(limits: Limits) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<std::io::Result<()>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let app = axum::Router::new().route("/ok", axum::routing::get(|| async { "ok" }));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(surgeguard::api::server::serve_router(listener, app, limits, async {
        stopped.await.ok();
    }));
    (addr, stop, task)
}

/// Stops a server of `serve_ok`; it must stop within 10 s.
async fn stop_ok(stop: tokio::sync::oneshot::Sender<()>, task: tokio::task::JoinHandle<std::io::Result<()>>) {
    stop.send(()).ok();
    tokio::time::timeout(Duration::from_secs(10), task).await.expect("stopped within 10 s").expect("server task").expect("served");
}

/// Clients that open a connection and send part of a request head, or nothing, are disconnected
/// once the header timeout has passed, not before; a kept-alive connection idle after its
/// response too; a good request meanwhile is served. (The service's own timeout, 10 s, is
/// checked in `decide_users_and_admin_on_two_instances`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_are_closed_after_the_header_timeout() {
    let timeout = Duration::from_secs(1);
    let (addr, stop, task) = serve_ok(Limits { header_timeout: timeout, ..Limits::default() }).await;
    let checks = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let mut conns = Vec::new();
        for i in 0..320 {
            let opened = Instant::now();
            let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {i}: {e}"))?;
            // 300 with part of a head, 20 with nothing at all.
            if i < 300 {
                s.write_all(PARTIAL_HEAD).map_err(|e| format!("write {i}: {e}"))?;
            }
            conns.push((opened, s));
        }
        let opened = Instant::now();
        let mut good = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        if !answered(&mut good, Duration::from_secs(5)) {
            return Err("a good request among the half-open connections was not answered".into());
        }
        conns.push((opened, good));
        let deadline = Instant::now() + timeout + Duration::from_secs(10);
        for (i, (opened, s)) in conns.iter_mut().enumerate() {
            closed_by(s, deadline).map_err(|e| format!("connection {i}: {e} {:?} after it was opened", opened.elapsed()))?;
            let after = opened.elapsed();
            if after < timeout {
                return Err(format!("connection {i} closed after {after:?}, before the header timeout"));
            }
        }
        Ok(())
    })
    .await;
    stop_ok(stop, task).await;
    checks.expect("checks").unwrap_or_else(|e| panic!("{e}"));
}

/// At the cap, a new connection waits in the kernel's queue, unanswered, until a served one
/// closes; then it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_a_slot() {
    let (addr, stop, task) = serve_ok(Limits { header_timeout: Duration::from_secs(30), max_connections: 2 }).await;
    let checks = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let mut a = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        let mut b = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        if !(answered(&mut a, Duration::from_secs(5)) && answered(&mut b, Duration::from_secs(5))) {
            return Err("the first two connections were not served".into());
        }
        // (The connect itself succeeds: the kernel completes it, the server does not accept it.)
        let mut c = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        c.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n").map_err(|e| e.to_string())?;
        c.set_read_timeout(Some(Duration::from_millis(500))).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        match c.read(&mut buf) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Ok(n) => return Err(format!("a third connection was answered or closed at the cap of two: {:?}", String::from_utf8_lossy(&buf[..n]))),
            Err(e) => return Err(e.to_string()),
        }
        drop(a);
        // Its request, sent already, is answered once a slot frees.
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !got.ends_with(b"\r\n\r\nok") {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("the waiting connection was not served once a slot freed: {:?}", String::from_utf8_lossy(&got)));
            }
            c.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
            match c.read(&mut buf) {
                Ok(0) => return Err("closed".into()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        drop((b, c));
        Ok(())
    })
    .await;
    stop_ok(stop, task).await;
    checks.expect("checks").unwrap_or_else(|e| panic!("{e}"));
}

fn request(id: &str, user: &str, ts: &str) -> String {
    json!({"id": id, "ts": ts, "user_id": user, "tier": "free", "request_type": "standard"}).to_string()
}

fn now_rfc3339() -> String {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_millis() as i64;
    surgeguard::wire::time::Millis(ms).to_string()
}

/// `RateLimit: "free/standard";r=12;t=30` → (r, t).
fn ratelimit(v: &str) -> (u64, u64) {
    let field = |name: &str| v.split(';').find_map(|p| p.trim().strip_prefix(name)).and_then(|x| x.parse().ok()).unwrap_or_else(|| panic!("{name} in {v}"));
    (field("r="), field("t="))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decide_users_and_admin_on_two_instances() {
    let token_env = format!("SG_TEST_ADMIN_TOKEN_{}", std::process::id());
    // SAFETY: set before this test starts any thread of its own (librdkafka's come with the
    // cluster below); the variable's name is this process's alone.
    unsafe { std::env::set_var(&token_env, "s3cret-token") };
    let cluster = MockCluster::new(1).expect("mock cluster");
    let brokers = cluster.bootstrap_servers();
    let mut base = Config::default();
    base.kafka.create_topics = false;
    base.kafka.group_id = "api-decide".into();
    base.kafka.wall_clock_after_idle_ms = 0;
    base.kafka.commit_interval_ms = 200;
    base.kafka.partitions.requests = 2;
    // Co-partitioned, as created by default: a user's decisions go to their requests partition.
    base.kafka.partitions.decisions = 2;
    base.api.max_body_bytes = 1024;
    for spec in topics::specs(&base) {
        cluster.create_topic(&spec.name, spec.partitions, 1).expect("create topic");
    }
    // As many partitions as the requests topic: where a producer puts each user.
    cluster.create_topic("placement-probe", 2, 1).expect("create topic");
    // Instance A has the admin token; instance B names a variable that is not set (admin off).
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = base.clone();
    a.api.listen = format!("127.0.0.1:{port_a}");
    a.api.admin_token_env = token_env.clone();
    let mut b = base.clone();
    b.api.listen = format!("127.0.0.1:{port_b}");
    b.api.admin_token_env = format!("{token_env}_UNSET");
    let mut stops = Vec::new();
    let mut services = Vec::new();
    for cfg in [a, b] {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (cfg, brokers) = (Arc::new(cfg), brokers.clone());
        services.push(tokio::spawn(async move {
            surgeguard::apps::run::run(cfg, &brokers, async {
                stopped.await.ok();
            })
            .await
        }));
        stops.push(stop);
    }
    let cfg = Arc::new(base);

    // Where librdkafka's default partitioner puts two users (what the API must agree with).
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().expect("producer");
    let mut placed = Vec::new();
    for user in (0..40).map(|i| format!("user-{i}")) {
        let delivery = producer
            .send(FutureRecord::to("placement-probe").key(&user).payload("x"), Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .expect("placement probe");
        placed.push((user, delivery.partition));
    }

    let placed_at = placed.clone();
    let http_cfg = cfg.clone();
    let checks = tokio::task::spawn_blocking(move || -> Result<String, String> {
        let cfg = http_cfg;
        let (ha, hb) = (Http::new(&format!("127.0.0.1:{port_a}")), Http::new(&format!("127.0.0.1:{port_b}")));
        // Both ready, the two partitions split between them.
        // (Two members joining together: the mock cluster's coordinator once took over 30 s to
        // settle the group.)
        let owned = |h: &Http| {
            h.wait_for_up_to("/v1/assignment", Duration::from_secs(120), |v| v["ready"] == true && v["owned"].as_array().is_some_and(|o| o.len() == 1))["owned"]
                [0]
            .as_i64()
            .expect("a partition")
        };
        let (pa, pb) = (owned(&ha), owned(&hb));
        assert_ne!(pa, pb, "each owns one partition");
        // A client that never finishes its request head is disconnected after HEADER_TIMEOUT
        // (checked at the end; a stop with it still open would also wait for it).
        let half_open = Instant::now();
        let mut stalled = TcpStream::connect(format!("127.0.0.1:{port_a}")).map_err(|e| e.to_string())?;
        stalled.write_all(PARTIAL_HEAD).map_err(|e| e.to_string())?;
        // Every route of the router answers each of its documented methods with a documented
        // status (not the unknown-path 404), and refuses every other method with 405.
        let doc: Value = ha.get("/openapi.json").json();
        for (path, methods) in surgeguard::api::server::ROUTES {
            let concrete = path
                .replace("{tier}", "free")
                .replace("{request_type}", "standard")
                .replace("{dependency}", "ai_primary")
                .replace("{action}", "reset")
                .replace("{user_id}", "someone");
            for method in ["get", "post", "put", "delete", "patch"] {
                let r = ha.any(method, &concrete);
                if methods.contains(&method) {
                    let documented = doc["paths"][*path][method]["responses"].as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
                    // (421: the other instance owns `someone`.)
                    assert!(documented.contains(&r.status.to_string()), "{method} {concrete}: {} not among {documented:?}: {}", r.status, r.body);
                    assert!(!r.body.contains("no such endpoint"), "{method} {concrete}: {}", r.body);
                } else {
                    r.problem(405);
                }
            }
        }
        let assignment = ha.get("/v1/assignment").json();
        assert_eq!((assignment["partitions"].as_i64(), assignment["partitioner"].as_str()), (Some(2), Some("consistent_random")), "{assignment}");

        // Each user answers at the owner of the partition the producer chose, 421 elsewhere.
        let mut users = [None, None];
        for (user, p) in &placed {
            let (owner, other) = if i64::from(*p) == pa { (&ha, &hb) } else { (&hb, &ha) };
            let r = owner.get(&format!("/v1/users/{user}"));
            assert_eq!(r.status, 200, "{user} at the owner of partition {p}: {}", r.body);
            assert_eq!(r.json()["partition"], *p, "{}", r.body);
            let m = other.get(&format!("/v1/users/{user}")).problem(421);
            assert_eq!(m["partition"], *p, "{m}");
            users[usize::from(i64::from(*p) == pb)].get_or_insert(user.clone());
        }
        let user = users[0].clone().ok_or("no user in A's partition")?;

        // A fresh user: full quota, the IETF fields per request type.
        let r = ha.get(&format!("/v1/users/{user}?tier=free&request_type=standard"));
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("ratelimit-policy"), Some("\"free/standard\";q=60;w=60"), "{:?}", r.headers);
        assert_eq!(ratelimit(r.header("ratelimit").ok_or("no RateLimit")?).0, 60);
        let all = ha.get(&format!("/v1/users/{user}?tier=free"));
        assert_eq!(all.json()["quotas"].as_array().map(Vec::len), Some(3), "{}", all.body);
        assert_eq!(all.header("ratelimit-policy").map(|p| p.matches(";q=").count()), Some(3));
        ha.get(&format!("/v1/users/{user}?request_type=teleport")).problem(404);
        ha.get(&format!("/v1/users/{user}?tier=a&tier=b")).problem(400);

        // Decide until throttled: 60 allowed, 10 on grace, then 429 with Retry-After.
        let ts = now_rfc3339();
        let mut seen = std::collections::BTreeMap::<String, u32>::new();
        let mut last_remaining = u64::MAX;
        let mut bodies = Vec::new();
        for i in 0..75 {
            let r = ha.post("/v1/decide", &request(&format!("http-{i}"), &user, &ts), None);
            assert_eq!(r.header("idempotent-replayed"), None);
            bodies.push(r.body.clone());
            let d = r.json();
            *seen.entry(d["decision"].as_str().unwrap_or("?").to_string()).or_default() += 1;
            let (remaining, _) = ratelimit(r.header("ratelimit").ok_or("no RateLimit")?);
            assert_eq!(remaining, d["remaining"].as_u64().unwrap_or(u64::MAX), "{}", r.body);
            assert!(remaining <= last_remaining, "remaining never grows within the window");
            last_remaining = remaining;
            match d["decision"].as_str() {
                Some("throttle") => {
                    assert_eq!(r.status, 429, "{}", r.body);
                    let after: u64 = r.header("retry-after").and_then(|v| v.parse().ok()).ok_or("Retry-After")?;
                    assert!(after >= 1, "{after}");
                }
                _ => assert_eq!(r.status, 200, "{}", r.body),
            }
        }
        let expect: std::collections::BTreeMap<String, u32> = [("allow".into(), 60), ("allow_with_grace".into(), 10), ("throttle".into(), 5)].into();
        assert_eq!(seen, expect);
        // Sent again (a client's retry): the first answer again, not counted, not published again.
        for (i, status) in [(3, 200), (74, 429)] {
            let again = ha.post("/v1/decide", &request(&format!("http-{i}"), &user, &now_rfc3339()), None);
            assert_eq!((again.status, again.header("idempotent-replayed")), (status, Some("true")), "{}", again.body);
            assert_eq!(again.body, bodies[i], "the first decision, as it was");
        }
        // The same id for another request is refused.
        let reused = json!({"id": "http-3", "ts": ts, "user_id": user, "tier": "free", "request_type": "standard", "cost": 5}).to_string();
        let p = ha.post("/v1/decide", &reused, None).problem(422);
        assert!(p["detail"].as_str().unwrap_or("").contains("http-3"), "{p}");
        // A request stamped 10 minutes off the stream's event time is refused, either way; one
        // without a ts is decided at its receive time.
        let now = surgeguard::wire::time::Millis::parse_rfc3339(&ts).map_err(|e| e.to_string())?;
        for off_min in [10, -10] {
            let off = now.plus_ms(off_min * 60_000).to_string();
            let p = ha.post("/v1/decide", &request(&format!("skewed{off_min}"), &user, &off), None).problem(422);
            assert!(p["detail"].as_str().unwrap_or("").contains("api.max_clock_skew_s"), "{p}");
            assert!(p["stream_time"].is_string(), "{p}");
        }
        let untimed = json!({"id": "untimed", "user_id": user, "tier": "free", "request_type": "standard"}).to_string();
        let r = ha.post("/v1/decide", &untimed, None);
        assert_eq!((r.status, r.json()["decision"].as_str()), (429, Some("throttle")), "{}", r.body);
        let metrics = ha.get("/metrics").body;
        assert!(metrics.lines().any(|l| l == "surgeguard_api_decisions_replayed_total 2"), "{metrics}");
        // The other instance does not decide for this user.
        hb.post("/v1/decide", &request("http-x", &user, &ts), None).problem(421);
        let q = ha.get(&format!("/v1/users/{user}?tier=free&request_type=standard")).json();
        assert_eq!(q["quotas"][0]["remaining"], 0, "{q}");

        // Bad input.
        ha.post("/v1/decide", "{not json", None).problem(400);
        let p = ha.post("/v1/decide", &json!({"id": "x", "ts": ts, "tier": "free", "request_type": "standard"}).to_string(), None).problem(400);
        assert!(p["detail"].as_str().unwrap_or("").contains("user_id"), "{p}");
        ha.post("/v1/decide", &"x".repeat(2000), None).problem(413);
        ha.get("/v1/decide").problem(405);
        // Only a body that says it is JSON: what a web page on another origin cannot send
        // without a CORS preflight (which the API does not answer).
        let typed = request("typed", &user, &ts);
        for ct in [Some("text/plain"), None, Some("application/x-www-form-urlencoded"), Some("multipart/form-data; boundary=x"), Some("application/jsonp")] {
            let p = ha.post_as("/v1/decide", &typed, None, ct).problem(415);
            assert!(p["detail"].as_str().unwrap_or("").contains("application/json"), "{ct:?}: {p}");
        }
        let r = ha.post_as("/v1/decide", &typed, None, Some("Application/JSON; charset=utf-8"));
        assert_eq!((r.status, r.json()["decision"].as_str()), (429, Some("throttle")), "decided (the user is out of quota): {}", r.body);

        // Admin: token checks, unknown names, then actions every instance applies.
        let r = ha.post("/v1/admin/breakers/ai_primary/force_open", "", None);
        r.problem(401);
        assert!(r.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")), "{:?}", r.headers);
        ha.post("/v1/admin/breakers/ai_primary/force_open", "", Some("wrong")).problem(403);
        let off = hb.post("/v1/admin/breakers/ai_primary/force_open", "", Some("s3cret-token")).problem(403);
        assert!(off["detail"].as_str().unwrap_or("").contains("off"), "{off}");
        ha.post("/v1/admin/breakers/nonesuch/force_open", "", Some("s3cret-token")).problem(404);
        ha.post("/v1/admin/breakers/ai_primary/explode", "", Some("s3cret-token")).problem(404);
        let r = ha.post("/v1/admin/breakers/ai_primary/force_open", "", Some("s3cret-token"));
        assert_eq!(r.status, 202, "{}", r.body);
        assert_eq!((r.json()["event"]["action"].as_str(), r.json()["topic"].as_str()), (Some("force_open"), Some(cfg.topics.admin.as_str())), "{}", r.body);
        for h in [&ha, &hb] {
            h.wait_for("/v1/breakers/ai_primary", |b| b["state"] == "forced_open");
        }
        for ct in [Some("text/plain"), None] {
            ha.put_as("/v1/admin/limits/free/standard/override", r#"{"rpm": 5, "ttl_s": 600}"#, "s3cret-token", ct).problem(415);
        }
        let r = ha.put("/v1/admin/limits/free/standard/override", r#"{"rpm": 5, "ttl_s": 600}"#, "s3cret-token");
        assert_eq!(r.status, 202, "{}", r.body);
        ha.put("/v1/admin/limits/free/standard/override", r#"{"rpm": 0, "ttl_s": 600}"#, "s3cret-token").problem(400);
        ha.put("/v1/admin/limits/free/standard/override", r#"{"rpm": "many"}"#, "s3cret-token").problem(400);
        ha.put("/v1/admin/limits/gold/standard/override", r#"{"rpm": 5, "ttl_s": 600}"#, "s3cret-token").problem(404);
        for h in [&ha, &hb] {
            let l = h.wait_for("/v1/limits/free/standard", |l| l["adjusted_rpm"] == 5);
            assert!(l["reason"].as_str().unwrap_or("").contains("admin override"), "{l}");
        }
        // The override applies to the next decisions (a fresh user of B's partition).
        let other = users[1].clone().ok_or("no user in B's partition")?;
        let ts = now_rfc3339();
        let allowed = (0..8).filter(|i| hb.post("/v1/decide", &request(&format!("o-{i}"), &other, &ts), None).json()["decision"] == "allow").count();
        assert_eq!(allowed, 5);
        let r = ha.delete("/v1/admin/limits/free/standard/override", "s3cret-token");
        assert_eq!(r.status, 202, "{}", r.body);
        for h in [&ha, &hb] {
            h.wait_for("/v1/limits/free/standard", |l| l["adjusted_rpm"] != 5);
        }
        closed_by(&mut stalled, half_open + HEADER_TIMEOUT + Duration::from_secs(10)).map_err(|e| format!("a half-open connection: {e}"))?;
        assert!(half_open.elapsed() >= HEADER_TIMEOUT, "a half-open connection closed after {:?}", half_open.elapsed());
        Ok(user)
    })
    .await;
    let user = match &checks {
        Ok(Ok(user)) => user.clone(),
        _ => String::new(),
    };
    // The stream decides from the same state: the user's next streamed request is throttled.
    if !user.is_empty() {
        let value = request("stream-after", &user, &now_rfc3339());
        producer.send(FutureRecord::to(&cfg.topics.requests).key(&user).payload(&value), Duration::from_secs(10)).await.map_err(|(e, _)| e).expect("produced");
    }

    // The API's decisions are on the decisions topic, with the stream's.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "api-decide-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[cfg.topics.decisions.as_str()]).expect("subscribe");
    let mut http_ids = std::collections::BTreeMap::<String, usize>::new();
    let mut streamed = None;
    // Which decisions partitions each user's decisions went to.
    let mut user_partitions = std::collections::BTreeMap::<String, std::collections::BTreeSet<i32>>::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while (http_ids.len() < 75 || streamed.is_none()) && Instant::now() < deadline {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
            let v: Value = serde_json::from_slice(m.payload().unwrap_or(b"{}")).unwrap_or_default();
            user_partitions.entry(v["user_id"].as_str().unwrap_or_default().to_string()).or_default().insert(m.partition());
            match v["request_id"].as_str() {
                Some(id) if id.starts_with("http-") => {
                    *http_ids.entry(id.to_string()).or_default() += 1;
                }
                Some("stream-after") => streamed = v["decision"].as_str().map(str::to_string),
                _ => {}
            }
        }
    }

    // The consumer lag of the partition the streamed request went to, from librdkafka's
    // statistics (every 5 s; known once the partition has a position).
    let requests_topic = cfg.topics.requests.clone();
    let lag_seen = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let deadline = Instant::now() + Duration::from_secs(20);
        let prefix = "surgeguard_consumer_lag_messages{partition=\"";
        loop {
            let m = [port_a, port_b]
                .iter()
                .filter_map(|p| agent.get(format!("http://127.0.0.1:{p}/metrics")).call().ok().and_then(|mut r| r.body_mut().read_to_string().ok()))
                .collect::<String>();
            if m.lines().any(|l| l.starts_with(prefix) && l.contains(&format!("topic=\"{requests_topic}\""))) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(m);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    })
    .await
    .expect("lag check");

    for stop in stops {
        stop.send(()).ok();
    }
    for s in services {
        let stopped = tokio::time::timeout(Duration::from_secs(60), s).await;
        stopped.expect("stopped within 60 s").expect("service task").expect("service stopped cleanly");
    }
    // SAFETY: the services have stopped; nothing reads the environment now.
    unsafe { std::env::remove_var(&token_env) };
    match checks {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("{e}"),
        Err(e) => panic!("checks: {e}"),
    }
    assert_eq!(http_ids.len(), 75, "every API decision published");
    assert!(http_ids.values().all(|&n| n == 1), "an API decision published twice: {http_ids:?}");
    assert_eq!(streamed.as_deref(), Some("throttle"), "the stream counts the API's decisions");
    // Streamed and API decisions alike go to the user's requests partition number.
    let split: Vec<_> = user_partitions.iter().filter(|(_, ps)| ps.len() > 1).collect();
    assert!(split.is_empty(), "a user's decisions in more than one partition: {split:?}");
    if !user.is_empty() {
        let p = placed_at.iter().find(|(u, _)| *u == user).map(|(_, p)| *p);
        assert_eq!(user_partitions.get(&user).and_then(|ps| ps.first().copied()), p, "{user}'s decisions are not in their requests partition");
    }
    if let Err(m) = lag_seen {
        panic!("no consumer lag in /metrics:\n{m}");
    }
}
