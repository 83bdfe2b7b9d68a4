//! Shell completions and man pages, generated from the same command
//! definitions the parser uses, so they cannot drift from the binary.

use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;

use super::Cli;

/// Prints the completion script for `shell` on stdout.
pub fn completions(shell: clap_complete::Shell) {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "gpufleet", &mut std::io::stdout());
}

/// Writes `gpufleet.1` and one page per subcommand (`gpufleet-node-ls.1`, …)
/// into `dir`, creating it.
pub fn man_pages(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("cannot write man pages into {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_cover_every_command() {
        let dir = tempfile::tempdir().unwrap();
        man_pages(dir.path()).unwrap();
        let main = std::fs::read_to_string(dir.path().join("gpufleet.1")).unwrap();
        assert!(main.contains(".TH gpufleet 1"), "{main}");
        assert!(
            main.contains("\\-\\-coordinator"),
            "global flags are documented: {main}"
        );
        for page in [
            "gpufleet-node-ls.1",
            "gpufleet-model-apply.1",
            "gpufleet-agent.1",
        ] {
            assert!(dir.path().join(page).exists(), "{page} missing");
        }
    }

    #[test]
    fn the_command_definition_is_consistent() {
        // clap's own checks: duplicate flags (a global flag shadowed by a
        // command's own), bad defaults, conflicting names.
        Cli::command().debug_assert();
    }
}
