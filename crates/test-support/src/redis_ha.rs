//! Highly available Redis topologies of the test's own, on free loopback ports: a Sentinel set
//! ([`SentinelSet`]: a master, a replica, three sentinels) and a Redis Cluster ([`Cluster`]:
//! three masters, three replicas). Every process is a `redis-server` (Sentinel is
//! `redis-server FILE --sentinel`), stopped when its fixture is dropped and also when the test
//! process dies (the same shell watchdog as [`crate::redis_server`]).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// One `redis-server` process (data node, cluster node or sentinel).
#[derive(Debug)]
pub struct RedisProcess {
    /// Its port.
    pub port: u16,
    /// The redis-server's own process id (not the watchdog's).
    pub pid: u32,
    /// What it was started with, to start it again ([`RedisProcess::restart`]).
    args: Vec<String>,
    process: Option<(Child, ChildStdin)>,
}

/// Fails, naming the package, when redis-server is not installed.
fn require_redis_server() {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "redis-server not found on PATH: install the Debian package redis-server \
         (it also provides Sentinel and cluster mode; scripts/test.sh installs it)"
    );
}

impl RedisProcess {
    /// Starts `redis-server ARGS` (ARGS may start with a config file) and waits for `PING`.
    pub fn start(port: u16, args: &[String]) -> Self {
        require_redis_server();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#""$0" "$@" & pid=$!; echo "$pid"; read -r _ || true; kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null"#)
            .arg("redis-server")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot start sh for redis-server");
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        {
            use std::io::Read;
            let mut byte = [0u8; 1];
            while stdout.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
                line.push(char::from(byte[0]));
            }
        }
        let pid = line
            .trim()
            .parse()
            .expect("the watchdog printed redis' pid");
        let process = Self {
            port,
            pid,
            args: args.to_vec(),
            process: Some((child, stdin)),
        };
        process.wait_ready();
        process
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.try_query::<String>(&redis::cmd("PING")).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 10 s",
                self.port
            );
            #[allow(clippy::disallowed_methods, reason = "test setup")]
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:<port>`
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Runs one command on a fresh connection.
    pub fn try_query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        let mut conn = redis::Client::open(self.url())?
            .get_connection_with_timeout(Duration::from_millis(500))?;
        conn.set_read_timeout(Some(Duration::from_secs(2)))?;
        cmd.query(&mut conn)
    }

    /// Runs one command on a fresh connection; fails the test on an error.
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        self.try_query(cmd)
            .unwrap_or_else(|e| panic!("{cmd:?} on port {}: {e}", self.port))
    }

    /// Kills the process at once (SIGKILL): no goodbye to its clients.
    pub fn kill(&mut self) {
        let status = Command::new("kill")
            .args(["-9", &self.pid.to_string()])
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -9 {} failed", self.pid);
        self.stop();
    }

    /// Kills the process (SIGKILL) and starts it again on the same port with the same
    /// arguments: its clients' connections die; a cluster node keeps its slots (its
    /// `nodes.conf`) but, without persistence, not its data.
    pub fn restart(&mut self) {
        self.kill();
        let args = std::mem::take(&mut self.args);
        *self = Self::start(self.port, &args);
    }

    /// Stops the process (SIGKILL through the watchdog) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some((mut child, mut stdin)) = self.process.take() {
            let _ = stdin.write_all(b"stop\n");
            drop(stdin);
            let _ = child.wait();
        }
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fresh directory under the system's temporary directory, removed when dropped.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// `$TMPDIR/channels-<what>-<pid>-<n>`, created empty.
    pub fn new(what: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "channels-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cannot create a temporary directory");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn data_node_args(port: u16, dir: &std::path::Path) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
        "--loglevel",
        "warning",
        "--dir",
        &dir.to_string_lossy(),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// A Sentinel set: `master` and `replica` data nodes and three sentinels monitoring
/// [`SentinelSet::MASTER`] with a quorum of two, `down-after-milliseconds 1000`.
#[derive(Debug)]
pub struct SentinelSet {
    /// The first master.
    pub master: RedisProcess,
    /// Its replica (promoted on a failover).
    pub replica: RedisProcess,
    /// The three sentinels.
    pub sentinels: Vec<RedisProcess>,
    _dir: TempDir,
}

impl SentinelSet {
    /// The monitored master's name.
    pub const MASTER: &'static str = "mymaster";

    /// Starts the set and waits until the sentinels know each other and the replica.
    pub fn start() -> Self {
        let dir = TempDir::new("sentinel");
        let (mp, rp) = (free_port(), free_port());
        let master = RedisProcess::start(mp, &data_node_args(mp, &dir.0));
        let mut replica_args = data_node_args(rp, &dir.0);
        replica_args.extend([
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            mp.to_string(),
        ]);
        let replica = RedisProcess::start(rp, &replica_args);
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let file = dir.0.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &file,
                format!(
                    "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {dir}\nloglevel warning\n\
                     sentinel monitor {name} 127.0.0.1 {mp} 2\n\
                     sentinel down-after-milliseconds {name} 1000\n\
                     sentinel failover-timeout {name} 5000\n\
                     sentinel parallel-syncs {name} 1\n",
                    dir = dir.0.display(),
                    name = Self::MASTER
                ),
            )
            .expect("cannot write a sentinel config");
            sentinels.push(RedisProcess::start(
                port,
                &[file.to_string_lossy().into_owned(), "--sentinel".to_owned()],
            ));
        }
        let set = Self {
            master,
            replica,
            sentinels,
            _dir: dir,
        };
        set.wait_known();
        set
    }

    /// Waits until every sentinel lists the two others and the replica, and the replica is in
    /// sync: a failover can happen from then on.
    fn wait_known(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = self.sentinels.iter().all(|s| {
                let peers: Vec<redis::Value> = s
                    .try_query(redis::cmd("SENTINEL").arg("sentinels").arg(Self::MASTER))
                    .unwrap_or_default();
                let replicas: Vec<redis::Value> = s
                    .try_query(redis::cmd("SENTINEL").arg("replicas").arg(Self::MASTER))
                    .unwrap_or_default();
                peers.len() == 2 && replicas.len() == 1
            }) && self
                .replica
                .try_query::<String>(redis::cmd("INFO").arg("replication"))
                .is_ok_and(|info| info.contains("master_link_status:up"));
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinels did not find each other and the replica within 20 s"
            );
            #[allow(clippy::disallowed_methods, reason = "test setup")]
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `redis+sentinel://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/mymaster/0`
    pub fn url(&self) -> String {
        let addrs: Vec<String> = self.sentinels.iter().map(RedisProcess::addr).collect();
        format!("redis+sentinel://{}/{}/0", addrs.join(","), Self::MASTER)
    }

    /// The port of the master as the first sentinel that answers names it.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let answer: Option<(String, u16)> = s
                .try_query(
                    redis::cmd("SENTINEL")
                        .arg("get-master-addr-by-name")
                        .arg(Self::MASTER),
                )
                .ok()?;
            answer.map(|(_, port)| port)
        })
    }
}

