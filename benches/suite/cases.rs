//! The suite's images and start-to-exit cases, and running one case once
//! (exit code and stdout checked).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use wasmhybrid_harness::client::{Ctrd, Phases, RUNC_RUNTIME, RunOpts, WASMHYBRID_RUNTIME};
use wasmhybrid_harness::daemon::{PrivateContainerd, remove_aot_entry};
use wasmhybrid_harness::fixtures::{Fixture, import_image};
use wasmhybrid_harness::image::{ImageSpec, Layer, WASM_COMPONENT_LAYER, WASM_CONTENT_LAYER};

pub const WASM_ARTIFACT: &str = "localhost/bench/hello:artifact";
pub const WASM_ROOTFS: &str = "localhost/bench/hello:rootfs";
/// The same module with one more custom section (another digest, the same
/// code), so that emptying its cache entry leaves the warm cases warm.
pub const WASM_COLD: &str = "localhost/bench/hello:cold";
/// `fixtures/wh-cmd` built natively (static): the same program for runc.
pub const NATIVE: &str = "localhost/bench/hello:native";
pub const HEAVY_IO: &str = "localhost/bench/busybox:heavy-io";
pub const HTTP_WASM: &str = "localhost/bench/http:artifact";
/// busybox with `/www/index.html`, for `busybox httpd`.
pub const HTTPD: &str = "localhost/bench/httpd:latest";
pub const HTTPD_INDEX: &str = "hello from busybox httpd\n";
pub const WASM_STDOUT: &str = "hello from wasm";
pub const RUNC_STDOUT: &str = "hello";

/// One start-to-exit case.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    pub runtime: String,
    pub image: &'static str,
    /// Process args; `None`: the image's.
    pub args: Option<Vec<String>>,
    /// The stdout every run must print (trimmed).
    pub expect: &'static str,
    /// Empty the module's AOT cache entry before each run.
    pub cold: bool,
    /// Through the baseline shim.
    pub baseline: bool,
}

impl Case {
    fn new(name: &str, runtime: &str, image: &'static str, expect: &'static str) -> Self {
        Self {
            name: name.to_string(),
            runtime: runtime.to_string(),
            image,
            args: None,
            expect,
            cold: false,
            baseline: false,
        }
    }

    fn args(mut self, args: &[&str]) -> Self {
        self.args = Some(args.iter().map(|s| s.to_string()).collect());
        self
    }

    pub fn is_runc(&self) -> bool {
        self.runtime == RUNC_RUNTIME
    }

    /// `wasmhybrid`, `runc` or `baseline` (for tables).
    pub fn runtime_label(&self) -> &'static str {
        if self.baseline {
            "baseline wasmhybrid"
        } else if self.is_runc() {
            "runc"
        } else if self.image == HEAVY_IO {
            "wasmhybrid -> runc"
        } else {
            "wasmhybrid"
        }
    }
}

/// Errors of runs that must not fail (every one counts).
#[derive(Debug, Default)]
pub struct Failures(Mutex<Vec<String>>);

impl Failures {
    pub fn record(&self, what: &str, err: &anyhow::Error) {
        let msg = format!("{what}: {err:#}");
        eprintln!("FAILED {msg}");
        self.0.lock().expect("failures").push(msg);
    }
    pub fn all(&self) -> Vec<String> {
        self.0.lock().expect("failures").clone()
    }
}

/// What every section needs: the client, the state paths and the cases.
pub struct Env {
    pub ctrd: Ctrd,
    /// The baseline shim's cases run in a containerd namespace of their
    /// own, so that the two shims never share a group's daemon.
    pub baseline_ctrd: Option<Ctrd>,
    pub ns: String,
    /// containerd's `--state` (bundles hold `shim.pid`).
    pub state: PathBuf,
    pub aot: PathBuf,
    cold_hex: String,
    pub cases: Vec<Case>,
    pub failures: Failures,
}

/// Keeps only the cases named in `WASMHYBRID_BENCH_CASES` (comma-separated),
/// when it is set; an unknown name is an error, not ignored.
fn select_cases(cases: &mut Vec<Case>) -> Result<()> {
    let Ok(list) = std::env::var("WASMHYBRID_BENCH_CASES") else {
        return Ok(());
    };
    let wanted: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    for name in &wanted {
        if !cases.iter().any(|c| c.name == *name) {
            let known: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
            bail!(
                "WASMHYBRID_BENCH_CASES: no case {name:?} (cases: {})",
                known.join(", ")
            );
        }
    }
    cases.retain(|c| wanted.contains(&c.name.as_str()));
    Ok(())
}

/// `wasm` with an extra custom section named `name` (same code, new digest).
fn with_custom_section(mut wasm: Vec<u8>, name: &str) -> Vec<u8> {
    assert!(name.len() < 100, "one-byte LEB128 lengths");
    wasm.push(0); // custom section
    wasm.push(name.len() as u8 + 1);
    wasm.push(name.len() as u8);
    wasm.extend_from_slice(name.as_bytes());
    wasm
}

