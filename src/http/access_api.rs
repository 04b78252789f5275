//! `/api/v1/users/{userId}/revoke` and `/block` (PROTOCOL §6): revoking a user's tokens
//! (by `iat` or by `jti`), blocking a user until a time, and unblocking. Each change is
//! kept, applied on this pod and announced to the others before it is answered.

#![allow(clippy::result_large_err)]

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use herald_proto::access::{AccessKind, AccessRule};
use serde::Deserialize;

use super::api::{authorized_user, bad_request, unavailable};
use super::AppState;
use crate::access::keep::MAX_KEEP;
use crate::access::rules::UNBLOCK_MEMORY_SECS;
use crate::auth::now_secs;

/// Longest `jti` accepted, in bytes.
const MAX_JTI_BYTES: usize = 256;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    #[serde(default, deserialize_with = "super::body::whole_opt")]
    before: Option<u64>,
    jti: Option<String>,
    /// When the revoked tokens expire anyway (seconds since the epoch); without it the
    /// revocation is kept `--revocation-ttl`.
    #[serde(default, deserialize_with = "super::body::whole_opt")]
    expires: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockBody {
    #[serde(deserialize_with = "super::body::whole")]
    until: u64,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, HttpResponse> {
    super::body::refuse_nulls(body, &[]).map_err(bad_request)?;
    serde_json::from_slice(body)
        .map_err(|e| bad_request(format!("body is not a valid {what}: {e}")))
}

/// The rule a revoke body asks for, or why it is refused.
fn revocation(user: &str, body: RevokeBody, now: u64, ttl: u64) -> Result<AccessRule, String> {
    let latest = now.saturating_add(MAX_KEEP.as_secs());
    let (kind, from) = match (body.before, body.jti) {
        (Some(before), None) => {
            if before > latest {
                return Err("before: at most a year from now".into());
            }
            (AccessKind::RevokeBefore { before }, before.max(now))
        }
        (None, Some(jti)) => {
            if jti.is_empty() || jti.len() > MAX_JTI_BYTES {
                return Err(format!("jti: 1 to {MAX_JTI_BYTES} bytes"));
            }
            (AccessKind::RevokeJti { jti }, now)
        }
        _ => return Err("give exactly one of \"before\" (unix seconds) or \"jti\"".into()),
    };
    let expires = match body.expires {
        Some(e) if e <= now => return Err("expires: must be in the future".into()),
        Some(e) if e > latest => return Err("expires: at most a year from now".into()),
        Some(e) => e,
        None => from.saturating_add(ttl).min(latest),
    };
    Ok(AccessRule {
        user: user.to_string(),
        kind,
        at_ms: crate::clock::wall_ms(),
        expires,
    })
}

pub async fn revoke(
    req: HttpRequest,
    path: web::Path<String>,
    body: Bytes,
    state: web::Data<AppState>,
) -> HttpResponse {
    let user = match authorized_user(&req, &state, &path) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let body: RevokeBody = match parse(
        &body,
        "revocation: {\"before\":<unix seconds>} or {\"jti\":\"<id>\"}",
    ) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let rule = match revocation(
        user.as_str(),
        body,
        now_secs(),
        state.revocation_ttl.as_secs(),
    ) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let mut revoked = match &rule.kind {
        AccessKind::RevokeBefore { before } => serde_json::json!({ "before": before }),
        AccessKind::RevokeJti { jti } => serde_json::json!({ "jti": jti }),
        _ => serde_json::json!({}),
    };
    revoked["expires"] = rule.expires.into();
    let kept = match state.cluster.change_access(rule).await {
        Ok(k) => k,
        Err(e) => return unavailable(e),
    };
    tracing::info!(user = %user, kept, "tokens revoked");
    HttpResponse::Ok().json(serde_json::json!({
        "user": user.to_string(), "revoked": revoked, "kept": kept,
    }))
}

pub async fn block(
    req: HttpRequest,
    path: web::Path<String>,
    body: Bytes,
    state: web::Data<AppState>,
) -> HttpResponse {
    let user = match authorized_user(&req, &state, &path) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let body: BlockBody = match parse(&body, "block: {\"until\":<unix seconds>}") {
        Ok(b) => b,
        Err(r) => return r,
    };
    let now = now_secs();
    if body.until <= now {
        return bad_request("until: must be in the future");
    }
    if body.until > now.saturating_add(MAX_KEEP.as_secs()) {
        return bad_request("until: at most a year from now");
    }
    let rule = AccessRule {
        user: user.to_string(),
        kind: AccessKind::Block { until: body.until },
        at_ms: crate::clock::wall_ms(),
        expires: body.until,
    };
    let kept = match state.cluster.change_access(rule).await {
        Ok(k) => k,
        Err(e) => return unavailable(e),
    };
    tracing::info!(user = %user, until = body.until, kept, "user blocked");
    HttpResponse::Ok().json(serde_json::json!({
        "user": user.to_string(),
        "blocked": { "until": body.until },
        "kept": kept,
    }))
}

pub async fn unblock(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let user = match authorized_user(&req, &state, &path) {
        Ok(u) => u,
        Err(r) => return r,
    };
    let rule = AccessRule {
        user: user.to_string(),
        kind: AccessKind::Unblock,
        at_ms: crate::clock::wall_ms(),
        expires: now_secs() + UNBLOCK_MEMORY_SECS,
    };
    let kept = match state.cluster.change_access(rule).await {
        Ok(k) => k,
        Err(e) => return unavailable(e),
    };
    tracing::info!(user = %user, kept, "user unblocked");
    HttpResponse::Ok().json(serde_json::json!({
        "user": user.to_string(), "blocked": null, "kept": kept,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> RevokeBody {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn revocations_expire_when_the_revoked_tokens_would_have() {
        let r = revocation("u1", body(r#"{"before":1000}"#), 900, 3600).unwrap();
        assert_eq!(r.kind, AccessKind::RevokeBefore { before: 1000 });
        assert_eq!(r.expires, 4600);
        let r = revocation("u1", body(r#"{"jti":"t1"}"#), 900, 3600).unwrap();
        assert_eq!(r.expires, 4500);
        let r = revocation("u1", body(r#"{"jti":"t1","expires":950}"#), 900, 3600).unwrap();
        assert_eq!(r.expires, 950);
    }

    #[test]
    fn bad_revocations_say_why() {
        for (json, needle) in [
            (r#"{}"#, "exactly one"),
            (r#"{"before":1,"jti":"x"}"#, "exactly one"),
            (r#"{"jti":""}"#, "jti"),
            (r#"{"before":1,"expires":5}"#, "expires"),
            (r#"{"before":99999999999}"#, "before"),
        ] {
            let e = revocation("u1", body(json), 900, 3600).unwrap_err();
            assert!(e.contains(needle), "{json}: {e}");
        }
        assert!(serde_json::from_str::<RevokeBody>(r#"{"before":-1}"#).is_err());
        assert!(serde_json::from_str::<RevokeBody>(r#"{"before":1,"x":1}"#).is_err());
    }
}
