//! The AOT cache: native code compiled by this shim, kept per node
//! architecture so that a Wasm start maps code instead of compiling it.
//!
//! Layout (directories `0700`, files `0600`, all owned by root):
//!
//! ```text
//! <dir>/<target triple>/<engine key>/<sha256 of the Wasm>.cwasm   the code
//! <dir>/<target triple>/<engine key>/<sha256 of the Wasm>.json    its record
//! <dir>/<target triple>/<engine key>/<sha256 of the Wasm>.lock    single flight
//! ```
//!
//! - The triple names the architecture, so a directory shared between amd64
//!   and arm64 nodes keeps their code apart; the engine key
//!   ([`crate::engine::WasmEngine::cache_key`]) changes with the shim
//!   version, Wasmtime, CPU features and engine settings.
//! - An entry is keyed by the SHA-256 of the Wasm bytes (for OCI artifacts
//!   that is the layer digest; for rootfs files the shim hashes the file).
//! - Writes go to a temp file renamed into place: code first, then the
//!   record, which commits the entry. Before any load, the code's size and
//!   SHA-256 are checked against the record; a truncated, corrupted or
//!   foreign entry is logged, removed and rebuilt.
//! - Concurrent misses for one module compile once: the first holds an
//!   exclusive `flock` on the entry's lock file, the others wait and then
//!   find the entry.
//! - The cache is bounded ([`ENV_CACHE_MAX_SIZE`]); the least recently used
//!   entries (by the record's mtime, touched on each hit) go first.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::engine::Workload;

/// Where the cache lives (shim environment, i.e. containerd's).
pub const ENV_CACHE_DIR: &str = "WASMHYBRID_CACHE_DIR";
/// The cache's size bound, e.g. `2GiB`, `500M`, `1048576` (shim environment).
pub const ENV_CACHE_MAX_SIZE: &str = "WASMHYBRID_CACHE_MAX_SIZE";
/// Default of [`ENV_CACHE_DIR`].
pub const DEFAULT_DIR: &str = "/var/lib/wasmhybrid/aot";
/// Default of [`ENV_CACHE_MAX_SIZE`]: 2 GiB.
pub const DEFAULT_MAX_SIZE: u64 = 2 << 30;

/// Where checks already done since boot are remembered (tmpfs, root-only).
pub const MEMO_DIR: &str = "/run/wasmhybrid-aot-memo";

/// Version of the record format.
const RECORD_FORMAT: u32 = 1;
/// How many image names a record remembers, for `prune --unreferenced`.
const MAX_IMAGES: usize = 16;

/// Why the cache could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("invalid {var}={value:?}: {reason}")]
    Setting {
        var: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("not a sha256 digest: {0:?}")]
    BadDigest(String),
    #[error("AOT cache {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("AOT cache {path} is not safe to load code from: {reason}")]
    Unsafe { path: PathBuf, reason: String },
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: nix::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the cache is and how big it may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    pub dir: PathBuf,
    pub max_size: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from(DEFAULT_DIR),
            max_size: DEFAULT_MAX_SIZE,
        }
    }
}

impl CacheSettings {
    /// Reads [`ENV_CACHE_DIR`] and [`ENV_CACHE_MAX_SIZE`] from this process.
    pub fn from_env() -> Result<Self, CacheError> {
        Self::from_vars(
            std::env::var(ENV_CACHE_DIR).ok().as_deref(),
            std::env::var(ENV_CACHE_MAX_SIZE).ok().as_deref(),
        )
    }

    pub fn from_vars(dir: Option<&str>, max_size: Option<&str>) -> Result<Self, CacheError> {
        let mut s = Self::default();
        if let Some(dir) = dir.filter(|d| !d.is_empty()) {
            if !dir.starts_with('/') {
                return Err(CacheError::Setting {
                    var: ENV_CACHE_DIR,
                    value: dir.to_string(),
                    reason: "must be an absolute path",
                });
            }
            s.dir = PathBuf::from(dir);
        }
        if let Some(v) = max_size.filter(|v| !v.is_empty()) {
            s.max_size = parse_size(v).ok_or_else(|| CacheError::Setting {
                var: ENV_CACHE_MAX_SIZE,
                value: v.to_string(),
                reason: "expected a size like 2GiB, 500M or 1048576",
            })?;
        }
        Ok(s)
    }
}

