//! Private Redis servers for tests that restart Redis or need a Cluster,
//! which the shared server cannot do without disturbing other tests.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A port that is free now (see [`crate::free_port`]), and (for Cluster
/// nodes) whose bus port, 10000 higher, is free too.
fn free_port(cluster: bool) -> u16 {
    loop {
        let port = crate::free_port();
        if !cluster || port_free(port + 10000) {
            return port;
        }
    }
}

/// `redis-cli` for the server on `port`, over TLS with the test CA if `tls`.
fn cli(port: u16, tls: bool) -> Command {
    // Bounded: `--cluster create` waits forever for nodes that cannot meet.
    let mut cli = Command::new("timeout");
    cli.args(["60", "redis-cli"]);
    if tls {
        cli.arg("--tls").arg("--cacert").arg(crate::tls::TestCa::get().ca_file());
    }
    cli.args(["-p", &port.to_string()]);
    cli
}

fn ping(port: u16, tls: bool) -> bool {
    cli(port, tls).arg("ping").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
}

/// One `redis-server` with AOF (`appendfsync always`) in its own directory.
pub struct PrivateRedis {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
    /// Serves only TLS (`--tls-port`, certificate from the test CA).
    tls: bool,
}

impl PrivateRedis {
    pub fn start(extra: &[&str]) -> Self {
        Self::start_with(extra, false)
    }

    /// A server that speaks only TLS, with a certificate of the test CA.
    pub fn start_tls(extra: &[&str]) -> Self {
        Self::start_with(extra, true)
    }

    fn start_with(extra: &[&str], tls: bool) -> Self {
        let dir = std::env::temp_dir().join(format!("paddock-redis-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let cluster = extra.iter().any(|e| e == "--cluster-enabled");
        let mut redis = Self { port: free_port(cluster), dir, child: None, extra, tls };
        // Another process may take the port between the check and the bind:
        // then pick another one.
        for _ in 0..5 {
            if redis.spawn() {
                return redis;
            }
            redis.port = free_port(cluster);
        }
        panic!("redis-server did not start (tried five ports)");
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// Starts the server; false when it exited (port taken) instead.
    fn spawn(&mut self) -> bool {
        let mut server = Command::new("redis-server");
        let port = self.port.to_string();
        if self.tls {
            let ca = crate::tls::TestCa::get();
            server.args(["--port", "0", "--tls-port", &port, "--tls-auth-clients", "no"]);
            server.arg("--tls-cert-file").arg(ca.cert_file()).arg("--tls-key-file").arg(ca.key_file());
            server.arg("--tls-ca-cert-file").arg(ca.ca_file());
        } else {
            server.args(["--port", &port]);
        }
        let mut child = server
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if ping(self.port, self.tls) {
                self.child = Some(child);
                return true;
            }
            if child.try_wait().ok().flatten().is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// SIGKILL: no shutdown save, only what the AOF already holds survives.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill redis");
            child.wait().expect("reap redis");
        }
    }

    /// Restarts on the same port (the AOF in the same directory).
    pub fn restart(&mut self) {
        self.kill();
        assert!(self.spawn(), "redis-server did not restart on port {}", self.port);
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// A three-node Redis Cluster (no replicas) on free ports.
pub struct RedisCluster {
    pub nodes: Vec<PrivateRedis>,
}

impl RedisCluster {
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Nodes that speak only TLS, to clients and to each other.
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Self {
        let mut args = vec!["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"];
        if tls {
            args.extend(["--tls-cluster", "yes", "--tls-replication", "yes"]);
        }
        let nodes: Vec<PrivateRedis> = (0..3).map(|_| PrivateRedis::start_with(&args, tls)).collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = cli(nodes[0].port, tls)
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(out.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let started = Instant::now();
        loop {
            let info = cli(nodes[0].port, tls).args(["cluster", "info"]).output().expect("cluster info");
            if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "cluster did not become ok");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self { nodes }
    }

    pub fn url(&self) -> String {
        self.nodes[0].url()
    }
}
