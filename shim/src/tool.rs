//! `wasmhybrid cache ...`: the operator's view of the AOT cache. The same
//! binary as the shim: run as `containerd-shim-wasmhybrid-v1 cache ...`, or
//! through a `wasmhybrid` symlink to it.
//!
//! - `warm`: precompile one image, or every Wasm image of some containerd
//!   namespaces, into this node's cache (what node-setup runs);
//! - `bundle`: precompile images or files for a target triple (another
//!   architecture too) into a bundle, and `import`: check a bundle and put
//!   its code into this node's cache ([`crate::bundle`]);
//! - `list`: entries, their architecture, size and last use;
//! - `prune`: evict to a size, drop entries of other shim or Wasmtime
//!   versions, or entries whose images are gone from containerd.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use clap::{Parser, Subcommand};

use crate::bundle::{self, BundleError, Manifest, ManifestEntry};
use crate::cache::{self, Cache, CacheError, CacheSettings, Compiled, Found, WasmDigest};
use crate::dispatch::{self, Runtime, WasmForm};
use crate::engine::{EngineError, TARGET, WasmEngine};
use crate::image::{self, ImageDetail};
use crate::source::normalize;

/// containerd's default socket.
const DEFAULT_ADDRESS: &str = "/run/containerd/containerd.sock";

#[derive(Parser, Debug)]
#[command(
    name = "wasmhybrid",
    version,
    about = "wasmhybrid's AOT cache of native code"
)]
struct Args {
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand, Debug)]
enum Top {
    /// Manage the AOT cache.
    #[command(subcommand)]
    Cache(CacheCmd),
}

#[derive(clap::Args, Debug, Clone)]
struct CacheOpts {
    /// Cache directory [default: $WASMHYBRID_CACHE_DIR or /var/lib/wasmhybrid/aot].
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug, Clone)]
struct ContainerdOpts {
    /// containerd's socket.
    #[arg(long, default_value = DEFAULT_ADDRESS)]
    address: String,
    /// containerd namespaces (repeat for several).
    #[arg(long = "namespace", short = 'n', default_value = "k8s.io")]
    namespaces: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum CacheCmd {
    /// Precompile the named images, or every Wasm image of the namespaces.
    Warm {
        #[command(flatten)]
        cache: CacheOpts,
        #[command(flatten)]
        containerd: ContainerdOpts,
        /// Image names; none: all images of the namespaces.
        images: Vec<String>,
    },
    /// Precompile images (or .wasm files) for a target triple into a bundle
    /// that nodes of that architecture can import.
    Bundle {
        /// Target triple, e.g. aarch64-unknown-linux-gnu or x86_64-unknown-linux-gnu.
        #[arg(long, default_value = TARGET)]
        target: String,
        /// The bundle file to write.
        #[arg(long, short = 'o')]
        output: PathBuf,
        /// A .wasm file to include (repeat for several).
        #[arg(long = "wasm")]
        wasm: Vec<PathBuf>,
        #[command(flatten)]
        containerd: ContainerdOpts,
        /// Image names; none (and no --wasm): all images of the namespaces.
        images: Vec<String>,
    },
    /// Check a bundle (every digest, and its key against this node's
    /// engine) and add its code to this node's cache.
    Import {
        #[command(flatten)]
        cache: CacheOpts,
        /// The manifest digest printed by `bundle`; the import is refused
        /// if the bundle's manifest differs.
        #[arg(long = "manifest-sha256")]
        manifest_sha256: Option<String>,
        /// The bundle file.
        bundle: PathBuf,
    },
    /// List entries (all architectures and versions in the directory).
    List {
        #[command(flatten)]
        cache: CacheOpts,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove entries.
    Prune {
        #[command(flatten)]
        cache: CacheOpts,
        /// Evict least recently used entries down to this size (e.g. 1GiB).
        #[arg(long)]
        max_size: Option<String>,
        /// Remove entries of other shim/Wasmtime versions for this node's
        /// architecture, and interrupted writes.
        #[arg(long)]
        stale: bool,
        /// Remove entries none of whose images exist in containerd any more.
        #[arg(long)]
        unreferenced: bool,
        #[command(flatten)]
        containerd: ContainerdOpts,
    },
}

/// Errors of the tool, printed as one line.
#[derive(Debug, thiserror::Error)]
enum ToolError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Image(#[from] image::ImageError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("{0}")]
    Other(String),
}

/// Runs the tool; returns the process exit code.
pub fn main(args: Vec<std::ffi::OsString>) -> i32 {
    // `containerd-shim-wasmhybrid-v1 cache ...` (passed on by the launcher
    // with its argv[0]) reads as `wasmhybrid cache ...`.
    let mut args = args;
    if let Some(a0) = args.first_mut() {
        *a0 = "wasmhybrid".into();
    }
    let parsed = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wasmhybrid: cannot start a runtime: {e}");
            return 1;
        }
    };
    let Top::Cache(cmd) = parsed.command;
    match rt.block_on(run(cmd)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wasmhybrid: {e}");
            1
        }
    }
}

