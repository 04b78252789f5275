//! Handshake authentication: where the token is found, how it is verified, and the
//! resulting [`Identity`].
//!
//! Credentials, first found wins: query `token=`, `Authorization: Bearer`, cookie
//! `herald_token`. Token text is never logged; errors say what was wrong, not the token.
//!
//! Keys: an HS256 secret, a PEM public key (RS256/ES256), or a JWKS document whose keys
//! are chosen by the token's `kid` ([`jwks`]). [`AuthConfig`] is cheap to clone (the key
//! material sits behind one `Arc`), so the handshake and the sessions share one.

pub mod jwks;

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use actix_http::header::{self, HeaderMap};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, UserId};

/// Leeway on `nbf`, for clocks of identity providers a little ahead of the pods'. `exp`
/// has none: a token is refused from the second it expires.
pub const NBF_LEEWAY_SECS: u64 = 30;

/// How connections are authenticated.
#[derive(Clone)]
pub enum AuthConfig {
    /// No key configured: connections are accepted without a token (loopback only).
    Unsigned,
    /// JWT verification: the keys and the claims required.
    Jwt(Arc<Verifier>),
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthConfig::Unsigned => f.write_str("Unsigned"),
            AuthConfig::Jwt(v) => {
                let keys = match &v.keys {
                    Keys::Static(k) => format!("{:?} key", k.algorithm),
                    Keys::Jwks(j) => format!("JWKS {}", jwks::redact_url(j.url())),
                };
                f.debug_struct("Jwt")
                    .field("keys", &keys)
                    .field("audience", &v.audience)
                    .field("issuer", &v.issuer)
                    .finish()
            }
        }
    }
}

/// A verification key and the one algorithm it accepts.
pub struct VerifyKey {
    pub key: DecodingKey,
    pub algorithm: Algorithm,
}

impl std::fmt::Debug for VerifyKey {
    // Not the key: for HS256 it is the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VerifyKey({:?})", self.algorithm)
    }
}

/// Where keys come from.
enum Keys {
    /// `--jwt-secret` (HS256) or `--jwt-public-key` (RS256/ES256); any `kid` is ignored.
    Static(Arc<VerifyKey>),
    /// `--jwt-jwks-url`: by the token's `kid`.
    Jwks(jwks::Jwks),
}

/// Keys and required claims; shared by every clone of an [`AuthConfig`].
pub struct Verifier {
    keys: Keys,
    audience: Option<String>,
    issuer: Option<String>,
}

/// The JWT settings of `herald serve`, secrets already read from their files.
#[derive(Default, Clone, Copy)]
pub struct JwtSettings<'a> {
    pub secret: Option<&'a str>,
    pub public_key: Option<&'a Path>,
    pub jwks_url: Option<&'a str>,
    pub audience: Option<&'a str>,
    pub issuer: Option<&'a str>,
}

/// A key that could not be loaded; says which setting and why (never the secret).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0} are all set; configure one key source")]
    Several(String),
    #[error("--jwt-public-key {path}: {reason}")]
    PublicKey { path: String, reason: String },
    #[error("--jwt-secret must not be empty")]
    EmptySecret,
    #[error("--jwt-jwks-url {url}: {reason}")]
    JwksUrl { url: String, reason: String },
    #[error("--jwt-audience and --jwt-issuer need a JWT key (--jwt-secret, --jwt-public-key or --jwt-jwks-url)")]
    ClaimsWithoutKey,
    #[error("--jwt-audience and --jwt-issuer must not be empty")]
    EmptyClaim,
}

