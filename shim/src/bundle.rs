//! AOT bundles: native code precompiled for one architecture, carried to
//! nodes of that architecture and imported into their caches.
//!
//! A bundle is a tar holding `manifest.json` and one `<sha256 of the
//! Wasm>.cwasm` per module. The manifest names the target triple and the
//! engine key of [`WasmEngine::for_target`] (Wasmtime version, engine
//! settings and the architecture's baseline CPU features, plus the shim
//! version), and for every file its size and SHA-256.
//!
//! [`read`] accepts a bundle only whole: every file must be listed with a
//! matching size and digest, nothing else may be in the tar, and (when the
//! operator gives it) the manifest's own digest must match. [`check_key`]
//! then compares the key with the node's own engine. Only after both does
//! the tool write the code into the node's cache.
//!
//! [`WasmEngine::for_target`]: crate::engine::WasmEngine::for_target

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cache::{WasmDigest, sha256_hex};
use crate::engine::Workload;

/// The manifest format this shim writes and reads.
pub const FORMAT: u32 = 1;
/// The manifest's name in the tar.
pub const MANIFEST: &str = "manifest.json";
/// Refuse members larger than this (a corrupt or hostile header).
const MAX_MEMBER: u64 = 4 << 30;

/// The manifest of a bundle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    /// Target triple the code was compiled for.
    pub target: String,
    /// Engine key of `WasmEngine::for_target(target)` on the build machine.
    pub engine: String,
    /// The shim version that built it.
    pub shim_version: String,
    /// Seconds since the epoch.
    pub created: u64,
    pub entries: Vec<ManifestEntry>,
}

/// One precompiled module.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestEntry {
    /// `sha256:` digest of the Wasm it was compiled from.
    pub wasm_digest: String,
    pub wasm_size: u64,
    pub kind: Workload,
    /// SHA-256 (hex) and size of the `.cwasm` file.
    pub code_sha256: String,
    pub code_size: u64,
    /// Images (`namespace/name`) it was compiled for, informational.
    #[serde(default)]
    pub images: Vec<String>,
}

impl ManifestEntry {
    /// The entry's file name in the tar.
    pub fn file_name(&self) -> Result<String, BundleError> {
        let digest = WasmDigest::parse(&self.wasm_digest)
            .map_err(|_| BundleError::Invalid(format!("bad digest {:?}", self.wasm_digest)))?;
        Ok(format!("{}.cwasm", digest.hex()))
    }
}

/// Why a bundle was refused. Nothing is imported in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read the bundle: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a valid bundle: {0}")]
    Invalid(String),
    #[error("the manifest's digest is sha256:{found}, not the expected sha256:{expected}")]
    ManifestDigest { found: String, expected: String },
    #[error("{file}: {what} does not match the manifest (damaged or altered bundle)")]
    Mismatch { file: String, what: &'static str },
    #[error(
        "the bundle is for {bundle}, but this node is {node}: build one with \
         `wasmhybrid cache bundle --target {node}`"
    )]
    WrongTarget { bundle: String, node: String },
    #[error(
        "the bundle's engine key {bundle} is not this node's {node}: it was built by another \
         shim or Wasmtime version, or with other engine settings"
    )]
    WrongEngine { bundle: String, node: String },
}

/// A bundle read and checked against its own manifest.
#[derive(Debug)]
pub struct Bundle {
    pub manifest: Manifest,
    /// The manifest's SHA-256 (hex): what an operator vouches for.
    pub manifest_sha256: String,
    /// Code by entry, in manifest order.
    pub code: Vec<Vec<u8>>,
}

/// Writes a bundle: the manifest, then each entry's code.
pub fn write(
    out: impl std::io::Write,
    manifest: &Manifest,
    code: &[Vec<u8>],
) -> Result<String, BundleError> {
    if manifest.entries.len() != code.len() {
        return Err(BundleError::Invalid("one code file per entry".into()));
    }
    let json = serde_json::to_vec_pretty(manifest)
        .map_err(|e| BundleError::Invalid(format!("manifest: {e}")))?;
    let mut tar = tar::Builder::new(out);
    append(&mut tar, MANIFEST, &json)?;
    for (entry, bytes) in manifest.entries.iter().zip(code) {
        append(&mut tar, &entry.file_name()?, bytes)?;
    }
    std::io::Write::flush(&mut tar.into_inner()?)?;
    Ok(sha256_hex(&json))
}

fn append<W: std::io::Write>(
    tar: &mut tar::Builder<W>,
    name: &str,
    bytes: &[u8],
) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o600);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, name, bytes)
}

