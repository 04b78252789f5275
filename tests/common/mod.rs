//! Test harness: start herald processes and nats-server processes on free ports (killed
//! on drop), and drive real WebSocket clients and HTTP calls against them. Every wait has
//! a deadline so a hang fails the test instead of stalling the run.

#![allow(dead_code)]

pub mod haproxy;
pub mod kept;
pub mod sse;

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

/// Resident memory of a process in KiB, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

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

/// A loopback port nothing listens on, never handed out before in this test process: the
/// kernel may give the same free port to two tests running side by side, and then one
/// test's client talks to the other test's server.
pub fn free_port() -> u16 {
    static ISSUED: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut issued = ISSUED.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        if !issued.contains(&port) {
            issued.push(port);
            return port;
        }
    }
}

/// A herald process.
pub struct Hub {
    child: Child,
    pub port: u16,
    pub args: Vec<String>,
}

impl Hub {
    /// Start herald with these extra flags on a free loopback port and wait until it is
    /// healthy. If the port was taken in the meantime (herald exits at once), it tries
    /// another.
    pub async fn start(extra: &[&str]) -> Hub {
        for _ in 0..3 {
            let mut hub = Self::spawn(free_port(), extra);
            if hub.healthy_unless_exited().await {
                return hub;
            }
        }
        panic!("herald could not listen on three free ports in a row");
    }

    pub async fn start_on(port: u16, extra: &[&str]) -> Hub {
        let mut hub = Self::spawn(port, extra);
        assert!(
            hub.healthy_unless_exited().await,
            "herald exited at start on port {port}"
        );
        hub
    }

