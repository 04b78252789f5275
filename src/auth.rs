//! Handshake authentication: where the token is found, how it is verified, and the
//! resulting [`Identity`].
//!
//! Credentials, first found wins: query `token=`, `Authorization: Bearer`, cookie
//! `herald_token`. Token text is never logged; errors say what was wrong, not the token.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use actix_http::header::{self, HeaderMap};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, UserId};

/// How connections are authenticated.
#[derive(Clone)]
pub enum AuthConfig {
    /// No key configured: connections are accepted without a token (loopback only).
    Unsigned,
    /// JWT verification with a key and the algorithms it allows.
    Jwt {
        key: DecodingKey,
        algorithms: Vec<Algorithm>,
    },
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthConfig::Unsigned => f.write_str("Unsigned"),
            AuthConfig::Jwt { algorithms, .. } => write!(f, "Jwt({algorithms:?})"),
        }
    }
}

/// A key that could not be loaded; says which setting and why.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("--jwt-secret and --jwt-public-key are both set; configure one")]
    Both,
    #[error("--jwt-public-key {path}: {reason}")]
    PublicKey { path: String, reason: String },
    #[error("--jwt-secret must not be empty")]
    EmptySecret,
}

impl AuthConfig {
    pub fn load(secret: Option<&str>, public_key: Option<&Path>) -> Result<AuthConfig, KeyError> {
        match (secret, public_key) {
            (Some(_), Some(_)) => Err(KeyError::Both),
            (Some(""), None) => Err(KeyError::EmptySecret),
            (Some(s), None) => Ok(AuthConfig::Jwt {
                key: DecodingKey::from_secret(s.as_bytes()),
                algorithms: vec![Algorithm::HS256],
            }),
            (None, Some(path)) => {
                let err = |reason: String| KeyError::PublicKey {
                    path: path.display().to_string(),
                    reason,
                };
                let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
                if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                    Ok(AuthConfig::Jwt {
                        key,
                        algorithms: vec![Algorithm::RS256],
                    })
                } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                    Ok(AuthConfig::Jwt {
                        key,
                        algorithms: vec![Algorithm::ES256],
                    })
                } else {
                    Err(err("not an RSA or EC (P-256) public key in PEM form".into()))
                }
            }
            (None, None) => Ok(AuthConfig::Unsigned),
        }
    }
}

/// Claims herald reads from a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<String>>,
}

/// Who a connection is, after the handshake checks.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: UserId,
    pub device: Option<DeviceId>,
    /// Topic patterns the token allows; `None` = unsigned mode, anything goes.
    pub topics: Option<Vec<String>>,
    /// Expiry in seconds since the epoch; `None` = never (unsigned mode).
    pub expires_at: Option<u64>,
}

/// Why a handshake was refused with 401. The text is the response body: no token in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("invalid token")]
    Invalid,
    #[error("token expired")]
    Expired,
    #[error("token sub does not match the user id")]
    WrongUser,
    #[error("token device does not match device=")]
    WrongDevice,
}

/// Whether the identity may follow `topic`: any topic in unsigned mode, otherwise one of
/// the token's `topics` patterns must match (no claim, no topics).
pub fn topic_allowed(identity: &Identity, topic: &str) -> bool {
    match &identity.topics {
        None => identity.expires_at.is_none(),
        Some(patterns) => patterns
            .iter()
            .any(|p| herald_proto::subject_matches(p, topic)),
    }
}

/// The token of a request, first found wins: query, `Authorization: Bearer`, cookie
/// `herald_token`.
pub fn extract_token(query: &str, headers: &HeaderMap) -> Option<String> {
    if let Some(t) = query_param(query, "token") {
        return Some(t);
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(t) = bearer {
        return Some(t.trim().to_string());
    }
    headers
        .get_all(header::COOKIE)
        .filter_map(|h| h.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix("herald_token="))
        .map(|t| t.trim_matches('"').to_string())
}

/// The first value of `name` in a query string, percent-decoded.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    url_form_pairs(query)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

fn url_form_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k), percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Verify the credentials of a connection for `user`.
pub fn authenticate(
    config: &AuthConfig,
    token: Option<&str>,
    user: &UserId,
    device: Option<DeviceId>,
) -> Result<Identity, AuthError> {
    let (key, algorithms) = match config {
        AuthConfig::Unsigned => {
            return Ok(Identity {
                user: user.clone(),
                device,
                topics: None,
                expires_at: None,
            })
        }
        AuthConfig::Jwt { key, algorithms } => (key, algorithms),
    };
    let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
    let mut validation = Validation::new(algorithms[0]);
    validation.algorithms = algorithms.clone();
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "sub"]);
    validation.validate_aud = false;
    let data =
        jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid,
        })?;
    let claims = data.claims;
    if claims.sub != user.as_str() {
        return Err(AuthError::WrongUser);
    }
    let device = match (device, claims.device) {
        (Some(q), Some(c)) if q.as_str() != c => return Err(AuthError::WrongDevice),
        (Some(q), _) => Some(q),
        (None, Some(c)) => Some(DeviceId::parse(&c).map_err(|_| AuthError::Invalid)?),
        (None, None) => None,
    };
    Ok(Identity {
        user: user.clone(),
        device,
        topics: claims.topics,
        expires_at: Some(claims.exp),
    })
}

