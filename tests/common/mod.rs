//! Test harness: start herald processes and nats-server processes on free ports (killed
//! on drop), and drive real WebSocket clients and HTTP calls against them. Every wait has
//! a deadline so a hang fails the test instead of stalling the run.

#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret-0123456789";
pub const API_KEY: &str = "test-api-key";
/// Generous upper bound for one expected event.
pub const WAIT: Duration = Duration::from_secs(10);

/// Poll `url` until it answers `status`, or fail after `within` saying `what` was awaited.
pub async fn wait_for_status(url: &str, status: u16, within: Duration, what: &str) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(r) = reqwest::get(url).await {
            if r.status() == status {
                return;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A herald process.
pub struct Hub {
    child: Child,
    pub port: u16,
    pub args: Vec<String>,
}

impl Hub {
    /// Start herald with these extra flags on a free loopback port and wait until it is
    /// healthy.
    pub async fn start(extra: &[&str]) -> Hub {
        Self::start_on(free_port(), extra).await
    }

    pub async fn start_on(port: u16, extra: &[&str]) -> Hub {
        let listen = format!("127.0.0.1:{port}");
        let mut args: Vec<String> = vec!["serve".into(), "--listen".into(), listen];
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(&args)
            .env(
                "HERALD_LOG",
                std::env::var("HERALD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env_remove("HERALD_JWT_SECRET")
            .env_remove("HERALD_API_KEY")
            .env_remove("HERALD_NATS_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("herald starts");
        let hub = Hub { child, port, args };
        hub.wait_healthy().await;
        hub
    }

    /// A hub with the test JWT secret and API key.
    pub async fn secured(extra: &[&str]) -> Hub {
        let mut args = vec!["--jwt-secret", SECRET, "--api-key", API_KEY];
        args.extend_from_slice(extra);
        Hub::start(&args).await
    }

    pub async fn wait_healthy(&self) {
        let url = format!("{}/healthz", self.http());
        let what = format!("herald did not become healthy on port {}", self.port);
        wait_for_status(&url, 200, Duration::from_secs(20), &what).await;
    }

    /// Wait until /readyz answers `status`.
    pub async fn wait_ready(&self, status: u16) {
        let url = format!("{}/readyz", self.http());
        wait_for_status(
            &url,
            status,
            WAIT * 3,
            &format!("/readyz never answered {status}"),
        )
        .await;
    }

    pub fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn ws_url(&self, user: &str, query: &str) -> String {
        if query.is_empty() {
            format!("ws://127.0.0.1:{}/websocket/{user}", self.port)
        } else {
            format!("ws://127.0.0.1:{}/websocket/{user}?{query}", self.port)
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} failed");
    }

    /// Wait for the process to exit; returns its exit code.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "herald did not exit within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn publish(&self, body: Value) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(format!("{}/api/v1/publish", self.http()))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .expect("publish request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = reqwest::Client::new()
            .get(format!("{}{path}", self.http()))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("GET request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.http()))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// The value of one metric line (exact name with labels), 0 when absent.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }

    /// Poll until `cond` holds for a JSON GET, or fail after `within`.
    pub async fn wait_json(
        &self,
        path: &str,
        within: Duration,
        cond: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (_, v) = self.get_json(path).await;
            if cond(&v) {
                return v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{path} never matched; last: {v}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

pub fn token(user: &str, ttl_secs: i64, device: Option<&str>) -> String {
    token_with(SECRET, user, ttl_secs, device, None)
}

pub fn token_with(
    secret: &str,
    user: &str,
    ttl_secs: i64,
    device: Option<&str>,
    topics: Option<Vec<&str>>,
) -> String {
    let claims = herald::auth::Claims {
        sub: user.to_string(),
        exp: (herald::auth::now_secs() as i64 + ttl_secs) as u64,
        device: device.map(str::to_string),
        topics: topics.map(|t| t.into_iter().map(str::to_string).collect()),
    };
    herald::auth::sign(&claims, Some(secret), None).expect("token signs")
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Outcome of a handshake that did not upgrade.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

/// Open a WebSocket; `Err` carries the HTTP refusal.
pub async fn try_connect(url: &str, headers: &[(&str, &str)]) -> Result<Ws, Refused> {
    let mut req = url.into_client_request().expect("valid URL");
    for (k, v) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                .expect("header name"),
            v.parse().expect("header value"),
        );
    }
    let res = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake timed out");
    match res {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(Refused {
            status: resp.status().as_u16(),
            body: resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        }),
        Err(e) => panic!("handshake failed: {e}"),
    }
}

/// Connect and read the welcome frame.
pub async fn connect(url: &str) -> (Ws, Value) {
    let mut ws = try_connect(url, &[])
        .await
        .unwrap_or_else(|r| panic!("refused: {r:?}"));
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (ws, welcome)
}

/// Next JSON text frame (pings are answered by the client library as it reads).
pub async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("timed out waiting for a frame")
            .expect("stream ended")
            .expect("websocket error");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON frame"),
            Message::Close(c) => panic!("closed while waiting for a frame: {c:?}"),
            _ => continue,
        }
    }
}

/// No text frame arrives within `quiet`.
pub async fn expect_silence(ws: &mut Ws, quiet: Duration) {
    let deadline = tokio::time::Instant::now() + quiet;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return,
            Ok(Some(Ok(Message::Text(t)))) => panic!("unexpected frame: {t}"),
            Ok(Some(Ok(_))) => continue,
            Ok(other) => panic!("unexpected end: {other:?}"),
        }
    }
}

/// Read until the close frame; returns its code (text frames before it are skipped).
pub async fn expect_close(ws: &mut Ws, within: Duration) -> u16 {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("no close within {within:?}"),
            Ok(Some(Ok(Message::Close(Some(frame))))) => return u16::from(frame.code),
            Ok(Some(Ok(Message::Close(None)))) => return u16::from(CloseCode::Status),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => panic!("error before close frame: {e}"),
            Ok(None) => panic!("stream ended without a close frame"),
        }
    }
}

/// Like [`expect_close`], but a connection that is already gone yields `None`.
pub async fn close_code_or_gone(ws: &mut Ws, within: Duration) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("connection neither closed nor gone within {within:?}"),
            Ok(Some(Ok(Message::Close(Some(frame))))) => return Some(u16::from(frame.code)),
            Ok(Some(Ok(Message::Close(None)))) => return Some(u16::from(CloseCode::Status)),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => return None,
        }
    }
}

