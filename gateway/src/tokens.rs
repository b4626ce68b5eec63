//! API bearer tokens: EdDSA JWTs signed with the gateway's Ed25519 key, and the roles they carry.
//!
//! Only tokens signed by this gateway's key with alg EdDSA verify (jwt-simple refuses `none`, HS256,
//! RSA and any other key); `exp` is enforced, and revoked `jti`s are refused by the caller
//! (`api::authenticate`, from the registry's `revoked_jtis`; see `api/tokens.rs`).

use std::time::Duration;

use anyhow::{anyhow, bail};
use burrow_core::identity::Identity;
use jwt_simple::prelude::{
    Claims, Ed25519KeyPair, Ed25519PublicKey, EdDSAKeyPairLike, EdDSAPublicKeyLike,
    VerificationOptions,
};
use serde::{Deserialize, Serialize};

/// The longest an API token may live. Ten years covers a service account's token; past that a
/// leaked token outlives any plausible audit, and jwt-simple's 32-bit seconds wrap `exp` (`100y`
/// became an `exp` in 1990).
pub const MAX_API_TTL: Duration = Duration::from_secs(10 * 365 * 86400);

/// Why `ttl` is not a valid API token lifetime, if it is not.
pub fn check_api_ttl(ttl: Duration) -> Result<(), String> {
    if ttl.as_secs() == 0 {
        return Err("ttl must be at least one second".into());
    }
    if ttl > MAX_API_TTL {
        return Err(format!(
            "ttl {} is too long: an API token lives at most {}",
            humantime::format_duration(ttl),
            humantime::format_duration(MAX_API_TTL)
        ));
    }
    Ok(())
}

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Administration: pairing, tokens, everything.
    Gateway,
    /// Exec and read.
    Operator,
    /// Read only.
    Viewer,
    /// A node: its own heartbeat only.
    Node,
}

impl Role {
    pub fn parse(text: &str) -> anyhow::Result<Role> {
        Ok(match text {
            "gateway" => Role::Gateway,
            "operator" => Role::Operator,
            "viewer" => Role::Viewer,
            "node" => Role::Node,
            other => bail!("unknown role {other:?}: expected gateway, operator, viewer or node"),
        })
    }