/// Parses `123`, `10K`, `10KiB`, `500M`, `2G`, `2GiB` (binary multiples).
pub fn parse_size(v: &str) -> Option<u64> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let num: u64 = num.parse().ok()?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return None,
    };
    num.checked_mul(1u64 << shift)
}

/// A `sha256:<64 hex>` digest, the only thing that names cache files.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WasmDigest(String);

impl WasmDigest {
    pub fn parse(s: &str) -> Result<Self, CacheError> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| CacheError::BadDigest(s.to_string()))?;
        if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(s.to_string()))
        } else {
            Err(CacheError::BadDigest(s.to_string()))
        }
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(format!("sha256:{}", sha256_hex(bytes)))
    }

    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for WasmDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The record that commits an entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub format: u32,
    pub wasm_digest: String,
    pub wasm_size: u64,
    pub kind: Workload,
    pub target: String,
    pub engine: String,
    pub code_sha256: String,
    pub code_size: u64,
    pub compile_ms: f64,
    /// Seconds since the epoch.
    pub created: u64,
    /// Images (`namespace/name`) this module was started from.
    #[serde(default)]
    pub images: Vec<String>,
    /// Where code not compiled on this node came from: `bundle sha256:...`
    /// (the digest of the imported bundle's manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// A verified entry, ready to load.
#[derive(Debug, Clone)]
pub struct Entry {
    pub code: PathBuf,
    pub record: Record,
}

/// How [`Cache::get_or_compile`] found its entry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Found {
    Hit,
    /// Compiled now, in this many milliseconds.
    Compiled(f64),
    /// Another process compiled it while this one waited for the lock.
    CompiledElsewhere,
}

/// Native code compiled from Wasm, to be stored.
#[derive(Debug)]
pub struct Compiled {
    pub kind: Workload,
    pub code: Vec<u8>,
    pub wasm_size: u64,
}

/// The cache for one target and engine key.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    dir: PathBuf,
    target: String,
    engine: String,
    max_size: u64,
}