fn settings(opts: &CacheOpts) -> Result<CacheSettings, ToolError> {
    let mut s = CacheSettings::from_env()?;
    if let Some(dir) = &opts.dir {
        s.dir = std::path::absolute(dir).map_err(|e| ToolError::Other(e.to_string()))?;
    }
    Ok(s)
}

async fn run(cmd: CacheCmd) -> Result<i32, ToolError> {
    match cmd {
        CacheCmd::List { cache, json } => list(&settings(&cache)?, json),
        CacheCmd::Warm {
            cache,
            containerd,
            images,
        } => warm(&settings(&cache)?, &containerd, &images).await,
        CacheCmd::Bundle {
            target,
            output,
            wasm,
            containerd,
            images,
        } => make_bundle(&target, &output, &wasm, &containerd, &images).await,
        CacheCmd::Import {
            cache,
            manifest_sha256,
            bundle,
        } => import(&settings(&cache)?, &bundle, manifest_sha256.as_deref()),
        CacheCmd::Prune {
            cache,
            max_size,
            stale,
            unreferenced,
            containerd,
        } => {
            prune(
                &settings(&cache)?,
                max_size.as_deref(),
                stale,
                unreferenced.then_some(&containerd),
            )
            .await
        }
    }
}

fn list(settings: &CacheSettings, json: bool) -> Result<i32, ToolError> {
    let entries = cache::list(&settings.dir)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&entries).map_err(|e| ToolError::Other(e.to_string()))?
        );
        return Ok(0);
    }
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    println!(
        "{:<28} {:<24} {:<19} {:<22} {:>10} {:>9}  IMAGES",
        "TARGET", "ENGINE", "WASM DIGEST", "KIND", "SIZE", "LAST USE"
    );
    for e in &entries {
        println!(
            "{:<28} {:<24} {:<19} {:<22} {:>10} {:>9}  {}",
            e.target,
            e.engine,
            &e.wasm_digest[..e.wasm_digest.len().min(19)],
            e.kind
                .map(|k| k.describe())
                .unwrap_or(if e.complete { "?" } else { "(incomplete)" }),
            human(e.size),
            ago(now.saturating_sub(e.last_used)),
            e.images.join(", ")
        );
    }
    let total: u64 = entries.iter().map(|e| e.size).sum();
    println!(
        "{} entries, {} in {} (bound {}; this node: {TARGET})",
        entries.len(),
        human(total),
        settings.dir.display(),
        human(settings.max_size)
    );
    Ok(0)
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn ago(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

async fn prune(
    settings: &CacheSettings,
    max_size: Option<&str>,
    stale: bool,
    unreferenced: Option<&ContainerdOpts>,
) -> Result<i32, ToolError> {
    if max_size.is_none() && !stale && unreferenced.is_none() {
        return Err(ToolError::Other(
            "say what to prune: --max-size SIZE, --stale and/or --unreferenced".into(),
        ));
    }
    let mut removed = 0usize;
    if stale {
        let key = WasmEngine::new()?.cache_key();
        for e in cache::list(&settings.dir)? {
            if e.target == TARGET && (e.engine != key || !e.complete) {
                println!(
                    "removing {} ({}/{}): stale",
                    e.wasm_digest, e.target, e.engine
                );
                cache::remove_listed(&settings.dir, &e);
                removed += 1;
            }
        }
    }
    if let Some(ctrd) = unreferenced {
        let mut present = std::collections::HashSet::new();
        for ns in &ctrd.namespaces {
            for name in image::image_names(&ctrd.address, ns).await? {
                present.insert(format!("{ns}/{name}"));
            }
        }
        for e in cache::list(&settings.dir)? {
            // Only this node's entries are judged against this node's
            // containerd; entries without images are kept.
            if e.target == TARGET
                && !e.images.is_empty()
                && e.images.iter().all(|i| {
                    let ns = i.split('/').next().unwrap_or_default();
                    ctrd.namespaces.iter().any(|n| n == ns) && !present.contains(i)
                })
            {
                println!(
                    "removing {}: its images are gone ({})",
                    e.wasm_digest,
                    e.images.join(", ")
                );
                cache::remove_listed(&settings.dir, &e);
                removed += 1;
            }
        }
    }
    if let Some(max) = max_size {
        let max = cache::parse_size(max).ok_or_else(|| {
            ToolError::Other(format!("--max-size {max:?}: expected e.g. 2GiB, 500M"))
        })?;
        for e in cache::evict(&settings.dir, max, None)? {
            println!("removing {}: least recently used", e.wasm_digest);
            removed += 1;
        }
    }
    println!("removed {removed} entries");
    Ok(0)
}

/// What warming one image did.
enum Warmed {
    Hit(WasmDigest),
    Compiled(WasmDigest, f64),
    Skipped(String),
}

async fn warm(
    settings: &CacheSettings,
    ctrd: &ContainerdOpts,
    names: &[String],
) -> Result<i32, ToolError> {
    let engine = WasmEngine::new()?;
    let cache = Cache::open(settings, TARGET, &engine.cache_key())?;
    let mut failed = 0;
    let mut done = 0;
    let mut work = Vec::new();
    for ns in &ctrd.namespaces {
        for (name, detail) in image::describe_images(&ctrd.address, ns, names).await? {
            work.push((ns.clone(), name, detail));
        }
    }
    let total = work.len();
    let tty = std::io::stderr().is_terminal();
    for (i, (ns, name, detail)) in work.into_iter().enumerate() {
        progress(tty, i, total, &name);
        let started = Instant::now();
        let result = match detail {
            Ok(d) => warm_one(&engine, &cache, &ctrd.address, &ns, &d).await,
            Err(e) => Err(e.into()),
        };
        let line = match result {
            Ok(Warmed::Hit(d)) => {
                done += 1;
                format!("cached      {ns}/{name} ({d})")
            }
            Ok(Warmed::Compiled(d, ms)) => {
                done += 1;
                format!("compiled    {ns}/{name} ({d}) in {ms:.0} ms")
            }
            Ok(Warmed::Skipped(why)) => format!("skipped     {ns}/{name}: {why}"),
            Err(e) => {
                failed += 1;
                format!(
                    "failed      {ns}/{name}: {e} ({:.0} ms)",
                    started.elapsed().as_secs_f64() * 1e3
                )
            }
        };
        print_line(tty, &line);
    }
    progress_done(tty, total);
    println!("{done} images warmed, {failed} failed, of {total}");
    Ok(if failed > 0 { 1 } else { 0 })
}

/// Prints a result line (over the progress bar on a terminal).
fn print_line(tty: bool, line: &str) {
    if tty {
        eprint!("\r\x1b[2K");
    }
    println!("{line}");
}

/// Shows the full bar and ends its line.
fn progress_done(tty: bool, total: usize) {
    progress(tty, total, total, "");
    if tty {
        eprintln!();
    }
}

/// A one-line progress bar on a terminal; nothing otherwise.
fn progress(tty: bool, i: usize, total: usize, name: &str) {
    if !tty || total == 0 {
        return;
    }
    const WIDTH: usize = 30;
    let filled = WIDTH * i / total;
    eprint!(
        "\r\x1b[2K[{}{}] {i}/{total} {name}",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled)
    );
    let _ = std::io::stderr().flush();
}

