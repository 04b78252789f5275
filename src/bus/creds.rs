//! A NATS credentials file (a user JWT and the user's NKey seed, as `nsc` writes it) and
//! the nonce signature that proves the seed at CONNECT, for herald's interest connection.
//! The seed never leaves this module: not in `Debug`, not in errors.

use std::path::Path;

use base64::Engine;

/// The user JWT and key pair of a credentials file.
pub struct UserCredentials {
    jwt: String,
    key: nkeys::KeyPair,
}

impl std::fmt::Debug for UserCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "UserCredentials {{ user: {}, seed: *** }}",
            self.key.public_key()
        )
    }
}

impl UserCredentials {
    /// Read a credentials file.
    pub fn load(path: &Path) -> Result<UserCredentials, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("NATS credentials file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("NATS credentials file {}: {e}", path.display()))
    }

    /// The first two decorated blocks: `-----BEGIN NATS USER JWT-----` … and
    /// `-----BEGIN USER NKEY SEED-----` …
    pub fn parse(text: &str) -> Result<UserCredentials, String> {
        let mut blocks = Vec::new();
        let mut lines = text.lines().map(str::trim);
        while let Some(line) = lines.next() {
            if line.starts_with("---") && line.contains("BEGIN") {
                let body = lines
                    .by_ref()
                    .take_while(|l| !l.starts_with("---"))
                    .collect::<String>();
                blocks.push(body);
            }
        }
        let (Some(jwt), Some(seed)) = (blocks.first(), blocks.get(1)) else {
            return Err("no user JWT and NKey seed blocks in it".into());
        };
        if jwt.split('.').count() != 3 {
            return Err("the first block is not a JWT".into());
        }
        let key = nkeys::KeyPair::from_seed(seed)
            .map_err(|_| "the second block is not a user NKey seed".to_string())?;
        Ok(UserCredentials {
            jwt: jwt.clone(),
            key,
        })
    }

    pub fn jwt(&self) -> &str {
        &self.jwt
    }

    /// The server's nonce signed with the seed, as CONNECT's `sig` carries it.
    pub fn sign(&self, nonce: &str) -> Result<String, String> {
        let sig = self
            .key
            .sign(nonce.as_bytes())
            .map_err(|e| format!("signing the NATS nonce: {e}"))?;
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credentials_file_is_read_and_its_signature_verifies() {
        let user = nkeys::KeyPair::new_user();
        let seed = user.seed().unwrap();
        let text = format!(
            "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QifQ.eyJzdWIiOiJ4In0.c2ln\n\
             ------END NATS USER JWT------\n\n*** IMPORTANT ***\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        );
        let creds = UserCredentials::parse(&text).unwrap();
        assert_eq!(creds.jwt(), "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiJ4In0.c2ln");
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(creds.sign("nonce-1").unwrap())
            .unwrap();
        user.verify(b"nonce-1", &sig).unwrap();
        assert!(!format!("{creds:?}").contains(&seed));
        assert!(UserCredentials::parse("nothing here").is_err());
        let e = UserCredentials::parse(&text.replace(&seed, "SUNOTASEED")).unwrap_err();
        assert!(!e.contains("SUNOTASEED"), "{e}");
    }
}