/// Sign a token (for `herald token`, trials and tests).
pub fn sign(
    claims: &Claims,
    secret: Option<&str>,
    private_key_pem: Option<&[u8]>,
) -> Result<String, String> {
    let (header, key) = match (secret, private_key_pem) {
        (_, Some(pem)) => {
            if let Ok(k) = EncodingKey::from_rsa_pem(pem) {
                (Header::new(Algorithm::RS256), k)
            } else if let Ok(k) = EncodingKey::from_ec_pem(pem) {
                (Header::new(Algorithm::ES256), k)
            } else {
                return Err("private key is not an RSA or EC (P-256) key in PEM form".into());
            }
        }
        (Some(s), None) => (
            Header::new(Algorithm::HS256),
            EncodingKey::from_secret(s.as_bytes()),
        ),
        (None, None) => {
            return Err("no key: set --jwt-secret (HERALD_JWT_SECRET) or --jwt-private-key".into())
        }
    };
    jsonwebtoken::encode(&header, claims, &key).map_err(|e| format!("signing failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs() -> AuthConfig {
        AuthConfig::load(Some("s3cret"), None).unwrap()
    }

    fn token(sub: &str, exp: u64, device: Option<&str>) -> String {
        let claims = Claims {
            sub: sub.into(),
            exp,
            device: device.map(str::to_string),
            topics: None,
        };
        sign(&claims, Some("s3cret"), None).unwrap()
    }

    #[test]
    fn valid_hs256_token_yields_identity() {
        let u = UserId::parse("u1").unwrap();
        let t = token("u1", now_secs() + 60, Some("d1"));
        let id = authenticate(&hs(), Some(&t), &u, None).unwrap();
        assert_eq!(id.device.unwrap().as_str(), "d1");
    }

    #[test]
    fn refusals_name_their_cause() {
        let u = UserId::parse("u1").unwrap();
        assert_eq!(
            authenticate(&hs(), None, &u, None).unwrap_err(),
            AuthError::Missing
        );
        assert_eq!(
            authenticate(&hs(), Some("x.y.z"), &u, None).unwrap_err(),
            AuthError::Invalid
        );
        let expired = token("u1", now_secs() - 5, None);
        assert_eq!(
            authenticate(&hs(), Some(&expired), &u, None).unwrap_err(),
            AuthError::Expired
        );
        let other = token("u2", now_secs() + 60, None);
        assert_eq!(
            authenticate(&hs(), Some(&other), &u, None).unwrap_err(),
            AuthError::WrongUser
        );
        let forged = sign(
            &Claims {
                sub: "u1".into(),
                exp: now_secs() + 60,
                device: None,
                topics: None,
            },
            Some("other"),
            None,
        )
        .unwrap();
        assert_eq!(
            authenticate(&hs(), Some(&forged), &u, None).unwrap_err(),
            AuthError::Invalid
        );
        let d = token("u1", now_secs() + 60, Some("d1"));
        let q = DeviceId::parse("d2").ok();
        assert_eq!(
            authenticate(&hs(), Some(&d), &u, q).unwrap_err(),
            AuthError::WrongDevice
        );
    }

    #[test]
    fn topic_permissions_follow_the_claim_patterns() {
        let id = |topics: Option<Vec<&str>>, exp: Option<u64>| Identity {
            user: UserId::parse("u").unwrap(),
            device: None,
            topics: topics.map(|t| t.into_iter().map(str::to_string).collect()),
            expires_at: exp,
        };
        let signed = id(Some(vec!["orders.*", "flash.>"]), Some(1));
        assert!(topic_allowed(&signed, "orders.store-42"));
        assert!(!topic_allowed(&signed, "orders.store-42.x"));
        assert!(topic_allowed(&signed, "flash.sale.1"));
        assert!(!topic_allowed(&signed, "flash"));
        assert!(!topic_allowed(&signed, "payments.1"));
        // A signed token without the claim allows no topic; unsigned mode allows any.
        assert!(!topic_allowed(&id(None, Some(1)), "orders.1"));
        assert!(topic_allowed(&id(None, None), "orders.1"));
    }

    #[test]
    fn query_params_are_percent_decoded() {
        assert_eq!(
            query_param("a=1&token=x%2By&b", "token").as_deref(),
            Some("x+y")
        );
        assert_eq!(query_param("token=", "token").as_deref(), Some(""));
        assert_eq!(query_param("b=2", "token"), None);
        assert_eq!(query_param("token=%zz", "token").as_deref(), Some("%zz"));
    }
}
