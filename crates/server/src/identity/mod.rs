//! Who is connecting, and which groups they may join: identity decided by your Django app.
//!
//! Off unless configured. Two mechanisms, either or both:
//!
//! * **Signed connection tokens** ([`TokenVerifier`]): a JWT that Django signed (HS256 with a
//!   shared secret, or RS256/ES256 with a private key whose public half the replicas hold),
//!   carried as `?token=...`, as the subprotocol pair `bearer, <token>`, or in a cookie.
//! * **A connect hook** ([`ConnectHook`]): before the upgrade, the replica POSTs a description
//!   of the handshake (its cookies included) to a Django view, which answers with the user and
//!   the groups they may join.
//!
//! A handshake that carries a token is judged by the token; one without goes to the hook when
//! there is one, and is refused (401) otherwise. The result is an [`Identity`] in the
//! connection's scope ([`Scope::identity`](crate::consumer::Scope::identity)). With an
//! identity, [`Context::group_add`](crate::consumer::Context::group_add) and
//! [`Context::group_send`](crate::consumer::Context::group_send) refuse groups its
//! [`GroupGrant`] does not allow, and every group message carries the sender (`user`, `name`).
//! When a token's `exp` passes, the connection is closed with
//! [`Close::TOKEN_EXPIRED`](crate::consumer::Close::TOKEN_EXPIRED).

mod grant;
mod hook;
mod token;

use std::time::SystemTime;

use axum::http::{HeaderMap, StatusCode, header};
use serde_json::{Map, Value};

pub use grant::GroupGrant;
pub use hook::{
    ConnectHook, DEFAULT_HOOK_MAX_IN_FLIGHT, DEFAULT_HOOK_TIMEOUT, FORWARDED_HEADERS, HookRequest,
    HookResponse, MAX_ANSWER_BYTES,
};
pub use token::{DEFAULT_LEEWAY, MAX_TOKEN_LEN, TokenClaims, TokenError, TokenVerifier};

/// The identity a connection was accepted with.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    user: String,
    name: Option<String>,
    info: Map<String, Value>,
    groups: GroupGrant,
    expires_at: Option<SystemTime>,
}

impl Identity {
    /// A user with no name, no info, no group and no expiry.
    pub fn new(user: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            name: None,
            info: Map::new(),
            groups: GroupGrant::default(),
            expires_at: None,
        }
    }

    /// With a display name.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// With the groups this identity may join.
    #[must_use]
    pub fn with_groups(mut self, groups: GroupGrant) -> Self {
        self.groups = groups;
        self
    }

    /// With an info map (what the hook or the token's `info` claim gave).
    #[must_use]
    pub fn with_info(mut self, info: Map<String, Value>) -> Self {
        self.info = info;
        self
    }

    /// With an expiry: the connection is closed with `4401` at this time.
    #[must_use]
    pub fn with_expiry(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// The identity a token's claims or a hook's answer describe: `user`, an optional `name`,
    /// the `groups` patterns and the `info` map.
    pub(crate) fn granted(
        user: String,
        name: Option<String>,
        groups: &[String],
        info: Map<String, Value>,
    ) -> Self {
        Self {
            user,
            name,
            info,
            groups: GroupGrant::new(groups),
            expires_at: None,
        }
    }

    /// The user id (a token's `sub`, the hook's `user`).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The display name, if one was given.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The info map (empty if none was given).
    pub fn info(&self) -> &Map<String, Value> {
        &self.info
    }

    /// The groups this identity may join and post into.
    pub fn groups(&self) -> &GroupGrant {
        &self.groups
    }

    /// When the connection must end (a token's `exp` plus the leeway); `None`: never.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }
}

/// Why a handshake was refused for its identity: each is a `reason` label of
/// `channels_handshakes_refused_total`, and an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthRefusal {
    /// Tokens are required and the handshake carried none (401).
    TokenMissing,
    /// A token over the size limit (401).
    TokenTooLarge,
    /// A token whose `exp` passed (401).
    TokenExpired,
    /// A token whose `nbf` is still ahead (401).
    TokenNotYetValid,
    /// Anything else wrong with a token: its shape, its signature, its algorithm, its claims
    /// (401).
    TokenInvalid,
    /// The hook answered 401 or 403 (403).
    HookDenied,
    /// The hook did not answer within its timeout (503).
    HookTimeout,
    /// The hook could not be reached (503).
    HookUnreachable,
    /// The hook answered with another status (503).
    HookStatus,
    /// The hook's answer is not the expected JSON (503).
    HookBadAnswer,
    /// The hook's answer is over 64 KiB (503).
    HookTooLarge,
    /// Too many hook calls are in flight (503).
    HookBusy,
}

