//! HAProxy (Debian's package) in front of herald pods: `balance roundrobin`, WebSocket
//! passthrough, health checks on /readyz; stopped and its configuration removed on drop.

use std::process::{Child, Command, Stdio};

use super::{wait_for_status, TempDir, WAIT};

pub const HAPROXY: &str = "/usr/sbin/haproxy";

/// A running HAProxy and the directory of its configuration.
pub struct Haproxy(Child, #[allow(dead_code)] TempDir);

impl Haproxy {
    /// Start it on `port` with `pods` (ports) as its servers; fails the test when HAProxy
    /// is not installed (scripts/test.sh installs it).
    pub fn start(port: u16, pods: &[u16]) -> Haproxy {
        assert!(
            std::path::Path::new(HAPROXY).exists(),
            "{HAPROXY} is missing: scripts/test.sh installs Debian's haproxy"
        );
        let dir = TempDir::new("haproxy");
        let servers: String = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                format!("  server pod{i} 127.0.0.1:{p} check inter 300ms fall 2 rise 2\n")
            })
            .collect();
        let conf = format!(
            "global\n  maxconn 9000\n\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n  timeout tunnel 1h\n\nfrontend fe\n  bind 127.0.0.1:{port}\n  default_backend pods\n\nbackend pods\n  balance roundrobin\n  option httpchk GET /readyz\n{servers}"
        );
        let path = dir.0.join("haproxy.cfg");
        std::fs::write(&path, conf).expect("haproxy config");
        let child = Command::new(HAPROXY)
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy starts");
        Haproxy(child, dir)
    }

    /// Start it and wait until it answers /readyz through a ready pod.
    pub async fn start_ready(port: u16, pods: &[u16]) -> Haproxy {
        let lb = Haproxy::start(port, pods);
        wait_for_status(
            &format!("http://127.0.0.1:{port}/readyz"),
            200,
            WAIT,
            "haproxy in front of the pods",
        )
        .await;
        lb
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A random delay in `[0, max)` ms, from the clock: enough to spread clients' retries.
pub fn rand_ms(max: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    u64::from(nanos) % max.max(1)
}