impl Cache {
    /// Opens (creating if needed) the cache of `target` and `engine` key.
    /// Refuses a directory that is not root-only, since code is loaded
    /// from it.
    pub fn open(settings: &CacheSettings, target: &str, engine: &str) -> Result<Self, CacheError> {
        for part in [target, engine] {
            if part.is_empty()
                || part == "."
                || part == ".."
                || part.contains('/')
                || part.starts_with('.')
            {
                return Err(CacheError::Unsafe {
                    path: settings.dir.clone(),
                    reason: format!("bad path component {part:?}"),
                });
            }
        }
        let root = settings.dir.clone();
        let dir = root.join(target).join(engine);
        // The root's parents are the operator's; from the root down, each
        // directory is checked before anything is created inside it.
        if let Some(parent) = root.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(io(parent))?;
        }
        for d in [&root, &root.join(target), &dir] {
            match fs::DirBuilder::new().mode(0o700).create(d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(d)(e)),
            }
            check_private_dir(d)?;
        }
        Ok(Self {
            root,
            dir,
            target: target.to_string(),
            engine: engine.to_string(),
            max_size: settings.max_size,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The memo directory of this cache (one per cache root).
    fn memo_dir(&self) -> PathBuf {
        let id = sha256_hex(self.root.as_os_str().as_encoded_bytes());
        Path::new(MEMO_DIR).join(&id[..16])
    }

    fn code_memo_key(&self, code: &Path, meta: &fs::Metadata) -> String {
        format!("code {} {}", code.display(), Fingerprint::of(meta))
    }

    /// A value remembered for `key` since boot, if any.
    pub fn memo_get(&self, key: &str) -> Option<String> {
        fs::read_to_string(self.memo_dir().join(sha256_hex(key.as_bytes()))).ok()
    }

    /// Remembers `value` for `key` until reboot (best effort).
    pub fn memo_put(&self, key: &str, value: &str) {
        let dir = self.memo_dir();
        if fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .is_err()
            || check_private_dir(Path::new(MEMO_DIR)).is_err()
        {
            return;
        }
        let _ = write_atomic(&dir.join(sha256_hex(key.as_bytes())), value.as_bytes());
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn code_path(&self, digest: &WasmDigest) -> PathBuf {
        self.dir.join(format!("{}.cwasm", digest.hex()))
    }

    pub fn record_path(&self, digest: &WasmDigest) -> PathBuf {
        self.dir.join(format!("{}.json", digest.hex()))
    }

    fn lock_path(&self, digest: &WasmDigest) -> PathBuf {
        self.dir.join(format!("{}.lock", digest.hex()))
    }

    /// Returns the verified entry for `digest`, or `None` on a miss. An
    /// entry that fails verification is logged and removed (a miss).
    pub fn lookup(&self, digest: &WasmDigest) -> Result<Option<Entry>, CacheError> {
        let record_path = self.record_path(digest);
        let bytes = match fs::read(&record_path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&record_path)(e)),
        };
        match self.verify(digest, &bytes) {
            Ok(entry) => {
                touch(&record_path);
                Ok(Some(entry))
            }
            Err(reason) => {
                log::warn!(
                    "AOT cache: removing bad entry for {digest} in {}: {reason}",
                    self.dir.display()
                );
                self.remove(digest);
                Ok(None)
            }
        }
    }

    fn verify(&self, digest: &WasmDigest, record: &[u8]) -> Result<Entry, String> {
        let record: Record =
            serde_json::from_slice(record).map_err(|e| format!("unreadable record: {e}"))?;
        if record.format != RECORD_FORMAT {
            return Err(format!("record format {}", record.format));
        }
        if record.wasm_digest != digest.as_str() {
            return Err(format!("record is for {}", record.wasm_digest));
        }
        if record.target != self.target || record.engine != self.engine {
            return Err(format!(
                "built for {}/{}, this node is {}/{}",
                record.target, record.engine, self.target, self.engine
            ));
        }
        let code = self.code_path(digest);
        let mut file = File::open(&code).map_err(|e| format!("code file: {e}"))?;
        let meta = file.metadata().map_err(|e| format!("code file: {e}"))?;
        if meta.len() != record.code_size {
            return Err(format!(
                "code is {} bytes, record says {} (truncated?)",
                meta.len(),
                record.code_size
            ));
        }
        if meta.uid() != 0 && nix::unistd::geteuid().is_root() {
            return Err(format!("code file is owned by uid {}", meta.uid()));
        }
        // A full check once per boot and per version of the file: any
        // write to it changes its fingerprint (size, mtime, ctime; a
        // replacement, its inode), which brings the full check back.
        let memo_key = self.code_memo_key(&code, &meta);
        if self.memo_get(&memo_key).as_deref() == Some(record.code_sha256.as_str()) {
            return Ok(Entry { code, record });
        }
        let sha = hash_reader(&mut file).map_err(|e| format!("reading code: {e}"))?;
        if sha != record.code_sha256 {
            return Err("code digest does not match its record (corrupted)".to_string());
        }
        self.memo_put(&memo_key, &sha);
        Ok(Entry { code, record })
    }

    /// Stores compiled code for `digest` and returns the entry.
    pub fn insert(
        &self,
        digest: &WasmDigest,
        compiled: &Compiled,
        compile_ms: f64,
        image: Option<&str>,
    ) -> Result<Entry, CacheError> {
        let images = image.map(|i| vec![i.to_string()]).unwrap_or_default();
        self.write_entry(digest, compiled, compile_ms, images, None)
    }

    /// Stores code compiled elsewhere (a bundle the operator imports), with
    /// its origin in the record. The caller has verified its digest.
    pub fn import(
        &self,
        digest: &WasmDigest,
        compiled: &Compiled,
        images: Vec<String>,
        origin: &str,
    ) -> Result<Entry, CacheError> {
        self.write_entry(digest, compiled, 0.0, images, Some(origin.to_string()))
    }

    fn write_entry(
        &self,
        digest: &WasmDigest,
        compiled: &Compiled,
        compile_ms: f64,
        images: Vec<String>,
        origin: Option<String>,
    ) -> Result<Entry, CacheError> {
        let code_path = self.code_path(digest);
        write_atomic(&code_path, &compiled.code)?;
        let record = Record {
            format: RECORD_FORMAT,
            wasm_digest: digest.to_string(),
            wasm_size: compiled.wasm_size,
            kind: compiled.kind,
            target: self.target.clone(),
            engine: self.engine.clone(),
            code_sha256: sha256_hex(&compiled.code),
            code_size: compiled.code.len() as u64,
            compile_ms,
            created: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            images,
            origin,
        };
        let json = serde_json::to_vec_pretty(&record).unwrap_or_default();
        write_atomic(&self.record_path(digest), &json)?;
        // This process wrote these bytes: their digest is known.
        if let Ok(meta) = fs::metadata(&code_path) {
            self.memo_put(&self.code_memo_key(&code_path, &meta), &record.code_sha256);
        }
        Ok(Entry {
            code: code_path,
            record,
        })
    }

    /// Returns the entry for `digest`, compiling it (once across every
    /// process sharing the cache) on a miss.
    pub fn get_or_compile<E: From<CacheError>>(
        &self,
        digest: &WasmDigest,
        image: Option<&str>,
        compile: impl FnOnce() -> Result<Compiled, E>,
    ) -> Result<(Entry, Found), E> {
        if let Some(entry) = self.lookup(digest)? {
            self.remember_image(digest, &entry, image);
            return Ok((entry, Found::Hit));
        }
        let lock_path = self.lock_path(digest);
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        let waited = Instant::now();
        let _lock = Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, source)| {
            CacheError::Lock {
                path: lock_path.clone(),
                source,
            }
        })?;
        if let Some(entry) = self.lookup(digest)? {
            log::info!(
                "AOT cache: {digest} was compiled by another start while this one waited {:.1} ms",
                waited.elapsed().as_secs_f64() * 1e3
            );
            self.remember_image(digest, &entry, image);
            return Ok((entry, Found::CompiledElsewhere));
        }
        let started = Instant::now();
        let compiled = compile()?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let entry = self.insert(digest, &compiled, ms, image)?;
        if let Err(e) = evict(&self.root, self.max_size, Some(&entry.code)) {
            log::warn!("AOT cache: eviction failed: {e}");
        }
        Ok((entry, Found::Compiled(ms)))
    }

    /// Adds `image` to the entry's record (best effort).
    fn remember_image(&self, digest: &WasmDigest, entry: &Entry, image: Option<&str>) {
        let Some(image) = image else { return };
        if entry.record.images.iter().any(|i| i == image) {
            return;
        }
        let mut record = entry.record.clone();
        record.images.push(image.to_string());
        if record.images.len() > MAX_IMAGES {
            record.images.remove(0);
        }
        let json = serde_json::to_vec_pretty(&record).unwrap_or_default();
        if let Err(e) = write_atomic(&self.record_path(digest), &json) {
            log::warn!("AOT cache: cannot update record: {e}");
        }
    }

    /// Removes an entry (best effort: a missing file is not an error).
    pub fn remove(&self, digest: &WasmDigest) {
        for path in [self.record_path(digest), self.code_path(digest)] {
            if let Err(e) = fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                log::warn!("AOT cache: cannot remove {}: {e}", path.display());
            }
        }
    }
}