impl AuthRefusal {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            AuthRefusal::TokenMissing => "token_missing",
            AuthRefusal::TokenTooLarge => "token_too_large",
            AuthRefusal::TokenExpired => "token_expired",
            AuthRefusal::TokenNotYetValid => "token_not_yet_valid",
            AuthRefusal::TokenInvalid => "token_invalid",
            AuthRefusal::HookDenied => "hook_denied",
            AuthRefusal::HookTimeout => "hook_timeout",
            AuthRefusal::HookUnreachable => "hook_unreachable",
            AuthRefusal::HookStatus => "hook_status",
            AuthRefusal::HookBadAnswer => "hook_bad_answer",
            AuthRefusal::HookTooLarge => "hook_too_large",
            AuthRefusal::HookBusy => "hook_busy",
        }
    }

    /// The handshake's HTTP status and one-line body.
    pub fn response(self) -> (StatusCode, &'static str) {
        match self {
            AuthRefusal::TokenMissing => {
                (StatusCode::UNAUTHORIZED, "a connection token is required\n")
            }
            AuthRefusal::TokenTooLarge
            | AuthRefusal::TokenExpired
            | AuthRefusal::TokenNotYetValid
            | AuthRefusal::TokenInvalid => (
                StatusCode::UNAUTHORIZED,
                "the connection token is not valid: fetch a new one\n",
            ),
            AuthRefusal::HookDenied => (StatusCode::FORBIDDEN, "not allowed to connect\n"),
            _ => (
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot check who you are right now: try again later\n",
            ),
        }
    }
}

/// Decides the identity of a handshake: tokens, a connect hook, or both.
#[derive(Debug, Default)]
pub struct Authenticator {
    tokens: Option<TokenVerifier>,
    hook: Option<ConnectHook>,
}

/// What a handshake carries towards its identity, taken from it before the scope is built.
#[derive(Debug, Default)]
pub(crate) struct Credentials {
    /// The token, if the handshake carried one.
    pub(crate) token: Option<String>,
    /// The token came as the subprotocol pair `bearer, <token>`: the 101 answers `bearer`.
    pub(crate) subprotocol: bool,
}

impl Authenticator {
    /// Neither tokens nor a hook: every handshake is anonymous.
    pub fn new() -> Self {
        Self::default()
    }

    /// Verifies connection tokens with `verifier`.
    #[must_use]
    pub fn with_tokens(mut self, verifier: TokenVerifier) -> Self {
        self.tokens = Some(verifier);
        self
    }

    /// Asks `hook` about handshakes that carry no token.
    #[must_use]
    pub fn with_connect_hook(mut self, hook: ConnectHook) -> Self {
        self.hook = Some(hook);
        self
    }

    /// Whether tokens or a hook are configured.
    pub fn is_enabled(&self) -> bool {
        self.tokens.is_some() || self.hook.is_some()
    }

    /// Takes the token out of the handshake: from `Sec-WebSocket-Protocol: bearer, <token>`,
    /// the `token` query parameter, or the configured cookie, in that order. The token is
    /// removed from `headers` and `query` (so the scope, and whatever logs it, never holds it).
    pub(crate) fn credentials(&self, headers: &mut HeaderMap, query: &mut String) -> Credentials {
        let Some(tokens) = &self.tokens else {
            return Credentials::default();
        };
        if let Some(token) = token::from_subprotocol(headers) {
            headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
            return Credentials {
                token: Some(token),
                subprotocol: true,
            };
        }
        if let Some(token) = token::take_from_query(query) {
            return Credentials {
                token: Some(token),
                subprotocol: false,
            };
        }
        Credentials {
            token: tokens.token_in_cookie(headers),
            subprotocol: false,
        }
    }

    /// The identity from a token, if the handshake carried one or tokens are all there is;
    /// `Ok(None)`: ask the hook.
    pub(crate) fn identity_of_token(
        &self,
        credentials: &Credentials,
        now: SystemTime,
    ) -> Result<Option<Identity>, AuthRefusal> {
        let Some(tokens) = &self.tokens else {
            return Ok(None);
        };
        match &credentials.token {
            Some(token) => tokens
                .verify(token, now)
                .map(Some)
                .map_err(|error| error.refusal()),
            None if self.hook.is_some() => Ok(None),
            None => Err(AuthRefusal::TokenMissing),
        }
    }

    /// The connect hook, if one is configured.
    pub(crate) fn hook(&self) -> Option<&ConnectHook> {
        self.hook.as_ref()
    }
}