/// Reads a bundle and checks every file against the manifest, and the
/// manifest against `expected_manifest_sha256` when given.
pub fn read(path: &Path, expected_manifest_sha256: Option<&str>) -> Result<Bundle, BundleError> {
    let file = std::fs::File::open(path)?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut members: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for member in archive.entries()? {
        let mut member = member?;
        let name = member.path()?.to_string_lossy().into_owned();
        let valid_name = name == MANIFEST
            || name
                .strip_suffix(".cwasm")
                .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !valid_name || !member.header().entry_type().is_file() {
            return Err(BundleError::Invalid(format!(
                "unexpected member {name:?} (a bundle holds {MANIFEST} and <sha256>.cwasm files)"
            )));
        }
        let size = member.header().size()?;
        if size > MAX_MEMBER {
            return Err(BundleError::Invalid(format!("{name} is {size} bytes")));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        member.read_to_end(&mut bytes)?;
        if members.insert(name.clone(), bytes).is_some() {
            return Err(BundleError::Invalid(format!("{name} appears twice")));
        }
    }
    let json = members
        .remove(MANIFEST)
        .ok_or_else(|| BundleError::Invalid(format!("no {MANIFEST}")))?;
    let manifest_sha256 = sha256_hex(&json);
    if let Some(expected) = expected_manifest_sha256 {
        let expected = expected.strip_prefix("sha256:").unwrap_or(expected);
        if !expected.eq_ignore_ascii_case(&manifest_sha256) {
            return Err(BundleError::ManifestDigest {
                found: manifest_sha256,
                expected: expected.to_string(),
            });
        }
    }
    let manifest: Manifest = serde_json::from_slice(&json)
        .map_err(|e| BundleError::Invalid(format!("{MANIFEST}: {e}")))?;
    if manifest.format != FORMAT {
        return Err(BundleError::Invalid(format!(
            "manifest format {} (this shim reads {FORMAT})",
            manifest.format
        )));
    }
    let mut code = Vec::with_capacity(manifest.entries.len());
    for entry in &manifest.entries {
        let name = entry.file_name()?;
        let bytes = members.remove(&name).ok_or_else(|| BundleError::Mismatch {
            file: name.clone(),
            what: "presence",
        })?;
        if bytes.len() as u64 != entry.code_size {
            return Err(BundleError::Mismatch {
                file: name,
                what: "size",
            });
        }
        if sha256_hex(&bytes) != entry.code_sha256 {
            return Err(BundleError::Mismatch {
                file: name,
                what: "SHA-256",
            });
        }
        code.push(bytes);
    }
    if let Some(extra) = members.keys().next() {
        return Err(BundleError::Invalid(format!(
            "{extra} is not listed in the manifest"
        )));
    }
    Ok(Bundle {
        manifest,
        manifest_sha256,
        code,
    })
}

/// Checks that the bundle was built for this node: its target triple, and
/// the engine key that `WasmEngine::for_target(node_target)` has here.
pub fn check_key(
    manifest: &Manifest,
    node_target: &str,
    node_engine: &str,
) -> Result<(), BundleError> {
    if manifest.target != node_target {
        return Err(BundleError::WrongTarget {
            bundle: manifest.target.clone(),
            node: node_target.to_string(),
        });
    }
    if manifest.engine != node_engine {
        return Err(BundleError::WrongEngine {
            bundle: manifest.engine.clone(),
            node: node_engine.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn sample() -> (Manifest, Vec<Vec<u8>>) {
        let code = vec![b"code one".to_vec(), b"code two!".to_vec()];
        let entries = code
            .iter()
            .enumerate()
            .map(|(i, c)| ManifestEntry {
                wasm_digest: WasmDigest::of(&[i as u8]).to_string(),
                wasm_size: 1,
                kind: Workload::Module,
                code_sha256: sha256_hex(c),
                code_size: c.len() as u64,
                images: vec![format!("k8s.io/img{i}")],
            })
            .collect();
        let manifest = Manifest {
            format: FORMAT,
            target: "aarch64-unknown-linux-gnu".into(),
            engine: "0.1.0-0123456789abcdef".into(),
            shim_version: "0.1.0".into(),
            created: 0,
            entries,
        };
        (manifest, code)
    }

    fn written(manifest: &Manifest, code: &[Vec<u8>]) -> (tempfile::TempDir, PathBuf, String) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("b.tar");
        let file = std::fs::File::create(&path).expect("create");
        let sha = write(file, manifest, code).expect("write");
        (dir, path, sha)
    }

    /// Rewrites the tar at `path`, passing each member through `f` (which
    /// may drop it by returning None) and appending `extra`.
    fn rewrite(path: &Path, f: impl Fn(&str, Vec<u8>) -> Option<Vec<u8>>, extra: &[(&str, &[u8])]) {
        let mut members = Vec::new();
        let mut archive = tar::Archive::new(std::fs::File::open(path).expect("open"));
        for m in archive.entries().expect("entries") {
            let mut m = m.expect("member");
            let name = m.path().expect("path").to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            m.read_to_end(&mut bytes).expect("read");
            if let Some(b) = f(&name, bytes) {
                members.push((name, b));
            }
        }
        let mut tar = tar::Builder::new(std::fs::File::create(path).expect("create"));
        for (name, bytes) in &members {
            append(&mut tar, name, bytes).expect("append");
        }
        for (name, bytes) in extra {
            append(&mut tar, name, bytes).expect("append");
        }
        tar.finish().expect("finish");
    }

    #[test]
    fn a_written_bundle_reads_back_and_its_manifest_digest_is_checked() {
        let (manifest, code) = sample();
        let (_dir, path, sha) = written(&manifest, &code);
        let bundle = read(&path, Some(&sha)).expect("read");
        assert_eq!(bundle.manifest, manifest);
        assert_eq!(bundle.code, code);
        assert_eq!(bundle.manifest_sha256, sha);
        read(&path, Some(&format!("sha256:{}", sha.to_uppercase()))).expect("prefix, any case");
        let err = read(&path, Some(&"0".repeat(64))).unwrap_err();
        assert!(matches!(err, BundleError::ManifestDigest { .. }), "{err}");
    }

    #[test]
    fn altered_missing_or_extra_files_refuse_the_whole_bundle() {
        let (manifest, code) = sample();
        let second = manifest.entries[1].file_name().expect("name");

        let (_d, path, _) = written(&manifest, &code);
        rewrite(
            &path,
            |n, mut b| {
                if n == second {
                    b[0] ^= 1;
                }
                Some(b)
            },
            &[],
        );
        let err = read(&path, None).unwrap_err();
        assert!(
            matches!(
                err,
                BundleError::Mismatch {
                    what: "SHA-256",
                    ..
                }
            ),
            "{err}"
        );

        let (_d, path, _) = written(&manifest, &code);
        rewrite(
            &path,
            |n, b| {
                if n == second {
                    Some(b[1..].to_vec())
                } else {
                    Some(b)
                }
            },
            &[],
        );
        let err = read(&path, None).unwrap_err();
        assert!(
            matches!(err, BundleError::Mismatch { what: "size", .. }),
            "{err}"
        );

        let (_d, path, _) = written(&manifest, &code);
        rewrite(&path, |n, b| (n != second).then_some(b), &[]);
        let err = read(&path, None).unwrap_err();
        assert!(
            matches!(
                err,
                BundleError::Mismatch {
                    what: "presence",
                    ..
                }
            ),
            "{err}"
        );

        let (_d, path, _) = written(&manifest, &code);
        let extra = format!("{}.cwasm", "ab".repeat(32));
        rewrite(&path, |_, b| Some(b), &[(&extra, b"unlisted")]);
        let err = read(&path, None).unwrap_err();
        assert!(
            err.to_string().contains("not listed in the manifest"),
            "{err}"
        );

        let (_d, path, _) = written(&manifest, &code);
        rewrite(&path, |_, b| Some(b), &[("etc/passwd", b"x")]);
        let err = read(&path, None).unwrap_err();
        assert!(err.to_string().contains("unexpected member"), "{err}");

        let (_d, path, _) = written(&manifest, &code);
        rewrite(&path, |n, b| (n != MANIFEST).then_some(b), &[]);
        let err = read(&path, None).unwrap_err();
        assert!(err.to_string().contains("no manifest.json"), "{err}");
    }

    #[test]
    fn the_key_must_be_this_nodes() {
        let (manifest, _) = sample();
        check_key(
            &manifest,
            "aarch64-unknown-linux-gnu",
            "0.1.0-0123456789abcdef",
        )
        .expect("ok");
        let err = check_key(&manifest, "x86_64-unknown-linux-gnu", "k").unwrap_err();
        assert!(
            err.to_string().contains(
                "is for aarch64-unknown-linux-gnu, but this node is x86_64-unknown-linux-gnu"
            ),
            "{err}"
        );
        let err = check_key(&manifest, "aarch64-unknown-linux-gnu", "0.2.0-ffff").unwrap_err();
        assert!(matches!(err, BundleError::WrongEngine { .. }), "{err}");
    }
}
