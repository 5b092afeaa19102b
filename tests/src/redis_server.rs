//! Private Redis servers for tests that restart Redis or need a Cluster,
//! which the shared server cannot do without disturbing other tests.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

fn wait_for_ping(port: u16) {
    let started = Instant::now();
    loop {
        let pong = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "ping"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG");
        if pong {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "redis on port {port} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One `redis-server` with AOF (`appendfsync always`) in its own directory.
pub struct PrivateRedis {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
}

impl PrivateRedis {
    pub fn start(extra: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("paddock-redis-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut redis =
            Self { port: free_port(), dir, child: None, extra: extra.iter().map(|s| (*s).to_owned()).collect() };
        redis.spawn();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        wait_for_ping(self.port);
    }

    /// SIGKILL: no shutdown save, only what the AOF already holds survives.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill redis");
            child.wait().expect("reap redis");
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
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
        let nodes: Vec<PrivateRedis> = (0..3)
            .map(|_| PrivateRedis::start(&["--cluster-enabled", "yes", "--cluster-node-timeout", "5000"]))
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(out.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let started = Instant::now();
        loop {
            let info = Command::new("redis-cli")
                .args(["-p", &nodes[0].port.to_string(), "cluster", "info"])
                .output()
                .expect("cluster info");
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
