//! Starting an installed systemd unit the way systemd would, on machines
//! where systemd is not PID 1 (containers, this test machine): the unit's
//! `ExecStartPre=+` commands as root, then its `ExecStart` with a clean
//! environment (`Environment=`, `EnvironmentFile=`, `$STATE_DIRECTORY`),
//! as `User=` / `Group=` with `SupplementaryGroups=`, its `UMask=`,
//! `NoNewPrivileges=`, `AmbientCapabilities=` and `CapabilityBoundingSet=`
//! (through `setpriv`), in its `StateDirectory=` owned by that user.
//! Namespacing (`ProtectSystem=`, `PrivateTmp=`, ...) and seccomp filters
//! are not emulated: `systemd-analyze verify` and `security --offline`
//! check those directives instead.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The `[Service]` directives of a unit file, each with all its values.
pub struct Unit {
    pub path: PathBuf,
    directives: BTreeMap<String, Vec<String>>,
}

impl Unit {
    pub fn read(path: &Path) -> Self {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut directives: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut section = String::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_owned();
                continue;
            }
            if section != "Service" {
                continue;
            }
            if let Some((key, value)) = line.split_once('=') {
                let values = directives.entry(key.trim().to_owned()).or_default();
                match value.trim() {
                    // An empty assignment resets the list, as in systemd.
                    "" => values.clear(),
                    value => values.push(value.to_owned()),
                }
            }
        }
        Self { path: path.to_owned(), directives }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.directives.get(key).and_then(|v| v.last()).map(String::as_str)
    }

    fn all(&self, key: &str) -> Vec<&str> {
        self.directives.get(key).into_iter().flatten().flat_map(|v| v.split_whitespace()).collect()
    }

    fn yes(&self, key: &str) -> bool {
        matches!(self.get(key), Some("yes" | "true" | "1" | "on"))
    }

    /// The unit's environment: `Environment=` then each `EnvironmentFile=`
    /// (`-` marks one that may be missing), as systemd reads them.
    fn environment(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        for assignment in self.directives.get("Environment").into_iter().flatten() {
            for pair in assignment.split_whitespace() {
                if let Some((k, v)) = pair.trim_matches('"').split_once('=') {
                    env.push((k.to_owned(), v.to_owned()));
                }
            }
        }
        for file in self.directives.get("EnvironmentFile").into_iter().flatten() {
            let (optional, file) = match file.strip_prefix('-') {
                Some(file) => (true, file),
                None => (false, file.as_str()),
            };
            let text = match std::fs::read_to_string(file) {
                Ok(text) => text,
                Err(_) if optional => continue,
                Err(e) => panic!("EnvironmentFile {file}: {e}"),
            };
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
                if let Some((k, v)) = line.split_once('=') {
                    env.push((k.trim().to_owned(), v.trim().trim_matches('"').to_owned()));
                }
            }
        }
        env
    }

    /// Starts the service with `extra` variables on top of its own (what a
    /// drop-in's `Environment=` would add), its output into `log`.
    pub fn start(&self, extra: &[(String, String)], log: &Path) -> Child {
        for pre in self.all_lines("ExecStartPre") {
            let (privileged, command) = match pre.strip_prefix('+') {
                Some(command) => (true, command),
                None => (false, pre),
            };
            assert!(privileged, "{}: unprivileged ExecStartPre is not emulated", self.path.display());
            let words: Vec<&str> = command.split_whitespace().collect();
            let status = Command::new(words[0]).args(&words[1..]).status().expect("ExecStartPre runs");
            assert!(status.success(), "{}: ExecStartPre {command} failed", self.path.display());
        }
        let user = self.get("User").unwrap_or("root");
        let group = self.get("Group").unwrap_or(user);
        let mut env = vec![
            ("PATH".to_owned(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned()),
            ("USER".to_owned(), user.to_owned()),
            ("LOGNAME".to_owned(), user.to_owned()),
            ("HOME".to_owned(), home_of(user)),
            ("LANG".to_owned(), "C.UTF-8".to_owned()),
        ];
        let state: Vec<String> = self.all("StateDirectory").iter().map(|d| format!("/var/lib/{d}")).collect();
        for dir in &state {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("StateDirectory {dir}: {e}"));
            let mode = self.get("StateDirectoryMode").unwrap_or("0755");
            run("chown", &[&format!("{user}:{group}"), dir]);
            run("chmod", &[mode, dir]);
        }
        if !state.is_empty() {
            env.push(("STATE_DIRECTORY".to_owned(), state.join(":")));
        }
        env.extend(self.environment());
        env.extend(extra.iter().cloned());
        let exec = self.get("ExecStart").expect("the unit has an ExecStart");
        let mut setpriv = vec![format!("--reuid={user}"), format!("--regid={group}")];
        let groups: Vec<&str> = self.all("SupplementaryGroups");
        setpriv.push(if groups.is_empty() {
            "--clear-groups".to_owned()
        } else {
            format!("--groups={}", groups.join(","))
        });
        if self.yes("NoNewPrivileges") {
            setpriv.push("--no-new-privs".to_owned());
        }
        let caps: Vec<String> = self.all("AmbientCapabilities").iter().map(|c| cap_name(c)).collect();
        if !caps.is_empty() {
            let list = caps.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(",");
            setpriv.push(format!("--inh-caps={list}"));
            setpriv.push(format!("--ambient-caps={list}"));
        }
        if self.directives.contains_key("CapabilityBoundingSet") {
            let keep: Vec<String> =
                self.all("CapabilityBoundingSet").iter().map(|c| format!("+{}", cap_name(c))).collect();
            setpriv.push(format!("--bounding-set=-all{}", keep.iter().map(|c| format!(",{c}")).collect::<String>()));
        }
        let umask = self.get("UMask").unwrap_or("0022");
        let file = std::fs::File::create(log).expect("unit log");
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(format!("umask {umask} && exec setpriv \"$@\""))
            .arg("sh")
            .args(&setpriv)
            .arg("--")
            .args(exec.split_whitespace())
            .env_clear()
            .envs(env)
            .current_dir(self.get("WorkingDirectory").or(state.first().map(String::as_str)).unwrap_or("/"))
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log fd"))
            .stderr(file);
        command.spawn().unwrap_or_else(|e| panic!("{}: {e}", self.path.display()))
    }

    fn all_lines(&self, key: &str) -> Vec<&str> {
        self.directives.get(key).into_iter().flatten().map(String::as_str).collect()
    }

    /// Stops the service as systemd does: `KillSignal=` (SIGTERM by
    /// default), then SIGKILL after `TimeoutStopSec=`; returns its exit
    /// status, `None` when it had to be killed.
    pub fn stop(&self, child: &mut Child) -> Option<std::process::ExitStatus> {
        let signal = self.get("KillSignal").unwrap_or("SIGTERM").trim_start_matches("SIG").to_owned();
        run("kill", &[&format!("-{signal}"), &child.id().to_string()]);
        let timeout: u64 = self.get("TimeoutStopSec").and_then(|t| t.parse().ok()).unwrap_or(90);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(timeout);
        while std::time::Instant::now() < until {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

/// `CAP_NET_ADMIN` → `net_admin`, as setpriv names capabilities.
fn cap_name(cap: &str) -> String {
    cap.trim_start_matches("CAP_").to_ascii_lowercase()
}

fn home_of(user: &str) -> String {
    let out = Command::new("getent").args(["passwd", user]).output().expect("getent");
    String::from_utf8_lossy(&out.stdout).split(':').nth(5).unwrap_or("/").to_owned()
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(status.success(), "{program} {args:?} failed");
}
