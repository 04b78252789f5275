//! NATS engine (async-nats). The connection carries the pod name; several URLs (a NATS
//! cluster) are accepted and the client fails over and reconnects forever.
//!
//! Subscriptions survive reconnects: the client re-sends them to whichever server it
//! reconnects to, so interest routing heals by itself after an outage. While
//! disconnected, `publish` fails fast instead of buffering, so a browser's upstream frame
//! is answered with an error rather than lost silently.
//!
//! Credentials: user and password or a token in the URLs (`nats://user:pass@host:4222`,
//! `nats://token@host:4222`; async-nats ignores URL user info, so they are taken out here
//! and passed as connect options), or a credentials file (JWT + NKey seed). A URL is only
//! ever shown with its user info redacted ([`redact_url`]).
//!
//! TLS: a `tls://` URL or the `--nats-tls-*` files make every connection TLS; one rustls
//! configuration serves the NATS client and the interest connection alike.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;

use super::creds::UserCredentials;
use super::interest::{self, Interest};
use super::tls::NatsTls;
use super::{Bus, BusError, BusMessage, Outbound, Subscription};
use crate::metrics::Metrics;

/// How long a subscribe waits for the server to confirm it (a PING round trip).
const SUBSCRIBE_CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);

/// Reply subjects of herald pods start with this instead of `_INBOX`, so NATS permissions
/// can keep herald's replies (JetStream reads, pod queries) away from services, which
/// subscribe to `_INBOX.>` for their own requests (k8s/nats/auth.conf).
pub const HERALD_INBOX_PREFIX: &str = "_INBOX_HERALD";

/// Credentials found in the user info of the NATS URLs.
#[derive(Clone, PartialEq, Eq)]
pub enum UrlCredentials {
    UserPassword { user: String, password: String },
    Token(String),
}

impl std::fmt::Debug for UrlCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UrlCredentials::UserPassword { user, .. } => {
                write!(f, "UserPassword {{ user: {user:?}, password: *** }}")
            }
            UrlCredentials::Token(_) => write!(f, "Token(***)"),
        }
    }
}

/// How a [`NatsBus`] connects, besides the URLs and the connection name.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// A NATS credentials file (JWT + NKey seed).
    pub creds: Option<PathBuf>,
    /// Prefix of this connection's reply subjects (default `_INBOX`).
    pub inbox_prefix: Option<String>,
    /// TLS roots and client certificate.
    pub tls: NatsTls,
}

/// `url` with its user info (user, password, token) replaced by `***`: the only form in
/// which a NATS URL may appear in logs and errors.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    // The last `@`, so a password with an unescaped `@` or `/` is hidden too.
    match rest.rfind('@') {
        Some(at) => format!("{scheme}***{}", &rest[at..]),
        None => url.to_string(),
    }
}

/// Every URL in `urls`, each shown redacted, comma-separated.
pub fn redact_urls(urls: &[String]) -> String {
    urls.iter()
        .map(|u| redact_url(u))
        .collect::<Vec<_>>()
        .join(",")
}

/// Parse the NATS URLs: the server addresses without user info, and the credentials the
/// URLs carried (one URL may carry them for all; URLs that carry different ones are an
/// error). Errors show the URLs redacted.
pub fn parse_urls(
    urls: &[String],
) -> Result<(Vec<async_nats::ServerAddr>, Option<UrlCredentials>), String> {
    let mut credentials: Option<UrlCredentials> = None;
    let mut addrs = Vec::with_capacity(urls.len());
    for u in urls {
        let shown = redact_url(u);
        let addr: async_nats::ServerAddr =
            u.parse().map_err(|e| format!("NATS URL {shown}: {e}"))?;
        let found = match (addr.username(), addr.password()) {
            (Some(user), Some(password)) => Some(UrlCredentials::UserPassword {
                user: crate::percent::decode(user),
                password: crate::percent::decode(password),
            }),
            (Some(token), None) => Some(UrlCredentials::Token(crate::percent::decode(token))),
            (None, Some(_)) => {
                return Err(format!(
                    "NATS URL {shown}: a password needs a user name (nats://user:pass@host)"
                ))
            }
            (None, None) => None,
        };
        if let Some(found) = found {
            match &credentials {
                Some(c) if *c != found => {
                    return Err(format!(
                        "NATS URL {shown}: the URLs carry different credentials; \
                         give the same ones in each, or in the first only"
                    ))
                }
                _ => credentials = Some(found),
            }
        }
        let mut url = addr.into_inner();
        let _ = url.set_username("");
        let _ = url.set_password(None);
        addrs.push(
            async_nats::ServerAddr::from_url(url).map_err(|e| format!("NATS URL {shown}: {e}"))?,
        );
    }
    Ok((addrs, credentials))
}