/// What changes when a file is written to or replaced: inode, size, and
/// modification and change times to the nanosecond (the ctime cannot be set
/// from userspace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Fingerprint {
    pub fn of(m: &fs::Metadata) -> Self {
        Self {
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
        }
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ino={} size={} mtime={} ctime={}",
            self.ino, self.size, self.mtime_ns, self.ctime_ns
        )
    }
}

fn check_private_dir(path: &Path) -> Result<(), CacheError> {
    let meta = fs::symlink_metadata(path).map_err(io(path))?;
    let unsafe_dir = |reason: String| CacheError::Unsafe {
        path: path.to_path_buf(),
        reason,
    };
    if !meta.is_dir() {
        return Err(unsafe_dir("not a directory".to_string()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(unsafe_dir(format!("owned by uid {}, not {me}", meta.uid())));
    }
    if meta.mode() & 0o077 != 0 {
        // Ours, but too open (e.g. created by hand): tighten it.
        fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(io(path))?;
    }
    Ok(())
}

fn hash_reader(r: &mut impl Read) -> std::io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `bytes` to `path` through a private temp file and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("entry");
    let tmp = path.with_file_name(format!(
        ".{name}.tmp.{}.{:x}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    ));
    let result = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io(path))
}

fn touch(path: &Path) {
    let now = nix::sys::time::TimeSpec::UTIME_NOW;
    let _ = nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &now,
        &now,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    );
}

/// One entry as [`list`] reports it.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub target: String,
    pub engine: String,
    pub wasm_digest: String,
    pub kind: Option<Workload>,
    /// Bytes of code plus record.
    pub size: u64,
    /// Seconds since the epoch of the last hit (or the write).
    pub last_used: u64,
    pub images: Vec<String>,
    /// Whether the record could be read (a code file without one is an
    /// interrupted write, collected by `prune`).
    pub complete: bool,
    /// `bundle sha256:...` for imported code; absent if compiled here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// Every entry under `root`, all targets and engine keys.
pub fn list(root: &Path) -> Result<Vec<Listed>, CacheError> {
    let mut out = Vec::new();
    let targets = match fs::read_dir(root) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(root)(e)),
    };
    for target in targets.flatten().filter(|e| e.path().is_dir()) {
        let Ok(engines) = fs::read_dir(target.path()) else {
            continue;
        };
        for engine in engines.flatten().filter(|e| e.path().is_dir()) {
            let Ok(files) = fs::read_dir(engine.path()) else {
                continue;
            };
            for f in files.flatten() {
                let path = f.path();
                if path.extension().and_then(|e| e.to_str()) != Some("cwasm") {
                    continue;
                }
                let Some(hex) = path.file_stem().and_then(|s| s.to_str()) else {
                    continue;
                };
                let code_size = f.metadata().map(|m| m.len()).unwrap_or(0);
                let record_path = path.with_extension("json");
                let record: Option<Record> = fs::read(&record_path)
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                let record_meta = fs::metadata(&record_path).ok();
                let last_used = record_meta
                    .as_ref()
                    .or(f.metadata().ok().as_ref())
                    .map(|m| m.mtime().max(0) as u64)
                    .unwrap_or(0);
                out.push(Listed {
                    target: target.file_name().to_string_lossy().into_owned(),
                    engine: engine.file_name().to_string_lossy().into_owned(),
                    wasm_digest: format!("sha256:{hex}"),
                    kind: record.as_ref().map(|r| r.kind),
                    size: code_size + record_meta.map(|m| m.len()).unwrap_or(0),
                    last_used,
                    images: record
                        .as_ref()
                        .map(|r| r.images.clone())
                        .unwrap_or_default(),
                    complete: record.is_some(),
                    origin: record.as_ref().and_then(|r| r.origin.clone()),
                });
            }
        }
    }
    out.sort_by_key(|e| std::cmp::Reverse(e.last_used));
    Ok(out)
}

