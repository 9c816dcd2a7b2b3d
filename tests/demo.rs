//! The embedded demo, as `surgeguard demo` runs it (mock cluster, the real `run` path, the
//! simulated backend): through the surge the protected run keeps its success rate at 99 % or
//! better, and the unprotected run collapses and does not recover, as the demo itself measures.

use surgeguard::apps::demo::{self, DemoOptions};
use surgeguard::config::Config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protection_keeps_the_surge_served_and_its_absence_collapses() {
    let opts = DemoOptions { seed: 7, speed: 0.0 };
    let without = demo::unprotected(&opts).await;
    // Any free port for the API (8480 may be taken on a developer's machine).
    let mut cfg = Config::default();
    cfg.api.listen = "127.0.0.1:0".into();
    let with = demo::protected(cfg, &opts, |_| {}).await.expect("protected run");
    let table = demo::table(&without, &with);
    assert_eq!(without.requests, with.requests, "both runs see the same demand\n{table}");
    assert!(with.success_rate() >= 0.99, "protected success {:.4}\n{table}", with.success_rate());
    assert!(with.recovered, "the protected run ends healthy\n{table}");
    assert!(without.success_rate() < 0.8, "unprotected success {:.4}\n{table}", without.success_rate());
    assert!(!without.recovered && without.timed_out > 0, "the unprotected run collapses\n{table}");
    assert!(with.breaker_trips > 0 && with.alerts > 0 && with.throttled > 0, "{table}");
}
