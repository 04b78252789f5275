//! The `herald token` and `herald publish` subcommands, for trials, tests and scripts, and
//! the HTTP request every API-calling subcommand makes.

use std::process::ExitCode;

use bytes::Bytes;
use herald_proto::Subjects;

use crate::auth::{now_secs, sign_with, Claims, SignOptions};
use crate::bus::nats::NatsBus;
use crate::bus::Bus;
use crate::config::{PublishArgs, TokenArgs};
use crate::http::api::{publish_message, PublishBody};

/// Print a signed JWT for `--user`.
pub fn token(args: TokenArgs) -> ExitCode {
    if !herald_proto::is_valid_id(&args.user) {
        eprintln!("herald token: --user must be 1 to 128 bytes of A-Z a-z 0-9 _ - =");
        return ExitCode::from(2);
    }
    let pem = match args.jwt_private_key.as_ref().map(std::fs::read).transpose() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("herald token: reading --jwt-private-key: {e}");
            return ExitCode::from(2);
        }
    };
    let secret = match crate::config::secret_from(
        args.jwt_secret,
        args.jwt_secret_file.as_deref(),
        "--jwt-secret",
        "--jwt-secret-file",
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("herald token: {e}");
            return ExitCode::from(2);
        }
    };
    let now = now_secs();
    let claims = Claims {
        sub: args.user,
        exp: now + args.ttl.as_secs(),
        device: args.device,
        topics: (!args.topics.is_empty()).then_some(args.topics),
        iat: Some(now),
        // An id of its own, so this one token can be revoked (`herald revoke --jti`).
        jti: Some(uuid::Uuid::new_v4().to_string()),
    };
    let options = SignOptions {
        kid: args.kid.as_deref(),
        audience: args.audience.as_deref(),
        issuer: args.issuer.as_deref(),
        not_before: args.not_before.map(|d| now + d.as_secs()),
    };
    let secret = secret.as_ref().map(|s| s.expose());
    match sign_with(&claims, &options, secret, pem.as_deref()) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("herald token: {e}");
            ExitCode::from(2)
        }
    }
}

/// What a publish printed: the id, the cursor when asked for, and with `--await` the
/// receipt (None at the timeout).
struct Published {
    id: String,
    cursor: Option<String>,
    receipt: Option<Option<serde_json::Value>>,
}

/// Exit code of `herald publish --await` when no receipt came within the timeout.
const NO_RECEIPT: u8 = 3;

/// Publish one message through NATS or the HTTP API.
pub fn publish(args: PublishArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("herald publish: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(publish_async(args)) {
        Ok(p) => {
            // The id; the cursor on a second line when asked for; then the receipt.
            println!("{}", p.id);
            if let Some(c) = p.cursor {
                println!("{c}");
            }
            match p.receipt {
                None => ExitCode::SUCCESS,
                Some(Some(r)) => {
                    println!("{r}");
                    ExitCode::SUCCESS
                }
                Some(None) => {
                    println!("null");
                    eprintln!("herald publish: no matching receipt within the timeout");
                    ExitCode::from(NO_RECEIPT)
                }
            }
        }
        Err(e) => {
            eprintln!("herald publish: {e}");
            ExitCode::from(1)
        }
    }
}

