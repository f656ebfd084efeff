//! nginx in front of replicas, with the repository's own `deploy/nginx/nginx.conf`: only the
//! lines marked `# test: listen` and `# test: upstream` are replaced (see deploy/README.md).

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    reason = "test support: each test binary uses part of it; a failed unwrap is a failed test"
)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// The nginx program, or a failure that names the package.
fn program() -> PathBuf {
    for candidate in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    panic!(
        "nginx not found: install the Debian package nginx (apt-get install nginx; scripts/test.sh does it)"
    );
}

/// The deploy config with the test's listen port and upstream ports.
pub fn render(listen: u16, upstreams: &[u16]) -> String {
    render_with(listen, upstreams, None)
}

/// The same, and with `django` (a daphne port) serving Django's login (`/accounts/`) and the
/// identity views (`/ws/`: the token view and the connect hook) before `location /`, as a
/// deployment with identity on does (deploy/README.md).
pub fn render_with(listen: u16, upstreams: &[u16], django: Option<u16>) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nginx/nginx.conf");
    let source = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut out = String::new();
    let (mut listens, mut upstream_lines) = (0, 0);
    for line in source.lines() {
        if line.contains("# test: listen") {
            listens += 1;
            out.push_str(&format!("        listen 127.0.0.1:{listen};\n"));
        } else if line.contains("# test: upstream") {
            upstream_lines += 1;
            // Keep the line's parameters; only the address changes (and `resolve`, which needs
            // nginx 1.27.3 and a DNS name, goes).
            let server = line.split('#').next().unwrap_or_default();
            let params: Vec<&str> = server
                .trim()
                .trim_end_matches(';')
                .split_whitespace()
                .skip(2)
                .filter(|p| *p != "resolve")
                .collect();
            for port in upstreams {
                out.push_str(&format!(
                    "        server 127.0.0.1:{port} {};\n",
                    params.join(" ")
                ));
            }
        } else {
            if line.trim() == "location / {"
                && let Some(port) = django
            {
                for block_line in [
                    "        location ~ ^/(accounts|ws)/ {".to_owned(),
                    format!("            proxy_pass http://127.0.0.1:{port};"),
                    "            proxy_set_header Host $http_host;".to_owned(),
                    "            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"
                        .to_owned(),
                    "        }".to_owned(),
                ] {
                    out.push_str(&block_line);
                    out.push('\n');
                }
            }
            out.push_str(line);
            out.push('\n');
        }
    }
    assert_eq!(
        (listens, upstream_lines),
        (1, 1),
        "the test markers moved in {}",
        path.display()
    );
    out
}

/// A running nginx, killed when dropped.
pub struct Nginx {
    pub port: u16,
    _dir: tempfile::TempDir,
    child: Child,
}

impl Nginx {
    /// Starts nginx on a free port in front of `upstreams`.
    pub async fn start(upstreams: &[u16]) -> Nginx {
        Self::start_with(upstreams, None).await
    }

    /// The same, with Django on port `django` for `/accounts/` and `/ws/` ([`render_with`]).
    pub async fn start_with(upstreams: &[u16], django: Option<u16>) -> Nginx {
        let port = crate::replica::free_port();
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, render_with(port, upstreams, django)).unwrap();
        let prefix = format!("{}/", dir.path().display());
        let globals = format!(
            "daemon off; pid {}/nginx.pid; error_log stderr;",
            dir.path().display()
        );
        let child = Command::new(program())
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf)
            .arg("-g")
            .arg(globals)
            .stdout(Stdio::null())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start nginx");
        let nginx = Nginx {
            port,
            _dir: dir,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while crate::replica::http_status(port, "/healthz").await != Some(200) {
            assert!(
                Instant::now() < deadline,
                "nginx on {port} never proxied /healthz"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        nginx
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

impl Drop for Nginx {
    /// SIGTERM to the master, which stops its workers (a SIGKILL would orphan them).
    fn drop(&mut self) {
        let Some(pid) = self.child.id() else { return };
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            #[allow(
                clippy::disallowed_methods,
                reason = "Drop cannot await; test teardown"
            )]
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
