//! Signed connection tokens (JWT): where they travel, and how they are verified.
//!
//! The verifier, not the token, picks the algorithm (RFC 8725 §3.1): HS256 for a shared secret,
//! RS256 for an RSA public key, ES256 for an EC P-256 public key. `none` and every other
//! algorithm are refused, so a token signed with HS256 using the RSA public key as the secret
//! (algorithm confusion) fails like any wrong signature.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, header};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{AuthRefusal, Identity};

/// Tokens longer than this are refused before they are parsed.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// The claims a connection token carries. `sub` and `exp` are required.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenClaims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Not before, seconds since the Unix epoch.
    #[serde(default)]
    pub nbf: Option<u64>,
    /// The display name.
    #[serde(default)]
    pub name: Option<String>,
    /// The groups the connection may join: exact names or prefixes ending in `*`. Absent: none.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Public information about the user, given to consumers as is.
    #[serde(default)]
    pub info: Map<String, Value>,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Longer than [`MAX_TOKEN_LEN`].
    #[error("token longer than {MAX_TOKEN_LEN} bytes")]
    TooLarge,
    /// `exp` passed.
    #[error("token expired")]
    Expired,
    /// `nbf` is ahead.
    #[error("token not yet valid")]
    NotYetValid,
    /// Anything else: shape, algorithm, signature, claims.
    #[error("invalid token: {0}")]
    Invalid(String),
}

impl TokenError {
    pub(crate) fn refusal(&self) -> AuthRefusal {
        match self {
            TokenError::TooLarge => AuthRefusal::TokenTooLarge,
            TokenError::Expired => AuthRefusal::TokenExpired,
            TokenError::NotYetValid => AuthRefusal::TokenNotYetValid,
            TokenError::Invalid(_) => AuthRefusal::TokenInvalid,
        }
    }
}

/// Verifies connection tokens with one key and the one algorithm that key implies.
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
    cookie: Option<String>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("TokenVerifier")
            .field("algorithms", &self.validation.algorithms)
            .field("leeway", &self.validation.leeway)
            .field("cookie", &self.cookie)
            .finish_non_exhaustive()
    }
}

/// The default leeway for `exp` and `nbf`: clocks of Django and the replicas may differ by this
/// much.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(5);

impl TokenVerifier {
    /// HS256 with a shared secret of at least 32 bytes (RFC 8725 §3.5: no short or memorable
    /// secrets).
    pub fn hs256(secret: &[u8]) -> Result<Self, String> {
        if secret.len() < 32 {
            return Err(format!(
                "the HS256 token secret has {} bytes; give at least 32 random bytes \
                 (for example: python3 -c 'import secrets; print(secrets.token_urlsafe(48))')",
                secret.len()
            ));
        }
        let key = DecodingKey::from_secret(secret)
            .map_err(|error| format!("the HS256 token secret is not usable: {error}"))?;
        Ok(Self::with_key(key, Algorithm::HS256))
    }

