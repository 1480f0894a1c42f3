//! The tamper-evident log (store format 2) end to end, on real sled stores and
//! real servers: a byte changed anywhere in a stopped data directory is named
//! by `verify_log` and `refold verify` at its position, and refuses proofs over
//! its seal; a served proof checks offline and fails with any field edited;
//! `refold verify` over HTTP, a backup's seals, the format-1 marker, and the
//! chain value every event JSON carries.

mod support;

use std::future::Future;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use refold::api::integrity::check_proof;
use refold::store::integrity::{
    Digest, SEAL_INTERVAL, ZERO, bytes_from_hex, chain_next, digest_from_hex, to_hex,
};
use refold::store::{
    Durability, ExpectedVersion, NewEvent, Seal, SealSigner, Store, StoreConfig, StoreError,
    StreamId,
};
use reqwest::Method;
use serde_json::{Value, json};
use support::http::{TestServer, expect_problem, tokens};
use support::process::BIN;
use support::temp_dir;

/// The signing seed of every signed store here; `OTHER_SEED` signs nothing.
const SEED: [u8; 32] = [0x5e; 32];
const OTHER_SEED: [u8; 32] = [0x17; 32];

fn signer() -> Arc<SealSigner> {
    Arc::new(SealSigner::from_seed(SEED))
}

fn public_key() -> Digest {
    SealSigner::from_seed(SEED).public_key()
}

fn other_key() -> Digest {
    SealSigner::from_seed(OTHER_SEED).public_key()
}

/// Every test body runs under a deadline, so a hang fails instead of stalling CI.
async fn within<F: Future<Output = ()>>(seconds: u64, body: F) {
    tokio::time::timeout(Duration::from_secs(seconds), body)
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {seconds} s"));
}

/// A small deterministic generator (splitmix64): the same positions every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }
}

