//! One policy per tenant, and a default for everyone else.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{Policy, PolicyError};

/// The policies of a server: a default and one per tenant. Files named more than once are
/// loaded once and shared.
#[derive(Debug, Clone)]
pub struct PolicySet {
    default: Arc<Policy>,
    tenants: HashMap<String, Arc<Policy>>,
}

impl PolicySet {
    /// A set with only a default policy.
    pub fn new(default: Policy) -> Self {
        PolicySet {
            default: Arc::new(default),
            tenants: HashMap::new(),
        }
    }

    /// Loads the default policy and `(tenant, path)` pairs; every file is checked now, so a
    /// bad tenant policy stops the server at start, not at that tenant's first request.
    pub fn load(default: &Path, per_tenant: &[(String, PathBuf)]) -> Result<Self, PolicyError> {
        let mut by_path: HashMap<PathBuf, Arc<Policy>> = HashMap::new();
        let mut get = |p: &Path| -> Result<Arc<Policy>, PolicyError> {
            if let Some(policy) = by_path.get(p) {
                return Ok(policy.clone());
            }
            let policy = Arc::new(Policy::load(p)?);
            by_path.insert(p.to_path_buf(), policy.clone());
            Ok(policy)
        };
        let mut set = PolicySet {
            default: get(default)?,
            tenants: HashMap::new(),
        };
        for (tenant, path) in per_tenant {
            let policy = get(path)?;
            set.insert(tenant, policy)?;
        }
        Ok(set)
    }

    /// Adds a tenant's policy; a tenant can have only one.
    pub fn with_tenant(mut self, tenant: &str, policy: Policy) -> Result<Self, PolicyError> {
        self.insert(tenant, Arc::new(policy))?;
        Ok(self)
    }

    fn insert(&mut self, tenant: &str, policy: Arc<Policy>) -> Result<(), PolicyError> {
        if let Some(first) = self.tenants.get(tenant) {
            return Err(PolicyError::DuplicateTenant {
                tenant: tenant.to_string(),
                first: first.origin().to_string(),
                second: policy.origin().to_string(),
            });
        }
        self.tenants.insert(tenant.to_string(), policy);
        Ok(())
    }

    /// The tenant's policy, or the default.
    pub fn for_tenant(&self, tenant: &str) -> Arc<Policy> {
        self.tenants.get(tenant).unwrap_or(&self.default).clone()
    }

    /// The default policy.
    pub fn default_policy(&self) -> Arc<Policy> {
        self.default.clone()
    }

    /// The tenants with their own policy, sorted.
    pub fn tenants(&self) -> Vec<&str> {
        let mut t: Vec<&str> = self.tenants.keys().map(String::as_str).collect();
        t.sort_unstable();
        t
    }
}