/// Removes one listed entry's files.
pub fn remove_listed(root: &Path, e: &Listed) {
    let Ok(digest) = WasmDigest::parse(&e.wasm_digest) else {
        return;
    };
    let dir = root.join(&e.target).join(&e.engine);
    for ext in ["json", "cwasm", "lock"] {
        let _ = fs::remove_file(dir.join(format!("{}.{ext}", digest.hex())));
    }
}

/// Removes least recently used entries until the cache fits `max_size`,
/// never removing `keep`. Returns what was removed.
pub fn evict(root: &Path, max_size: u64, keep: Option<&Path>) -> Result<Vec<Listed>, CacheError> {
    let entries = list(root)?;
    let mut total: u64 = entries.iter().map(|e| e.size).sum();
    let mut removed = Vec::new();
    // Oldest first.
    for e in entries.into_iter().rev() {
        if total <= max_size {
            break;
        }
        let code = root.join(&e.target).join(&e.engine).join(format!(
            "{}.cwasm",
            e.wasm_digest.trim_start_matches("sha256:")
        ));
        if keep == Some(code.as_path()) {
            continue;
        }
        log::info!(
            "AOT cache: evicting {} ({} bytes) to stay under {max_size} bytes",
            e.wasm_digest,
            e.size
        );
        remove_listed(root, &e);
        total = total.saturating_sub(e.size);
        removed.push(e);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dir: &Path, max: u64) -> Cache {
        Cache::open(
            &CacheSettings {
                dir: dir.to_path_buf(),
                max_size: max,
            },
            "x86_64-unknown-linux-gnu",
            "0.1.0-0011223344556677",
        )
        .expect("open")
    }

    fn compiled(code: &[u8]) -> Compiled {
        Compiled {
            kind: Workload::Module,
            code: code.to_vec(),
            wasm_size: 8,
        }
    }

    fn miss(c: &Cache, d: &WasmDigest, code: &[u8]) -> (Entry, Found) {
        c.get_or_compile::<CacheError>(d, Some("default/img"), || Ok(compiled(code)))
            .expect("get")
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("1048576"), Some(1 << 20));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("500M"), Some(500 << 20));
        assert_eq!(parse_size("10k"), Some(10 << 10));
        assert_eq!(parse_size("ten"), None);
        assert_eq!(parse_size("5Q"), None);
        assert!(CacheSettings::from_vars(Some("relative/dir"), None).is_err());
        assert!(CacheSettings::from_vars(None, Some("lots")).is_err());
    }

    #[test]
    fn only_sha256_digests_name_entries() {
        assert!(WasmDigest::parse(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(WasmDigest::parse("sha256:../../etc/passwd").is_err());
        assert!(WasmDigest::parse(&format!("sha256:{}", "A".repeat(64))).is_err());
        assert!(WasmDigest::parse(&format!("sha512:{}", "a".repeat(64))).is_err());
    }

    #[test]
    fn miss_then_hit_with_root_only_files() {
        let tmp = tempfile::tempdir().expect("tmp");
        let c = cache(tmp.path(), u64::MAX);
        let d = WasmDigest::of(b"module");
        let (entry, found) = miss(&c, &d, b"native code");
        assert!(matches!(found, Found::Compiled(_)));
        assert_eq!(fs::read(&entry.code).expect("read"), b"native code");
        let (again, found) = c
            .get_or_compile::<CacheError>(&d, None, || panic!("compiled twice"))
            .expect("hit");
        assert_eq!(found, Found::Hit);
        assert_eq!(again.code, entry.code);
        for p in [&entry.code, &c.record_path(&d)] {
            assert_eq!(fs::metadata(p).expect("meta").mode() & 0o777, 0o600);
        }
        assert_eq!(fs::metadata(c.dir()).expect("meta").mode() & 0o777, 0o700);
        assert!(
            c.dir()
                .to_string_lossy()
                .contains("x86_64-unknown-linux-gnu"),
            "layout shows the target"
        );
        let listed = list(tmp.path()).expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].images, vec!["default/img".to_string()]);
    }

    #[test]
    fn truncated_corrupted_and_foreign_entries_are_removed_and_rebuilt() {
        let tmp = tempfile::tempdir().expect("tmp");
        let c = cache(tmp.path(), u64::MAX);
        let d = WasmDigest::of(b"module");
        type Damage = fn(&Cache, &WasmDigest);
        let damages: [(&str, Damage); 5] = [
            ("truncated", |c, d| {
                let code = fs::read(c.code_path(d)).expect("read");
                fs::write(c.code_path(d), &code[..code.len() / 2]).expect("write");
            }),
            ("corrupted", |c, d| {
                let mut code = fs::read(c.code_path(d)).expect("read");
                code[3] ^= 0xff;
                fs::write(c.code_path(d), &code).expect("write");
            }),
            ("code missing", |c, d| {
                fs::remove_file(c.code_path(d)).expect("rm")
            }),
            ("garbage record", |c, d| {
                fs::write(c.record_path(d), b"{not json").expect("write")
            }),
            ("other architecture", |c, d| {
                let mut r: Record =
                    serde_json::from_slice(&fs::read(c.record_path(d)).expect("read"))
                        .expect("parse");
                r.target = "aarch64-unknown-linux-gnu".into();
                fs::write(c.record_path(d), serde_json::to_vec(&r).expect("json")).expect("w");
            }),
        ];
        for (what, damage) in damages {
            miss(&c, &d, b"native code, long enough to cut");
            damage(&c, &d);
            assert!(
                c.lookup(&d).expect("lookup").is_none(),
                "{what}: not loaded"
            );
            assert!(!c.record_path(&d).exists(), "{what}: record removed");
            let (_, found) = miss(&c, &d, b"native code, long enough to cut");
            assert!(matches!(found, Found::Compiled(_)), "{what}: rebuilt");
            assert!(
                c.lookup(&d).expect("lookup").is_some(),
                "{what}: good again"
            );
        }
    }

    #[test]
    fn lru_eviction_keeps_the_bound_and_the_new_entry() {
        let tmp = tempfile::tempdir().expect("tmp");
        let code = vec![7u8; 4000];
        let c = cache(tmp.path(), 10_000);
        let digests: Vec<WasmDigest> = (0..4u8).map(|i| WasmDigest::of(&[i])).collect();
        for (i, d) in digests.iter().enumerate() {
            miss(&c, d, &code);
            // mtime resolution: make the order unambiguous.
            let t = nix::sys::time::TimeSpec::new(1_000_000 + i as i64 * 10, 0);
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &c.record_path(d),
                &t,
                &t,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .expect("utimensat");
        }
        let left: Vec<String> = list(tmp.path())
            .expect("list")
            .into_iter()
            .map(|e| e.wasm_digest)
            .collect();
        let total: u64 = list(tmp.path()).expect("list").iter().map(|e| e.size).sum();
        assert!(total <= 10_000, "{total}");
        assert!(
            left.contains(&digests[3].to_string()),
            "newest kept: {left:?}"
        );
        assert!(
            !left.contains(&digests[0].to_string()),
            "oldest evicted: {left:?}"
        );
    }

    #[test]
    fn concurrent_misses_compile_once() {
        let tmp = tempfile::tempdir().expect("tmp");
        let c = cache(tmp.path(), u64::MAX);
        let d = WasmDigest::of(b"shared");
        let compiles = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    // A fresh handle per thread, like separate shim processes.
                    let c = cache(tmp.path(), u64::MAX);
                    c.get_or_compile::<CacheError>(&d, None, || {
                        compiles.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(100));
                        Ok(compiled(b"code"))
                    })
                    .expect("get");
                });
            }
        });
        assert_eq!(compiles.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(c.lookup(&d).expect("lookup").is_some());
    }

    #[test]
    fn a_directory_owned_by_someone_else_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("x86_64-unknown-linux-gnu");
        fs::create_dir(&dir).expect("mkdir");
        nix::unistd::chown(&dir, Some(nix::unistd::Uid::from_raw(65534)), None).expect("chown");
        let err = Cache::open(
            &CacheSettings {
                dir: tmp.path().to_path_buf(),
                max_size: u64::MAX,
            },
            "x86_64-unknown-linux-gnu",
            "k",
        )
        .expect_err("refused");
        assert!(err.to_string().contains("owned by uid 65534"), "{err}");
    }
}