/// Run the herald binary with `args` (e.g. `publish …`); asserts it succeeds and returns
/// its standard output.
pub async fn herald_cli(args: &[&str]) -> String {
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(args)
            .output(),
    )
    .await
    .expect("herald command finished in time")
    .expect("herald command runs");
    assert!(
        out.status.success(),
        "herald {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub async fn send_text(ws: &mut Ws, text: &str) {
    tokio::time::timeout(WAIT, ws.send(Message::text(text)))
        .await
        .expect("send timed out")
        .expect("send failed");
}

/// A nats-server process on a free port with monitoring enabled.
pub struct Nats {
    child: Child,
    pub port: u16,
    pub monitor_port: u16,
    pub cluster_port: u16,
    _dir: TempDir,
}

pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "herald-test-{tag}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The nats-server binary the tests start: `$HERALD_TEST_NATS_SERVER` when set (it must
/// exist; scripts/test.sh runs the NATS suites once with Debian's package and once with the
/// current release), else the first of the usual install paths, else `nats-server` on PATH.
pub fn nats_server_bin() -> String {
    if let Some(p) = std::env::var_os("HERALD_TEST_NATS_SERVER") {
        let path = std::path::Path::new(&p);
        assert!(
            path.is_file(),
            "HERALD_TEST_NATS_SERVER={} is not a file: point it at a nats-server binary \
             or unset it to use the installed one",
            path.display()
        );
        return path.to_string_lossy().into_owned();
    }
    for p in [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ] {
        if std::path::Path::new(p).exists() {
            return p.to_string();
        }
    }
    "nats-server".to_string()
}

impl Nats {
    pub async fn start() -> Nats {
        Self::start_with(free_port(), &[]).await
    }

    /// Start on `port`, joining a cluster through `routes` (cluster ports of peers).
    pub async fn start_with(port: u16, routes: &[u16]) -> Nats {
        let monitor_port = free_port();
        let cluster_port = free_port();
        Self::spawn(port, monitor_port, cluster_port, routes).await
    }

    pub async fn spawn(port: u16, monitor_port: u16, cluster_port: u16, routes: &[u16]) -> Nats {
        let dir = TempDir::new("nats");
        let mut args = vec![
            "-a".to_string(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-m".into(),
            monitor_port.to_string(),
            "--cluster_name".into(),
            "herald-test".into(),
            "--cluster".into(),
            format!("nats://127.0.0.1:{cluster_port}"),
        ];
        if !routes.is_empty() {
            let r: Vec<String> = routes
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            args.push("--routes".into());
            args.push(r.join(","));
        }
        let bin = nats_server_bin();
        let child = Command::new(&bin)
            .args(&args)
            .current_dir(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{bin} does not start ({e}): install the nats-server package")
            });
        let nats = Nats {
            child,
            port,
            monitor_port,
            cluster_port,
            _dir: dir,
        };
        nats.wait_up().await;
        nats
    }

    pub async fn wait_up(&self) {
        let url = format!("http://127.0.0.1:{}/healthz", self.monitor_port);
        wait_for_status(&url, 200, WAIT, "nats-server did not start").await;
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub async fn connz(&self) -> Value {
        reqwest::get(format!(
            "http://127.0.0.1:{}/connz?subs=1",
            self.monitor_port
        ))
        .await
        .expect("connz")
        .json()
        .await
        .expect("connz JSON")
    }

    /// Subscriptions held by the client connection named `name`.
    pub async fn subs_of(&self, name: &str) -> Vec<String> {
        let connz = self.connz().await;
        connz["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["name"] == name)
            .flat_map(|c| {
                c["subscriptions_list"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    }

    /// Poll the server until the pod's subscriptions satisfy `cond`.
    pub async fn wait_subs(&self, pod: &str, cond: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let subs = self.subs_of(pod).await;
            if cond(&subs) {
                return subs;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "subscriptions of {pod} never matched: {subs:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}