async fn publish_async(args: PublishArgs) -> Result<Published, String> {
    let data = match serde_json::from_str::<Box<serde_json::value::RawValue>>(&args.data) {
        Ok(raw) => raw,
        Err(_) => serde_json::value::to_raw_value(&args.data).map_err(|e| e.to_string())?,
    };
    let awaiting = args
        .await_status
        .as_ref()
        .map(|status| crate::http::api::AwaitBody {
            status: Some(status.clone()).filter(|s| !s.is_empty()),
            device: args.await_device.clone(),
            timeout_ms: Some(args.timeout.as_millis() as u64),
        });
    if let Some(a) = &awaiting {
        if args.user.is_none() {
            return Err("--await applies to --user messages only".into());
        }
        a.check(crate::receipts::MAX_AWAIT)?;
    }
    let body = PublishBody {
        user: args.user,
        broadcast: args.broadcast,
        topic: args.topic,
        event: args.event,
        data: Some(data),
        id: args.id,
        device: args.device,
        await_receipt: awaiting.clone(),
    };
    if let Some(base) = args.http {
        let api_key = crate::config::secret_from(
            args.api_key,
            args.api_key_file.as_deref(),
            "--api-key",
            "--api-key-file",
        )?;
        let mut p = publish_http(&base, api_key.as_ref().map(|k| k.expose()), &body).await?;
        // The cursor is printed when asked for (`--durable`), as over NATS: scripts that
        // read one line (the id) keep working where the hub keeps messages by default.
        if !args.durable {
            p.cursor = None;
        }
        return Ok(p);
    }
    if args.nats_url.is_empty() {
        return Err("give --nats-url (HERALD_NATS_URL) or --http URL".into());
    }
    let subjects = Subjects::new(args.subject_prefix);
    let (id, msg) = publish_message(body, &subjects)?;
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    // Services' reply subjects (`_INBOX`): a JetStream publish's ack reaches this client
    // with service credentials too.
    let options = crate::bus::nats::NatsOptions {
        creds: args.nats_creds.clone(),
        inbox_prefix: None,
        tls: args.nats_tls.files(),
    };
    let bus = NatsBus::connect_with(&args.nats_url, "herald-cli", &options, metrics)
        .await
        .map_err(|e| e.to_string())?;
    if !bus.is_connected() {
        let why = if bus.credentials_refused() {
            "NATS refused the credentials"
        } else {
            "NATS is not reachable"
        };
        return Err(format!(
            "{why} ({})",
            crate::bus::nats::redact_urls(&args.nats_url)
        ));
    }
    // Subscribed before publishing, so the receipt cannot come too early.
    let receipts = match (&awaiting, subjects.user_of(&msg.subject)) {
        (Some(a), Some(user)) => {
            let sub = bus
                .subscribe(subjects.receipts(user), None)
                .await
                .map_err(|e| format!("subscribing to the user's receipts: {e}"))?;
            Some((sub, a.check(crate::receipts::MAX_AWAIT)?))
        }
        _ => None,
    };
    let cursor = if args.durable && subjects.user_of(&msg.subject).is_some() {
        let cursor = crate::store::jetstream::publish_once(
            bus.client(),
            &subjects,
            msg.subject,
            &msg.headers,
            msg.payload,
        )
        .await
        .map_err(|e| e.to_string())?;
        Some(cursor)
    } else {
        bus.publish(msg).await.map_err(|e| e.to_string())?;
        bus.flush().await;
        None
    };
    let receipt = match receipts {
        None => None,
        Some((mut sub, (wanted, timeout))) => Some(
            tokio::time::timeout(timeout, async {
                use futures_util::StreamExt;
                while let Some(m) = sub.next().await {
                    let Ok(r) = serde_json::from_slice::<herald_proto::events::Receipt>(&m.payload)
                    else {
                        continue;
                    };
                    if r.id == id && wanted.matches(&r) {
                        return serde_json::to_value(&r).ok();
                    }
                }
                None
            })
            .await
            .ok()
            .flatten(),
        ),
    };
    Ok(Published {
        id,
        cursor,
        receipt,
    })
}

/// A minimal HTTP/1.1 request to herald's API over a plain TCP connection: the CLI talks
/// to a herald on the same network and needs no TLS stack for that. Returns the status
/// and the body.
pub(crate) async fn api_request(
    base: &str,
    api_key: Option<&str>,
    method: &str,
    path: &str,
    payload: &[u8],
) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = base
        .strip_prefix("http://")
        .ok_or("--http takes an http:// URL (use a TLS-terminating proxy's plain address)")?;
    let host = rest.split('/').next().unwrap_or(rest);
    let auth = api_key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        payload.len()
    );
    let mut stream = tokio::net::TcpStream::connect(host)
        .await
        .map_err(|e| format!("connecting to {host}: {e}"))?;
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    stream.write_all(payload).await.map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("not an HTTP answer")?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

async fn publish_http(
    base: &str,
    api_key: Option<&str>,
    body: &PublishBody,
) -> Result<Published, String> {
    let json = serde_json::json!({
        "user": body.user, "broadcast": body.broadcast, "topic": body.topic, "event": body.event,
        "data": body.data, "id": body.id, "device": body.device, "await": body.await_receipt,
    });
    let mut obj = json.as_object().cloned().unwrap_or_default();
    obj.retain(|_, v| !v.is_null() && *v != serde_json::Value::Bool(false));
    let payload = serde_json::to_vec(&obj).map_err(|e| e.to_string())?;
    let (status, body_text) =
        api_request(base, api_key, "POST", "/api/v1/publish", &payload).await?;
    if status != 202 && status != 200 {
        return Err(format!("HTTP {status}: {}", body_text.trim()));
    }
    let v: serde_json::Value =
        serde_json::from_slice(Bytes::copy_from_slice(body_text.as_bytes()).as_ref())
            .map_err(|e| e.to_string())?;
    Ok(Published {
        id: v["id"].as_str().unwrap_or_default().to_string(),
        cursor: v["cursor"].as_str().map(str::to_string),
        receipt: body
            .await_receipt
            .as_ref()
            .map(|_| Some(v["receipt"].clone()).filter(|r| !r.is_null())),
    })
}
