//! The repo's Wasm fixtures (built by `scripts/build-fixtures.sh`) and
//! helpers to turn them into images inside a containerd namespace.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::daemon::{PrivateContainerd, ctr};
use crate::image::{ImageSpec, write_oci_archive};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("harness lives in the repo")
        .to_path_buf()
}

/// A fixture program of the repo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fixture {
    /// `fixtures/wh-cmd` built for wasm32-wasip1: a core module.
    CmdP1,
    /// `fixtures/wh-cmd` built for wasm32-wasip2: a `wasi:cli/run` component.
    CmdP2,
    /// `fixtures/wh-cmd` built for this machine, statically linked: the
    /// same program as a native executable (the benchmarks run it under
    /// runc).
    CmdNative,
    /// `fixtures/wh-http`: a `wasi:http/proxy` component.
    Http,
    /// `fixtures/wat/hello.wat`: a tiny core module.
    HelloWat,
    /// `fixtures/wat/no-start.wat`: a module without `_start`.
    NoStartWat,
    /// `fixtures/wh-big`, unoptimized: a core module of over 5 MB (built
    /// only for benchmarks, by `scripts/build-fixtures.sh --big`).
    Big,
}

impl Fixture {
    pub fn path(self) -> PathBuf {
        let root = repo_root().join("fixtures");
        match self {
            Fixture::CmdP1 => root.join("target/wasm32-wasip1/release/wh-cmd.wasm"),
            Fixture::CmdP2 => root.join("target/wasm32-wasip2/release/wh-cmd.wasm"),
            Fixture::CmdNative => root
                .join("target")
                .join(format!("{}-unknown-linux-gnu", std::env::consts::ARCH))
                .join("release/wh-cmd"),
            Fixture::Http => root.join("target/wasm32-wasip2/release/wh_http.wasm"),
            Fixture::HelloWat => root.join("wat/hello.wat"),
            Fixture::NoStartWat => root.join("wat/no-start.wat"),
            Fixture::Big => root.join("target/wasm32-wasip1/big/wh-big.wasm"),
        }
    }

    /// The fixture's binary (Wasm, or native for [`Fixture::CmdNative`]).
    pub fn bytes(self) -> Result<Vec<u8>> {
        let path = self.path();
        match self {
            Fixture::HelloWat | Fixture::NoStartWat => {
                wat::parse_file(&path).with_context(|| format!("parse {}", path.display()))
            }
            _ => {
                if !path.exists() {
                    build_fixtures(self == Fixture::Big)?;
                }
                std::fs::read(&path).with_context(|| format!("read {}", path.display()))
            }
        }
    }
}

/// Builds the Rust fixtures for the wasm32 targets and wh-cmd for this
/// machine (`big`: also wh-big).
pub fn build_fixtures(big: bool) -> Result<()> {
    let script = repo_root().join("scripts/build-fixtures.sh");
    let status = Command::new("bash")
        .arg(&script)
        .args(big.then_some("--big"))
        .status()
        .context("run build-fixtures.sh")?;
    if !status.success() {
        bail!("{} failed ({status})", script.display());
    }
    Ok(())
}

/// Writes `spec` as an OCI archive and imports it into `namespace` of the
/// private containerd.
pub fn import_image(daemon: &PrivateContainerd, namespace: &str, spec: &ImageSpec) -> Result<()> {
    import_image_at(&daemon.address(), daemon.dir(), namespace, spec)
}

/// Writes `spec` as an OCI archive in `workdir` and imports it (without
/// unpacking; [`crate::client::Ctrd::unpack`] does that) into `namespace`
/// of the containerd at `address`.
pub fn import_image_at(
    address: &Path,
    workdir: &Path,
    namespace: &str,
    spec: &ImageSpec,
) -> Result<()> {
    import_archive(address, workdir, namespace, spec, false)
}

