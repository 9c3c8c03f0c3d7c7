//! What `validate` and `infra render` refuse beyond the config's own rules: a config that
//! loads but whose deployment AWS would refuse, or whose tasks could never run once deployed.

use opsfleet_protocol::config::unscheduled_patterns;
use opsfleet_protocol::Config;
use std::path::Path;

/// Refuses a config whose policies exceed IAM's limits or whose patterns wait for a schedule
/// it does not render, naming each problem with its place in the file.
pub fn check(config: &Config, path: &Path) -> anyhow::Result<()> {
    super::catalog::check_policy_sizes(config)?;
    let problems = unscheduled_patterns(config);
    if !problems.is_empty() {
        let lines: Vec<String> = problems.iter().map(|p| format!("{}:{p}", path.display())).collect();
        anyhow::bail!("invalid config:\n{}", lines.join("\n"));
    }
    Ok(())
}