impl AuthConfig {
    pub fn load(s: &JwtSettings<'_>) -> Result<AuthConfig, KeyError> {
        let sources: Vec<&str> = [
            s.secret.map(|_| "--jwt-secret"),
            s.public_key.map(|_| "--jwt-public-key"),
            s.jwks_url.map(|_| "--jwt-jwks-url"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if sources.len() > 1 {
            return Err(KeyError::Several(sources.join(" and ")));
        }
        if s.audience == Some("") || s.issuer == Some("") {
            return Err(KeyError::EmptyClaim);
        }
        let keys = if let Some(secret) = s.secret {
            if secret.is_empty() {
                return Err(KeyError::EmptySecret);
            }
            Keys::Static(Arc::new(VerifyKey {
                key: DecodingKey::from_secret(secret.as_bytes()),
                algorithm: Algorithm::HS256,
            }))
        } else if let Some(path) = s.public_key {
            Keys::Static(Arc::new(load_public_key(path)?))
        } else if let Some(url) = s.jwks_url {
            check_jwks_url(url)?;
            Keys::Jwks(jwks::Jwks::new(url.to_string(), jwks::Timing::default()))
        } else {
            if s.audience.is_some() || s.issuer.is_some() {
                return Err(KeyError::ClaimsWithoutKey);
            }
            return Ok(AuthConfig::Unsigned);
        };
        Ok(AuthConfig::Jwt(Arc::new(Verifier {
            keys,
            audience: s.audience.map(str::to_string),
            issuer: s.issuer.map(str::to_string),
        })))
    }

    /// Start fetching JWKS keys in the background (nothing to do for other keys). The
    /// first lookup would start it too; starting at boot has the keys ready sooner.
    pub fn start(&self) {
        if let AuthConfig::Jwt(v) = self {
            if let Keys::Jwks(j) = &v.keys {
                j.start();
            }
        }
    }
}

fn load_public_key(path: &Path) -> Result<VerifyKey, KeyError> {
    let err = |reason: String| KeyError::PublicKey {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        Ok(VerifyKey {
            key,
            algorithm: Algorithm::RS256,
        })
    } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        Ok(VerifyKey {
            key,
            algorithm: Algorithm::ES256,
        })
    } else {
        Err(err("not an RSA or EC (P-256) public key in PEM form".into()))
    }
}

fn check_jwks_url(url: &str) -> Result<(), KeyError> {
    let err = |reason: &str| KeyError::JwksUrl {
        url: jwks::redact_url(url),
        reason: reason.into(),
    };
    let uri: ureq::http::Uri = url.parse().map_err(|_| err("not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some_and(|h| !h.is_empty()) => Ok(()),
        Some("http" | "https") => Err(err("the URL has no host")),
        _ => Err(err("use an http:// or https:// URL")),
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
    /// Issued at, seconds since the epoch: matched by revocations with `before`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// The token's id: matched by revocations with `jti`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
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
    /// The token's `iat` and `jti`, for revocations (none in unsigned mode).
    pub issued_at: Option<u64>,
    pub token_id: Option<std::sync::Arc<str>>,
}

impl Identity {
    /// What revocations match on this identity's token.
    pub fn token_mark(&self) -> crate::access::TokenMark<'_> {
        crate::access::TokenMark {
            issued_at: self.issued_at,
            jti: self.token_id.as_deref(),
        }
    }
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
    #[error("token not valid yet (nbf)")]
    NotYetValid,
    #[error("wrong audience")]
    WrongAudience,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("token has no key id (kid)")]
    NoKeyId,
    #[error("unknown key id")]
    UnknownKey,
    /// JWKS: no key set fetched yet (the endpoint has not answered since the start).
    #[error("signing keys not available yet")]
    KeysUnavailable,
    /// The token was revoked (§6).
    #[error("token revoked")]
    Revoked,
    /// The user is blocked (§6); only `refresh` answers with it, a handshake gets 403.
    #[error("user blocked")]
    Blocked,
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
        (
            crate::percent::decode_form(k),
            crate::percent::decode_form(v),
        )
    })
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Verify the credentials of a connection for `user`. With JWKS keys, a token whose `kid`
/// is not in the set may wait (at most 2 s) for the early refetch it triggers.
pub async fn authenticate(
    auth: &AuthConfig,
    token: Option<&str>,
    user: &UserId,
    device: Option<DeviceId>,
) -> Result<Identity, AuthError> {
    let verifier = match auth {
        AuthConfig::Unsigned => {
            return Ok(Identity {
                user: user.clone(),
                device,
                topics: None,
                expires_at: None,
                issued_at: None,
                token_id: None,
            })
        }
        AuthConfig::Jwt(v) => v,
    };
    let token = token.filter(|t| !t.is_empty()).ok_or(AuthError::Missing)?;
    let claims = verifier.verify(token).await?;
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
        issued_at: claims.iat,
        token_id: claims.jti.map(std::sync::Arc::from),
    })
}

impl Verifier {
    /// The token's claims once its signature, `exp`, `nbf` and the configured `aud` and
    /// `iss` pass.
    async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let key = match &self.keys {
            Keys::Static(k) => k.clone(),
            Keys::Jwks(j) => {
                let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
                let kid = header.kid.ok_or(AuthError::NoKeyId)?;
                j.key(&kid).await?
            }
        };
        let mut validation = Validation::new(key.algorithm);
        // The library applies one leeway to `exp` and `nbf`; `exp` is checked again below
        // without it.
        validation.leeway = NBF_LEEWAY_SECS;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let data =
            jsonwebtoken::decode::<Claims>(token, &key.key, &validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                    ErrorKind::InvalidAudience => AuthError::WrongAudience,
                    ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
                    ErrorKind::MissingRequiredClaim(c) if c == "aud" => AuthError::WrongAudience,
                    ErrorKind::MissingRequiredClaim(c) if c == "iss" => AuthError::WrongIssuer,
                    _ => AuthError::Invalid,
                }
            })?;
        if data.claims.exp < now_secs() {
            return Err(AuthError::Expired);
        }
        Ok(data.claims)
    }
}