/// Writes `spec` as an OCI archive in `workdir` and imports it with `ctr
/// images import --all-platforms`, unpacked into snapshots if `unpack`
/// (as the CRI plugin expects of a pulled image). The archive is removed.
pub fn import_archive(
    address: &Path,
    workdir: &Path,
    namespace: &str,
    spec: &ImageSpec,
    unpack: bool,
) -> Result<()> {
    let archive = workdir.join(format!("{}.tar", spec.name.replace(['/', ':'], "_")));
    write_oci_archive(spec, &archive)?;
    let archive_arg = archive.to_string_lossy().into_owned();
    let mut args = vec!["images", "import", "--all-platforms"];
    if !unpack {
        args.push("--no-unpack");
    }
    args.push(&archive_arg);
    let out = ctr(address, namespace, &args);
    let _ = std::fs::remove_file(&archive);
    let out = out?;
    if !out.status.success() {
        bail!(
            "ctr images import {} failed: {}{}",
            spec.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The shim's two binaries: the launcher containerd runs and the daemon
/// binary it starts from its own directory.
pub const SHIM_BINARIES: [&str; 2] = ["containerd-shim-wasmhybrid-v1", "wasmhybrid"];
/// Names a directory holding both [`SHIM_BINARIES`] to run instead of the
/// ones found next to the running executable.
pub const ENV_SHIM_DIR: &str = "WASMHYBRID_SHIM_DIR";

fn has_shim(dir: &Path) -> bool {
    SHIM_BINARIES.iter().all(|b| dir.join(b).is_file())
}

/// The shim to run for a cargo output directory `profile_dir`
/// (`target/debug` or `target/release`): [`ENV_SHIM_DIR`] if set; else what
/// `scripts/build-shim.sh` assembled for that profile (`target/shim/<profile>`:
/// the static launcher and the daemon binary, as shipped); else cargo's own
/// build of both binaries in `profile_dir`.
pub fn shim_dir_for(profile_dir: &Path) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(ENV_SHIM_DIR) {
        let dir = PathBuf::from(dir);
        if !has_shim(&dir) {
            bail!(
                "{ENV_SHIM_DIR}={}: it must hold {} and {} (scripts/build-shim.sh writes them)",
                dir.display(),
                SHIM_BINARIES[0],
                SHIM_BINARIES[1]
            );
        }
        return Ok(dir);
    }
    if let (Some(target), Some(profile)) = (profile_dir.parent(), profile_dir.file_name()) {
        let shipped = target.join("shim").join(profile);
        if has_shim(&shipped) {
            return Ok(shipped);
        }
    }
    if has_shim(profile_dir) {
        return Ok(profile_dir.to_path_buf());
    }
    bail!(
        "no shim in {}: build it with `bash scripts/build-shim.sh` (or `cargo build -p wasmhybrid-shim`)",
        profile_dir.display()
    )
}

/// [`shim_dir_for`] the cargo output directory of the running executable
/// (`target/<profile>`, or its `deps/` for tests and benches).
pub fn shim_dir_next_to_exe() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().map(Path::to_path_buf);
    if dir.as_deref().and_then(Path::file_name) == Some(std::ffi::OsStr::new("deps")) {
        dir = dir.and_then(|d| d.parent().map(Path::to_path_buf));
    }
    let dir = dir.with_context(|| format!("no directory for {}", exe.display()))?;
    shim_dir_for(&dir)
}

/// Whether `binary` is statically linked (an ELF file without a program
/// interpreter), as the shipped launcher is.
pub fn is_static_executable(binary: &Path) -> Result<bool> {
    use object::{Object as _, ObjectSection as _};
    let bytes = std::fs::read(binary).with_context(|| format!("read {}", binary.display()))?;
    let file = object::File::parse(bytes.as_slice())
        .with_context(|| format!("{} is not an executable", binary.display()))?;
    anyhow::ensure!(
        file.format() == object::BinaryFormat::Elf,
        "{} is not an ELF file",
        binary.display()
    );
    Ok(file.section_by_name(".interp").is_none()
        && !file.sections().any(|s| s.name() == Ok(".dynamic")))
}
