//! Who may do what: separate permissions, roles that bundle them, and the
//! mapping of identity-provider groups to roles. Deny by default: a caller
//! holds only the permissions its roles grant. `admin` manages Paddock; it
//! does not read logs, approve tools or read audit.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Permission {
    /// Request an agent run.
    #[serde(rename = "runs.create")]
    RunsCreate,
    /// Approve privileged tools on someone else's run.
    #[serde(rename = "tools.approve")]
    ToolsApprove,
    /// View runs' logs and transcripts.
    #[serde(rename = "logs.read")]
    LogsRead,
    /// Configure model providers, their policy and redaction secrets.
    #[serde(rename = "providers.configure")]
    ProvidersConfigure,
    /// Set scheduling limits and sandbox policies.
    #[serde(rename = "limits.manage")]
    LimitsManage,
    /// Bind roles, manage service accounts.
    #[serde(rename = "rbac.manage")]
    RbacManage,
    /// Read and export the audit trail.
    #[serde(rename = "audit.read")]
    AuditRead,
    /// Revoke tokens and credentials at once.
    #[serde(rename = "security.revoke")]
    SecurityRevoke,
}

impl Permission {
    pub const ALL: [Permission; 8] = [
        Permission::RunsCreate,
        Permission::ToolsApprove,
        Permission::LogsRead,
        Permission::ProvidersConfigure,
        Permission::LimitsManage,
        Permission::RbacManage,
        Permission::AuditRead,
        Permission::SecurityRevoke,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::RunsCreate => "runs.create",
            Permission::ToolsApprove => "tools.approve",
            Permission::LogsRead => "logs.read",
            Permission::ProvidersConfigure => "providers.configure",
            Permission::LimitsManage => "limits.manage",
            Permission::RbacManage => "rbac.manage",
            Permission::AuditRead => "audit.read",
            Permission::SecurityRevoke => "security.revoke",
        }
    }
}

/// A bundle of permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Requester,
    Approver,
    LogViewer,
    ProviderAdmin,
    Auditor,
    Admin,
}

impl Role {
    pub fn permissions(self) -> &'static [Permission] {
        use Permission::*;
        match self {
            Role::Requester => &[RunsCreate],
            Role::Approver => &[ToolsApprove],
            Role::LogViewer => &[LogsRead],
            Role::ProviderAdmin => &[ProvidersConfigure],
            Role::Auditor => &[AuditRead],
            Role::Admin => &[ProvidersConfigure, LimitsManage, RbacManage, SecurityRevoke],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_does_not_imply_logs_tools_or_audit() {
        let admin = Role::Admin.permissions();
        for separate in [Permission::LogsRead, Permission::ToolsApprove, Permission::AuditRead] {
            assert!(!admin.contains(&separate), "{separate:?}");
        }
        let names: Vec<String> = Permission::ALL.iter().map(|p| serde_json::to_string(p).unwrap()).collect();
        assert_eq!(names[0], "\"runs.create\"");
        assert!(Permission::ALL.iter().all(|p| serde_json::to_string(p).unwrap() == format!("\"{}\"", p.as_str())));
    }
}