/// The Wasm an image runs, or why it has none.
enum ImageWasm {
    Wasm { bytes: Vec<u8>, form: WasmForm },
    Runc(String),
}

/// Reads the Wasm that a start of the image would run, from containerd's
/// content store (no unpacking, nothing run).
async fn image_wasm(address: &str, ns: &str, d: &ImageDetail) -> Result<ImageWasm, ToolError> {
    let route = dispatch::route(&Default::default(), Some(&d.meta))
        .map_err(|e| ToolError::Other(e.to_string()))?;
    if route.runtime == Runtime::Runc {
        return Ok(ImageWasm::Runc(route.reason.to_string()));
    }
    let source = dispatch::choose_source(&d.args, &d.meta.wasm_layers)
        .map_err(|e| ToolError::Other(e.to_string()))?;
    let bytes = match &source {
        dispatch::WasmSource::OciLayer { digest, .. } => {
            let b = image::read_blob(address, ns, digest).await?;
            if WasmDigest::of(&b).as_str() != digest {
                return Err(ToolError::Other(format!("layer {digest} does not match")));
            }
            b
        }
        dispatch::WasmSource::Rootfs(path) => {
            extract_entrypoint(address, ns, d, &path.to_string_lossy()).await?
        }
    };
    let decision =
        dispatch::decide(&d.args, source, &bytes).map_err(|e| ToolError::Other(e.to_string()))?;
    Ok(ImageWasm::Wasm {
        bytes,
        form: decision.form,
    })
}

