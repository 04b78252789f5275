//! Where access rules are kept so restarts and pods that start later know them: a JetStream
//! key-value bucket in NATS mode (one key per rule), a file in the data directory with
//! standalone `--durable`, or nowhere (memory only). A change is kept before it is applied,
//! so an answered revocation survives a restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use base64::Engine;
use futures_util::StreamExt;
use herald_proto::access::{AccessRule, AccessSlot};

/// How long a kept rule can live at most: markers of deleted keys go with it, so the
/// bucket never grows without bound. Longer blocks are refused at the API.
pub const MAX_KEEP: Duration = Duration::from_secs(366 * 24 * 3600);

/// Loading the kept rules gives up after this long.
const LOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Opening the bucket at start waits this long at most: a NATS without JetStream must not
/// hold the pod back (it keeps trying in the background, [`RETRY_EVERY`]).
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a pod that could not open the bucket tries again.
pub const RETRY_EVERY: Duration = Duration::from_secs(15);

/// The file of kept rules in the data directory.
pub const FILE_NAME: &str = "access.json";

pub enum Keeper {
    Memory,
    File(PathBuf),
    Bucket(Box<kv::Store>),
}

impl std::fmt::Debug for Keeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.engine())
    }
}

/// The bucket's name for a subject prefix: `herald` → `HERALD-ACCESS` (its stream is
/// `KV_HERALD-ACCESS`).
pub fn bucket_name(prefix: &str) -> String {
    format!("{}-ACCESS", crate::store::jetstream::stream_name(prefix))
}

/// The key of a rule in the bucket: `<user>.before`, `<user>.block`, `<user>.jti.<b64>`.
fn key_of(rule: &AccessRule) -> String {
    match rule.slot() {
        AccessSlot::Before => format!("{}.before", rule.user),
        AccessSlot::Block => format!("{}.block", rule.user),
        AccessSlot::Jti(jti) => format!(
            "{}.jti.{}",
            rule.user,
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(jti)
        ),
    }
}

impl Keeper {
    /// NATS mode: the bucket if it exists (`None` when it does not yet: it is created
    /// with the first change, so a cluster that never revokes has no bucket); Err when
    /// JetStream is not there (or not permitted) within [`OPEN_TIMEOUT`].
    pub async fn find_bucket(
        client: async_nats::Client,
        prefix: &str,
    ) -> Result<Option<Keeper>, String> {
        let name = bucket_name(prefix);
        let find = async {
            let mut js = jetstream::new(client);
            js.set_timeout(OPEN_TIMEOUT);
            match js.get_stream(format!("KV_{name}")).await {
                Ok(_) => js
                    .get_key_value(&name)
                    .await
                    .map(|s| Some(Keeper::Bucket(Box::new(s))))
                    .map_err(|e| e.to_string()),
                Err(e) => match e.kind() {
                    jetstream::context::GetStreamErrorKind::JetStream(j)
                        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                    {
                        Ok(None)
                    }
                    _ => Err(e.to_string()),
                },
            }
        };
        tokio::time::timeout(OPEN_TIMEOUT, find)
            .await
            .map_err(|_| "JetStream did not answer in time".to_string())?
    }

    /// NATS mode: the bucket, created if missing (several pods may do this at once).
    pub async fn bucket(
        client: async_nats::Client,
        prefix: &str,
        replicas: usize,
    ) -> Result<Keeper, String> {
        let name = bucket_name(prefix);
        let open = open_bucket(client, &name, replicas);
        let store = tokio::time::timeout(OPEN_TIMEOUT, open)
            .await
            .map_err(|_| "JetStream did not answer in time".to_string())??;
        tracing::info!(bucket = %name, "access rules are kept in JetStream");
        Ok(Keeper::Bucket(Box::new(store)))
    }