impl Env {
    /// Imports the images into `ns` and lists the cases (the baseline
    /// shim's, named by absolute path, when `baseline` is given: its cases
    /// and their images in namespace `baseline_ns`).
    pub async fn prepare(
        daemon: &PrivateContainerd,
        ns: &str,
        baseline: Option<(&Path, &str)>,
        fifo_dir: Option<&Path>,
    ) -> Result<Self> {
        let client = |ctrd: Ctrd| match fifo_dir {
            Some(dir) => ctrd.with_fifo_dir(dir.to_path_buf()),
            None => ctrd,
        };
        let wasm = Fixture::CmdP1.bytes()?;
        let cold = with_custom_section(wasm.clone(), "wasmhybrid-bench-cold");
        let cold_hex = format!("{:x}", Sha256::digest(&cold));
        let mut httpd = ImageSpec::busybox(HTTPD)?;
        if let Some(Layer::Files(files)) = httpd.layers.first_mut() {
            files.push((
                "www/index.html".into(),
                HTTPD_INDEX.as_bytes().to_vec(),
                0o644,
            ));
        }
        let images = [
            ImageSpec::artifact(WASM_ARTIFACT, WASM_CONTENT_LAYER, wasm.clone()),
            ImageSpec::rootfs(WASM_ROOTFS, "wh-cmd.wasm", wasm),
            ImageSpec::artifact(WASM_COLD, WASM_CONTENT_LAYER, cold),
            ImageSpec::native(
                NATIVE,
                vec![("wh-cmd".into(), Fixture::CmdNative.bytes()?, 0o755)],
                &["/wh-cmd"],
            ),
            ImageSpec::busybox(HEAVY_IO)?.with_label("wasmhybrid.io/workload", "heavy-io"),
            ImageSpec::artifact(HTTP_WASM, WASM_COMPONENT_LAYER, Fixture::Http.bytes()?),
            httpd,
        ];
        for spec in &images {
            import_image(daemon, ns, spec).with_context(|| format!("import {}", spec.name))?;
        }
        let echo = ["/bin/echo", RUNC_STDOUT];
        let mut cases = vec![
            Case::new(
                "wasm-artifact",
                WASMHYBRID_RUNTIME,
                WASM_ARTIFACT,
                WASM_STDOUT,
            ),
            Case::new("wasm-rootfs", WASMHYBRID_RUNTIME, WASM_ROOTFS, WASM_STDOUT),
            Case::new("runc", RUNC_RUNTIME, NATIVE, WASM_STDOUT),
            Case::new("heavy-io", WASMHYBRID_RUNTIME, HEAVY_IO, RUNC_STDOUT).args(&echo),
            Case {
                cold: true,
                ..Case::new("wasm-cold", WASMHYBRID_RUNTIME, WASM_COLD, WASM_STDOUT)
            },
        ];
        let mut baseline_ctrd = None;
        if let Some((dir, baseline_ns)) = baseline {
            for spec in &images[..2] {
                import_image(daemon, baseline_ns, spec)
                    .with_context(|| format!("import {} for the baseline", spec.name))?;
            }
            baseline_ctrd = Some(client(Ctrd::connect(&daemon.address(), baseline_ns).await?));
            let bin = dir.join("containerd-shim-wasmhybrid-v1");
            anyhow::ensure!(bin.is_file(), "no baseline shim at {}", bin.display());
            let bin = bin.canonicalize()?.display().to_string();
            for (name, image) in [
                ("baseline-artifact", WASM_ARTIFACT),
                ("baseline-rootfs", WASM_ROOTFS),
            ] {
                cases.push(Case {
                    baseline: true,
                    ..Case::new(name, &bin, image, WASM_STDOUT)
                });
            }
        }
        select_cases(&mut cases)?;
        Ok(Self {
            ctrd: client(Ctrd::connect(&daemon.address(), ns).await?),
            baseline_ctrd,
            ns: ns.to_string(),
            state: daemon.state(),
            aot: daemon.aot_cache_dir(),
            cold_hex,
            cases,
            failures: Failures::default(),
        })
    }

    /// The bundle of container `id` (where containerd keeps `shim.pid`).
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.state
            .join("io.containerd.runtime.v2.task")
            .join(&self.ns)
            .join(id)
    }

    /// Runs `case` once as container `id`: exit 0 and the expected stdout,
    /// or an error.
    pub async fn once(&self, case: &Case, id: &str) -> Result<Phases> {
        if case.cold {
            remove_aot_entry(&self.aot, &self.cold_hex)?;
        }
        let mut opts = RunOpts::new(id, case.image, &case.runtime);
        opts.args = case.args.clone();
        let ctrd = match (&self.baseline_ctrd, case.baseline) {
            (Some(baseline), true) => baseline,
            _ => &self.ctrd,
        };
        let done = ctrd.run(&opts).await?;
        if done.exit_code != 0 || done.stdout.trim() != case.expect {
            bail!(
                "{id}: exit {}, stdout {:?} (expected 0, {:?}), stderr {:?}",
                done.exit_code,
                done.stdout,
                case.expect,
                done.stderr
            );
        }
        Ok(done.phases)
    }
}