async fn warm_one(
    engine: &WasmEngine,
    cache: &Cache,
    address: &str,
    ns: &str,
    d: &ImageDetail,
) -> Result<Warmed, ToolError> {
    let (bytes, form) = match image_wasm(address, ns, d).await? {
        ImageWasm::Wasm { bytes, form } => (bytes, form),
        ImageWasm::Runc(reason) => {
            return Ok(Warmed::Skipped(format!("runs under runc ({reason})")));
        }
    };
    let digest = WasmDigest::of(&bytes);
    let image = format!("{ns}/{}", d.meta.name);
    let (_, found) = cache.get_or_compile(&digest, Some(&image), || {
        let (kind, code) = engine.precompile(&bytes, form)?;
        Ok::<_, ToolError>(Compiled {
            kind,
            code,
            wasm_size: bytes.len() as u64,
        })
    })?;
    Ok(match found {
        Found::Hit | Found::CompiledElsewhere => Warmed::Hit(digest),
        Found::Compiled(ms) => Warmed::Compiled(digest, ms),
    })
}

/// `cache bundle`: precompiles for `target` and writes the bundle.
async fn make_bundle(
    target: &str,
    output: &Path,
    files: &[PathBuf],
    ctrd: &ContainerdOpts,
    names: &[String],
) -> Result<i32, ToolError> {
    let engine = WasmEngine::for_target(target)?;
    // (name, Wasm) to compile, deduplicated by digest below.
    let mut work: Vec<(String, Result<ImageWasm, ToolError>)> = Vec::new();
    for path in files {
        let wasm = std::fs::read(path)
            .map_err(|e| ToolError::Other(format!("{}: {e}", path.display())))
            .and_then(|bytes| {
                let form = dispatch::sniff(&bytes)
                    .map_err(|e| ToolError::Other(format!("{}: {e}", path.display())))?;
                Ok(ImageWasm::Wasm { bytes, form })
            });
        work.push((path.display().to_string(), wasm));
    }
    if !names.is_empty() || files.is_empty() {
        for ns in &ctrd.namespaces {
            for (name, detail) in image::describe_images(&ctrd.address, ns, names).await? {
                let wasm = match detail {
                    Ok(d) => image_wasm(&ctrd.address, ns, &d).await,
                    Err(e) => Err(e.into()),
                };
                work.push((format!("{ns}/{name}"), wasm));
            }
        }
    }
    let total = work.len();
    let tty = std::io::stderr().is_terminal();
    let mut entries: Vec<ManifestEntry> = Vec::new();
    let mut code: Vec<Vec<u8>> = Vec::new();
    let mut failed = 0;
    for (i, (name, wasm)) in work.into_iter().enumerate() {
        progress(tty, i, total, &name);
        let line = match wasm {
            Ok(ImageWasm::Runc(reason)) => {
                format!("skipped     {name}: runs under runc ({reason})")
            }
            Err(e) => {
                failed += 1;
                format!("failed      {name}: {e}")
            }
            Ok(ImageWasm::Wasm { bytes, form }) => {
                let digest = WasmDigest::of(&bytes);
                if let Some(e) = entries
                    .iter_mut()
                    .find(|e| e.wasm_digest == digest.as_str())
                {
                    e.images.push(name.clone());
                    format!("same code   {name} ({digest})")
                } else {
                    let started = Instant::now();
                    match engine.precompile_for_target(&bytes, form) {
                        Ok((kind, native)) => {
                            entries.push(ManifestEntry {
                                wasm_digest: digest.to_string(),
                                wasm_size: bytes.len() as u64,
                                kind,
                                code_sha256: cache::sha256_hex(&native),
                                code_size: native.len() as u64,
                                images: vec![name.clone()],
                            });
                            code.push(native);
                            format!(
                                "compiled    {name} ({digest}) for {target} in {:.0} ms",
                                started.elapsed().as_secs_f64() * 1e3
                            )
                        }
                        Err(e) => {
                            failed += 1;
                            format!("failed      {name}: {e}")
                        }
                    }
                }
            }
        };
        print_line(tty, &line);
    }
    progress_done(tty, total);
    if failed > 0 {
        println!("{failed} of {total} failed; no bundle written");
        return Ok(1);
    }
    let manifest = Manifest {
        format: bundle::FORMAT,
        target: target.to_string(),
        engine: engine.cache_key(),
        shim_version: env!("CARGO_PKG_VERSION").to_string(),
        created: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        entries,
    };
    // Written beside the output and renamed: a bundle is whole or absent.
    let tmp = output.with_extension("wasmhybrid-tmp");
    let file = std::fs::File::create(&tmp)
        .map_err(|e| ToolError::Other(format!("{}: {e}", tmp.display())))?;
    let sha = bundle::write(std::io::BufWriter::new(file), &manifest, &code).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    std::fs::rename(&tmp, output)
        .map_err(|e| ToolError::Other(format!("{}: {e}", output.display())))?;
    println!(
        "wrote {}: {} modules for {target} (engine {}), manifest sha256:{sha}",
        output.display(),
        manifest.entries.len(),
        manifest.engine
    );
    println!(
        "import on each {target} node with: wasmhybrid cache import --manifest-sha256 {sha} {}",
        output.display()
    );
    Ok(0)
}

