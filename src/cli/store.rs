//! `gpufleet coordinator backup FILE` and `restore FILE`: copies of the
//! coordinator's store. A backup is made from the file when no coordinator
//! holds it, else by the running coordinator through the API (an admin
//! token), so a nightly job needs no downtime. A restore needs the
//! coordinator stopped.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::config::{CoordinatorConfig, CoordinatorOverrides, Misconfigured};
use crate::coordinator::store::{self, BackupSummary, StoreError, STORE_FILE};
use crate::wire::pb;

use super::client::{connect, status_error, ClientArgs};
use super::StoreCommand;

pub async fn run(cmd: StoreCommand, client: &ClientArgs) -> anyhow::Result<()> {
    let (StoreCommand::Backup { at, .. } | StoreCommand::Restore { at, .. }) = &cmd else {
        anyhow::bail!("`coordinator status` asks a running coordinator; it has no store to copy");
    };
    let cfg = CoordinatorConfig::load(&CoordinatorOverrides {
        config: at.config.clone(),
        data_dir: at.data_dir.clone(),
        ..Default::default()
    })
    .map_err(Misconfigured::wrap)?;
    let dir = &cfg.data_dir;
    match &cmd {
        StoreCommand::Backup { file, .. } => {
            // Said first, alone: whichever way the copy would be made, the
            // file is never overwritten.
            if file.exists() {
                anyhow::bail!("{} already exists; choose a new file name", file.display());
            }
            let here = dir.join(STORE_FILE).exists();
            if here {
                match store::backup(dir, file) {
                    // A running coordinator holds it: ask that one.
                    Err(StoreError::InUse { .. }) => {}
                    done => {
                        let s = done?;
                        println!(
                            "backed up the store of {} to {}: {s}",
                            dir.display(),
                            file.display()
                        );
                        return Ok(());
                    }
                }
            }
            let s = online_backup(client, file).await.with_context(|| {
                if here {
                    format!("the store {} is in use", dir.join(STORE_FILE).display())
                } else {
                    format!("there is no store in {} on this host", dir.display())
                }
            })?;
            println!(
                "backed up the running coordinator's store ({}) to {}: {s}",
                client.url(),
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
        StoreCommand::Status => {}
    }
    Ok(())
}

/// Streams the running coordinator's copy into `FILE.partial`, verifies it
/// and renames it to `file`: an interrupted backup never leaves a file that
/// looks whole.
async fn online_backup(client: &ClientArgs, file: &Path) -> anyhow::Result<BackupSummary> {
    if file.exists() {
        anyhow::bail!("{} already exists; choose a new file name", file.display());
    }
    let mut partial = file.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let mut c = connect(client).await?;
    let mut chunks = c
        .backup(pb::BackupRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let written = async {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        while let Some(chunk) = chunks.message().await.map_err(status_error)? {
            out.write_all(&chunk.data)
                .with_context(|| format!("cannot write {}", partial.display()))?;
        }
        out.sync_all()
            .with_context(|| format!("cannot write {}", partial.display()))?;
        drop(out);
        let summary = store::verify(&partial)?;
        std::fs::rename(&partial, file).with_context(|| {
            format!("cannot rename {} to {}", partial.display(), file.display())
        })?;
        anyhow::Ok(summary)
    }
    .await;
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}
