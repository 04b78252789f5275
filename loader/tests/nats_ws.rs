//! `--proto nats-ws` against a real nats-server with a `websocket` listener: every scenario
//! that applies runs at a tiny size and reports what it should (this checks that the NATS
//! client side works, not how fast anything is). The server binary is
//! `HERALD_TEST_NATS_SERVER`, else Debian's `/usr/sbin/nats-server`, else `nats-server` on
//! PATH, as for the hub's tests.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn nats_server_bin() -> String {
    if let Ok(p) = std::env::var("HERALD_TEST_NATS_SERVER") {
        return p;
    }
    for p in ["/usr/sbin/nats-server", "/usr/bin/nats-server"] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    "nats-server".into()
}

/// A nats-server with a client port and a WebSocket listener (no TLS); killed on drop.
struct NatsWs {
    child: Child,
    port: u16,
    ws_port: u16,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl NatsWs {
    fn start() -> NatsWs {
        let (port, ws_port) = (free_port(), free_port());
        let dir =
            std::env::temp_dir().join(format!("herald-load-nats-ws-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let conf = dir.join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: \"127.0.0.1:{port}\"\nwebsocket {{ listen: \"127.0.0.1:{ws_port}\", no_tls: true }}\n"
            ),
        )
        .expect("config written");
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts (install it or set HERALD_TEST_NATS_SERVER)");
        let deadline = Instant::now() + Duration::from_secs(10);
        for p in [port, ws_port] {
            while std::net::TcpStream::connect(("127.0.0.1", p)).is_err() {
                assert!(Instant::now() < deadline, "nats-server listens on {p}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        NatsWs {
            child,
            port,
            ws_port,
            _dir: TempDir(dir),
        }
    }

    fn load(&self, args: &[&str]) -> Value {
        let hub = format!("127.0.0.1:{}", self.ws_port);
        let nats = format!("nats://127.0.0.1:{}", self.port);
        let pid = self.child.id().to_string();
        let out = Command::new(env!("CARGO_BIN_EXE_herald-load"))
            .args([
                "--proto",
                "nats-ws",
                "--hub",
                &hub,
                "--nats-url",
                &nats,
                "--server-pid",
                &pid,
                "--timeout",
                "10s",
            ])
            .args(args)
            .output()
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
}

impl Drop for NatsWs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn every_scenario_runs_against_nats_server_websocket() {
    let nats = NatsWs::start();
    let idle = nats.load(&["idle", "--connections", "50", "--hold", "100ms"]);
    assert_eq!(idle["held"], 50, "{idle}");
    assert_eq!(idle["welcomed"], 50, "{idle}");
    assert!(idle["server_rss_per_conn_kib"].is_number(), "{idle}");
    assert!(idle.get("herald_rss_per_conn_kib").is_none(), "{idle}");

    let b = nats.load(&[
        "broadcast",
        "--connections",
        "30",
        "--messages",
        "5",
        "--rate",
        "0",
    ]);
    assert_eq!(b["deliveries"], 150, "{b}");
    assert_eq!(b["complete"], true, "{b}");
    assert!(b["latency_p99_ms"].is_number(), "{b}");
    assert!(b["server_cpu_us_per_delivery"].is_number(), "{b}");

    let a = nats.load(&[
        "--sessions-per-user",
        "2",
        "addressed",
        "--users",
        "30",
        "--rate",
        "200",
        "--duration",
        "1s",
    ]);
    assert_eq!(a["lost"], 0, "{a}");
    assert_eq!(a["sent"], 200, "{a}");

    let s = nats.load(&["storm", "--connections", "100"]);
    assert_eq!(s["welcomed"], 100, "{s}");

    let soak = nats.load(&[
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
    ]);
    assert_eq!(soak["lost"], 0, "{soak}");
    assert!(soak["churned"].as_u64().unwrap() >= 3, "{soak}");
    assert!(
        soak["expected_deliveries"].as_u64().unwrap() > 300,
        "{soak}"
    );
    assert_eq!(soak["intervals"].as_array().unwrap().len(), 3, "{soak}");
}

#[test]
fn replay_is_refused_for_nats_ws() {
    let out = Command::new(env!("CARGO_BIN_EXE_herald-load"))
        .args(["--proto", "nats-ws", "replay"])
        .output()
        .expect("herald-load runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("durable mode"));
}