/// `cache import`: checks the whole bundle, then files its code in this
/// node's cache and checks that this node's Wasmtime accepts each entry.
fn import(
    settings: &CacheSettings,
    path: &Path,
    manifest_sha256: Option<&str>,
) -> Result<i32, ToolError> {
    let bundle = bundle::read(path, manifest_sha256)?;
    let node_key = WasmEngine::for_target(TARGET)?.cache_key();
    bundle::check_key(&bundle.manifest, TARGET, &node_key)?;
    if manifest_sha256.is_none() {
        println!(
            "note: no --manifest-sha256 given; importing a bundle whose manifest is sha256:{}",
            bundle.manifest_sha256
        );
    }
    let engine = WasmEngine::new()?;
    let cache = Cache::open(settings, TARGET, &engine.cache_key())?;
    let origin = format!("bundle sha256:{}", bundle.manifest_sha256);
    let (mut imported, mut present, mut rejected) = (0, 0, 0);
    for (entry, code) in bundle.manifest.entries.iter().zip(bundle.code) {
        let digest = WasmDigest::parse(&entry.wasm_digest)?;
        if cache.lookup(&digest)?.is_some() {
            println!("cached      {digest}: this node already has code for it");
            present += 1;
            continue;
        }
        let compiled = Compiled {
            kind: entry.kind,
            code,
            wasm_size: entry.wasm_size,
        };
        let stored = cache.import(&digest, &compiled, entry.images.clone(), &origin)?;
        // Wasmtime checks the code's target, settings and CPU features
        // against this host; code it refuses is not kept.
        match engine.load_precompiled(&stored.code, entry.kind) {
            Ok(_) => {
                println!(
                    "imported    {digest} ({}, {})",
                    entry.kind.describe(),
                    human(entry.code_size)
                );
                imported += 1;
            }
            Err(e) => {
                cache.remove(&digest);
                println!("rejected    {digest}: {e}");
                rejected += 1;
            }
        }
    }
    println!(
        "{imported} imported, {present} already cached, {rejected} rejected, of {} in {}",
        bundle.manifest.entries.len(),
        path.display()
    );
    Ok(if rejected > 0 { 1 } else { 0 })
}