/// Whether a client error event is the server refusing the credentials.
fn is_auth_refusal(error: &async_nats::ClientError) -> bool {
    match error {
        async_nats::ClientError::Other(e) => {
            *e == async_nats::ConnectErrorKind::AuthorizationViolation.to_string()
                || *e == async_nats::ConnectErrorKind::Authentication.to_string()
        }
        _ => false,
    }
}

#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    /// herald's own connection for interest subscriptions.
    interest: Arc<Interest>,
    /// Its message stream, until the Subscriber takes it.
    interest_stream: Arc<std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<BusMessage>>>>,
    /// Connections made so far (1 after the first, +1 per reconnect).
    connections: Arc<AtomicU64>,
    /// The server refused the credentials since the last successful connection.
    refused: Arc<AtomicBool>,
}

impl NatsBus {
    /// Connect to any of `urls` without credentials besides those in the URLs, retrying
    /// until one answers.
    pub async fn connect(
        urls: &[String],
        name: &str,
        metrics: Arc<Metrics>,
    ) -> Result<NatsBus, BusError> {
        Self::connect_with(urls, name, &NatsOptions::default(), metrics).await
    }

    /// Connect to any of `urls`, retrying until one answers (a refusal of the credentials
    /// is retried too: the server's configuration may lag the Secret).
    pub async fn connect_with(
        urls: &[String],
        name: &str,
        nats: &NatsOptions,
        metrics: Arc<Metrics>,
    ) -> Result<NatsBus, BusError> {
        let (addrs, url_credentials) = parse_urls(urls).map_err(BusError::Other)?;
        if addrs.is_empty() {
            return Err(BusError::Other("no NATS URL".into()));
        }
        let tls_required = nats.tls.is_set() || addrs.iter().any(|a| a.tls_required());
        let tls = if nats.tls.is_set() {
            Some(nats.tls.client_config().map_err(BusError::Other)?)
        } else {
            None
        };
        let user_credentials = match &nats.creds {
            Some(path) => Some(Arc::new(
                UserCredentials::load(path).map_err(BusError::Other)?,
            )),
            None => None,
        };
        let interest_target = interest::Target {
            servers: addrs
                .iter()
                .map(|a| (a.host().to_string(), a.port()))
                .collect(),
            name: name.to_string(),
            credentials: url_credentials.clone(),
            user_credentials,
            tls_required,
            tls: tls.clone(),
        };
        let mut options = async_nats::ConnectOptions::new();
        if let Some(path) = &nats.creds {
            options = options.credentials_file(path).await.map_err(|e| {
                BusError::Other(format!("NATS credentials file {}: {e}", path.display()))
            })?;
        }
        if tls_required {
            options = options.require_tls(true);
        }
        if let Some(config) = &tls {
            options = options.tls_client_config((**config).clone());
        }
        match url_credentials {
            Some(UrlCredentials::UserPassword { user, password }) => {
                options = options.user_and_password(user, password);
            }
            Some(UrlCredentials::Token(token)) => options = options.token(token),
            None => {}
        }
        if let Some(prefix) = &nats.inbox_prefix {
            options = options.custom_inbox_prefix(prefix);
        }
        let events = metrics.clone();
        let connections = Arc::new(AtomicU64::new(0));
        let counted = connections.clone();
        let refused = Arc::new(AtomicBool::new(false));
        let refusals = refused.clone();
        let options = options
            .name(name)
            .retry_on_initial_connect()
            // The first URL is this pod's own NATS node; the rest are fallbacks.
            .retain_servers_order()
            .max_reconnects(None)
            .ping_interval(Duration::from_secs(5))
            .connection_timeout(Duration::from_secs(3))
            .reconnect_delay_callback(|attempt| {
                Duration::from_millis((100 * attempt as u64).min(2_000))
            })
            .event_callback(move |event| {
                let metrics = events.clone();
                let counted = counted.clone();
                let refused = refusals.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            counted.fetch_add(1, Ordering::AcqRel);
                            refused.store(false, Ordering::Release);
                            metrics.bus_connected.set(1);
                            tracing::info!("NATS connected");
                        }
                        async_nats::Event::Disconnected => {
                            metrics.bus_connected.set(0);
                            tracing::warn!("NATS disconnected; reconnecting");
                        }
                        async_nats::Event::ClientError(e) if is_auth_refusal(&e) => {
                            // Said once per outage, not on every retry.
                            if !refused.swap(true, Ordering::AcqRel) {
                                tracing::error!(
                                    error = %e,
                                    "NATS refused the credentials (user/password or token in \
                                     the NATS URL, or --nats-creds); retrying"
                                );
                            }
                        }
                        // E.g. a publish or subscribe the account's permissions deny.
                        async_nats::Event::ServerError(e) => {
                            tracing::warn!(error = %e, "NATS server error");
                        }
                        other => tracing::info!(event = %other, "NATS event"),
                    }
                }
            });
        let client = async_nats::connect_with_options(addrs, options)
            .await
            .map_err(|e| BusError::Other(e.to_string()))?;
        let (interest, interest_stream) = Interest::start(interest_target, connections.clone());
        // retry_on_initial_connect returns before the first connection: wait for both
        // connections so the pod only reports ready once NATS is really there; a server
        // that refuses them (credentials, TLS) ends the wait, and the pod serves as not
        // ready while both keep trying.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let is_up = |client: &async_nats::Client| {
            client.connection_state() == async_nats::connection::State::Connected
        };
        while !(is_up(&client) && interest.is_connected()) {
            if refused.load(Ordering::Acquire) {
                tracing::error!(
                    "NATS refused the credentials; serving as not ready until it accepts them"
                );
                break;
            }
            if let Some(why) = interest.refusal() {
                tracing::error!(
                    why = %why,
                    "NATS did not take herald's interest connection; serving as not ready until it does"
                );
                break;
            }
            if tokio::time::Instant::now() > deadline {
                tracing::warn!("NATS not reachable yet; serving as not ready until it is");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if is_up(&client) {
            connections.fetch_max(1, Ordering::AcqRel);
        }
        Ok(NatsBus {
            client,
            interest: Arc::new(interest),
            interest_stream: Arc::new(std::sync::Mutex::new(Some(interest_stream))),
            connections,
            refused,
        })
    }

    /// The server refused the credentials and no connection succeeded since.
    pub fn credentials_refused(&self) -> bool {
        self.refused.load(Ordering::Acquire)
            || self
                .interest
                .refusal()
                .is_some_and(|why| why.to_ascii_lowercase().contains("authorization"))
    }

    /// The client, for JetStream (durable mode).
    pub fn client(&self) -> async_nats::Client {
        self.client.clone()
    }
}

