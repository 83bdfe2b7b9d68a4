//! `gpufleet coordinator backup FILE` and `restore FILE`: copies of the
//! coordinator's store, made with the coordinator stopped.

use crate::config::{CoordinatorConfig, CoordinatorOverrides, Misconfigured};
use crate::coordinator::store;

use super::StoreCommand;

pub fn run(cmd: StoreCommand) -> anyhow::Result<()> {
    let (StoreCommand::Backup { at, .. } | StoreCommand::Restore { at, .. }) = &cmd;
    let cfg = CoordinatorConfig::load(&CoordinatorOverrides {
        config: at.config.clone(),
        data_dir: at.data_dir.clone(),
        ..Default::default()
    })
    .map_err(Misconfigured::wrap)?;
    let dir = &cfg.data_dir;
    match &cmd {
        StoreCommand::Backup { file, .. } => {
            let s = store::backup(dir, file)?;
            println!(
                "backed up the store of {} to {}: {s}",
                dir.display(),
                file.display()
            );
        }
        StoreCommand::Restore { file, .. } => {
            let s = store::restore(dir, file)?;
            println!(
                "restored the store of {} from {}: {s}",
                dir.display(),
                file.display()
            );
        }
    }
    Ok(())
}
