//! The `redis+sentinel://` URL: the sentinels, the master's name, and how to reach a data node
//! once a sentinel has named it. Parsing only; the lookup is in the parent module.

use redis::{ConnectionInfo, IntoConnectionInfo};

use crate::error::LayerError;
use crate::redis::text::redact;

/// The default Sentinel port, when a host is given without one.
const SENTINEL_PORT: u16 = 26379;

/// One sentinel: its address for logs and how to connect to it.
#[derive(Debug, Clone)]
pub(super) struct Endpoint {
    pub(super) addr: String,
    pub(super) info: ConnectionInfo,
}

/// What a data node's URL is made of, besides its address.
#[derive(Debug)]
pub(super) struct DataNode {
    tls: bool,
    /// `user:password` exactly as given (still percent-encoded), if any.
    userinfo: Option<String>,
    db: i64,
    insecure: bool,
}

/// A parsed Sentinel URL.
#[derive(Debug)]
pub(super) struct SentinelUrl {
    pub(super) sentinels: Vec<Endpoint>,
    pub(super) master_name: String,
    pub(super) data: DataNode,
    /// `redis+sentinel://h1:p1,h2:p2/name/db`, without credentials.
    pub(super) display: String,
}

impl DataNode {
    /// The URL of a data node at `host:port`.
    pub(super) fn url(&self, host: &str, port: u16) -> String {
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        format!(
            "{}://{}{host}:{port}/{}{}",
            if self.tls { "rediss" } else { "redis" },
            self.userinfo
                .as_ref()
                .map(|u| format!("{u}@"))
                .unwrap_or_default(),
            self.db,
            if self.insecure { "#insecure" } else { "" }
        )
    }
}

/// Parses a `redis+sentinel://` or `rediss+sentinel://` URL.
pub(super) fn parse(url: &str) -> Result<SentinelUrl, LayerError> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("rediss+sentinel://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("redis+sentinel://") {
        (false, rest)
    } else {
        return Err(bad(url, "not a redis+sentinel:// URL"));
    };
    let (rest, fragment) = rest.split_once('#').unwrap_or((rest, ""));
    let insecure = match fragment {
        "" => false,
        "insecure" => true,
        _ => return Err(bad(url, "the only fragment understood is #insecure")),
    };
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo.to_owned()), hosts),
        None => (None, authority),
    };
    let mut segments = path.split('/').filter(|s| !s.is_empty());
    let master_name = segments
        .next()
        .ok_or_else(|| bad(url, "no master name (…/MASTER_NAME[/DB])"))?
        .to_owned();
    let db = match segments.next() {
        Some(db) => db
            .parse::<i64>()
            .map_err(|_| bad(url, "the database after the master name is not a number"))?,
        None => 0,
    };
    if segments.next().is_some() {
        return Err(bad(url, "the path is /MASTER_NAME[/DB], nothing more"));
    }
    let (mut sentinel_password, mut sentinel_tls) = (None, false);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("sentinel_password", value) => {
                sentinel_password = Some(percent_decode(value).map_err(|e| bad(url, e))?);
            }
            ("sentinel_tls", "1" | "true") => sentinel_tls = true,
            ("sentinel_tls", "0" | "false") => sentinel_tls = false,
            (key, _) => {
                return Err(bad(
                    url,
                    format!("unknown parameter {key:?} (sentinel_password, sentinel_tls)"),
                ));
            }
        }
    }
    let mut sentinels = Vec::new();
    for host in hosts.split(',').filter(|h| !h.is_empty()) {
        sentinels.push(endpoint(
            url,
            host,
            sentinel_tls,
            insecure,
            sentinel_password.as_deref(),
        )?);
    }
    if sentinels.is_empty() {
        return Err(bad(url, "no sentinel address (HOST:PORT[,HOST:PORT...])"));
    }
    let display = format!(
        "{}://{}/{master_name}/{db}",
        if tls {
            "rediss+sentinel"
        } else {
            "redis+sentinel"
        },
        sentinels
            .iter()
            .map(|s| s.addr.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
    Ok(SentinelUrl {
        sentinels,
        master_name,
        data: DataNode {
            tls,
            userinfo,
            db,
            insecure,
        },
        display,
    })
}

/// A sentinel's `HOST[:PORT]` as an endpoint.
fn endpoint(
    url: &str,
    host: &str,
    tls: bool,
    insecure: bool,
    password: Option<&str>,
) -> Result<Endpoint, LayerError> {
    let addr = match host.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !p.contains(']') => {
            p.parse::<u16>()
                .map_err(|_| bad(url, format!("{host}: the port is not a number")))?;
            host.to_owned()
        }
        _ => format!("{host}:{SENTINEL_PORT}"),
    };
    let sentinel_url = format!(
        "{}://{addr}{}",
        if tls { "rediss" } else { "redis" },
        if insecure { "#insecure" } else { "" }
    );
    let mut info = sentinel_url
        .as_str()
        .into_connection_info()
        .map_err(|e| bad(url, format!("{host}: {e}")))?;
    if let Some(password) = password {
        let settings = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(settings);
    }
    Ok(Endpoint { addr, info })
}

fn bad(url: &str, why: impl std::fmt::Display) -> LayerError {
    LayerError::Config(format!(
        "{}: {why}; use redis+sentinel://[user:password@]HOST:PORT[,HOST:PORT...]/MASTER_NAME[/DB]",
        redact(url)
    ))
}

/// `%XX` escapes decoded (`+` stays a plus, as in a URL's userinfo).
fn percent_decode(s: &str) -> Result<String, &'static str> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or("a % escape is cut short")?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| "a % escape is not hexadecimal")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the sentinel password is not UTF-8")
}

/// `s` with every byte outside the URL's unreserved set as `%XX`, for a query value.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sentinel_url_names_its_sentinels_master_and_database() {
        let s = parse("redis+sentinel://u:pw@a:26379,b:26380,c/mymaster/2").unwrap();
        assert_eq!(
            s.display,
            "redis+sentinel://a:26379,b:26380,c:26379/mymaster/2"
        );
        assert_eq!(s.master_name, "mymaster");
        assert_eq!(s.data.url("10.0.0.5", 6380), "redis://u:pw@10.0.0.5:6380/2");
        assert_eq!(s.data.url("::1", 6380), "redis://u:pw@[::1]:6380/2");
        let s = parse("rediss+sentinel://h:1/m#insecure").unwrap();
        assert_eq!(s.data.url("h", 6379), "rediss://h:6379/0#insecure");
    }

    #[test]
    fn the_sentinel_password_is_decoded_and_never_displayed() {
        let secret = "p@ss word&=";
        let url = format!(
            "redis+sentinel://h:1/m?sentinel_password={}",
            percent_encode(secret)
        );
        let s = parse(&url).unwrap();
        assert_eq!(
            s.sentinels[0].info.redis_settings().password(),
            Some(secret)
        );
        assert!(!s.display.contains("pass"));
        assert!(!redact(&url).contains("pass"));
    }

    #[test]
    fn bad_sentinel_urls_say_what_is_wrong() {
        for (url, says) in [
            ("redis+sentinel://h:1", "no master name"),
            ("redis+sentinel:///m", "no sentinel address"),
            ("redis+sentinel://h:x/m", "port is not a number"),
            ("redis+sentinel://h:1/m/zero", "not a number"),
            ("redis+sentinel://h:1/m?master=x", "unknown parameter"),
        ] {
            let err = parse(url).unwrap_err().to_string();
            assert!(err.contains(says), "{url}: {err}");
            assert!(err.contains("MASTER_NAME"), "{err}");
        }
    }
}
