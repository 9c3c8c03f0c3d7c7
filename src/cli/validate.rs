//! `opsfleet validate`.

use std::path::Path;
use std::process::ExitCode;

/// Loads the config; prints a summary when it is valid, every problem when it is not.
pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let config = super::load_config(path)?;
    super::deployable::check(&config, path)?;
    println!(
        "{}: valid: fleet {}, {} partitions, {} tasks, {} limits",
        path.display(),
        config.fleet.name,
        config.fleet.partitions,
        config.tasks.len(),
        config.limits.len()
    );
    Ok(ExitCode::SUCCESS)
}