    /// RS256 for an RSA public key, ES256 for an EC (P-256) public key, in PEM.
    pub fn public_key_pem(pem: &[u8]) -> Result<Self, String> {
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            return Ok(Self::with_key(key, Algorithm::RS256));
        }
        match DecodingKey::from_ec_pem(pem) {
            Ok(key) => Ok(Self::with_key(key, Algorithm::ES256)),
            Err(error) => Err(format!(
                "the token public key is neither an RSA nor an EC public key in PEM ({error}); \
                 give the PEM of the public half of the key Django signs with \
                 (openssl pkey -in private.pem -pubout)"
            )),
        }
    }

    fn with_key(key: DecodingKey, algorithm: Algorithm) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.leeway = DEFAULT_LEEWAY.as_secs();
        Self {
            key,
            validation,
            cookie: None,
        }
    }

    /// Also reads the token from the cookie `name`.
    #[must_use]
    pub fn cookie(mut self, name: impl Into<String>) -> Self {
        self.cookie = Some(name.into());
        self
    }

    /// The leeway on `exp` and `nbf` (default [`DEFAULT_LEEWAY`]).
    #[must_use]
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.validation.leeway = leeway.as_secs();
        self
    }

    /// Requires the `aud` claim to be one of `audience`.
    #[must_use]
    pub fn audience(mut self, audience: &[String]) -> Self {
        self.validation.set_audience(audience);
        self.validation.validate_aud = true;
        self.validation
            .required_spec_claims
            .insert("aud".to_owned());
        self
    }

    /// Requires the `iss` claim to be one of `issuers`.
    #[must_use]
    pub fn issuer(mut self, issuers: &[String]) -> Self {
        self.validation.set_issuer(issuers);
        self.validation
            .required_spec_claims
            .insert("iss".to_owned());
        self
    }

    /// Verifies `token` at `now` and gives its identity; it expires at `exp` plus the leeway.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Identity, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLarge);
        }
        let claims = self.claims(token)?;
        // jsonwebtoken checks against the system clock; `now` is checked too so that a caller's
        // clock (tests, a connection's expiry) is the one that decides.
        let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let leeway = self.validation.leeway;
        if claims.exp.saturating_add(leeway) < now_secs {
            return Err(TokenError::Expired);
        }
        if claims
            .nbf
            .is_some_and(|nbf| nbf > now_secs.saturating_add(leeway))
        {
            return Err(TokenError::NotYetValid);
        }
        let expires_at = UNIX_EPOCH
            .checked_add(Duration::from_secs(claims.exp.saturating_add(leeway)))
            .ok_or_else(|| TokenError::Invalid("exp out of range".to_owned()))?;
        Ok(
            Identity::granted(claims.sub, claims.name, &claims.groups, claims.info)
                .with_expiry(expires_at),
        )
    }

    /// The verified claims of `token` (signature, algorithm, `exp`, `nbf`, and `aud`/`iss` when
    /// configured).
    pub fn claims(&self, token: &str) -> Result<TokenClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLarge);
        }
        match jsonwebtoken::decode::<TokenClaims>(token, &self.key, &self.validation) {
            Ok(data) => Ok(data.claims),
            Err(error) => Err(match error.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                _ => TokenError::Invalid(error.to_string()),
            }),
        }
    }

    /// The token in the configured cookie, if any.
    pub(crate) fn token_in_cookie(&self, headers: &HeaderMap) -> Option<String> {
        let name = self.cookie.as_deref()?;
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.trim_matches('"').to_owned())
    }
}

/// The token of `Sec-WebSocket-Protocol: bearer, <token>`: the entry after `bearer`.
pub(crate) fn from_subprotocol(headers: &HeaderMap) -> Option<String> {
    let mut entries = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    entries.find(|e| e.eq_ignore_ascii_case("bearer"))?;
    entries.next().filter(|t| !t.is_empty()).map(str::to_owned)
}

/// Takes the `token` parameter out of a raw query string, percent-decoded.
pub(crate) fn take_from_query(query: &mut String) -> Option<String> {
    let mut token = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if key != "token" {
                return true;
            }
            if token.is_none() {
                let value = value.replace('+', " ");
                token = percent_encoding::percent_decode_str(&value)
                    .decode_utf8()
                    .ok()
                    .map(|v| v.into_owned());
            }
            false
        })
        .collect();
    let token = token?;
    *query = kept.join("&");
    Some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_query_loses_its_token_and_keeps_the_rest() {
        let mut query = "groupID=1&token=a%2Eb.c&x=2".to_owned();
        assert_eq!(take_from_query(&mut query).as_deref(), Some("a.b.c"));
        assert_eq!(query, "groupID=1&x=2");
        let mut none = "groupID=1".to_owned();
        assert_eq!(take_from_query(&mut none), None);
        assert_eq!(none, "groupID=1");
    }

    #[test]
    fn the_subprotocol_pair_and_the_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("bearer, a.b.c"),
        );
        assert_eq!(from_subprotocol(&headers).as_deref(), Some("a.b.c"));
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("chat"),
        );
        assert_eq!(from_subprotocol(&headers), None);
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; jwt=x.y.z; b=2"),
        );
        let verifier = TokenVerifier::hs256(&[7; 32]).map(|v| v.cookie("jwt"));
        assert_eq!(
            verifier
                .ok()
                .and_then(|v| v.token_in_cookie(&headers))
                .as_deref(),
            Some("x.y.z")
        );
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(TokenVerifier::hs256(b"secret").is_err());
        assert!(TokenVerifier::public_key_pem(b"not a pem").is_err());
    }
}
