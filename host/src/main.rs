//! The `refold` binary. The server and the client commands arrive with the
//! HTTP issue; today it can inspect a store.

use anyhow::Context;
use refold::store::{Store, StoreConfig};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["--version"] | ["-V"] => println!("refold {}", env!("CARGO_PKG_VERSION")),
        ["inspect", dir] => inspect(dir)?,
        _ => {
            eprintln!("usage: refold inspect DATA_DIR    print the head of an event store");
            eprintln!("       refold --version");
            std::process::exit(2);
        }
    }
    Ok(())
}

fn inspect(dir: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let store = Store::open(StoreConfig::new(std::path::Path::new(dir).join("events")))
            .with_context(|| format!("opening the event store in {dir}"))?;
        println!("head position: {}", store.head());
        store.close().await;
        Ok(())
    })
}
