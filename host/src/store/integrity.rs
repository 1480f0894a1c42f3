//! Integrity primitives of the tamper-evident event log (format 2): the hash
//! chain over event bodies, RFC 6962/9162 Merkle trees over a segment's chain
//! values, and Ed25519-signed seals (checkpoints) over those trees.

use std::{fmt, fs, path::Path, path::PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::types::Position;

/// The writer seals the chain every this many positions (and on demand).
pub const SEAL_INTERVAL: u64 = 4096;

pub type Digest = [u8; 32];

/// The chain value "before" position 1.
pub const ZERO: Digest = [0; 32];

/// Domain tag of signed seal messages, so a seal signature can never be
/// replayed as a signature over anything else made with the same key.
const SEAL_DOMAIN: &[u8] = b"refold-seal-v1\0";

/// Next chain value. The position is hashed in so an event cannot be moved to
/// another slot even when the bodies happen to repeat.
pub fn chain_next(previous: &Digest, position: Position, body: &[u8]) -> Digest {
    Sha256::new()
        .chain_update(previous)
        .chain_update(position.to_be_bytes())
        .chain_update(body)
        .finalize()
        .into()
}

fn hash_leaf_bytes(data: &[u8]) -> Digest {
    Sha256::new()
        .chain_update([0x00])
        .chain_update(data)
        .finalize()
        .into()
}

fn node_hash(left: &Digest, right: &Digest) -> Digest {
    Sha256::new()
        .chain_update([0x01])
        .chain_update(left)
        .chain_update(right)
        .finalize()
        .into()
}

/// RFC 6962 leaf hash; the 0x00/0x01 prefixes keep leaves and inner nodes
/// from ever being confused (second-preimage resistance).
pub fn leaf_hash(chain: &Digest) -> Digest {
    hash_leaf_bytes(chain)
}

/// Largest power of two strictly below `n` (`n >= 2`): where RFC 6962 splits.
fn split(n: usize) -> usize {
    1 << (n - 1).ilog2()
}

/// MTH over already-hashed leaves. Recursion depth is log2(n), and nothing is
/// allocated.
fn root_of_leaf_hashes(leaves: &[Digest]) -> Digest {
    match leaves {
        [] => Sha256::digest([]).into(),
        [leaf] => *leaf,
        _ => {
            let k = split(leaves.len());
            node_hash(
                &root_of_leaf_hashes(&leaves[..k]),
                &root_of_leaf_hashes(&leaves[k..]),
            )
        }
    }
}

/// RFC 6962 PATH(m, D[n]) over already-hashed leaves, ordered leaf to root.
/// Each sibling subtree is hashed once, so the total work is O(n).
fn path_of_leaf_hashes(leaves: &[Digest], index: usize) -> Vec<Digest> {
    assert!(
        index < leaves.len(),
        "leaf {index} is outside a tree of {} leaves",
        leaves.len()
    );
    let mut path = Vec::with_capacity((usize::BITS - leaves.len().leading_zeros()) as usize);
    let (mut subtree, mut index) = (leaves, index);
    while subtree.len() > 1 {
        let k = split(subtree.len());
        if index < k {
            path.push(root_of_leaf_hashes(&subtree[k..]));
            subtree = &subtree[..k];
        } else {
            path.push(root_of_leaf_hashes(&subtree[..k]));
            subtree = &subtree[k..];
            index -= k;
        }
    }
    path.reverse();
    path
}

/// RFC 9162 section 2.1.3.2, starting from an already-hashed leaf.
fn root_from_leaf_inclusion(
    leaf: Digest,
    index: u64,
    size: u64,
    path: &[Digest],
) -> Option<Digest> {
    if index >= size {
        return None;
    }
    let (mut f, mut s, mut r) = (index, size - 1, leaf);
    for p in path {
        if s == 0 {
            return None;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    (s == 0).then_some(r)
}

/// Merkle tree hash of a segment's chain values; the empty tree is
/// SHA-256("") as RFC 6962 specifies.
pub fn merkle_root(chains: &[Digest]) -> Digest {
    root_of_leaf_hashes(&chains.iter().map(leaf_hash).collect::<Vec<_>>())
}

/// Audit path proving `chains[index]` is in `merkle_root(chains)`.
///
/// # Panics
/// If `index >= chains.len()`: asking for a proof of a missing leaf is a bug.
pub fn inclusion_path(chains: &[Digest], index: usize) -> Vec<Digest> {
    path_of_leaf_hashes(&chains.iter().map(leaf_hash).collect::<Vec<_>>(), index)
}

/// The root an inclusion proof leads to, or `None` if the proof cannot be
/// well-formed for `index`/`size`. The caller compares it with the sealed
/// root. The proof alone does not bind `size`: it must come from the seal.
pub fn root_from_inclusion(
    chain: &Digest,
    index: u64,
    size: u64,
    path: &[Digest],
) -> Option<Digest> {
    root_from_leaf_inclusion(leaf_hash(chain), index, size, path)
}

/// A signed checkpoint over events `first_position..=last_position`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    pub first_position: Position,
    pub last_position: Position,
    /// `merkle_root` over the chain values of the covered events.
    pub root: Digest,
    /// Chain value at `last_position`, which commits to the whole prefix.
    pub chain: Digest,
    pub sealed_at_ms: u64,
    /// Ed25519 signature over `seal_message`; a `Vec` because serde derives
    /// no impls for `[u8; 64]`. Must be 64 bytes long.
    pub signature: Option<Vec<u8>>,
    pub public_key: Option<Digest>,
}

/// The bytes a seal signature covers: every field but the signature and key.
pub fn seal_message(seal: &Seal) -> Vec<u8> {
    let mut message = Vec::with_capacity(SEAL_DOMAIN.len() + 8 + 8 + 32 + 32 + 8);
    message.extend_from_slice(SEAL_DOMAIN);
    message.extend_from_slice(&seal.first_position.to_be_bytes());
    message.extend_from_slice(&seal.last_position.to_be_bytes());
    message.extend_from_slice(&seal.root);
    message.extend_from_slice(&seal.chain);
    message.extend_from_slice(&seal.sealed_at_ms.to_be_bytes());
    message
}

/// A seal's digest: sha256 of what a signature signs. It names the whole
/// seal (range, root, chain value, time), so an unsigned seal can be compared
/// with one obtained elsewhere by this one value.
pub fn seal_digest(seal: &Seal) -> Digest {
    Sha256::digest(seal_message(seal)).into()
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read seal key file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("seal key file {} is malformed: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("seal is not signed, but a trusted seal key is configured")]
    Unsigned,
    #[error("seal carries only one of signature and public key")]
    Incomplete,
    #[error("seal was signed by key {}, not by the trusted key {}", to_hex(.found), to_hex(.trusted))]
    KeyMismatch { trusted: Digest, found: Digest },
    #[error("seal signature is {0} bytes long, expected 64")]
    MalformedSignature(usize),
    #[error("seal public key is not a valid Ed25519 key")]
    MalformedKey,
    #[error("seal signature does not verify: the seal was altered or not signed by its key")]
    BadSignature,
}

/// Signs seals. `Debug` shows only the public key so the seed never lands
/// in logs; the underlying key is zeroized on drop.
pub struct SealSigner {
    key: SigningKey,
}

impl fmt::Debug for SealSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealSigner")
            .field("public_key", &to_hex(&self.public_key()))
            .finish()
    }
}

impl SealSigner {
    /// `seed` is the RFC 8032 secret key.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// Reads a key file as written by `key_file_text`. Errors never echo the
    /// file's content, which may be most of a secret.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let bytes = fs::read(path).map_err(|source| KeyError::Read {
            path: path.into(),
            source,
        })?;
        parse_seed(&bytes)
            .map(Self::from_seed)
            .map_err(|reason| KeyError::Malformed {
                path: path.into(),
                reason,
            })
    }

    pub fn public_key(&self) -> Digest {
        self.key.verifying_key().to_bytes()
    }

    pub fn sign(&self, seal: &mut Seal) {
        seal.public_key = Some(self.public_key());
        seal.signature = Some(self.key.sign(&seal_message(seal)).to_bytes().to_vec());
    }
}