/// Fails, naming the package, when redis-cli is not installed.
fn require_redis_cli() {
    let found = Command::new("redis-cli")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "redis-cli not found on PATH: install the Debian package redis-tools \
         (a dependency of redis-server; scripts/test.sh installs it)"
    );
}

/// Runs `redis-cli ARGS` and fails the test, with its output, unless it succeeds.
pub fn redis_cli(args: &[&str]) -> String {
    require_redis_cli();
    let out = Command::new("redis-cli")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run redis-cli");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "redis-cli {args:?} failed:\n{text}");
    text
}

/// A Redis Cluster of three masters and three replicas (`redis-cli --cluster create`,
/// `cluster-node-timeout 2000`).
#[derive(Debug)]
pub struct Cluster {
    /// The six nodes, the first three created as masters.
    pub nodes: Vec<RedisProcess>,
    _dir: TempDir,
}

impl Cluster {
    /// Starts six nodes, makes the cluster and waits until every node says `cluster_state:ok`.
    pub fn start() -> Self {
        Self::start_with(1)
    }

    /// Three masters with `replicas` replicas each.
    pub fn start_with(replicas: usize) -> Self {
        let dir = TempDir::new("cluster");
        let mut nodes = Vec::new();
        for _ in 0..3 * (1 + replicas) {
            let port = free_port();
            let node_dir = dir.0.join(port.to_string());
            std::fs::create_dir_all(&node_dir).expect("cannot create a node directory");
            let mut args = data_node_args(port, &node_dir);
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ]
                .map(str::to_owned),
            );
            nodes.push(RedisProcess::start(port, &args));
        }
        let addrs: Vec<String> = nodes.iter().map(RedisProcess::addr).collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        let replicas = replicas.to_string();
        args.extend(["--cluster-replicas", &replicas, "--cluster-yes"]);
        redis_cli(&args);
        let cluster = Self { nodes, _dir: dir };
        cluster.wait_ok();
        cluster
    }

    /// Waits until every live node says `cluster_state:ok` and agrees on the slot map.
    pub fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = self.nodes.iter().filter(|n| n.process.is_some()).all(|n| {
                n.try_query::<String>(redis::cmd("CLUSTER").arg("INFO"))
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not reach cluster_state:ok within 30 s"
            );
            #[allow(clippy::disallowed_methods, reason = "test setup")]
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `redis+cluster://` with the three first masters.
    pub fn url(&self) -> String {
        let addrs: Vec<String> = self.nodes[..3].iter().map(RedisProcess::addr).collect();
        format!("redis+cluster://{}", addrs.join(","))
    }

    /// A live node to ask.
    fn any(&self) -> &RedisProcess {
        self.nodes
            .iter()
            .find(|n| n.process.is_some())
            .expect("a live node")
    }

    /// `CLUSTER KEYSLOT name`
    pub fn keyslot(&self, name: &str) -> u16 {
        self.any()
            .query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(name))
    }

    /// The port of the master that owns `slot`, as a live node sees it.
    pub fn owner(&self, slot: u16) -> u16 {
        let slots: Vec<(u16, u16, (String, u16))> = self
            .any()
            .query::<Vec<redis::Value>>(redis::cmd("CLUSTER").arg("SLOTS"))
            .into_iter()
            .map(|range| {
                let redis::Value::Array(f) = range else {
                    panic!("CLUSTER SLOTS range {range:?}")
                };
                let n = |v: &redis::Value| match v {
                    redis::Value::Int(i) => *i as u16,
                    other => panic!("not an int: {other:?}"),
                };
                let redis::Value::Array(master) = &f[2] else {
                    panic!("CLUSTER SLOTS master {:?}", f[2])
                };
                let host = match &master[0] {
                    redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                    other => panic!("host {other:?}"),
                };
                (n(&f[0]), n(&f[1]), (host, n(&master[1])))
            })
            .collect();
        slots
            .iter()
            .find(|(start, end, _)| (*start..=*end).contains(&slot))
            .map(|(_, _, (_, port))| *port)
            .unwrap_or_else(|| panic!("nobody owns slot {slot}"))
    }

    /// The node on `port`.
    pub fn node(&self, port: u16) -> &RedisProcess {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .expect("a node of the cluster")
    }

    /// The node on `port`, to kill it.
    pub fn node_mut(&mut self, port: u16) -> &mut RedisProcess {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of the cluster")
    }

    /// `CLUSTER MYID` of the node on `port`.
    pub fn id(&self, port: u16) -> String {
        self.node(port).query(redis::cmd("CLUSTER").arg("MYID"))
    }

    /// `redis-cli --cluster reshard`: moves the lowest `slots` slots of the master on `from`
    /// to the master on `to`.
    pub fn reshard(&self, from: u16, to: u16, slots: usize) -> String {
        let (from_id, to_id) = (self.id(from), self.id(to));
        let addr = self.node(from).addr();
        redis_cli(&[
            "--cluster",
            "reshard",
            &addr,
            "--cluster-from",
            &from_id,
            "--cluster-to",
            &to_id,
            "--cluster-slots",
            &slots.to_string(),
            "--cluster-yes",
        ])
    }

    /// Ports of the masters that own slots now.
    pub fn masters(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = (0..16384u16).step_by(512).map(|s| self.owner(s)).collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }
}