/// Optional parts of a signed token beyond [`Claims`] (for `herald token` and tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct SignOptions<'a> {
    /// Header `kid`, to pick the key out of a JWKS.
    pub kid: Option<&'a str>,
    pub audience: Option<&'a str>,
    pub issuer: Option<&'a str>,
    /// `nbf`, seconds since the epoch.
    pub not_before: Option<u64>,
}

/// Sign a token (for `herald token`, trials and tests).
pub fn sign(
    claims: &Claims,
    secret: Option<&str>,
    private_key_pem: Option<&[u8]>,
) -> Result<String, String> {
    sign_with(claims, &SignOptions::default(), secret, private_key_pem)
}

/// Sign a token with the extra header and claims of `options`.
pub fn sign_with(
    claims: &Claims,
    options: &SignOptions<'_>,
    secret: Option<&str>,
    private_key_pem: Option<&[u8]>,
) -> Result<String, String> {
    #[derive(Serialize)]
    struct Full<'a> {
        #[serde(flatten)]
        claims: &'a Claims,
        #[serde(skip_serializing_if = "Option::is_none")]
        aud: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        iss: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        nbf: Option<u64>,
    }
    let (mut header, key) = match (secret, private_key_pem) {
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
        (None, None) => return Err(
            "no key: set --jwt-secret (HERALD_JWT_SECRET), --jwt-secret-file or --jwt-private-key"
                .into(),
        ),
    };
    header.kid = options.kid.map(str::to_string);
    let full = Full {
        claims,
        aud: options.audience,
        iss: options.issuer,
        nbf: options.not_before,
    };
    jsonwebtoken::encode(&header, &full, &key).map_err(|e| format!("signing failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs() -> AuthConfig {
        AuthConfig::load(&JwtSettings {
            secret: Some("s3cret"),
            ..JwtSettings::default()
        })
        .unwrap()
    }

    fn token(sub: &str, exp: u64, device: Option<&str>) -> String {
        let claims = Claims {
            sub: sub.into(),
            exp,
            device: device.map(str::to_string),
            topics: None,
            iat: None,
            jti: None,
        };
        sign(&claims, Some("s3cret"), None).unwrap()
    }

    #[tokio::test]
    async fn valid_hs256_token_yields_identity() {
        let u = UserId::parse("u1").unwrap();
        let t = token("u1", now_secs() + 60, Some("d1"));
        let id = authenticate(&hs(), Some(&t), &u, None).await.unwrap();
        assert_eq!(id.device.unwrap().as_str(), "d1");
    }

    #[tokio::test]
    async fn refusals_name_their_cause() {
        let u = UserId::parse("u1").unwrap();
        assert_eq!(
            authenticate(&hs(), None, &u, None).await.unwrap_err(),
            AuthError::Missing
        );
        assert_eq!(
            authenticate(&hs(), Some("x.y.z"), &u, None)
                .await
                .unwrap_err(),
            AuthError::Invalid
        );
        let expired = token("u1", now_secs() - 5, None);
        assert_eq!(
            authenticate(&hs(), Some(&expired), &u, None)
                .await
                .unwrap_err(),
            AuthError::Expired
        );
        let other = token("u2", now_secs() + 60, None);
        assert_eq!(
            authenticate(&hs(), Some(&other), &u, None)
                .await
                .unwrap_err(),
            AuthError::WrongUser
        );
        let forged = sign(
            &Claims {
                sub: "u1".into(),
                exp: now_secs() + 60,
                device: None,
                topics: None,
                iat: None,
                jti: None,
            },
            Some("other"),
            None,
        )
        .unwrap();
        assert_eq!(
            authenticate(&hs(), Some(&forged), &u, None)
                .await
                .unwrap_err(),
            AuthError::Invalid
        );
        let d = token("u1", now_secs() + 60, Some("d1"));
        let q = DeviceId::parse("d2").ok();
        assert_eq!(
            authenticate(&hs(), Some(&d), &u, q).await.unwrap_err(),
            AuthError::WrongDevice
        );
    }

    #[tokio::test]
    async fn audience_issuer_and_not_before_are_checked() {
        let auth = AuthConfig::load(&JwtSettings {
            secret: Some("s3cret"),
            audience: Some("herald"),
            issuer: Some("https://idp.example"),
            ..JwtSettings::default()
        })
        .unwrap();
        let u = UserId::parse("u1").unwrap();
        let claims = Claims {
            sub: "u1".into(),
            exp: now_secs() + 60,
            device: None,
            topics: None,
            iat: None,
            jti: None,
        };
        let good = SignOptions {
            audience: Some("herald"),
            issuer: Some("https://idp.example"),
            ..SignOptions::default()
        };
        let check = |o: SignOptions<'static>| {
            let t = sign_with(&claims, &o, Some("s3cret"), None).unwrap();
            let auth = auth.clone();
            let u = u.clone();
            async move { authenticate(&auth, Some(&t), &u, None).await.map(|_| ()) }
        };
        assert_eq!(check(good).await, Ok(()));
        let cases = [
            (
                SignOptions {
                    audience: Some("other"),
                    ..good
                },
                AuthError::WrongAudience,
            ),
            (
                SignOptions {
                    audience: None,
                    ..good
                },
                AuthError::WrongAudience,
            ),
            (
                SignOptions {
                    issuer: Some("https://evil.example"),
                    ..good
                },
                AuthError::WrongIssuer,
            ),
            (
                SignOptions {
                    issuer: None,
                    ..good
                },
                AuthError::WrongIssuer,
            ),
            (
                SignOptions {
                    not_before: Some(now_secs() + 300),
                    ..good
                },
                AuthError::NotYetValid,
            ),
        ];
        for (options, refusal) in cases {
            assert_eq!(check(options).await, Err(refusal), "{options:?}");
        }
        // Within the leeway, and in the past: accepted.
        let soon = SignOptions {
            not_before: Some(now_secs() + NBF_LEEWAY_SECS / 2),
            ..good
        };
        assert_eq!(check(soon).await, Ok(()));
        let past = SignOptions {
            not_before: Some(now_secs() - 60),
            ..good
        };
        assert_eq!(check(past).await, Ok(()));
        // Without --jwt-audience a token's aud is not looked at.
        let t = sign_with(
            &claims,
            &SignOptions {
                audience: Some("any"),
                ..good
            },
            Some("s3cret"),
            None,
        )
        .unwrap();
        let open = AuthConfig::load(&JwtSettings {
            secret: Some("s3cret"),
            ..JwtSettings::default()
        })
        .unwrap();
        assert!(authenticate(&open, Some(&t), &u, None).await.is_ok());
    }

    #[test]
    fn one_key_source_and_claims_only_with_a_key() {
        let err = |s: JwtSettings<'_>| AuthConfig::load(&s).unwrap_err().to_string();
        let both = err(JwtSettings {
            secret: Some("x"),
            jwks_url: Some("https://idp.example/jwks"),
            ..JwtSettings::default()
        });
        assert!(both.contains("--jwt-secret and --jwt-jwks-url"), "{both}");
        let aud = err(JwtSettings {
            audience: Some("herald"),
            ..JwtSettings::default()
        });
        assert!(aud.contains("need a JWT key"), "{aud}");
        for bad in ["idp.example/jwks", "ftp://idp.example/jwks", "https://"] {
            let e = err(JwtSettings {
                jwks_url: Some(bad),
                ..JwtSettings::default()
            });
            assert!(e.starts_with("--jwt-jwks-url"), "{bad}: {e}");
        }
        let e = err(JwtSettings {
            jwks_url: Some("https://user:pw@"),
            ..JwtSettings::default()
        });
        assert!(!e.contains("pw"), "{e}");
        assert!(AuthConfig::load(&JwtSettings {
            jwks_url: Some("http://127.0.0.1:1/jwks"),
            audience: Some("herald"),
            ..JwtSettings::default()
        })
        .is_ok());
    }

    #[test]
    fn authentication_can_run_on_any_thread() {
        fn send<T: Send>(_: T) {}
        let u = UserId::parse("u1").unwrap();
        send(authenticate(&hs(), None, &u, None));
    }

    #[test]
    fn topic_permissions_follow_the_claim_patterns() {
        let id = |topics: Option<Vec<&str>>, exp: Option<u64>| Identity {
            user: UserId::parse("u").unwrap(),
            device: None,
            topics: topics.map(|t| t.into_iter().map(str::to_string).collect()),
            expires_at: exp,
            issued_at: None,
            token_id: None,
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
