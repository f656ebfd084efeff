//! Words for logs and errors, shared by the connection code: Redis' own error text, and URLs
//! without their credentials. Imports nothing of the layer.

/// A Redis error in Redis' words when Redis answered with one (`NOPERM this user has no
/// permissions ...`, where redis-rs would say `NoPerm: ...`), redis-rs' description otherwise.
pub(crate) fn words(error: &redis::RedisError) -> String {
    match (error.code(), error.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        _ => error.to_string(),
    }
}

/// `scheme://user:password@host/...` without the user and password, and without a query
/// that holds a password (a Sentinel URL's `sentinel_password`).
pub(crate) fn redact(url: &str) -> String {
    let url = match url.split_once('?') {
        Some((base, query)) if query.contains("password") => format!("{base}?…"),
        _ => url.to_owned(),
    };
    let authority_end = url.find('?').unwrap_or(url.len());
    match (url.find("://"), url[..authority_end].rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}{}", &url[..scheme_end + 3], &url[at + 1..])
        }
        _ => url,
    }
}