/// Appends `count` events (`count` a multiple of `per_append`), round robin
/// over three streams; the data carries the event's number and some padding.
async fn append_events(store: &Store, count: u64, per_append: u64) {
    assert_eq!(count % per_append, 0);
    let streams: Vec<StreamId> = (0..3)
        .map(|i| StreamId::new("ledger", format!("l{i}")).unwrap())
        .collect();
    let start = store.head();
    for (k, first) in (0..count).step_by(per_append as usize).enumerate() {
        let events = (first..first + per_append)
            .map(|n| {
                NewEvent::new(
                    "Posted",
                    format!(r#"{{"n":{},"pad":"pppppppp"}}"#, start + n + 1),
                )
            })
            .collect();
        store
            .append(&streams[k % 3], ExpectedVersion::Any, events)
            .await
            .expect("append");
    }
    assert_eq!(store.head(), start + count);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn event_key(position: u64) -> Vec<u8> {
    let mut key = vec![b'E'];
    key.extend_from_slice(&position.to_be_bytes());
    key
}

fn seal_key(last_position: u64) -> Vec<u8> {
    let mut key = vec![b'K'];
    key.extend_from_slice(&last_position.to_be_bytes());
    key
}

/// Rewrites the value at `key` with `change`, which must change it.
fn edit(db: &sled::Db, key: &[u8], change: impl FnOnce(&mut Vec<u8>)) {
    let before = db
        .get(key)
        .unwrap()
        .expect("the key to edit exists")
        .to_vec();
    let mut value = before.clone();
    change(&mut value);
    assert_ne!(value, before, "the edit changes the value");
    db.insert(key, value).unwrap();
}

/// Opens a stopped store's sled directly, lets `change` alter it, and closes it.
fn tamper(sled_dir: &Path, change: &dyn Fn(&sled::Db)) {
    let db = sled::open(sled_dir).expect("sled opens the stopped store");
    change(&db);
    db.flush().unwrap();
}

/// `refold ARGS...`: (exit code, stdout, stderr).
async fn refold(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(BIN)
            .args(&args)
            .env_remove("REFOLD_SERVER")
            .env_remove("REFOLD_TOKEN")
            .output()
            .expect("the refold binary runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// What a proof of `position` must come to on a tampered store.
#[derive(Debug)]
enum ProofOutcome {
    Fine,
    Violation(u64),
    NotSealed,
}

fn assert_proof(store: &Store, case: &str, position: u64, expected: &ProofOutcome) {
    let got = store.proof(position);
    match (expected, &got) {
        (ProofOutcome::Fine, Ok(Some(proof))) => {
            assert_eq!(proof.event.position, position, "{case}");
            assert!(proof.seal.first_position <= position && position <= proof.seal.last_position);
        }
        (ProofOutcome::Violation(at), Err(StoreError::IntegrityViolation { position: p, .. }))
            if p == at => {}
        (ProofOutcome::NotSealed, Err(StoreError::NotSealedYet { position: p, .. }))
            if *p == position => {}
        _ => panic!("{case}: proof({position}) should be {expected:?}, was {got:?}"),
    }
}

struct Case {
    name: &'static str,
    change: Box<dyn Fn(&sled::Db)>,
    /// The position `verify_log` must name.
    named: u64,
    /// Events counted before the failure.
    events_before: u64,
    proofs: Vec<(u64, ProofOutcome)>,
}

const LOG_EVENTS: u64 = 9_000;

/// Flips a byte in `pad`'s string: the record still decodes, only its hash changes.
fn flip_data_byte(value: &mut [u8]) {
    let at = value
        .windows(7)
        .position(|w| w == br#""pad":""#)
        .expect("the data is in the record")
        + 7;
    assert_eq!(value[at], b'p');
    value[at] = b'q';
}

fn tamper_cases() -> Vec<Case> {
    use ProofOutcome::*;
    vec![
        Case {
            name: "a body byte inside the first seal (still decodes)",
            change: Box::new(|db| edit(db, &event_key(1234), |v| flip_data_byte(v))),
            named: 1234,
            events_before: 1233,
            proofs: vec![
                (1300, Violation(1234)),
                (1000, Violation(1234)),
                (5000, Fine),
            ],
        },
        Case {
            name: "a body byte inside the first seal (no longer decodes)",
            change: Box::new(|db| {
                edit(db, &event_key(1234), |v| {
                    // The body's first byte: the varint length of the aggregate type.
                    assert_eq!(v[33], b"ledger".len() as u8);
                    v[33] = 0xff;
                })
            }),
            named: 1234,
            events_before: 1233,
            proofs: vec![(4000, Violation(1234)), (5000, Fine), (1, Violation(1234))],
        },
        Case {
            name: "a stored chain value",
            change: Box::new(|db| edit(db, &event_key(2000), |v| v[1 + 5] ^= 0x80)),
            named: 2000,
            events_before: 1999,
            proofs: vec![(2001, Violation(2000)), (8000, Fine)],
        },
        Case {
            name: "a byte of the first seal's Merkle root",
            change: Box::new(|db| {
                edit(db, &seal_key(SEAL_INTERVAL), |v| {
                    let seal: Seal = postcard::from_bytes(&v[1..]).expect("a seal");
                    let at = v
                        .windows(32)
                        .position(|w| w == seal.root)
                        .expect("the root is in the value");
                    v[at + 9] ^= 0x01;
                })
            }),
            named: SEAL_INTERVAL,
            events_before: SEAL_INTERVAL,
            proofs: vec![(7, Violation(SEAL_INTERVAL)), (SEAL_INTERVAL + 1, Fine)],
        },
        Case {
            name: "a byte of the second seal's signature",
            change: Box::new(|db| {
                edit(db, &seal_key(2 * SEAL_INTERVAL), |v| {
                    let seal: Seal = postcard::from_bytes(&v[1..]).expect("a seal");
                    let signature = seal.signature.expect("a signed seal");
                    let at = v
                        .windows(64)
                        .position(|w| w == signature)
                        .expect("the signature is in the value");
                    v[at + 20] ^= 0x40;
                })
            }),
            named: 2 * SEAL_INTERVAL,
            events_before: 2 * SEAL_INTERVAL,
            proofs: vec![(1, Fine)],
        },
        Case {
            name: "a body byte in the unsealed tail",
            change: Box::new(|db| edit(db, &event_key(8500), |v| flip_data_byte(v))),
            named: 8500,
            events_before: 8499,
            proofs: vec![(8500, NotSealed), (100, Fine), (8000, Fine)],
        },
        Case {
            name: "the first seal made undecodable",
            change: Box::new(|db| edit(db, &seal_key(SEAL_INTERVAL), |v| v[0] = 9)),
            named: SEAL_INTERVAL,
            events_before: SEAL_INTERVAL,
            proofs: vec![
                (10, Violation(SEAL_INTERVAL)),
                (5000, Violation(SEAL_INTERVAL)),
            ],
        },
        Case {
            // The store must still open (the writer reads seal keys only).
            name: "the last seal made undecodable",
            change: Box::new(|db| edit(db, &seal_key(2 * SEAL_INTERVAL), |v| v[0] = 9)),
            named: 2 * SEAL_INTERVAL,
            events_before: 2 * SEAL_INTERVAL,
            proofs: vec![(5000, Violation(2 * SEAL_INTERVAL)), (10, Fine)],
        },
        Case {
            // A walk or proof that starts after it anchors on the seal that
            // vouches for this chain value, so it names this event, not the next.
            name: "the chain value at the end of the first seal",
            change: Box::new(|db| edit(db, &event_key(SEAL_INTERVAL), |v| v[1] ^= 0x01)),
            named: SEAL_INTERVAL,
            events_before: SEAL_INTERVAL - 1,
            proofs: vec![
                (5000, Violation(SEAL_INTERVAL)),
                (10, Violation(SEAL_INTERVAL)),
            ],
        },
        Case {
            name: "a seal removed",
            change: Box::new(|db| {
                assert!(db.remove(seal_key(SEAL_INTERVAL)).unwrap().is_some());
            }),
            named: SEAL_INTERVAL,
            events_before: SEAL_INTERVAL + 1,
            proofs: vec![(10, Violation(SEAL_INTERVAL)), (5000, Fine)],
        },
        Case {
            // The writer cannot continue a chain with a hole in it: the store
            // opens for reads and verify, and refuses writes.
            name: "an event removed from the unsealed tail",
            change: Box::new(|db| {
                assert!(db.remove(event_key(8600)).unwrap().is_some());
            }),
            named: 8600,
            events_before: 8599,
            proofs: vec![(8000, Fine), (8700, NotSealed)],
        },
        Case {
            name: "an event removed",
            change: Box::new(|db| {
                assert!(db.remove(event_key(3000)).unwrap().is_some());
            }),
            named: 3000,
            events_before: 2999,
            proofs: vec![
                (3001, Violation(3000)),
                (2999, Violation(3000)),
                (6000, Fine),
            ],
        },
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn tampering_with_a_stopped_data_dir_is_named_at_its_position() {
    within(120, async {
        let base = temp_dir();
        let pristine = base.path().join("pristine");
        {
            let store = Store::open(
                StoreConfig::new(pristine.join("events"))
                    .durability(Durability::None)
                    .signer(Some(signer())),
            )
            .unwrap();
            append_events(&store, LOG_EVENTS, 100).await;
            let status = store.integrity().unwrap();
            let last = status.last_seal.expect("two automatic seals");
            assert_eq!(
                (last.first_position, last.last_position),
                (SEAL_INTERVAL + 1, 2 * SEAL_INTERVAL)
            );
            assert_eq!(last.public_key, Some(public_key()));
            assert_eq!(status.next_seal_at, 3 * SEAL_INTERVAL);
            store.close().await;
        }
        let key = public_key();
        let key_hex = to_hex(&key);

        // Untouched, the log verifies, with and without the trusted key, in
        // the store and from the CLI; with another key it does not.
        let untouched = base.path().join("untouched");
        copy_dir(&pristine, &untouched);
        {
            let store = Store::open(StoreConfig::new(untouched.join("events"))).unwrap();
            for trusted in [None, Some(&key)] {
                let report = store
                    .verify_log(1, None, trusted, &mut |_, _| true)
                    .unwrap();
                assert!(report.failure.is_none(), "{report:?}");
                assert_eq!((report.events, report.seals), (LOG_EVENTS, 2));
            }
            let report = store
                .verify_log(1, None, Some(&other_key()), &mut |_, _| true)
                .unwrap();
            let failure = report.failure.expect("signed by another key");
            assert_eq!(failure.position, SEAL_INTERVAL, "{failure:?}");
            store.close().await;
        }
        let dir = untouched.display().to_string();
        let (code, out, err) = refold(args(&[
            "verify",
            "--data-dir",
            &dir,
            "--public-key",
            &key_hex,
        ]))
        .await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.starts_with("ok:"), "{out}");
        let (code, out, err) = refold(args(&["--json", "verify", "--data-dir", &dir])).await;
        assert_eq!(code, 0, "{out}{err}");
        let json: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(json["ok"], true, "{json}");
        assert_eq!(json["report"]["events"], LOG_EVENTS, "{json}");

        for (i, case) in tamper_cases().into_iter().enumerate() {
            let data = base.path().join(format!("case-{i}"));
            copy_dir(&pristine, &data);
            tamper(&data.join("events").join("sled"), &*case.change);
            let store = Store::open(StoreConfig::new(data.join("events")))
                .unwrap_or_else(|e| panic!("{}: the tampered store opens: {e}", case.name));
            assert_eq!(store.head(), LOG_EVENTS, "{}", case.name);
            if case.name.contains("unsealed tail") && case.name.contains("removed") {
                let why = store.write_failure().expect("writes are refused");
                assert!(why.contains("unreadable"), "{why}");
            }
            let report = store
                .verify_log(1, None, Some(&key), &mut |_, _| true)
                .unwrap();
            let failure = report
                .failure
                .as_ref()
                .unwrap_or_else(|| panic!("{}: not detected: {report:?}", case.name));
            assert_eq!(failure.position, case.named, "{}: {failure:?}", case.name);
            assert_eq!(
                report.events, case.events_before,
                "{}: {report:?}",
                case.name
            );
            // Without the trusted key the same position is named.
            let report = store.verify_log(1, None, None, &mut |_, _| true).unwrap();
            assert_eq!(
                report.failure.map(|f| f.position),
                Some(case.named),
                "{}",
                case.name
            );
            for (position, outcome) in &case.proofs {
                assert_proof(&store, case.name, *position, outcome);
            }
            // A walk of the seals after the damage does not see it, unless the
            // damage is in what that walk starts from: the first seal itself
            // (unreadable or gone) or the chain value it vouches for.
            if case.named <= SEAL_INTERVAL {
                let report = store
                    .verify_log(SEAL_INTERVAL + 1, None, Some(&key), &mut |_, _| true)
                    .unwrap();
                let anchor_damaged = ["first seal made", "end of the first seal", "seal removed"]
                    .iter()
                    .any(|n| case.name.contains(n));
                if anchor_damaged {
                    assert_eq!(
                        report.failure.as_ref().map(|f| f.position),
                        Some(case.named),
                        "{}: {report:?}",
                        case.name
                    );
                } else {
                    assert!(report.failure.is_none(), "{}: {report:?}", case.name);
                    assert_eq!(report.from, SEAL_INTERVAL + 1);
                    assert_eq!(report.events, LOG_EVENTS - SEAL_INTERVAL);
                }
            }
            store.close().await;
            drop(store);

            // The CLI on the stopped data dir: exit 3, the position on stdout.
            if i == 0 || case.name == "an event removed" {
                let dir = data.display().to_string();
                let (code, out, err) = refold(args(&[
                    "verify",
                    "--data-dir",
                    &dir,
                    "--public-key",
                    &key_hex,
                ]))
                .await;
                assert_eq!(code, 3, "{}: {out}{err}", case.name);
                assert!(
                    out.starts_with(&format!("log BROKEN at position {}:", case.named)),
                    "{}: {out}",
                    case.name
                );
                let (code, out, _) = refold(args(&["--json", "verify", "--data-dir", &dir])).await;
                assert_eq!(code, 3);
                let json: Value = serde_json::from_str(&out).unwrap();
                assert_eq!(json["ok"], false, "{json}");
                assert_eq!(json["report"]["failure"]["position"], case.named, "{json}");
            }
        }
    })
    .await;
}

/// A server signing its seals, with tokens.
async fn signed_server(dir: &Path) -> TestServer {
    let mut config = support::http::config(dir);
    config.tokens = tokens();
    config.signer = Some(signer());
    config.durability = Durability::None;
    TestServer::start_with(config).await
}

async fn get_text(s: &TestServer, path: &str) -> (u16, String) {
    let r = s.request(Method::GET, path).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Changes one hex digit of a string field.
fn flip_hex(value: &mut Value, at: usize) {
    let text = value.as_str().expect("a hex string").to_string();
    let mut chars: Vec<char> = text.chars().collect();
    let at = at.min(chars.len() - 1);
    chars[at] = if chars[at] == '0' { '1' } else { '0' };
    *value = Value::String(chars.into_iter().collect());
}

fn bump(value: &mut Value, by: i64) {
    *value = json!(value.as_u64().expect("a number") as i64 + by);
}

type Edit = (String, Box<dyn Fn(&mut Value)>);

/// Every field of a proof, edited one at a time.
fn proof_edits(proof: &Value) -> Vec<Edit> {
    let mut edits: Vec<Edit> = Vec::new();
    let mut add = |name: &str, f: Box<dyn Fn(&mut Value)>| edits.push((name.to_string(), f));
    add(
        "proof_format",
        Box::new(|p| p["proof_format"] = json!("refold-proof/2")),
    );
    add("position + 1", Box::new(|p| bump(&mut p["position"], 1)));
    add("position - 1", Box::new(|p| bump(&mut p["position"], -1)));
    let record_len = proof["record"].as_str().unwrap().len();
    for at in [0, 1, record_len / 2, record_len - 1] {
        add(
            &format!("record digit {at}"),
            Box::new(move |p| flip_hex(&mut p["record"], at)),
        );
    }
    add(
        "record shortened",
        Box::new(|p| {
            let r = p["record"].as_str().unwrap().to_string();
            p["record"] = json!(r[..r.len() - 2]);
        }),
    );
    add(
        "record lengthened",
        Box::new(|p| {
            let r = p["record"].as_str().unwrap().to_string();
            p["record"] = json!(format!("{r}00"));
        }),
    );
    for at in [0, 63] {
        add(
            &format!("previous_chain digit {at}"),
            Box::new(move |p| flip_hex(&mut p["previous_chain"], at)),
        );
        add(
            &format!("chain digit {at}"),
            Box::new(move |p| flip_hex(&mut p["chain"], at)),
        );
        add(
            &format!("seal.root digit {at}"),
            Box::new(move |p| flip_hex(&mut p["seal"]["root"], at)),
        );
        add(
            &format!("seal.chain digit {at}"),
            Box::new(move |p| flip_hex(&mut p["seal"]["chain"], at)),
        );
        add(
            &format!("seal.public_key digit {at}"),
            Box::new(move |p| flip_hex(&mut p["seal"]["public_key"], at)),
        );
        add(
            &format!("event.chain digit {at}"),
            Box::new(move |p| flip_hex(&mut p["event"]["chain"], at)),
        );
    }
    for at in [0, 64, 127] {
        add(
            &format!("seal.signature digit {at}"),
            Box::new(move |p| flip_hex(&mut p["seal"]["signature"], at)),
        );
    }
    add(
        "leaf_index + 1",
        Box::new(|p| bump(&mut p["leaf_index"], 1)),
    );
    if proof["leaf_index"].as_u64().unwrap() > 0 {
        add(
            "leaf_index - 1",
            Box::new(|p| bump(&mut p["leaf_index"], -1)),
        );
    }
    let path_len = proof["path"].as_array().unwrap().len();
    assert!(path_len >= 2, "a proof with a real path: {proof}");
    for i in 0..path_len {
        add(
            &format!("path[{i}]"),
            Box::new(move |p| flip_hex(&mut p["path"][i], 17)),
        );
    }
    add(
        "path without its last element",
        Box::new(|p| {
            p["path"].as_array_mut().unwrap().pop();
        }),
    );
    add(
        "path with an extra element",
        Box::new(|p| {
            p["path"]
                .as_array_mut()
                .unwrap()
                .push(json!(to_hex(&[7; 32])));
        }),
    );
    add(
        "path elements swapped",
        Box::new(|p| p["path"].as_array_mut().unwrap().swap(0, 1)),
    );
    add(
        "seal.first_position + 1",
        Box::new(|p| bump(&mut p["seal"]["first_position"], 1)),
    );
    if proof["seal"]["first_position"].as_u64().unwrap() > 1 {
        add(
            "seal.first_position - 1",
            Box::new(|p| bump(&mut p["seal"]["first_position"], -1)),
        );
    }
    add(
        "seal.last_position + 1",
        Box::new(|p| bump(&mut p["seal"]["last_position"], 1)),
    );
    add(
        "seal.last_position - 1",
        Box::new(|p| bump(&mut p["seal"]["last_position"], -1)),
    );
    add(
        "seal.sealed_at_ms + 1",
        Box::new(|p| bump(&mut p["seal"]["sealed_at_ms"], 1)),
    );
    add(
        "seal unsigned",
        Box::new(|p| {
            p["seal"]["signature"] = Value::Null;
            p["seal"]["public_key"] = Value::Null;
        }),
    );
    add(
        "seal.signature removed",
        Box::new(|p| p["seal"]["signature"] = Value::Null),
    );
    add(
        "seal.public_key another key",
        Box::new(|p| p["seal"]["public_key"] = json!(to_hex(&other_key()))),
    );
    add(
        "event.data",
        Box::new(|p| p["event"]["data"] = json!({"n": -1, "pad": "pppppppp"})),
    );
    add(
        "event.data.n + 1",
        Box::new(|p| bump(&mut p["event"]["data"]["n"], 1)),
    );
    add(
        "event.event_type",
        Box::new(|p| p["event"]["event_type"] = json!("Reversed")),
    );
    add(
        "event.schema_version 2",
        Box::new(|p| p["event"]["schema_version"] = json!(2)),
    );
    add(
        "event.aggregate_id",
        Box::new(|p| p["event"]["aggregate_id"] = json!("l9")),
    );
    add(
        "event.aggregate_type",
        Box::new(|p| p["event"]["aggregate_type"] = json!("journal")),
    );
    add(
        "event.version + 1",
        Box::new(|p| bump(&mut p["event"]["version"], 1)),
    );
    add(
        "event.position + 1",
        Box::new(|p| bump(&mut p["event"]["position"], 1)),
    );
    add(
        "event.metadata.recorded_at_ms + 1",
        Box::new(|p| bump(&mut p["event"]["metadata"]["recorded_at_ms"], 1)),
    );
    add(
        "event.metadata.correlation_id",
        Box::new(|p| p["event"]["metadata"]["correlation_id"] = json!("c-1")),
    );
    add(
        "event.event_id",
        Box::new(|p| flip_hex(&mut p["event"]["event_id"], 35)),
    );
    add(
        "an unknown field",
        Box::new(|p| p["note"] = json!("trust me")),
    );
    edits
}

#[tokio::test(flavor = "multi_thread")]
async fn served_proofs_check_offline_and_fail_when_edited() {
    within(180, async {
        let dir = temp_dir();
        let s = signed_server(dir.path()).await;
        let store = s.server.app.store.as_sled().expect("a sled server").clone();
        let key = public_key();
        let key_hex = to_hex(&key);
        const EVENTS: u64 = 5_500;
        append_events(&store, EVENTS, 500).await;

        // The tail is sealed on demand.
        let r = s
            .request(Method::POST, "/v1/integrity/seal")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let sealed: Value = r.json().await.unwrap();
        assert_eq!(
            sealed["seal"]["first_position"],
            SEAL_INTERVAL + 1,
            "{sealed}"
        );
        assert_eq!(sealed["seal"]["last_position"], EVENTS, "{sealed}");
        assert_eq!(sealed["seal"]["public_key"], key_hex.as_str());
        let (status, integrity) = s.get_json("/v1/integrity").await;
        assert_eq!(status, 200);
        assert_eq!(integrity["head"], EVENTS, "{integrity}");
        assert_eq!(integrity["signing"]["public_key"], key_hex.as_str());
        assert_eq!(integrity["last_seal"], sealed["seal"], "{integrity}");
        assert_eq!(integrity["next_seal_at"], EVENTS + SEAL_INTERVAL);
        assert_eq!(integrity["chain"], sealed["seal"]["chain"]);

        // Proofs of 20 positions (and the seals' edges), checked offline.
        let mut rng = Rng(0x1e9a_11c0);
        let mut positions: Vec<u64> = (0..20).map(|_| 1 + rng.below(EVENTS)).collect();
        positions.extend([1, SEAL_INTERVAL, SEAL_INTERVAL + 1, EVENTS]);
        let mut proofs = std::collections::HashMap::new();
        for p in positions {
            let (status, text) = get_text(&s, &format!("/v1/events/{p}/proof")).await;
            assert_eq!(status, 200, "{text}");
            let check = check_proof(&text, Some(&key))
                .unwrap_or_else(|e| panic!("the proof of {p} does not check: {e}"));
            assert_eq!(check.position, p);
            assert!(check.trusted);
            assert_eq!(check.signed_by.as_deref(), Some(key_hex.as_str()));
            let proof: Value = serde_json::from_str(&text).unwrap();
            let (status, page) = s.get_json(&format!("/v1/events?from={p}&limit=1")).await;
            assert_eq!(status, 200);
            let event = &page["events"][0];
            assert_eq!(event["position"], p);
            assert_eq!(proof["chain"], event["chain"], "position {p}");
            assert_eq!(proof["event"], *event, "position {p}");
            proofs.insert(p, (text, proof));
        }

        // The chain at position 1 is sha256(32 zero bytes || 1u64 BE || body).
        let (_, first) = &proofs[&1];
        let body = bytes_from_hex(first["record"].as_str().unwrap()).unwrap();
        let chain = digest_from_hex(first["chain"].as_str().unwrap()).unwrap();
        assert_eq!(chain_next(&ZERO, 1, &body), chain);
        assert_eq!(first["previous_chain"], to_hex(&ZERO));
        // ...and position p + 1 chains from p, as the proofs show them.
        let (_, at) = &proofs[&SEAL_INTERVAL];
        let (_, next) = &proofs[&(SEAL_INTERVAL + 1)];
        assert_eq!(next["previous_chain"], at["chain"]);
        let body = bytes_from_hex(next["record"].as_str().unwrap()).unwrap();
        let previous = digest_from_hex(at["chain"].as_str().unwrap()).unwrap();
        assert_eq!(
            to_hex(&chain_next(&previous, SEAL_INTERVAL + 1, &body)),
            next["chain"].as_str().unwrap()
        );
        // Every event JSON carries its chain value, 64 hex digits.
        let (_, page) = s.get_json("/v1/events?from=1&limit=200").await;
        let events = page["events"].as_array().unwrap();
        assert_eq!(events.len(), 200);
        for e in events {
            let chain = e["chain"].as_str().expect("a chain value");
            assert_eq!(chain.len(), 64, "{e}");
            assert!(digest_from_hex(chain).is_some(), "{e}");
        }
        assert_eq!(events[0]["chain"], first["chain"]);

        // `refold verify-proof` offline: the right key, its own key, a wrong key.
        let (text, proof) = &proofs[&SEAL_INTERVAL];
        let file = dir.path().join("proof.json");
        std::fs::write(&file, text).unwrap();
        let file_arg = file.display().to_string();
        let (code, out, err) =
            refold(args(&["verify-proof", &file_arg, "--public-key", &key_hex])).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            out.starts_with(&format!("ok: event {SEAL_INTERVAL} is in the seal")),
            "{out}"
        );
        let (code, out, err) = refold(args(&["verify-proof", &file_arg])).await;
        assert_eq!(code, 0, "{out}{err}");
        let (code, out, err) = refold(args(&[
            "verify-proof",
            &file_arg,
            "--public-key",
            &to_hex(&other_key()),
        ]))
        .await;
        assert_eq!(code, 3, "{out}{err}");
        let (code, out, _) = refold(args(&[
            "--json",
            "verify-proof",
            &file_arg,
            "--public-key",
            &to_hex(&other_key()),
        ]))
        .await;
        assert_eq!(code, 3);
        let json: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(json["ok"], false, "{json}");
        // An edited file fails the CLI too.
        let mut edited = proof.clone();
        bump(&mut edited["event"]["data"]["n"], 1);
        std::fs::write(&file, edited.to_string()).unwrap();
        let (code, out, err) =
            refold(args(&["verify-proof", &file_arg, "--public-key", &key_hex])).await;
        assert_eq!(code, 3, "{out}{err}");
        // `refold proof P` prints a document that checks.
        let (code, out, err) = refold(args(&[
            "--server",
            &s.base,
            "--token",
            "reader-secret",
            "proof",
            "77",
        ]))
        .await;
        assert_eq!(code, 0, "{out}{err}");
        check_proof(&out, Some(&key)).expect("the CLI's proof checks");

        // Every field edited, one at a time, fails the check: in the first
        // seal (a power-of-two tree) and in the second (a ragged one).
        let in_first = 1 + rng.below(SEAL_INTERVAL - 2);
        let in_second = SEAL_INTERVAL + 2 + rng.below(EVENTS - SEAL_INTERVAL - 2);
        let mut checked = 0;
        for p in [in_first, in_second, SEAL_INTERVAL] {
            let (status, text) = get_text(&s, &format!("/v1/events/{p}/proof")).await;
            assert_eq!(status, 200);
            let proof: Value = serde_json::from_str(&text).unwrap();
            check_proof(&proof.to_string(), Some(&key)).expect("the proof as a Value checks");
            for (name, edit) in proof_edits(&proof) {
                let mut edited = proof.clone();
                edit(&mut edited);
                assert_ne!(edited, proof, "{name} changes the proof");
                let result = check_proof(&edited.to_string(), Some(&key));
                assert!(
                    result.is_err(),
                    "position {p}: the proof with {name} edited still checks: {result:?}"
                );
                checked += 1;
            }
        }
        assert!(checked > 150, "{checked} edits");

        // Not sealed yet, beyond the head, not a number.
        store
            .append(
                &StreamId::new("ledger", "l0").unwrap(),
                ExpectedVersion::Any,
                vec![NewEvent::new("Posted", r#"{"n":0}"#)],
            )
            .await
            .unwrap();
        let r = s
            .request(Method::GET, &format!("/v1/events/{}/proof", EVENTS + 1))
            .send()
            .await
            .unwrap();
        let problem = expect_problem(r, 409, "not_sealed_yet").await;
        assert_eq!(problem["next_seal_at"], EVENTS + SEAL_INTERVAL, "{problem}");
        assert_eq!(problem["position"], EVENTS + 1, "{problem}");
        for beyond in [EVENTS + 2, 1 << 40, 0] {
            let r = s
                .request(Method::GET, &format!("/v1/events/{beyond}/proof"))
                .send()
                .await
                .unwrap();
            expect_problem(r, 404, "event_not_found").await;
        }
        for junk in ["abc", "-1", "1.5", "18446744073709551616"] {
            let r = s
                .request(Method::GET, &format!("/v1/events/{junk}/proof"))
                .send()
                .await
                .unwrap();
            expect_problem(r, 400, "invalid_request").await;
        }

        // `refold verify` over HTTP: the whole log, text and JSON.
        let (code, out, err) = refold(args(&[
            "--server",
            &s.base,
            "--token",
            "admin-secret",
            "verify",
            "--public-key",
            &key_hex,
        ]))
        .await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.starts_with("ok:"), "{out}");
        let (code, out, err) = refold(args(&[
            "--server",
            &s.base,
            "--token",
            "admin-secret",
            "--json",
            "verify",
        ]))
        .await;
        assert_eq!(code, 0, "{out}{err}");
        let json: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(json["ok"], true, "{json}");
        assert_eq!(json["report"]["events"], EVENTS + 1, "{json}");
        assert_eq!(json["report"]["seals"], 2, "{json}");
        // A range is widened to whole seals.
        let (code, out, _) = refold(args(&[
            "--server",
            &s.base,
            "--token",
            "admin-secret",
            "--json",
            "verify",
            "--from",
            "100",
            "--to",
            "200",
        ]))
        .await;
        assert_eq!(code, 0, "{out}");
        let json: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(json["report"]["from"], 1, "{json}");
        assert_eq!(json["report"]["to"], SEAL_INTERVAL, "{json}");
        // Seals signed by another key than the one trusted: broken at the first seal.
        let (code, out, err) = refold(args(&[
            "--server",
            &s.base,
            "--token",
            "admin-secret",
            "verify",
            "--public-key",
            &to_hex(&other_key()),
        ]))
        .await;
        assert_eq!(code, 3, "{out}{err}");
        assert!(
            out.starts_with(&format!("log BROKEN at position {SEAL_INTERVAL}:")),
            "{out}"
        );
        // The NDJSON stream itself: progress lines, then the report.
        let (status, text) = get_text(&s, "/v1/integrity/verify?from=1").await;
        assert_eq!(status, 200);
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let last = lines.last().unwrap();
        assert_eq!(last["ok"], true, "{text}");
        assert!(lines.len() >= 2, "progress before the report: {text}");
        assert!(
            lines[..lines.len() - 1]
                .iter()
                .all(|l| l["checked"].is_u64())
        );

        // The event shown is compared as text where `Value` would lose it:
        // a big number changed beyond f64's precision, or keys swapped in data.
        let tricky = store
            .append(
                &StreamId::new("ledger", "big").unwrap(),
                ExpectedVersion::Any,
                vec![NewEvent::new(
                    "Posted",
                    r#"{"b":100000000000000000000001,"a":1}"#,
                )],
            )
            .await
            .unwrap();
        let r = s
            .request(Method::POST, "/v1/integrity/seal")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let (status, text) =
            get_text(&s, &format!("/v1/events/{}/proof", tricky.first_position)).await;
        assert_eq!(status, 200, "{text}");
        check_proof(&text, Some(&key)).expect("the served proof checks");
        for (from, to) in [
            ("100000000000000000000001", "100000000000000000000002"),
            (
                r#""b":100000000000000000000001,"a":1"#,
                r#""a":1,"b":100000000000000000000001"#,
            ),
        ] {
            assert!(text.contains(from));
            let edited = text.replacen(from, to, 1);
            assert!(
                check_proof(&edited, Some(&key)).is_err(),
                "data edited {from} -> {to} still checks"
            );
        }
        let spaced = text.replace(",\"", ", \"").replace(":{", ": {");
        check_proof(&spaced, Some(&key)).expect("whitespace between tokens does not matter");

        drop(store);
        s.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_keeps_the_seals_and_verifies_on_its_own() {
    within(120, async {
        let dir = temp_dir();
        let s = signed_server(dir.path()).await;
        let store = s.server.app.store.as_sled().expect("a sled server").clone();
        let key = public_key();
        append_events(&store, 4_500, 500).await;
        let r = s
            .request(Method::POST, "/v1/integrity/seal")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        append_events(&store, 30, 10).await;
        let head = store.head();
        let original = store.integrity().unwrap();
        assert_eq!(original.last_seal.as_ref().unwrap().last_position, 4_500);

        let backups = temp_dir();
        let target = backups.path().join("copy");
        let r = s
            .request(Method::POST, "/v1/admin/backup")
            .json(&json!({ "path": target }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        let report: Value = r.json().await.unwrap();
        assert_eq!(report["position"], head, "{report}");
        assert_eq!(report["events"], head, "{report}");
        drop(store);
        s.stop().await;

        let copy = Store::open(StoreConfig::new(target.join("events"))).unwrap();
        assert_eq!(copy.head(), head);
        let walk = copy
            .verify_log(1, None, Some(&key), &mut |_, _| true)
            .unwrap();
        assert!(walk.failure.is_none(), "{walk:?}");
        assert_eq!((walk.events, walk.seals), (head, 2));
        let restored = copy.integrity().unwrap();
        assert_eq!(restored.last_seal, original.last_seal);
        assert_eq!(restored.chain, original.chain);
        assert_eq!(restored.next_seal_at, original.next_seal_at);
        // The copy's first seal is the original's too.
        let proof = copy.proof(10).unwrap().expect("a proof in the copy");
        assert_eq!(proof.seal.last_position, SEAL_INTERVAL);
        assert_eq!(proof.seal.public_key, Some(key));
        copy.close().await;
        drop(copy);

        // And `refold verify --data-dir` agrees.
        let (code, out, err) = refold(args(&[
            "verify",
            "--data-dir",
            &target.display().to_string(),
            "--public-key",
            &to_hex(&key),
        ]))
        .await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.starts_with("ok:"), "{out}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_format_1_store_is_refused_by_name() {
    within(60, async {
        let dir = temp_dir();
        let path = dir.path().join("events");
        {
            let store = Store::open(StoreConfig::new(&path).durability(Durability::None)).unwrap();
            append_events(&store, 10, 10).await;
            store.close().await;
        }
        tamper(&path.join("sled"), &|db| {
            assert_eq!(db.get(b"Mformat").unwrap().as_deref(), Some(&[2u8][..]));
            db.insert(b"Mformat", &[1u8][..]).unwrap();
        });
        match Store::open(StoreConfig::new(&path)) {
            Ok(_) => panic!("a format-1 store opened"),
            Err(e) => {
                let message = e.to_string();
                assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
                assert!(message.contains("format 1"), "{message}");
            }
        }
        // The CLI says the same and exits non-zero.
        let (code, out, err) = refold(args(&[
            "verify",
            "--data-dir",
            &dir.path().display().to_string(),
        ]))
        .await;
        assert_ne!(code, 0, "{out}{err}");
        assert!(format!("{out}{err}").contains("format 1"), "{out}{err}");
        // Put back, it opens and verifies.
        tamper(&path.join("sled"), &|db| {
            db.insert(b"Mformat", &[2u8][..]).unwrap();
        });
        let store = Store::open(StoreConfig::new(&path)).unwrap();
        let report = store.verify_log(1, None, None, &mut |_, _| true).unwrap();
        assert!(report.failure.is_none());
        assert_eq!(report.events, 10);
        store.close().await;
    })
    .await;
}

/// An unsigned seal binds only its root through a proof; a trusted seal digest
/// binds the rest. Also: the event shown may re-spell strings, never change
/// them, and a key given twice in `metadata.extra` is refused.
#[tokio::test(flavor = "multi_thread")]
async fn unsigned_seals_are_bound_by_a_trusted_digest() {
    use refold::api::integrity::{ProofTrust, check_proof_with};
    within(60, async {
        let dir = temp_dir();
        let mut config = support::http::config(dir.path());
        config.durability = Durability::None;
        let s = TestServer::start_with(config).await;
        let store = s.server.app.store.as_sled().expect("a sled server").clone();
        append_events(&store, 40, 10).await;
        let mut event = NewEvent::new("Posted", r#"{"name":"Zoë","n":1}"#);
        event.metadata.extra.insert("tag".into(), "real".into());
        let at = store
            .append(
                &StreamId::new("ledger", "extra").unwrap(),
                ExpectedVersion::Any,
                vec![event],
            )
            .await
            .unwrap()
            .first_position;
        let r = s
            .request(Method::POST, "/v1/integrity/seal")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let sealed: Value = r.json().await.unwrap();
        let digest = digest_from_hex(sealed["seal"]["digest"].as_str().unwrap()).unwrap();
        assert!(sealed["seal"]["signature"].is_null());
        let (status, status_text) = get_text(&s, "/v1/integrity").await;
        assert_eq!(status, 200);
        let integrity: Value = serde_json::from_str(&status_text).unwrap();
        assert_eq!(integrity["last_seal"]["digest"], sealed["seal"]["digest"]);

        let (status, text) = get_text(&s, &format!("/v1/events/{at}/proof")).await;
        assert_eq!(status, 200, "{text}");
        let trusted = ProofTrust {
            public_key: None,
            seal_digest: Some(&digest),
        };
        let check = check_proof_with(&text, trusted).expect("checks against its digest");
        assert!(check.trusted);
        assert!(
            !check_proof(&text, None).unwrap().trusted,
            "consistent, not trusted"
        );

        // What only the digest binds in an unsigned seal: edited, the proof
        // still hangs together, but not with the trusted digest.
        let proof: Value = serde_json::from_str(&text).unwrap();
        let edits: Vec<Edit> = vec![
            (
                "seal.chain".into(),
                Box::new(|p| flip_hex(&mut p["seal"]["chain"], 3)),
            ),
            (
                "seal.sealed_at_ms".into(),
                Box::new(|p| bump(&mut p["seal"]["sealed_at_ms"], 1)),
            ),
            (
                "seal.last_position".into(),
                Box::new(|p| bump(&mut p["seal"]["last_position"], 1)),
            ),
        ];
        for (name, edit) in &edits {
            let mut edited = proof.clone();
            edit(&mut edited);
            // Its own digest no longer matches...
            assert!(check_proof(&edited.to_string(), None).is_err(), "{name}");
            // ...and recomputing it does not help against the trusted one.
            let seal = edited["seal"].clone();
            let recomputed = Seal {
                first_position: seal["first_position"].as_u64().unwrap(),
                last_position: seal["last_position"].as_u64().unwrap(),
                root: digest_from_hex(seal["root"].as_str().unwrap()).unwrap(),
                chain: digest_from_hex(seal["chain"].as_str().unwrap()).unwrap(),
                sealed_at_ms: seal["sealed_at_ms"].as_u64().unwrap(),
                signature: None,
                public_key: None,
            };
            edited["seal"]["digest"] =
                json!(to_hex(&refold::store::integrity::seal_digest(&recomputed)));
            assert!(
                check_proof_with(&edited.to_string(), trusted).is_err(),
                "{name} edited, digest recomputed, still checks against the trusted digest"
            );
        }

        // Strings may be spelled differently (an escape for a character),
        // never changed; `extra` may not name a key twice.
        assert!(text.contains("Zoë"), "{text}");
        let respelled = text.replacen("Zoë", "Zo\\u00eb", 1);
        check_proof_with(&respelled, trusted).expect("an escape is the same string");
        let changed = text.replacen("Zoë", "Zoe", 1);
        assert!(check_proof_with(&changed, trusted).is_err());
        assert!(text.contains(r#""extra":{"tag":"real"}"#), "{text}");
        let twice = text.replacen(
            r#""extra":{"tag":"real"}"#,
            r#""extra":{"tag":"FORGED","tag":"real"}"#,
            1,
        );
        assert!(
            check_proof_with(&twice, trusted).is_err(),
            "a key twice in extra"
        );

        // The CLI: NOT TRUSTED without a key or digest (exit 0), trusted with
        // the digest, exit 3 with another digest.
        let file = dir.path().join("proof.json");
        std::fs::write(&file, &text).unwrap();
        let path = file.display().to_string();
        let (code, out, err) = refold(args(&["verify-proof", &path])).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("NOT TRUSTED"), "{out}");
        let digest_hex = to_hex(&digest);
        let (code, out, err) =
            refold(args(&["verify-proof", &path, "--seal-digest", &digest_hex])).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(!out.contains("NOT TRUSTED"), "{out}");
        let (code, _, _) = refold(args(&[
            "verify-proof",
            &path,
            "--seal-digest",
            &to_hex(&[7; 32]),
        ]))
        .await;
        assert_eq!(code, 3);

        // A typo in the verify route's query is refused, not read as "the whole log".
        let (status, body) = get_text(&s, "/v1/integrity/verify?form=5").await;
        assert_eq!(status, 400, "{body}");
        drop(store);
        s.stop().await;
    })
    .await;
}
