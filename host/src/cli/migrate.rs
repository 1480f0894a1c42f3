//! `refold migrate --data-dir DIR --to postgres://...`: copies a stopped sled
//! data directory's event log (events, streams, command records) into an
//! empty PostgreSQL database and verifies the copy (`store::pg::import`),
//! then its modules: every version with its bytes, which version is active
//! (live) with its routing, and process checkpoints. What is not copied is
//! named, not silently dropped.

use std::io::Write;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};

use super::{ClientOptions, Failure, finish};
use crate::store::integrity::to_hex;
use crate::store::pg::{PgStore, import_from_sled, redacted};
use crate::store::{Backend, ModuleKind, ModulePut, Store, StoreConfig};

/// What stays behind: the parts of a data directory the PostgreSQL backend
/// does not store yet (docs/operations.md, "PostgreSQL").
const NOT_COPIED: &str = "snapshots, read models (each projection version replays the log on its first host), check records, the command journal and seals (the hosts seal the copied log afresh)";

pub async fn migrate(opts: &ClientOptions, data_dir: &Path, to: &str) -> i32 {
    let result = run(opts, data_dir, to).await;
    finish(opts, result)
}

async fn run(opts: &ClientOptions, data_dir: &Path, to: &str) -> Result<(), Failure> {
    let events = data_dir.join("events");
    if !events.join("sled").is_dir() {
        return Err(Failure::Local(format!(
            "{} is not a Refold data directory (no events/sled in it)",
            data_dir.display()
        )));
    }
    // Opening takes the directory's lock: a running server keeps it, so the
    // copy is of a stopped directory, as it must be.
    let store = Store::open(StoreConfig::new(events))
        .map_err(|e| Failure::Local(format!("cannot open {}: {e}", data_dir.display())))?;
    let bar = if opts.json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(store.head()).with_style(
            ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} events")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    };
    let mut progress = |phase: &str, done: u64, total: u64| {
        bar.set_message(phase.to_string());
        bar.set_length(total);
        bar.set_position(done);
    };
    let report = import_from_sled(&store, to, &mut progress).await;
    bar.finish_and_clear();
    let modules = match &report {
        Ok(_) => copy_modules(&store, &data_dir.join("modules"), to).await,
        Err(_) => Ok(0),
    };
    store.close().await;
    let report =
        report.map_err(|e| Failure::Local(format!("migrating to {}: {e}", redacted(to))))?;
    let modules = modules.map_err(|e| {
        Failure::Local(format!(
            "the log is copied and verified, but copying the modules to {} failed: {e}",
            redacted(to)
        ))
    })?;
    let mut out = std::io::stdout().lock();
    let written = if opts.json {
        writeln!(
            out,
            "{}",
            serde_json::json!({
                "events": report.events,
                "streams": report.streams,
                "command_records": report.command_records,
                "modules": modules,
                "head_chain": to_hex(&report.head_chain),
                "verified": true,
                "not_copied": NOT_COPIED,
            })
        )
    } else {
        writeln!(
            out,
            "copied {} events ({} streams, {} command records) into {}; verified: the copy is \
             the source byte for byte, chain at the head {}\ncopied {modules} module versions \
             with their bytes, the active versions and their routing\nnot copied: {NOT_COPIED}",
            report.events,
            report.streams,
            report.command_records,
            redacted(to),
            to_hex(&report.head_chain)
        )
    };
    written.map_err(Failure::Output)
}

/// Registers every module version of the sled directory in the database (its
/// bytes read back and checked against the digest on the way), then sets each
/// name's active version and routing and each process's checkpoint. Returns
/// how many versions it copied.
async fn copy_modules(
    store: &Store,
    modules_dir: &Path,
    to: &str,
) -> Result<usize, crate::store::StoreError> {
    let files = Backend::sled(store.clone(), modules_dir)?;
    let pg = PgStore::open(to).await?;
    let records = store.modules()?;
    for record in &records {
        let bytes =
            files
                .module_bytes(&record.digest)
                .map_err(|e| crate::store::StoreError::Corrupt {
                    key: format!("{}@{}", record.name, record.version),
                    reason: e.reason,
                })?;
        match pg.put_module(record, &bytes).await? {
            ModulePut::Created | ModulePut::AlreadyPresent(_) => {}
            ModulePut::Conflict(existing) => {
                return Err(crate::store::StoreError::Corrupt {
                    key: format!("{}@{}", existing.name, existing.version),
                    reason: "the database has other bytes under this version".into(),
                });
            }
        }
    }
    for (name, version) in store.active_modules()? {
        pg.set_routing(&name, Some(&version), Some(&store.routing(&name)?))
            .await?;
        if records
            .iter()
            .any(|r| r.name == name && r.kind == ModuleKind::Process)
        {
            pg.set_process_checkpoint(&name, store.process_checkpoint(&name)?)
                .await?;
        }
    }
    pg.close().await;
    Ok(records.len())
}
