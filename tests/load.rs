//! The load generator runs every scenario end to end (tiny sizes: this checks that it
//! works and reports, not how fast anything is). The loader is the `herald-load` member
//! of the workspace.

mod common;

use common::*;
use serde_json::Value;

/// The loader is its own workspace member (`loader/`), so Cargo sets no
/// `CARGO_BIN_EXE_herald-load` here: it is taken from beside the herald binary, where
/// `cargo test --workspace` (or `cargo build -p herald-load`) puts it.
fn loader_bin() -> std::path::PathBuf {
    let herald = std::path::Path::new(env!("CARGO_BIN_EXE_herald"));
    let bin = herald
        .with_file_name("herald-load")
        .with_extension(std::env::consts::EXE_EXTENSION);
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p herald-load` (same profile and target \
         directory as this test), or run `cargo test --workspace`",
        bin.display()
    );
    bin
}

async fn load(hub: &Hub, nats: &Nats, args: &[&str]) -> Value {
    let hub_addr = format!("127.0.0.1:{}", hub.port);
    let pid = hub.pid().to_string();
    let nats_url = nats.url();
    let mut all = vec![
        "--hub",
        &hub_addr,
        "--nats-url",
        &nats_url,
        "--jwt-secret",
        SECRET,
        "--herald-pid",
        &pid,
    ];
    all.extend_from_slice(args);
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::process::Command::new(loader_bin())
            .args(&all)
            .output(),
    )
    .await
    .expect("herald-load finished in time")
    .expect("herald-load runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = stdout.lines().last().expect("a JSON line");
    serde_json::from_str(json).expect("the last line is JSON")
}

#[tokio::test]
async fn every_scenario_runs_and_reports() {
    let nats = Nats::start().await;
    let hub = Hub::secured(&["--nats-url", &nats.url()]).await;
    let idle = load(
        &hub,
        &nats,
        &["idle", "--connections", "50", "--hold", "100ms"],
    )
    .await;
    assert_eq!(idle["scenario"], "idle");
    assert_eq!(idle["held"], 50);
    assert_eq!(idle["failures"], 0);
    assert!(idle["herald_rss_per_conn_kib"].is_number(), "{idle}");
    let b = load(
        &hub,
        &nats,
        &[
            "broadcast",
            "--connections",
            "30",
            "--messages",
            "5",
            "--rate",
            "50",
        ],
    )
    .await;
    assert_eq!(b["deliveries"], 150);
    assert_eq!(b["complete"], true);
    assert!(b["latency_p99_ms"].is_number());
    let a = load(
        &hub,
        &nats,
        &[
            "addressed",
            "--users",
            "30",
            "--rate",
            "200",
            "--duration",
            "1s",
        ],
    )
    .await;
    assert_eq!(a["lost"], 0, "{a}");
    assert_eq!(a["sent"], a["delivered"]);
    let s = load(&hub, &nats, &["storm", "--connections", "100"]).await;
    assert_eq!(s["welcomed"], 100);
    assert!(s["all_welcomed_s"].is_number());
}

#[tokio::test]
async fn soak_churns_connections_and_counts_every_message() {
    let nats = Nats::start().await;
    let hub = Hub::secured(&["--nats-url", &nats.url()]).await;
    let soak = load(
        &hub,
        &nats,
        &[
            "soak",
            "--connections",
            "40",
            "--duration",
            "3s",
            "--interval",
            "1s",
            "--churn-percent",
            "300",
            "--grace",
            "300ms",
            "--rate",
            "100",
            "--broadcast-rate",
            "4",
        ],
    )
    .await;
    assert_eq!(soak["lost"], 0, "{soak}");
    assert_eq!(soak["unexpected_closes"], 0, "{soak}");
    assert!(soak["churned"].as_u64().unwrap() >= 3, "{soak}");
    assert!(
        soak["expected_deliveries"].as_u64().unwrap() > 300,
        "{soak}"
    );
    let intervals = soak["intervals"].as_array().expect("intervals");
    assert_eq!(intervals.len(), 3, "{soak}");
    assert!(intervals[0]["server_rss_kib"].is_number(), "{soak}");
}

#[tokio::test]
async fn sse_sessions_are_loaded_like_websocket_ones() {
    let nats = Nats::start().await;
    let hub = Hub::secured(&["--nats-url", &nats.url()]).await;
    let idle = load(
        &hub,
        &nats,
        &[
            "--transport",
            "sse",
            "idle",
            "--connections",
            "30",
            "--hold",
            "100ms",
        ],
    )
    .await;
    assert_eq!(idle["held"], 30, "{idle}");
    assert_eq!(idle["welcomed"], 30, "{idle}");
    let b = load(
        &hub,
        &nats,
        &[
            "--transport",
            "sse",
            "broadcast",
            "--connections",
            "20",
            "--messages",
            "5",
            "--rate",
            "50",
        ],
    )
    .await;
    assert_eq!(b["deliveries"], 100, "{b}");
    let a = load(
        &hub,
        &nats,
        &[
            "--transport",
            "sse",
            "addressed",
            "--users",
            "20",
            "--rate",
            "200",
            "--duration",
            "1s",
        ],
    )
    .await;
    assert_eq!(a["lost"], 0, "{a}");
    assert_eq!(a["sent"], a["delivered"]);
}