pub(crate) fn to_header_map(headers: &[(String, String)]) -> Option<async_nats::HeaderMap> {
    if headers.is_empty() {
        return None;
    }
    let mut map = async_nats::HeaderMap::new();
    for (k, v) in headers {
        // Callers refuse line breaks; this keeps a missed one from panicking in the client.
        let Ok(value) = async_nats::HeaderValue::from_str(v) else {
            tracing::warn!(header = %k, "header value with a line break dropped");
            continue;
        };
        map.insert(k.as_str(), value);
    }
    Some(map)
}

/// A receiver as a stream.
fn tokio_stream_of(
    mut rx: tokio::sync::mpsc::Receiver<BusMessage>,
) -> impl futures_util::Stream<Item = BusMessage> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn from_message(m: async_nats::Message) -> BusMessage {
    let headers = m
        .headers
        .as_ref()
        .map(|h| {
            h.iter()
                .filter_map(|(k, vs)| vs.first().map(|v| (k.to_string(), v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    BusMessage {
        subject: m.subject.to_string(),
        reply: m.reply.map(|r| r.to_string()),
        headers,
        payload: m.payload,
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, msg: Outbound) -> Result<(), BusError> {
        if !self.is_connected() {
            return Err(BusError::Disconnected);
        }
        let headers = to_header_map(&msg.headers);
        let res = match (msg.reply, headers) {
            (Some(reply), Some(h)) => {
                self.client
                    .publish_with_reply_and_headers(msg.subject, reply, h, msg.payload)
                    .await
            }
            (Some(reply), None) => {
                self.client
                    .publish_with_reply(msg.subject, reply, msg.payload)
                    .await
            }
            (None, Some(h)) => {
                self.client
                    .publish_with_headers(msg.subject, h, msg.payload)
                    .await
            }
            (None, None) => self.client.publish(msg.subject, msg.payload).await,
        };
        res.map_err(|e| BusError::Other(e.to_string()))
    }

    async fn subscribe(
        &self,
        subject: String,
        queue: Option<String>,
    ) -> Result<Subscription, BusError> {
        let sub = match queue {
            Some(q) => self.client.queue_subscribe(subject, q).await,
            None => self.client.subscribe(subject).await,
        }
        .map_err(|e| BusError::Other(e.to_string()))?;
        // The SUB is only in place once the server has processed it; a PING/PONG round
        // trip proves that. While disconnected it is re-sent on reconnect anyway.
        let _ = tokio::time::timeout(SUBSCRIBE_CONFIRM_TIMEOUT, self.client.flush()).await;
        // A "no responders" status is the server talking, not a message for the hub.
        let messages = sub
            .filter(|m| std::future::ready(m.status != Some(async_nats::StatusCode::NO_RESPONDERS)))
            .map(from_message);
        Ok(Box::pin(messages))
    }

    fn take_interest_stream(&self) -> Option<Subscription> {
        let rx = self
            .interest_stream
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        Some(Box::pin(tokio_stream_of(rx)))
    }

    async fn add_interest(&self, subject: String) -> Result<(), BusError> {
        self.interest.add(subject, SUBSCRIBE_CONFIRM_TIMEOUT).await
    }

    fn remove_interest(&self, subject: &str) {
        self.interest.remove(subject);
    }

    fn new_inbox(&self) -> String {
        self.client.new_inbox()
    }

    fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
            && self.interest.is_connected()
    }

    fn engine(&self) -> &'static str {
        "nats"
    }

    fn connection_generation(&self) -> u64 {
        self.connections.load(Ordering::Acquire)
    }

    async fn flush(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.flush()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: &[&str]) -> Vec<String> {
        list.iter().map(|u| u.to_string()).collect()
    }

    #[test]
    fn user_info_is_redacted() {
        assert_eq!(
            redact_url("nats://herald:s3cret@nats:4222"),
            "nats://***@nats:4222"
        );
        assert_eq!(
            redact_url("nats://tok@127.0.0.1:4222"),
            "nats://***@127.0.0.1:4222"
        );
        assert_eq!(redact_url("u:p@w@host:4222"), "***@host:4222");
        assert_eq!(redact_url("nats://a:p/ss@host"), "nats://***@host");
        assert_eq!(redact_url("nats://nats:4222"), "nats://nats:4222");
        assert_eq!(
            redact_urls(&urls(&["nats://u:p@a:1", "nats://b:2"])),
            "nats://***@a:1,nats://b:2"
        );
    }

    #[test]
    fn credentials_are_taken_out_of_the_urls() {
        let (addrs, creds) =
            parse_urls(&urls(&["nats://herald:p%40ss@a:4222", "nats://b:4223"])).unwrap();
        assert_eq!(
            creds,
            Some(UrlCredentials::UserPassword {
                user: "herald".into(),
                password: "p@ss".into()
            })
        );
        assert_eq!(addrs.len(), 2);
        for a in &addrs {
            assert!(!a.has_user_pass(), "{}", a.as_url_str());
            assert!(!a.as_url_str().contains("herald"), "{}", a.as_url_str());
        }
        let (_, creds) = parse_urls(&urls(&["nats://s3cr3t-token@a:4222"])).unwrap();
        assert_eq!(creds, Some(UrlCredentials::Token("s3cr3t-token".into())));
        let (_, creds) = parse_urls(&urls(&["a:4222"])).unwrap();
        assert_eq!(creds, None);
        // The same credentials repeated are fine; different ones are not.
        assert!(parse_urls(&urls(&["nats://u:p@a:1", "nats://u:p@b:2"])).is_ok());
        let e = parse_urls(&urls(&["nats://u:p@a:1", "nats://u:other@b:2"])).unwrap_err();
        assert!(
            e.contains("different credentials") && !e.contains("other"),
            "{e}"
        );
        // Errors never show the secret.
        let e = parse_urls(&urls(&["http://u:hidden@a:1"])).unwrap_err();
        assert!(!e.contains("hidden") && e.contains("***@a:1"), "{e}");
        let e = parse_urls(&urls(&["nats://:hidden@a:1"])).unwrap_err();
        assert!(!e.contains("hidden"), "{e}");
        assert!(!format!("{:?}", UrlCredentials::Token("hidden".into())).contains("hidden"));
    }
}