    /// A role an API token may be issued for: node tokens come from pairing only, so `node` is not
    /// offered.
    pub fn parse_issuable(text: &str) -> anyhow::Result<Role> {
        match Role::parse(text) {
            Ok(Role::Node) => {
                bail!("node tokens come from pairing only: expected gateway, operator or viewer")
            }
            Ok(role) => Ok(role),
            Err(_) => bail!("unknown role {text:?}: expected gateway, operator or viewer"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Node => "node",
        }
    }

    /// Whether this role may read the fleet (nodes, status).
    pub fn can_read(self) -> bool {
        matches!(self, Role::Gateway | Role::Operator | Role::Viewer)
    }

    /// Whether this role may run commands.
    pub fn can_exec(self) -> bool {
        matches!(self, Role::Gateway | Role::Operator)
    }

    /// Whether this role may administer (pairing, approvals).
    pub fn can_admin(self) -> bool {
        self == Role::Gateway
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Extra {
    role: Role,
}

/// A verified token's claims.
#[derive(Debug, Clone)]
pub struct Verified {
    pub subject: String,
    pub role: Role,
    pub jti: String,
    /// Unix seconds.
    pub expires_at: u64,
}

/// Signs and verifies tokens with the gateway key.
pub struct Tokens {
    key: Ed25519KeyPair,
    public: Ed25519PublicKey,
}

impl Tokens {
    pub fn new(identity: &Identity) -> anyhow::Result<Tokens> {
        let key = Ed25519KeyPair::from_bytes(&identity.secret_bytes())
            .map_err(|e| anyhow!("loading the gateway key for JWTs: {e}"))?;
        let public = key.public_key();
        Ok(Tokens { key, public })
    }

    /// Issues a token; returns it with its `jti`.
    pub fn issue(
        &self,
        subject: &str,
        role: Role,
        ttl: Duration,
    ) -> anyhow::Result<(String, String)> {
        check_api_ttl(ttl).map_err(|e| anyhow!(e))?;
        let jti = burrow_core::join::hex(&burrow_core::random_bytes::<12>());
        let claims = Claims::with_custom_claims(Extra { role }, ttl.into())
            .with_subject(subject)
            .with_jwt_id(&jti);
        let token = self
            .key
            .sign(claims)
            .map_err(|e| anyhow!("signing token: {e}"))?;
        Ok((token, jti))
    }

    /// Verifies signature, algorithm and expiry.
    pub fn verify(&self, token: &str) -> anyhow::Result<Verified> {
        let options = VerificationOptions {
            time_tolerance: Some(jwt_simple::prelude::Duration::from_secs(30)),
            ..VerificationOptions::default()
        };
        let claims = self
            .public
            .verify_token::<Extra>(token, Some(options))
            .map_err(|e| anyhow!("{e}"))?;
        let (Some(subject), Some(jti), Some(exp)) =
            (claims.subject, claims.jwt_id, claims.expires_at)
        else {
            bail!("token lacks sub, jti or exp");
        };
        Ok(Verified {
            subject,
            role: claims.custom.role,
            jti,
            expires_at: exp.as_secs(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn issues_and_verifies() {
        let t = Tokens::new(&Identity::generate("g")).unwrap();
        let (tok, jti) = t
            .issue("alice", Role::Operator, Duration::from_secs(60))
            .unwrap();
        let v = t.verify(&tok).unwrap();
        assert_eq!(
            (v.subject.as_str(), v.role, v.jti),
            ("alice", Role::Operator, jti)
        );
    }

    #[test]
    fn refuses_other_keys_alg_none_and_garbage() {
        let t = Tokens::new(&Identity::generate("g")).unwrap();
        let other = Tokens::new(&Identity::generate("h")).unwrap();
        let (tok, _) = other
            .issue("mallory", Role::Gateway, Duration::from_secs(60))
            .unwrap();
        assert!(t.verify(&tok).is_err());
        // Same claims, `alg: none`, no signature.
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = tok.split('.').nth(1).unwrap();
        let none = format!(
            "{}.{payload}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#)
        );
        assert!(t.verify(&none).is_err());
        let hs = format!(
            "{}.{payload}.AAAA",
            b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#)
        );
        assert!(t.verify(&hs).is_err());
        assert!(t.verify("not a token").is_err());
    }

    /// Regression: `"100y"` passed through jwt-simple's 32-bit seconds and came out as an `exp` in
    /// 1990; ten years is the bound, and a token at the bound expires when it says.
    #[test]
    fn api_token_ttl_of_100y_is_refused_not_wrapped_to_1990() {
        let t = Tokens::new(&Identity::generate("g")).unwrap();
        let century = Duration::from_secs(100 * 365 * 86400);
        let err = t
            .issue("x", Role::Operator, century)
            .unwrap_err()
            .to_string();
        assert!(err.contains("too long"), "{err}");
        assert!(check_api_ttl(century).is_err());
        assert!(check_api_ttl(Duration::ZERO).is_err());
        let (tok, _) = t.issue("x", Role::Operator, MAX_API_TTL).unwrap();
        let now = crate::registry::now();
        let exp = t.verify(&tok).unwrap().expires_at;
        assert!(exp.abs_diff(now + MAX_API_TTL.as_secs()) < 5, "exp {exp}");
    }

    /// Regression: `--role admin` was answered with a list that included `node`, which was then
    /// refused too.
    #[test]
    fn issuable_roles_are_the_ones_listed() {
        let err = Role::parse_issuable("admin").unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown role \"admin\": expected gateway, operator or viewer"
        );
        assert!(Role::parse_issuable("node").is_err());
        for r in ["gateway", "operator", "viewer"] {
            assert_eq!(Role::parse_issuable(r).unwrap().as_str(), r);
        }
    }

    #[test]
    fn refuses_expired() {
        let t = Tokens::new(&Identity::generate("g")).unwrap();
        let claims = Claims::with_custom_claims(
            Extra { role: Role::Viewer },
            jwt_simple::prelude::Duration::from_secs(1),
        )
        .with_subject("v")
        .with_jwt_id("j");
        let mut claims = claims;
        // Expired an hour ago, well past the clock tolerance.
        let now = jwt_simple::prelude::Clock::now_since_epoch();
        claims.expires_at = Some(now - jwt_simple::prelude::Duration::from_secs(3600));
        let tok = t.key.sign(claims).unwrap();
        assert!(t.verify(&tok).is_err());
    }
}
