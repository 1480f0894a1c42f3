//! Compiles the guest crates to Wasm with a nested cargo, in a target directory
//! of their own (the outer cargo holds a lock on the main one).

use std::path::{Path, PathBuf};
use std::process::Command;

const WASIP2: &str = "wasm32-wasip2";
const UNKNOWN: &str = "wasm32-unknown-unknown";

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.join("../..").canonicalize().unwrap();
    for dir in ["modules", "guest-sdk", "wit", "tests/guests"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let target_dir = root.join("target/guests");
    ensure_targets(&[WASIP2, UNKNOWN]);
    cargo_build(
        &root,
        &target_dir,
        WASIP2,
        &[
            "bank-account",
            "bank-account-v2",
            "inventory",
            "order",
            "transfer-orders",
            "refold-hostile-guest",
            "refold-networked-guest",
            "refold-entropy-guest",
        ],
    );
    // A cargo and a target directory of their own: the projections use
    // `bank-account` without its `component` feature (only its types). One
    // build unifies features, which would link the aggregate's exports into the
    // projections; and a build in the same directory would overwrite
    // `bank_account.wasm` with the featureless dependency's cdylib.
    let projections_dir = root.join("target/guest-projections");
    cargo_build(
        &root,
        &projections_dir,
        WASIP2,
        &[
            "account-balances",
            "account-balances-v2",
            "account-balances-v3",
            "refold-picky-projection",
            "refold-sloppy-selector",
            "refold-entropy-projection",
            "sales",
            // Processes: they use aggregates' types like the projections.
            "transfers",
            "order-fulfilment",
            "refold-hostile-process-guest",
        ],
    );
    // The hostile process again, as its next version (`fixed`): in a target
    // directory of its own, as one build cannot have it both with and
    // without the feature.
    let hostile_fixed_dir = root.join("target/guest-hostile-process-fixed");
    cargo_build_with(
        &root,
        &hostile_fixed_dir,
        WASIP2,
        &["refold-hostile-process-guest"],
        &["refold-hostile-process-guest/fixed"],
    );
    // bank-account 2.0.0 without its upcasters: the version a replay check
    // refuses (a feature, so a directory of its own).
    let no_upcasters_dir = root.join("target/guest-bank-no-upcasters");
    cargo_build_with(
        &root,
        &no_upcasters_dir,
        WASIP2,
        &["bank-account-v2"],
        &["bank-account-v2/no-upcasters"],
    );
    // bank-account with its tighter overdraft rule: the candidate of the
    // what-if tests (a feature, so a directory of its own).
    let strict_dir = root.join("target/guest-bank-strict");
    cargo_build_with(
        &root,
        &strict_dir,
        WASIP2,
        &["bank-account"],
        &["bank-account/strict-overdraft"],
    );
    // The ledger uses `transfers` for its types; built beside `transfers`
    // itself, cargo would unify features and link the process's exports into it.
    let ledger_dir = root.join("target/guest-ledger");
    cargo_build(&root, &ledger_dir, WASIP2, &["ledger"]);
    cargo_build(&root, &target_dir, UNKNOWN, &["bank-account"]);

    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let core = std::fs::read(target_dir.join(UNKNOWN).join("release/bank_account.wasm")).unwrap();
    let wrapped = wit_component::ComponentEncoder::default()
        .module(&core)
        .and_then(|e| e.validate(true).encode())
        .expect("wrapping the wasm32-unknown-unknown bank account as a component");
    let wrapped_path = out.join("bank_account_no_wasi.wasm");
    std::fs::write(&wrapped_path, wrapped).unwrap();

    let p2_in = |dir: &Path, name: &str| {
        dir.join(WASIP2)
            .join("release")
            .join(format!("{name}.wasm"))
    };
    let p2 = |name: &str| p2_in(&target_dir, name);
    let projection = |name: &str| p2_in(&projections_dir, name);
    let consts = [
        ("BANK_ACCOUNT", p2("bank_account")),
        ("BANK_ACCOUNT_NO_WASI", wrapped_path),
        ("BANK_ACCOUNT_V2", p2("bank_account_v2")),
        ("BANK_ACCOUNT_STRICT", p2_in(&strict_dir, "bank_account")),
        (
            "BANK_ACCOUNT_V2_NO_UPCASTERS",
            p2_in(&no_upcasters_dir, "bank_account_v2"),
        ),
        ("ACCOUNT_BALANCES_V3", projection("account_balances_v3")),
        ("HOSTILE", p2("refold_hostile_guest")),
        ("NETWORKED", p2("refold_networked_guest")),
        ("ACCOUNT_BALANCES", projection("account_balances")),
        ("ACCOUNT_BALANCES_V2", projection("account_balances_v2")),
        ("PICKY_PROJECTION", projection("refold_picky_projection")),
        ("SLOPPY_SELECTOR", projection("refold_sloppy_selector")),
        ("ENTROPY", p2("refold_entropy_guest")),
        (
            "ENTROPY_PROJECTION",
            projection("refold_entropy_projection"),
        ),
        ("INVENTORY", p2("inventory")),
        ("ORDER", p2("order")),
        ("SALES", projection("sales")),
        ("TRANSFERS", projection("transfers")),
        ("TRANSFER_ORDERS", p2("transfer_orders")),
        ("LEDGER", p2_in(&ledger_dir, "ledger")),
        ("ORDER_FULFILMENT", projection("order_fulfilment")),
        (
            "HOSTILE_PROCESS",
            projection("refold_hostile_process_guest"),
        ),
        (
            "HOSTILE_PROCESS_FIXED",
            p2_in(&hostile_fixed_dir, "refold_hostile_process_guest"),
        ),
    ]
    .iter()
    .map(|(name, path)| format!("pub const {name}: &str = {path:?};\n"))
    .collect::<String>();
    std::fs::write(out.join("guests.rs"), consts).unwrap();
}

/// A fresh machine may lack the Wasm targets; rustup can add them.
fn ensure_targets(targets: &[&str]) {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    let Ok(installed) = installed else { return }; // no rustup: the build below says what is missing
    let installed = String::from_utf8_lossy(&installed.stdout).to_string();
    for target in targets {
        if !installed.lines().any(|l| l.trim() == *target) {
            let status = Command::new("rustup")
                .args(["target", "add", target])
                .status()
                .expect("running rustup");
            assert!(status.success(), "rustup target add {target} failed");
        }
    }
}

fn cargo_build(root: &Path, target_dir: &Path, target: &str, packages: &[&str]) {
    cargo_build_with(root, target_dir, target, packages, &[]);
}

/// [`cargo_build`] with `features` (`package/feature`) turned on.
fn cargo_build_with(
    root: &Path,
    target_dir: &Path,
    target: &str,
    packages: &[&str],
    features: &[&str],
) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--release", "--target", target, "--target-dir"])
        .arg(target_dir);
    for p in packages {
        cmd.args(["-p", p]);
    }
    for f in features {
        cmd.args(["--features", f]);
    }
    // The outer build's settings are for the host, not for Wasm guests.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("running cargo for the guest modules");
    assert!(
        status.success(),
        "building guest modules for {target} failed (see the output above)"
    );
}