/// Reads the entrypoint file out of the image's layers (no unpacking):
/// the last layer holding it wins, as in the unpacked rootfs.
async fn extract_entrypoint(
    address: &str,
    ns: &str,
    d: &ImageDetail,
    entry: &str,
) -> Result<Vec<u8>, ToolError> {
    let cwd = if d.working_dir.is_empty() {
        "/".to_string()
    } else {
        d.working_dir.clone()
    };
    let mut candidates: Vec<PathBuf> = if entry.starts_with('/') {
        vec![PathBuf::from(entry)]
    } else if entry.contains('/') {
        vec![Path::new(&cwd).join(entry)]
    } else {
        d.env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("")
            .split(':')
            .filter(|p| p.starts_with('/'))
            .map(|p| Path::new(p).join(entry))
            .collect()
    };
    candidates.push(Path::new(&cwd).join(entry));
    let candidates: Vec<PathBuf> = candidates.iter().map(|c| normalize(c)).collect();

    let mut layers = Vec::new();
    for (media_type, digest) in &d.fs_layers {
        layers.push((
            media_type.clone(),
            image::read_blob(address, ns, digest).await?,
        ));
    }
    // Follow symlinks (confined to the image) a few hops.
    let mut wanted = candidates;
    for _ in 0..8 {
        let mut found: Option<(PathBuf, FileOrLink)> = None;
        for (media_type, blob) in &layers {
            scan_layer(media_type, blob, &wanted, &mut found)
                .map_err(|e| ToolError::Other(format!("reading layer: {e}")))?;
        }
        match found {
            Some((_, FileOrLink::File(bytes))) => return Ok(bytes),
            Some((path, FileOrLink::Link(target))) => {
                let base = path.parent().unwrap_or(Path::new("/"));
                wanted = vec![normalize(&base.join(target))];
            }
            None => break,
        }
    }
    Err(ToolError::Other(format!(
        "entrypoint {entry} not found in the image's layers"
    )))
}

enum FileOrLink {
    File(Vec<u8>),
    Link(PathBuf),
}

/// Records in `found` the first candidate present in this layer (deleted
/// by a whiteout: forgotten).
fn scan_layer(
    media_type: &str,
    blob: &[u8],
    wanted: &[PathBuf],
    found: &mut Option<(PathBuf, FileOrLink)>,
) -> std::io::Result<()> {
    let reader: Box<dyn Read + '_> = if media_type.contains("gzip") {
        Box::new(flate2::read::GzDecoder::new(blob))
    } else {
        Box::new(blob)
    };
    let mut archive = tar::Archive::new(reader);
    let mut layer_hit: Option<(PathBuf, FileOrLink)> = None;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = normalize(&Path::new("/").join(entry.path()?));
        if let Some(name) = path.file_name().and_then(|n| n.to_str())
            && let Some(deleted) = name.strip_prefix(".wh.")
        {
            let deleted = path.with_file_name(deleted);
            if found.as_ref().is_some_and(|(p, _)| *p == deleted) {
                *found = None;
            }
            continue;
        }
        let Some(rank) = wanted.iter().position(|w| *w == path) else {
            continue;
        };
        let better = layer_hit
            .as_ref()
            .is_none_or(|(p, _)| wanted.iter().position(|w| w == p).unwrap_or(usize::MAX) >= rank);
        if !better {
            continue;
        }
        let kind = entry.header().entry_type();
        if kind.is_symlink() {
            if let Some(target) = entry.link_name()? {
                layer_hit = Some((path, FileOrLink::Link(target.into_owned())));
            }
        } else if kind.is_file() {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            layer_hit = Some((path, FileOrLink::File(bytes)));
        }
    }
    if let Some(hit) = layer_hit {
        *found = Some(hit);
    }
    Ok(())
}