    /// Wait until /healthz answers 200 (true) or the process exits (false). A hub that
    /// answers while this process has exited is someone else's: false.
    async fn healthy_unless_exited(&mut self) -> bool {
        let url = format!("{}/healthz", self.http());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(r) = reqwest::get(&url).await {
                if r.status() == 200 {
                    return self.child.try_wait().ok().flatten().is_none();
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "herald did not become healthy on port {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn spawn(port: u16, extra: &[&str]) -> Hub {
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
        Hub { child, port, args }
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

    /// An API call with the test key: `method` on `path` with a JSON body.
    pub async fn api(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("HTTP method");
        let r = reqwest::Client::new()
            .request(method, format!("{}{path}", self.http()))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .expect("API request");
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
        iat: Some(herald::auth::now_secs()),
        jti: None,
    };
    herald::auth::sign(&claims, Some(secret), None).expect("token signs")
}

/// A token of the test secret with `iat` and `jti` as given (revocation tests).
pub fn token_marked(user: &str, ttl_secs: i64, iat: Option<u64>, jti: Option<&str>) -> String {
    let claims = herald::auth::Claims {
        sub: user.to_string(),
        exp: (herald::auth::now_secs() as i64 + ttl_secs) as u64,
        device: None,
        topics: None,
        iat,
        jti: jti.map(str::to_string),
    };
    herald::auth::sign(&claims, Some(SECRET), None).expect("token signs")
}

/// The `exp` claim of a JWT (read without verifying it).
pub fn token_exp(token: &str) -> u64 {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    let claims: Value = serde_json::from_slice(&bytes).expect("JSON claims");
    claims["exp"].as_u64().expect("numeric exp")
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

/// Send a `refresh` frame with `token` and return the next frame (its answer).
pub async fn refresh(ws: &mut Ws, token: &str) -> Value {
    let frame = serde_json::json!({"type": "refresh", "token": token});
    send_text(ws, &frame.to_string()).await;
    next_json(ws).await
}

/// The session still answers: a ping gets its pong.
pub async fn assert_alive(ws: &mut Ws) {
    send_text(ws, r#"{"type":"ping"}"#).await;
    let pong = next_json(ws).await;
    assert_eq!(pong["type"], "pong", "{pong}");
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
        let nats = Self::launch(port, monitor_port, cluster_port, args, dir);
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

// ---------------------------------------------------------------------------------------
// JetStream (durable mode): a single node with JetStream, a JetStream cluster, and
// connection helpers that never panic (for clients that reconnect through pod restarts).

impl Nats {
    /// A single nats-server with JetStream enabled (`-js`, file store inside its own temp
    /// dir) and no cluster, ready to take JetStream API requests.
    pub async fn start_js() -> Nats {
        let port = free_port();
        let monitor_port = free_port();
        let dir = TempDir::new("nats-js");
        let store = dir.0.join("js");
        let args = vec![
            "-a".to_string(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-m".into(),
            monitor_port.to_string(),
            "-js".into(),
            "-sd".into(),
            store.to_string_lossy().into_owned(),
        ];
        let nats = Self::launch(port, monitor_port, 0, args, dir);
        nats.wait_up().await;
        nats.wait_js(1).await;
        nats
    }

    /// Spawn nats-server with exactly these arguments; does not wait.
    fn launch(
        port: u16,
        monitor_port: u16,
        cluster_port: u16,
        args: Vec<String>,
        dir: TempDir,
    ) -> Nats {
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
        Nats {
            child,
            port,
            monitor_port,
            cluster_port,
            _dir: dir,
        }
    }

    /// The monitor's `/jsz` document (`Null` while it does not answer).
    pub async fn jsz(&self) -> Value {
        match reqwest::get(format!("http://127.0.0.1:{}/jsz", self.monitor_port)).await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    /// Wait until JetStream answers on this node: enabled, and (in a cluster of `size`)
    /// a meta leader known to it, with the cluster's full size.
    pub async fn wait_js(&self, size: usize) {
        let deadline = tokio::time::Instant::now() + WAIT * 2;
        loop {
            let jsz = self.jsz().await;
            let enabled = jsz["config"].is_object();
            let ready = enabled
                && (size <= 1 || {
                    let meta = &jsz["meta_cluster"];
                    meta["leader"].as_str().is_some_and(|l| !l.is_empty())
                        && meta["cluster_size"].as_u64() == Some(size as u64)
                });
            let healthy = ready
                && reqwest::get(format!("http://127.0.0.1:{}/healthz", self.monitor_port))
                    .await
                    .is_ok_and(|r| r.status() == 200);
            if healthy {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "JetStream never became ready on port {}: {jsz}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A test client connected to this node.
    pub async fn client(&self) -> async_nats::Client {
        tokio::time::timeout(WAIT, async_nats::connect(self.url()))
            .await
            .expect("NATS connect in time")
            .expect("test NATS client")
    }

    /// A JetStream context on a test client of this node.
    pub async fn js(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client().await)
    }
}

/// A JetStream cluster of nats-server nodes on loopback (`--server_name nX`, one store dir
/// each, full mesh of routes), ready when every node sees a meta leader and all peers.
pub struct NatsCluster {
    pub nodes: Vec<Nats>,
}

impl NatsCluster {
    pub async fn start(size: usize) -> NatsCluster {
        let ports: Vec<(u16, u16, u16)> = (0..size)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let mut nodes = Vec::new();
        for (i, &(port, monitor_port, cluster_port)) in ports.iter().enumerate() {
            let dir = TempDir::new(&format!("nats-js-n{}", i + 1));
            let store = dir.0.join("js");
            let routes: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| format!("nats://127.0.0.1:{}", p.2))
                .collect();
            let args = vec![
                "-a".to_string(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
                "-m".into(),
                monitor_port.to_string(),
                "--server_name".into(),
                format!("n{}", i + 1),
                "-js".into(),
                "-sd".into(),
                store.to_string_lossy().into_owned(),
                "--cluster_name".into(),
                "herald-js".into(),
                "--cluster".into(),
                format!("nats://127.0.0.1:{cluster_port}"),
                "--routes".into(),
                routes.join(","),
            ];
            // All nodes are spawned before any is awaited: JetStream needs a quorum.
            nodes.push(Nats::launch(port, monitor_port, cluster_port, args, dir));
        }
        for n in &nodes {
            n.wait_up().await;
        }
        let cluster = NatsCluster { nodes };
        cluster.wait_meta().await;
        cluster
    }

    /// Wait until every node is ready and agrees on one meta leader, which sees all its
    /// peers current.
    pub async fn wait_meta(&self) {
        let size = self.nodes.len();
        for n in &self.nodes {
            n.wait_js(size).await;
        }
        let deadline = tokio::time::Instant::now() + WAIT * 2;
        loop {
            let mut leaders = Vec::new();
            let mut leader_view = Value::Null;
            for (i, n) in self.nodes.iter().enumerate() {
                let meta = n.jsz().await["meta_cluster"].clone();
                let leader = meta["leader"].as_str().unwrap_or_default().to_string();
                if leader == format!("n{}", i + 1) {
                    leader_view = meta;
                }
                leaders.push(leader);
            }
            let agreed = !leaders[0].is_empty() && leaders.iter().all(|l| *l == leaders[0]);
            let replicas = leader_view["replicas"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if agreed && replicas.len() == size - 1 && replicas.iter().all(|r| r["current"] == true)
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "JetStream cluster never settled: leaders {leaders:?}, leader's view {leader_view}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every node's client URL, comma-separated, starting with node `first`.
    pub fn urls_from(&self, first: usize) -> String {
        let n = self.nodes.len();
        (0..n)
            .map(|k| self.nodes[(first + k) % n].url())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Open a WebSocket and read its welcome, never panicking: `Err` says why not (an HTTP
/// refusal, a refused TCP connection, a socket closed before the welcome, a timeout).
/// For clients that reconnect while pods restart.
pub async fn try_open(url: &str) -> Result<(Ws, Value), String> {
    let req = url.into_client_request().map_err(|e| e.to_string())?;
    let (mut ws, _) = match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req)).await
    {
        Err(_) => return Err("handshake timed out".into()),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
            return Err(format!("refused with {}", resp.status()))
        }
        Ok(Err(e)) => return Err(format!("handshake failed: {e}")),
        Ok(Ok(ws)) => ws,
    };
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Err(_) => return Err("no welcome in time".into()),
            Ok(None) => return Err("closed before the welcome".into()),
            Ok(Some(Err(e))) => return Err(format!("error before the welcome: {e}")),
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(t.as_str()).map_err(|e| e.to_string())?;
                if v["type"] != "welcome" {
                    return Err(format!("first frame is not a welcome: {v}"));
                }
                return Ok((ws, v));
            }
            Ok(Some(Ok(Message::Close(c)))) => {
                return Err(format!("closed before the welcome: {c:?}"))
            }
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// What reading a session yielded next, for clients that must survive closes.
#[derive(Debug)]
pub enum WsEvent {
    Frame(Value),
    /// A close frame with this code.
    Closed(u16),
    /// The connection ended without a close frame (reset, EOF, error).
    Gone(String),
    /// Nothing within the wait.
    Quiet,
}

/// The next text frame, close, or end of the connection, waiting at most `within`.
pub async fn next_event(ws: &mut Ws, within: Duration) -> WsEvent {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return WsEvent::Quiet,
            Ok(None) => return WsEvent::Gone("stream ended".into()),
            Ok(Some(Err(e))) => return WsEvent::Gone(e.to_string()),
            Ok(Some(Ok(Message::Text(t)))) => {
                return WsEvent::Frame(serde_json::from_str(t.as_str()).expect("JSON frame"))
            }
            Ok(Some(Ok(Message::Close(Some(f))))) => return WsEvent::Closed(u16::from(f.code)),
            Ok(Some(Ok(Message::Close(None)))) => {
                return WsEvent::Closed(u16::from(CloseCode::Status))
            }
            Ok(Some(Ok(_))) => continue,
        }
    }
}

/// A JetStream publish of `payload` with `Nats-Msg-Id: id`, retried with the same id (so
/// the stream keeps one copy) until it is acknowledged or `within` passes. Returns the
/// stored sequence and how many attempts failed.
pub async fn js_publish_retry(
    js: &async_nats::jetstream::Context,
    subject: &str,
    id: &str,
    payload: String,
    within: Duration,
) -> (u64, u32) {
    let deadline = tokio::time::Instant::now() + within;
    let mut failed = 0;
    loop {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id);
        let attempt = async {
            js.publish_with_headers(subject.to_string(), headers, payload.clone().into())
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())
        };
        let error = match tokio::time::timeout(WAIT, attempt).await {
            Ok(Ok(ack)) => return (ack.sequence, failed),
            Ok(Err(e)) => e,
            Err(_) => "no answer".to_string(),
        };
        failed += 1;
        assert!(
            tokio::time::Instant::now() < deadline,
            "JetStream publish of {id} never acknowledged; last error: {error}"
        );
        // Back off before the retry (the stream may be electing a leader).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A durable cursor's parts, `<epoch hex>-<sequence>`; panics on anything else.
pub fn cursor_parts(cursor: &str) -> (u64, u64) {
    let (epoch, seq) = cursor
        .split_once('-')
        .unwrap_or_else(|| panic!("not a cursor: {cursor:?}"));
    let epoch =
        u64::from_str_radix(epoch, 16).unwrap_or_else(|_| panic!("cursor epoch: {cursor:?}"));
    let seq = seq
        .parse()
        .unwrap_or_else(|_| panic!("cursor sequence: {cursor:?}"));
    (epoch, seq)
}

/// A TCP forwarder on a loopback port to `target`, which a test can cut (every connection
/// closed, the port refusing) and open again on the same port: a network partition between
/// a pod and its NATS server without stopping either.
pub struct TcpProxy {
    pub port: u16,
    target: u16,
    accept: Option<tokio::task::JoinHandle<()>>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl TcpProxy {
    pub async fn start(target: u16) -> TcpProxy {
        let mut proxy = TcpProxy {
            port: free_port(),
            target,
            accept: None,
            conns: Default::default(),
        };
        proxy.open().await;
        proxy
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Listen (again) and forward every new connection.
    pub async fn open(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("proxy port");
        let target = self.target;
        let conns = self.conns.clone();
        self.accept = Some(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns.lock().unwrap().push(conn);
            }
        }));
    }

    /// Close every forwarded connection and stop listening.
    pub fn cut(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        for conn in self.conns.lock().unwrap().drain(..) {
            conn.abort();
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

// ---------------------------------------------------------------------------------------
// NATS authorization: a nats-server started from a configuration file (the shipped
// k8s/nats/auth.conf included), and herald with its log captured.

/// The authorization block herald ships (k8s/nats/auth.conf), as it is in the repository.
pub fn shipped_nats_auth_conf() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("k8s/nats/auth.conf");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A random hex string, e.g. for a password (hex never reads as a number in nats.conf
/// unless it is all digits, which this never is: it starts with a letter).
pub fn random_hex(len: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let hex: String = (0..len.saturating_sub(1))
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap())
        .collect();
    format!("a{hex}")
}

impl Nats {
    /// A single nats-server with JetStream, started with `-c` from a configuration file:
    /// listen and monitoring addresses and a JetStream store in its temp dir, then
    /// `include ./<name>` for each of `files` (written next to the configuration), with
    /// `env` set in the server's environment (passwords the files read as `$VARIABLE`).
    pub async fn start_with_config(files: &[(&str, &str)], env: &[(&str, &str)]) -> Nats {
        Self::configured(files, env, true).await
    }

    /// Like [`Nats::start_with_config`], without JetStream (e.g. operator mode, whose
    /// accounts would need JetStream limits).
    pub async fn start_with_config_no_js(files: &[(&str, &str)]) -> Nats {
        Self::configured(files, &[], false).await
    }

    async fn configured(files: &[(&str, &str)], env: &[(&str, &str)], jetstream: bool) -> Nats {
        let port = free_port();
        let monitor_port = free_port();
        let dir = TempDir::new("nats-conf");
        let mut conf = format!("listen: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor_port}\n");
        if jetstream {
            conf.push_str(&format!(
                "jetstream {{\n  store_dir: \"{}\"\n}}\n",
                dir.0.join("js").display()
            ));
        }
        for (name, body) in files {
            std::fs::write(dir.0.join(name), body).expect("config file");
            conf.push_str(&format!("include ./{name}\n"));
        }
        let path = dir.0.join("nats.conf");
        std::fs::write(&path, conf).expect("nats.conf");
        let bin = nats_server_bin();
        let log = std::fs::File::create(dir.0.join("nats.log")).expect("nats log");
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&path)
            .envs(env.iter().copied())
            .current_dir(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{bin} does not start ({e}): install the nats-server package")
            });
        let nats = Nats {
            child,
            port,
            monitor_port,
            cluster_port: 0,
            _dir: dir,
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        let health = format!("http://127.0.0.1:{monitor_port}/healthz");
        loop {
            if reqwest::get(&health).await.is_ok_and(|r| r.status() == 200) {
                break;
            }
            let log = std::fs::read_to_string(nats._dir.0.join("nats.log")).unwrap_or_default();
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server did not start from its configuration: {log}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        if jetstream {
            nats.wait_js(1).await;
        }
        nats
    }

    /// This server's URL with user info, e.g. `nats://user:pass@127.0.0.1:PORT`.
    pub fn url_as(&self, userinfo: &str) -> String {
        format!("nats://{userinfo}@127.0.0.1:{}", self.port)
    }
}

impl Hub {
    /// Like [`Hub::start`], with herald's log at `level` (`HERALD_LOG`) written to `log`
    /// instead of the test's stderr, so the test can read what herald said.
    pub async fn start_logged(extra: &[&str], level: &str, log: &std::path::Path) -> Hub {
        let port = free_port();
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let file = std::fs::File::create(log).expect("herald log file");
        let child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(&args)
            .env("HERALD_LOG", level)
            .env_remove("HERALD_JWT_SECRET")
            .env_remove("HERALD_API_KEY")
            .env_remove("HERALD_NATS_URL")
            .env_remove("HERALD_NATS_CREDS")
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("herald starts");
        let hub = Hub { child, port, args };
        hub.wait_healthy().await;
        hub
    }
}

/// Make the pods on `prefix` know a pod named `pod` (a beacon in its name), so control
/// messages from it are acted on. It stays known for 4 s (`pods::POD_DEAD_AFTER`).
pub async fn introduce_pod(client: &async_nats::Client, prefix: &str, pod: &str) {
    let beacon = herald_proto::control::Control::Beacon {
        pod: pod.to_string(),
        started: herald::clock::wall_ms(),
        draining: false,
        connections: 0,
        users: 0,
    };
    client
        .publish(
            format!("{prefix}.ctl.all"),
            herald_proto::control::encode(&beacon).into(),
        )
        .await
        .expect("beacon published");
}