    pub fn engine(&self) -> &'static str {
        match self {
            Keeper::Memory => "memory",
            Keeper::File(_) => "file",
            Keeper::Bucket(_) => "jetstream",
        }
    }

    /// Every rule kept.
    pub async fn load(&self) -> Result<Vec<AccessRule>, String> {
        match self {
            Keeper::Memory => Ok(Vec::new()),
            Keeper::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || read_file(&path))
                    .await
                    .map_err(|e| e.to_string())?
            }
            Keeper::Bucket(kv) => tokio::time::timeout(LOAD_TIMEOUT, load_bucket(kv))
                .await
                .map_err(|_| "timed out reading the access bucket".to_string())?,
        }
    }

    /// Keep one change; `all` is every rule held with it (what the file holds).
    pub async fn keep(&self, rule: &AccessRule, all: Vec<AccessRule>) -> Result<(), String> {
        match self {
            Keeper::Memory => Ok(()),
            Keeper::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || write_file(&path, &all))
                    .await
                    .map_err(|e| e.to_string())?
            }
            Keeper::Bucket(kv) => {
                let value = serde_json::to_vec(rule).map_err(|e| e.to_string())?;
                kv.put(key_of(rule), value.into())
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("JetStream: {e}"))
            }
        }
    }

    /// Delete rules that stopped mattering; `all` is what is left (for the file).
    pub async fn forget(&self, gone: &[AccessRule], all: Vec<AccessRule>) {
        match self {
            Keeper::Memory => {}
            Keeper::File(path) => {
                let path = path.clone();
                let written = tokio::task::spawn_blocking(move || write_file(&path, &all)).await;
                if let Ok(Err(e)) | Err(e) = written.map_err(|e| e.to_string()) {
                    tracing::warn!(error = %e, "cannot rewrite the access file");
                }
            }
            Keeper::Bucket(kv) => {
                for rule in gone {
                    // Every pod sweeps; deleting a key twice is harmless.
                    if let Err(e) = kv.purge(key_of(rule)).await {
                        tracing::debug!(error = %e, "cannot purge an expired access rule");
                    }
                }
            }
        }
    }
}

async fn open_bucket(
    client: async_nats::Client,
    name: &str,
    replicas: usize,
) -> Result<kv::Store, String> {
    let mut js = jetstream::new(client);
    js.set_timeout(OPEN_TIMEOUT);
    match js.get_key_value(name).await {
        Ok(s) => Ok(s),
        Err(_) => {
            // The stream a key-value bucket is, made directly: the client's own bucket
            // creation first asks for account information that nats-server 2.9 answers
            // in a form it does not read.
            let config = jetstream::stream::Config {
                name: format!("KV_{name}"),
                description: Some("herald: token revocations and user blocks".into()),
                subjects: vec![format!("$KV.{name}.>")],
                max_messages_per_subject: 1,
                max_age: MAX_KEEP,
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas.max(1),
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: jetstream::stream::DiscardPolicy::New,
                ..Default::default()
            };
            match js.create_stream(config).await {
                Ok(_) => js.get_key_value(name).await.map_err(|e| e.to_string()),
                // Another pod created it first.
                Err(e) => js.get_key_value(name).await.map_err(|_| e.to_string()),
            }
        }
    }
}

async fn load_bucket(kv: &kv::Store) -> Result<Vec<AccessRule>, String> {
    let mut rules = Vec::new();
    // An empty bucket sends nothing at all: ask first whether there is anything to read.
    let state = kv.stream.get_info().await.map_err(|e| e.to_string())?.state;
    if state.messages == 0 {
        return Ok(rules);
    }
    let mut watch = kv
        .watch_with_history(">")
        .await
        .map_err(|e| e.to_string())?;
    while let Some(entry) = watch.next().await {
        let entry = entry.map_err(|e| e.to_string())?;
        if entry.operation == kv::Operation::Put {
            match serde_json::from_slice::<AccessRule>(&entry.value) {
                Ok(r) => rules.push(r),
                Err(e) => {
                    tracing::warn!(key = %entry.key, error = %e, "ignoring a kept access rule that does not parse")
                }
            }
        }
        if entry.delta == 0 {
            break;
        }
    }
    Ok(rules)
}

fn read_file(path: &Path) -> Result<Vec<AccessRule>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    serde_json::from_str(&text).map_err(|e| format!("{} does not parse: {e}", path.display()))
}

/// Write the whole set beside the file, sync it, then rename it over: a crash leaves the
/// old set or the new one, never a part.
fn write_file(path: &Path, rules: &[AccessRule]) -> Result<(), String> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec(rules).map_err(|e| e.to_string())?;
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| format!("writing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_proto::access::AccessKind;

    #[test]
    fn keys_are_valid_bucket_keys_whatever_the_jti() {
        let rule = AccessRule {
            user: "u-1=".into(),
            kind: AccessKind::RevokeJti {
                jti: "a b/c.*>".into(),
            },
            at_ms: 1,
            expires: 2,
        };
        let key = key_of(&rule);
        assert!(key.starts_with("u-1=.jti."));
        assert!(key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_=./".contains(&b)));
        assert_eq!(bucket_name("app.herald"), "APP_HERALD-ACCESS");
    }

    #[test]
    fn the_file_round_trips_and_a_missing_file_is_empty() {
        let dir = std::env::temp_dir().join(format!("herald-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(FILE_NAME);
        assert!(read_file(&path).unwrap().is_empty());
        let rule = AccessRule {
            user: "u1".into(),
            kind: AccessKind::Block { until: 9 },
            at_ms: 1,
            expires: 9,
        };
        write_file(&path, std::slice::from_ref(&rule)).unwrap();
        assert_eq!(read_file(&path).unwrap(), vec![rule]);
        std::fs::write(&path, "{").unwrap();
        assert!(read_file(&path).unwrap_err().contains("does not parse"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