fn parse_seed(text: &[u8]) -> Result<[u8; 32], String> {
    let text = text.trim_ascii();
    if text.is_empty() {
        return Err(
            "it is empty; expected 64 hexadecimal characters (a 32-byte Ed25519 seed)".into(),
        );
    }
    if !text.iter().all(u8::is_ascii_hexdigit) {
        return Err("it contains characters other than hexadecimal digits".into());
    }
    decode_hex(text)
        .and_then(|seed| seed.try_into().ok())
        .ok_or_else(|| {
            format!(
                "expected 64 hexadecimal characters (a 32-byte Ed25519 seed), found {}",
                text.len()
            )
        })
}

/// Contents of a key file for `seed`; the caller supplies OS randomness.
pub fn key_file_text(seed: &[u8; 32]) -> String {
    to_hex(seed) + "\n"
}

/// Checks a seal's signature. With a trusted key the seal must be signed by
/// exactly that key; without one, a signature that is present must still be
/// valid for the key the seal names, and an unsigned seal passes.
pub fn verify_seal_signature(seal: &Seal, trusted_key: Option<&Digest>) -> Result<(), SealError> {
    let (signature, key) = match (&seal.signature, &seal.public_key, trusted_key) {
        (None, _, Some(_)) => return Err(SealError::Unsigned),
        (None, None, None) => return Ok(()),
        (Some(signature), Some(key), _) => (signature, key),
        _ => return Err(SealError::Incomplete),
    };
    if let Some(trusted) = trusted_key.filter(|trusted| *trusted != key) {
        return Err(SealError::KeyMismatch {
            trusted: *trusted,
            found: *key,
        });
    }
    let signature = <[u8; 64]>::try_from(signature.as_slice())
        .map_err(|_| SealError::MalformedSignature(signature.len()))?;
    let key = VerifyingKey::from_bytes(key).map_err(|_| SealError::MalformedKey)?;
    key.verify_strict(&seal_message(seal), &Signature::from_bytes(&signature))
        .map_err(|_| SealError::BadSignature)
}

pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)].into());
        out.push(DIGITS[usize::from(byte & 0x0f)].into());
    }
    out
}

fn decode_hex(text: &[u8]) -> Option<Vec<u8>> {
    let nibble = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

pub fn bytes_from_hex(s: &str) -> Option<Vec<u8>> {
    decode_hex(s.as_bytes())
}

pub fn digest_from_hex(s: &str) -> Option<Digest> {
    bytes_from_hex(s)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Digest {
        digest_from_hex(s).unwrap()
    }

    /// Bottom-up construction (pair neighbours, promote an odd last node):
    /// a different algorithm that yields the same tree as RFC 6962.
    fn reference_root_and_path(leaves: &[Digest], mut index: usize) -> (Digest, Vec<Digest>) {
        let (mut level, mut path) = (leaves.to_vec(), Vec::new());
        while level.len() > 1 {
            if let Some(sibling) = level.get(index ^ 1) {
                path.push(*sibling);
            }
            let pair = |p: &[Digest]| p.get(1).map_or(p[0], |r| node_hash(&p[0], r));
            level = level.chunks(2).map(pair).collect();
            index /= 2;
        }
        (level[0], path)
    }

    fn chains(n: usize) -> Vec<Digest> {
        let mut chain = ZERO;
        (1..=n as u64)
            .map(|p| {
                chain = chain_next(&chain, p, &p.to_le_bytes());
                chain
            })
            .collect()
    }

    #[test]
    fn rfc6962_test_vectors() {
        let data: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        let leaves: Vec<Digest> = data.iter().map(|d| hash_leaf_bytes(d)).collect();
        let roots = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        for (n, root) in (1..).zip(roots) {
            assert_eq!(root_of_leaf_hashes(&leaves[..n]), hex(root), "size {n}");
        }
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(merkle_root(&[]), hex(empty));
        let proofs: [(usize, usize, &[&str]); 4] = [
            (
                0,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                3,
                &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
            ),
            (
                1,
                5,
                &[
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (index, size, expected) in proofs {
            let path = path_of_leaf_hashes(&leaves[..size], index);
            assert_eq!(path, expected.iter().map(|h| hex(h)).collect::<Vec<_>>());
            let root = root_from_leaf_inclusion(leaves[index], index as u64, size as u64, &path);
            assert_eq!(root, Some(hex(roots[size - 1])));
        }
    }

    #[test]
    fn inclusion_proofs_verify_and_detect_tampering() {
        let all = chains(140);
        let roots: Vec<Digest> = (0..=140).map(|n| merkle_root(&all[..n])).collect();
        for n in 1..=70 {
            let chains = &all[..n];
            let leaves: Vec<Digest> = chains.iter().map(leaf_hash).collect();
            let size = n as u64;
            for index in 0..n {
                let path = inclusion_path(chains, index);
                assert_eq!(
                    (roots[n], path.clone()),
                    reference_root_and_path(&leaves, index)
                );
                let at = |i: u64, s: u64, c: &Digest, p: &[Digest]| root_from_inclusion(c, i, s, p);
                assert_eq!(
                    at(index as u64, size, &chains[index], &path),
                    Some(roots[n])
                );
                for i in 0..path.len() {
                    let mut bad = path.clone();
                    bad[i][i % 32] ^= 1;
                    assert_ne!(at(index as u64, size, &chains[index], &bad), Some(roots[n]));
                }
                if let Some((_, shorter)) = path.split_last() {
                    assert_eq!(at(index as u64, size, &chains[index], shorter), None);
                }
                let mut longer = path.clone();
                longer.push(ZERO);
                assert_eq!(at(index as u64, size, &chains[index], &longer), None);
                for other in [
                    index ^ 1,
                    index ^ 2,
                    index ^ 3,
                    index + 1,
                    index.wrapping_sub(1),
                    n,
                ] {
                    if other != index {
                        assert_ne!(
                            at(other as u64, size, &chains[index], &path),
                            Some(roots[n])
                        );
                    }
                }
                for other in [n - 1, n + 1, n + 2, 2 * n, n.next_power_of_two()] {
                    if other == n || other <= index {
                        continue;
                    }
                    assert_ne!(
                        at(index as u64, other as u64, &chains[index], &path),
                        Some(roots[other])
                    );
                }
                let mut chain = chains[index];
                chain[index % 32] ^= 0x80;
                assert_ne!(at(index as u64, size, &chain, &path), Some(roots[n]));
            }
        }
    }

    #[test]
    fn chain_binds_every_input_byte() {
        let (previous, body) = ([7u8; 32], *b"event body");
        let base = chain_next(&previous, 42, &body);
        for i in 0..32 {
            let mut p = previous;
            p[i] ^= 1;
            assert_ne!(chain_next(&p, 42, &body), base);
        }
        for bit in (0..64).step_by(8) {
            assert_ne!(chain_next(&previous, 42 ^ (1 << bit), &body), base);
        }
        for i in 0..body.len() {
            let mut b = body;
            b[i] ^= 1;
            assert_ne!(chain_next(&previous, 42, &b), base);
        }
        assert_ne!(chain_next(&previous, 42, &body[1..]), base);
        let first: Digest =
            Sha256::digest([&[0; 32][..], &1u64.to_be_bytes(), b"x"].concat()).into();
        assert_eq!(chain_next(&ZERO, 1, b"x"), first);
    }

    fn signed_seal() -> (SealSigner, Seal) {
        // RFC 8032 section 7.1, test 1.
        let seed = hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let signer = SealSigner::from_seed(seed);
        assert_eq!(
            signer.public_key(),
            hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        );
        let all = chains(10);
        let mut seal = Seal {
            first_position: 1,
            last_position: 10,
            root: merkle_root(&all),
            chain: all[9],
            sealed_at_ms: 1_700_000_000_000,
            signature: None,
            public_key: None,
        };
        signer.sign(&mut seal);
        (signer, seal)
    }

    #[test]
    fn seal_signatures_detect_any_change() {
        let (signer, seal) = signed_seal();
        let (key, verify) = (signer.public_key(), verify_seal_signature);
        assert_eq!(seal_message(&seal).len(), 15 + 88);
        assert_eq!(verify(&seal, Some(&key)), Ok(()));
        assert_eq!(verify(&seal, None), Ok(()));
        let mut variants = Vec::new();
        for bit in (0..64).step_by(8) {
            let fields: [fn(&mut Seal) -> &mut u64; 3] = [
                |s| &mut s.first_position,
                |s| &mut s.last_position,
                |s| &mut s.sealed_at_ms,
            ];
            for field in fields {
                let mut s = seal.clone();
                *field(&mut s) ^= 1 << bit;
                variants.push(s);
            }
        }
        for i in 0..64 {
            let mut s = seal.clone();
            s.signature.as_mut().unwrap()[i] ^= 1;
            variants.push(s);
            if i < 32 {
                let fields: [fn(&mut Seal) -> &mut Digest; 3] = [
                    |s| &mut s.root,
                    |s| &mut s.chain,
                    |s| s.public_key.as_mut().unwrap(),
                ];
                for field in fields {
                    let mut s = seal.clone();
                    field(&mut s)[i] ^= 1;
                    variants.push(s);
                }
            }
        }
        assert_eq!(variants.len(), 3 * 8 + 64 + 3 * 32);
        for bad in &variants {
            assert!(verify(bad, Some(&key)).is_err());
            assert!(verify(bad, None).is_err());
        }
        let other = SealSigner::from_seed([1; 32]).public_key();
        assert_eq!(
            verify(&seal, Some(&other)),
            Err(SealError::KeyMismatch {
                trusted: other,
                found: key
            })
        );
        let mut short = seal.clone();
        short.signature.as_mut().unwrap().pop();
        assert_eq!(verify(&short, None), Err(SealError::MalformedSignature(63)));
        let unsigned = Seal {
            signature: None,
            public_key: None,
            ..seal.clone()
        };
        assert_eq!(verify(&unsigned, Some(&key)), Err(SealError::Unsigned));
        assert_eq!(verify(&unsigned, None), Ok(()));
        let keyless = Seal {
            public_key: None,
            ..seal
        };
        assert_eq!(verify(&keyless, None), Err(SealError::Incomplete));
    }

    #[test]
    fn key_files() {
        let dir = std::env::temp_dir();
        let file = |name: &str, text: &str| {
            let path = dir.join(format!("refold-integrity-{}-{name}", std::process::id()));
            fs::write(&path, text).unwrap();
            let result = SealSigner::from_file(&path);
            fs::remove_file(&path).unwrap();
            result
                .map(|s| s.public_key())
                .map_err(|e| (e.to_string(), path))
        };
        let seed = [0xab; 32];
        let expected = SealSigner::from_seed(seed).public_key();
        assert_eq!(file("valid", &key_file_text(&seed)).unwrap(), expected);
        assert_eq!(
            file(
                "spaced",
                &format!(" \r\n{}\t\n\n", to_hex(&seed).to_uppercase())
            )
            .unwrap(),
            expected
        );
        for (name, text, reason) in [
            ("short", &to_hex(&seed)[2..], "found 62"),
            ("long", &(to_hex(&seed) + "00"), "found 66"),
            (
                "nonhex",
                &to_hex(&seed).replace('b', "g"),
                "other than hexadecimal",
            ),
            (
                "inner-space",
                &(to_hex(&[1; 16]) + " " + &to_hex(&[1; 16])),
                "other than hexadecimal",
            ),
            ("empty", " \n", "is empty"),
        ] {
            let (message, path) = file(name, text).unwrap_err();
            assert!(
                message.contains(reason) && message.contains(&*path.to_string_lossy()),
                "{message}"
            );
        }
        let missing = SealSigner::from_file(Path::new("/nonexistent/refold.key")).unwrap_err();
        assert!(
            matches!(missing, KeyError::Read { .. })
                && missing.to_string().contains("/nonexistent/refold.key")
        );
        assert!(!format!("{:?}", SealSigner::from_seed(seed)).contains(&to_hex(&seed)));
    }

    #[test]
    fn hex_is_strict() {
        assert_eq!(to_hex(&[0x00, 0xab, 0xff]), "00abff");
        assert_eq!(bytes_from_hex("00ABff"), Some(vec![0x00, 0xab, 0xff]));
        assert_eq!(bytes_from_hex(""), Some(vec![]));
        for bad in ["0", "0g", " 00", "+1", "é0"] {
            assert_eq!(bytes_from_hex(bad), None, "{bad}");
        }
        assert_eq!(digest_from_hex(&to_hex(&[9; 32])), Some([9; 32]));
        assert_eq!(digest_from_hex(&to_hex(&[9; 31])), None);
    }
}
