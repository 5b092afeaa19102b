//! Reads a created container back and refuses it unless every hardening
//! setting is in force. bollard sends unversioned requests, so an engine
//! older than the request schema silently drops fields it does not know.

use bollard::models::ContainerInspectResponse;
use common::config::SandboxConfig;
use common::policy::SandboxPolicy;

use super::{ProcessLimits, SandboxError, WORKSPACE};

fn check<T: PartialEq + std::fmt::Debug>(field: &'static str, expected: T, found: T) -> Result<(), SandboxError> {
    if expected == found {
        Ok(())
    } else {
        Err(SandboxError::NotHardened { field, expected: format!("{expected:?}"), found: format!("{found:?}") })
    }
}

pub fn verify(
    inspected: &ContainerInspectResponse,
    config: &SandboxConfig,
    policy: &SandboxPolicy,
    volume: &str,
    network: &str,
) -> Result<(), SandboxError> {
    let host = inspected.host_config.clone().unwrap_or_default();
    let user = inspected.config.as_ref().and_then(|c| c.user.clone());
    check("User", Some(format!("{}:{}", config.uid, config.gid)), user)?;
    check("CapDrop", Some(vec!["ALL".to_owned()]), host.cap_drop)?;
    check("CapAdd", true, host.cap_add.unwrap_or_default().is_empty())?;
    check("SecurityOpt", Some(vec!["no-new-privileges=true".to_owned()]), host.security_opt)?;
    check("Privileged", Some(false), host.privileged)?;
    check("ReadonlyRootfs", Some(true), host.readonly_rootfs)?;
    check("NetworkMode", Some(network.to_owned()), host.network_mode)?;
    check("Dns", Some(vec!["127.0.0.1".to_owned()]), host.dns)?;
    check("Memory", Some(policy.memory_bytes), host.memory)?;
    check("MemorySwap", Some(policy.memory_bytes), host.memory_swap)?;
    check("NanoCpus", Some(policy.nano_cpus), host.nano_cpus)?;
    let limits = ProcessLimits::of(policy);
    check("PidsLimit", Some(limits.host_tasks), host.pids_limit)?;
    check("Init", Some(true), host.init)?;
    check("OomScoreAdj", Some(500), host.oom_score_adj)?;
    check("Runtime", Some(policy.runtime.name().to_owned()), host.runtime)?;
    check("Binds", true, host.binds.unwrap_or_default().is_empty())?;
    check("Devices", true, host.devices.unwrap_or_default().is_empty())?;
    let tmpfs = host.tmpfs.unwrap_or_default();
    check("Tmpfs /tmp", true, tmpfs.get("/tmp").is_some_and(|o| o.contains("size=")))?;
    let mounts: Vec<(Option<String>, Option<String>)> =
        host.mounts.unwrap_or_default().into_iter().map(|m| (m.source, m.target)).collect();
    check("Mounts", vec![(Some(volume.to_owned()), Some(WORKSPACE.to_owned()))], mounts)?;
    let ulimits = host.ulimits.unwrap_or_default();
    let ulimit = |name: &str| ulimits.iter().find(|u| u.name.as_deref() == Some(name)).map(|u| (u.soft, u.hard));
    check("Ulimits nofile", Some((Some(4096), Some(4096))), ulimit("nofile"))?;
    check("Ulimits nproc", limits.nproc.map(|n| (Some(n), Some(n))), ulimit("nproc"))?;
    let log_type = host.log_config.and_then(|l| l.typ);
    check("LogConfig", Some("json-file".to_owned()), log_type)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bollard::models::{ContainerConfig, HostConfig, Mount, ResourcesUlimits};
    use common::config::EgressPreset;

    use super::*;

    fn policy(config: &SandboxConfig) -> SandboxPolicy {
        SandboxPolicy::defaults(config, EgressPreset::None, &[])
    }

    fn hardened(config: &SandboxConfig) -> ContainerInspectResponse {
        ContainerInspectResponse {
            config: Some(ContainerConfig {
                user: Some(format!("{}:{}", config.uid, config.gid)),
                ..Default::default()
            }),
            host_config: Some(HostConfig {
                cap_drop: Some(vec!["ALL".to_owned()]),
                security_opt: Some(vec!["no-new-privileges=true".to_owned()]),
                privileged: Some(false),
                readonly_rootfs: Some(true),
                network_mode: Some("net".to_owned()),
                dns: Some(vec!["127.0.0.1".to_owned()]),
                memory: Some(config.memory_bytes),
                memory_swap: Some(config.memory_bytes),
                nano_cpus: Some(config.nano_cpus),
                pids_limit: Some(config.pids_limit),
                init: Some(true),
                oom_score_adj: Some(500),
                runtime: Some("runc".to_owned()),
                tmpfs: Some(HashMap::from([("/tmp".to_owned(), "rw,size=1m".to_owned())])),
                mounts: Some(vec![Mount {
                    source: Some("vol".to_owned()),
                    target: Some(WORKSPACE.to_owned()),
                    ..Default::default()
                }]),
                ulimits: Some(vec![ResourcesUlimits {
                    name: Some("nofile".to_owned()),
                    soft: Some(4096),
                    hard: Some(4096),
                }]),
                log_config: Some(bollard::models::HostConfigLogConfig {
                    typ: Some("json-file".to_owned()),
                    config: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_fully_hardened_container_passes() {
        let config = SandboxConfig::default();
        assert!(verify(&hardened(&config), &config, &policy(&config), "vol", "net").is_ok());
    }

    #[test]
    fn under_runsc_gvisor_caps_the_processes_and_the_host_cgroup_is_a_backstop() {
        let config = SandboxConfig::default();
        let mut policy = policy(&config);
        policy.runtime = common::config::SandboxRuntime::Runsc;
        let mut inspected = hardened(&config);
        let host = inspected.host_config.as_mut().unwrap();
        host.runtime = Some("runsc".to_owned());
        host.pids_limit = Some(128 + 16 * config.pids_limit);
        // An engine that dropped the nproc limit is refused; with it, passes.
        match verify(&inspected, &config, &policy, "vol", "net") {
            Err(SandboxError::NotHardened { field, .. }) => assert_eq!(field, "Ulimits nproc"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        let nproc = Some(config.pids_limit);
        let host = inspected.host_config.as_mut().unwrap();
        host.ulimits.as_mut().unwrap().push(ResourcesUlimits {
            name: Some("nproc".to_owned()),
            soft: nproc,
            hard: nproc,
        });
        assert!(verify(&inspected, &config, &policy, "vol", "net").is_ok());
        // The same container does not pass for a runc policy.
        let runc = SandboxPolicy { runtime: common::config::SandboxRuntime::Runc, ..policy };
        assert!(verify(&inspected, &config, &runc, "vol", "net").is_err());
    }

    #[test]
    fn a_setting_the_engine_dropped_is_refused_by_name() {
        let config = SandboxConfig::default();
        type Breakage = Box<dyn Fn(&mut HostConfig)>;
        let cases: Vec<(&str, Breakage)> = vec![
            ("PidsLimit", Box::new(|h| h.pids_limit = None)),
            ("MemorySwap", Box::new(|h| h.memory_swap = Some(0))),
            ("CapDrop", Box::new(|h| h.cap_drop = None)),
            ("SecurityOpt", Box::new(|h| h.security_opt = Some(vec![]))),
            ("ReadonlyRootfs", Box::new(|h| h.readonly_rootfs = Some(false))),
            ("NetworkMode", Box::new(|h| h.network_mode = Some("host".to_owned()))),
            ("Binds", Box::new(|h| h.binds = Some(vec!["/var/run/docker.sock:/var/run/docker.sock".to_owned()]))),
            ("Privileged", Box::new(|h| h.privileged = Some(true))),
            ("Runtime", Box::new(|h| h.runtime = Some("runsc".to_owned()))),
        ];
        for (field, break_it) in cases {
            let mut inspected = hardened(&config);
            if let Some(host) = inspected.host_config.as_mut() {
                break_it(host);
            }
            match verify(&inspected, &config, &policy(&config), "vol", "net") {
                Err(SandboxError::NotHardened { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected a refusal, got {other:?}"),
            }
        }
    }
}
