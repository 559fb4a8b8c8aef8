//! The shim daemon's containers: the daemon's task service
//! ([`crate::daemon::Tasks`]) calls [`WasmInstance`] for each Wasm
//! container.
//!
//! `Tasks.Create` ([`WasmInstance::new`]) is where the AOT cache works, on
//! the host, before the container exists:
//!
//! 1. [`prepare`] decides what to run from the bundle's `config.json` and
//!    the image facts recorded at `start` ([`crate::runc::Recorded`]: no
//!    call back into containerd), reads a rootfs entrypoint confined to the
//!    rootfs ([`crate::source`]), and finds the native code in the
//!    [`crate::cache`], compiling it there on a miss;
//! 2. a zygote process maps that code ([`executor::load`]): for cached
//!    code, the module's template process ([`crate::templates`]), made
//!    once and kept for its later containers;
//! 3. that zygote process creates the container ([`executor::build`]).
//!
//! This replaces `containerd-shim-wasm`'s own instance, whose only moment
//! to touch the Wasm is inside the container after `pivot_root`, where no
//! host cache is reachable. The container itself is made by
//! [`crate::isolation`], from runwasi's zygote.

use std::os::fd::{AsFd, FromRawFd as _, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use containerd_shim::monitor::{ExitEvent, Subject, Subscription, Topic, monitor_subscribe};
use containerd_shimkit::sandbox::sync::WaitableCell;
use containerd_shimkit::sandbox::{Error as SandboxError, Instance, InstanceConfig};
use containerd_shimkit::zygote::Zygote;
use nix::errno::Errno;
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use oci_spec::runtime::{LinuxResources, Spec};
use tokio::io::unix::AsyncFd;

use crate::cache::{Cache, CacheError, CacheSettings, Compiled, Fingerprint, Found, WasmDigest};
use crate::cgroup::OomWatch;
use crate::config::WorkloadConfig;
use crate::dispatch::{self, DispatchError, WasmForm, WasmSource};
use crate::engine::{EngineError, WasmEngine, Workload};
use crate::executor::{self, Code, LoadError, Plan, RunPlan};
use crate::isolation::{Container, IsolationError};
use crate::{exit, image, isolation, runc, source, templates};

/// One Wasm container of the daemon.
pub struct WasmInstance {
    id: String,
    exit_code: WaitableCell<(u32, DateTime<Utc>)>,
    container: std::sync::Mutex<Container>,
    /// Its memory cgroup, watched for OOM kills.
    oom: Option<Arc<OomWatch>>,
}

fn zygote_err(e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Others(format!("container process: {e}"))
}

fn isolation_err(e: IsolationError) -> SandboxError {
    SandboxError::Others(e.to_string())
}

impl Instance for WasmInstance {
    async fn new(id: String, cfg: &InstanceConfig) -> Result<Self, SandboxError> {
        let spec = Spec::load(cfg.bundle.join("config.json"))?;
        let (bundle, address, namespace) = (
            cfg.bundle.clone(),
            cfg.containerd_address.clone(),
            cfg.namespace.clone(),
        );
        let ctx = Ctx {
            bundle,
            address,
            namespace,
            handle: tokio::runtime::Handle::current(),
        };
        let t0 = std::time::Instant::now();
        // The cgroup is made here while the plan is made (and, for a
        // module without a template yet, its code is loaded).
        let cgroup = {
            let (id, spec, systemd) = (id.clone(), spec.clone(), cfg.config.systemd_cgroup);
            tokio::task::spawn_blocking(move || isolation::make_cgroup(&id, &spec, systemd))
        };
        let zygote = zygote_for(&ctx, &spec).await;
        let cgroup = cgroup
            .await
            .map_err(|e| SandboxError::Others(format!("making the cgroup: {e}")))?
            .map_err(isolation_err);
        let ((zygote, plan), cgroup) = match (zygote, cgroup) {
            (Ok(z), Ok(c)) => (z, c),
            (Err(e), Ok(c)) => {
                let _ = c.remove();
                return Err(e);
            }
            (_, Err(e)) => return Err(e),
        };
        let built = zygote
            .get()
            .try_run(
                executor::build,
                (id.clone(), cfg.clone(), cgroup.for_child(), plan),
            )
            .map_err(|e| {
                // The zygote process is gone: the next container gets a
                // new template.
                if let Builder::Template(key, _) = &zygote {
                    templates::remove(key);
                }
                zygote_err(e)
            })
            .and_then(|r| r.map_err(SandboxError::Others));
        // A one-off zygote process is done (dropping it kills and reaps
        // it: off the container's path); a template stays.
        if let Builder::OneOff(z) = zygote {
            tokio::task::spawn_blocking(move || drop(z));
        }
        let (pid, control, report) = match built {
            Ok(b) => b,
            Err(e) => {
                let _ = cgroup.remove();
                return Err(e);
            }
        };
        let cloned = isolation::Cloned {
            pid,
            control: control.into_inner(),
            report: report.into_inner(),
        };
        let container = tokio::task::spawn_blocking(move || {
            Container::finish(cloned, cgroup, &spec).map_err(isolation_err)
        })
        .await
        .map_err(|e| SandboxError::Others(format!("container setup: {e}")))??;
        let oom = container
            .memory_cgroup()
            .and_then(|(dir, v2)| {
                OomWatch::new(&dir, v2)
                    .map_err(|e| log::warn!("{id}: OOM kills will not be reported: {e}"))
                    .ok()
            })
            .map(Arc::new);
        log::debug!("created in {:?}", t0.elapsed());
        Ok(Self {
            id,
            exit_code: WaitableCell::new(),
            container: std::sync::Mutex::new(container),
            oom,
        })
    }

    async fn start(&self) -> Result<u32, SandboxError> {
        log::info!("starting instance: {}", self.id);
        // An exit code is set even if waiting fails.
        let guard = self.exit_code.clone().set_guard_with(|| (137, Utc::now()));
        let mut container = self.container.lock().unwrap_or_else(|e| e.into_inner());
        let pid = container.pid().as_raw();
        // Before start, so that the exit cannot be missed.
        let pidfd = PidFd::new(pid)?;
        container.start().map_err(isolation_err)?;
        drop(container);
        let exit_code = self.exit_code.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let status = match pidfd.wait().await {
                Ok(WaitStatus::Exited(_, status)) => status,
                Ok(WaitStatus::Signaled(_, sig, _)) => 128 + sig as i32,
                Ok(res) => {
                    log::error!("waitpid unexpected result: {res:?}");
                    137
                }
                Err(e) => {
                    log::error!("waitpid failed: {e}");
                    137
                }
            } as u32;
            let _ = exit_code.set((status, Utc::now()));
        });
        Ok(pid as u32)
    }

    async fn kill(&self, signal: u32) -> Result<(), SandboxError> {
        log::info!("sending signal {signal} to instance: {}", self.id);
        let signal = nix::sys::signal::Signal::try_from(signal as i32)
            .map_err(|e| SandboxError::InvalidArgument(format!("signal {signal}: {e}")))?;
        self.container
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .kill(signal)
            .map_err(isolation_err)
    }

    async fn delete(&self) -> Result<(), SandboxError> {
        log::info!("deleting instance: {}", self.id);
        // Normally immediate: the process has exited and left its cgroup
        // (otherwise this waits up to 2 s for a killed one to leave).
        self.container
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .delete()
            .map_err(isolation_err)
    }

    async fn wait(&self) -> (u32, DateTime<Utc>) {
        *self.exit_code.wait().await
    }
}

impl WasmInstance {
    /// Applies new cgroup limits to the container (`Tasks.Update`).
    pub fn update(&self, resources: &LinuxResources) -> Result<(), SandboxError> {
        log::info!("updating instance resources: {}", self.id);
        let mut container = self.container.lock().unwrap_or_else(|e| e.into_inner());
        container.update(resources).map_err(isolation_err)
    }

    /// Freezes (`true`) or thaws the container's process in its cgroup.
    pub fn freeze(&self, frozen: bool) -> Result<(), SandboxError> {
        log::info!(
            "{} instance: {}",
            if frozen { "pausing" } else { "resuming" },
            self.id
        );
        let mut container = self.container.lock().unwrap_or_else(|e| e.into_inner());
        if frozen {
            container.pause()
        } else {
            container.resume()
        }
        .map_err(isolation_err)
    }

    /// The watch on the container's memory cgroup for OOM kills (none
    /// where the host has no memory controller).
    pub fn oom(&self) -> Option<Arc<OomWatch>> {
        self.oom.clone()
    }

    /// The container's process (created, not necessarily started).
    pub fn pid(&self) -> u32 {
        self.container
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pid()
            .as_raw() as u32
    }
}

/// The zygote process a container is cloned from.
enum Builder {
    /// Its module's template ([`templates`]), kept for later containers.
    Template(templates::Key, Arc<Zygote>),
    /// One for this container only: code compiled without the cache.
    OneOff(Zygote),
    /// The global zygote, with no code: for a container that reports why
    /// it cannot run.
    Global,
}

impl Builder {
    fn get(&self) -> &Zygote {
        match self {
            Builder::Template(_, z) => z,
            Builder::OneOff(z) => z,
            Builder::Global => Zygote::global(),
        }
    }
}

/// A new zygote process with `code` loaded (forked from the global one).
async fn loaded_zygote(code: Code) -> Result<(Zygote, Result<(), LoadError>), SandboxError> {
    tokio::task::spawn_blocking(move || {
        let zygote = Zygote::global().spawn();
        let loaded = zygote.try_run(executor::load, code).map_err(zygote_err)?;
        Ok((zygote, loaded))
    })
    .await
    .map_err(|e| SandboxError::Others(format!("loading the code: {e}")))?
}

/// Decides what the container runs and which zygote process clones it:
/// its module's template (made now if there is none), a one-off zygote for
/// uncached code, or the global one for a container that only reports an
/// error. A cache entry Wasmtime refuses is removed and compiled again,
/// once.
async fn zygote_for(ctx: &Ctx, spec: &Spec) -> Result<(Builder, Plan), SandboxError> {
    let mut attempt = 0;
    loop {
        let prepared = {
            let (ctx, spec) = (ctx.clone(), spec.clone());
            tokio::task::spawn_blocking(move || prepare(&ctx, &spec))
                .await
                .map_err(|e| SandboxError::Others(format!("preparing the container: {e}")))?
        };
        let Prepared { plan, code, entry } = prepared;
        let Some(code) = code else {
            return Ok((Builder::Global, plan));
        };
        let key = match &code {
            Code::Cached { path, kind } => templates::Key::of(path, *kind),
            Code::Wasm { .. } => None,
        };
        if let Some(key) = &key
            && let Some(template) = templates::get(key)
        {
            return Ok((Builder::Template(key.clone(), template), plan));
        }
        let started = std::time::Instant::now();
        match loaded_zygote(code).await? {
            (zygote, Ok(())) => {
                return Ok(match key {
                    Some(key) => {
                        let zygote = Arc::new(zygote);
                        templates::insert(key.clone(), zygote.clone());
                        log::info!(
                            "template process for {} loaded in {:.1} ms ({} kept)",
                            entry
                                .as_ref()
                                .map(|(_, d)| d.as_str())
                                .unwrap_or("the module"),
                            started.elapsed().as_secs_f64() * 1e3,
                            templates::count()
                        );
                        (Builder::Template(key, zygote), plan)
                    }
                    None => (Builder::OneOff(zygote), plan),
                });
            }
            (_, Err(LoadError::Rejected(msg))) if attempt == 0 => {
                // Wasmtime's own header checks (version, target,
                // settings) refused an entry that passed ours.
                log::warn!("AOT cache: {msg}; removing the entry and compiling again");
                if let Some((cache, digest)) = &entry {
                    cache.remove(digest);
                }
                attempt += 1;
            }
            (_, Err(LoadError::Rejected(message) | LoadError::Invalid(message))) => {
                let fail = Plan::Fail {
                    code: exit::NOT_RUNNABLE,
                    message,
                };
                return Ok((Builder::Global, fail));
            }
        }
    }
}

/// What [`prepare`] needs of the container's surroundings.
#[derive(Clone)]
struct Ctx {
    bundle: std::path::PathBuf,
    address: String,
    namespace: String,
    handle: tokio::runtime::Handle,
}

/// A plan, the code its zygote process loads (none for a failing plan),
/// and the cache entry of that code (to remove if Wasmtime refuses it).
struct Prepared {
    plan: Plan,
    code: Option<Code>,
    entry: Option<(Cache, WasmDigest)>,
}

impl From<Plan> for Prepared {
    fn from(plan: Plan) -> Self {
        Self {
            plan,
            code: None,
            entry: None,
        }
    }
}

fn fail(code: i32, message: impl std::fmt::Display) -> Prepared {
    Plan::Fail {
        code,
        message: message.to_string(),
    }
    .into()
}

/// Why a module could not be compiled for the cache.
#[derive(Debug, thiserror::Error)]
enum CompileError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    Fetch(String),
}

/// The daemon's engine: compiles for the cache and names its key.
fn daemon_engine() -> Result<&'static WasmEngine, EngineError> {
    static ENGINE: std::sync::OnceLock<WasmEngine> = std::sync::OnceLock::new();
    if let Some(e) = ENGINE.get() {
        return Ok(e);
    }
    let e = WasmEngine::new()?;
    Ok(ENGINE.get_or_init(|| e))
}

/// Opens the node's cache for this engine (logged and `None` if unusable:
/// the container then compiles in its own process, uncached).
pub fn open_cache(engine: &WasmEngine) -> Option<Cache> {
    let opened = CacheSettings::from_env()
        .and_then(|s| Cache::open(&s, crate::engine::TARGET, &engine.cache_key()));
    match opened {
        Ok(c) => Some(c),
        Err(e) => {
            log::warn!("AOT cache unavailable, compiling without it: {e}");
            None
        }
    }
}

/// Decides what the container runs and gets its native code.
fn prepare(ctx: &Ctx, spec: &Spec) -> Prepared {
    let started = std::time::Instant::now();
    let process = spec.process().as_ref();
    let args: Vec<String> = process.and_then(|p| p.args().clone()).unwrap_or_default();
    let envs: Vec<String> = process.and_then(|p| p.env().clone()).unwrap_or_default();
    let config = match WorkloadConfig::from_env(&envs) {
        Ok(c) => c,
        Err(e) => return fail(exit::BAD_CONFIG, e),
    };

    let recorded = runc::read_record(&ctx.bundle);
    let (image, layers) = match recorded {
        Some(runc::Recorded {
            image,
            wasm_layers: Some(layers),
            ..
        }) => (image, layers),
        _ => {
            // Not started through our `start` (or an older record): ask.
            let id = ctx
                .bundle
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match ctx
                .handle
                .block_on(image::lookup_async(&ctx.address, &ctx.namespace, &id))
            {
                Ok(Some(meta)) => (
                    Some(format!("{}/{}", ctx.namespace, meta.name)),
                    meta.wasm_layers,
                ),
                Ok(None) => (None, vec![]),
                Err(e) => return fail(exit::NOT_RUNNABLE, e),
            }
        }
    };

    let source = match dispatch::choose_source(&args, &layers) {
        Ok(s) => s,
        Err(e) => return fail(exit::NOT_RUNNABLE, e),
    };
    let engine = match daemon_engine() {
        Ok(e) => e,
        Err(e) => return fail(exit::NOT_RUNNABLE, e),
    };
    let func = args
        .first()
        .map(|a| dispatch::parse_entrypoint(a).func)
        .unwrap_or_else(|| dispatch::DEFAULT_FUNC.to_string());

    let cache = open_cache(engine);

    // The Wasm's digest names its entry. For an OCI layer it is the layer
    // digest; a rootfs file is hashed, unless this exact file (same inode,
    // size, mtime and ctime) was hashed since boot. The bytes themselves
    // are read only when needed (a miss).
    let rootfs_file: std::cell::RefCell<Option<source::Opened>> = Default::default();
    let (digest, mut bytes, default_arg0, source) = match &source {
        WasmSource::OciLayer { digest, .. } => match WasmDigest::parse(digest) {
            Ok(d) => (d, None, "main.wasm".to_string(), source),
            Err(e) => return fail(exit::NOT_RUNNABLE, e),
        },
        WasmSource::Rootfs(path) => {
            let entry = path.to_string_lossy();
            let mut opened = match source::open_entrypoint(&ctx.bundle, spec, &entry, &envs) {
                Ok(o) => o,
                Err(e @ source::SourceError::NotFound { .. }) => {
                    return fail(exit::NOT_FOUND, e);
                }
                Err(e) => return fail(exit::NOT_RUNNABLE, e),
            };
            // Cheap checks first: not Wasm, an ELF, `#func` on a component
            // are reported without touching the cache.
            let header = match opened.header(8) {
                Ok(h) => h,
                Err(e) => return fail(exit::NOT_RUNNABLE, e),
            };
            if let Err(e) = dispatch::decide(&args, source.clone(), &header) {
                return fail(exit::NOT_RUNNABLE, e);
            }
            let memo_key = format!(
                "wasm {} {}",
                opened.guest_path.display(),
                Fingerprint::of(&opened.meta)
            );
            let source = WasmSource::Rootfs(opened.guest_path.clone());
            let memo = cache
                .as_ref()
                .and_then(|c| c.memo_get(&memo_key))
                .and_then(|d| WasmDigest::parse(&d).ok());
            match memo {
                Some(d) => {
                    *rootfs_file.borrow_mut() = Some(opened);
                    (d, None, path.display().to_string(), source)
                }
                None => {
                    let found = match opened.read() {
                        Ok(f) => f,
                        Err(e) => return fail(exit::NOT_RUNNABLE, e),
                    };
                    let d = WasmDigest::of(&found.bytes);
                    if let Some(c) = &cache {
                        c.memo_put(&memo_key, d.as_str());
                    }
                    (d, Some(found.bytes), path.display().to_string(), source)
                }
            }
        }
    };

    let fetch = || -> Result<Vec<u8>, CompileError> {
        let b = match rootfs_file.borrow_mut().take() {
            Some(opened) => {
                opened
                    .read()
                    .map_err(|e| CompileError::Fetch(e.to_string()))?
                    .bytes
            }
            None => ctx
                .handle
                .block_on(image::read_blob(
                    &ctx.address,
                    &ctx.namespace,
                    digest.as_str(),
                ))
                .map_err(|e| CompileError::Fetch(e.to_string()))?,
        };
        if WasmDigest::of(&b) != digest {
            return Err(CompileError::Fetch(format!(
                "{source} does not match its digest {digest}"
            )));
        }
        Ok(b)
    };

    let run_plan = |code: Code, form: &str| Prepared {
        plan: Plan::Run(RunPlan {
            func: func.clone(),
            default_arg0: default_arg0.clone(),
            http_addr: config.http_addr,
            reason: format!("Wasm {form} from {source}, calling {func}"),
        }),
        code: Some(code),
        entry: None,
    };

    let Some(cache) = cache else {
        let bytes = match bytes.take().map(Ok).unwrap_or_else(fetch) {
            Ok(b) => b,
            Err(e) => return fail(exit::NOT_RUNNABLE, e),
        };
        let form = match dispatch::decide(&args, source.clone(), &bytes) {
            Ok(d) => d.form,
            Err(e) => return fail(exit::NOT_RUNNABLE, e),
        };
        return run_plan(
            Code::Wasm {
                bytes,
                component: form == WasmForm::Component,
            },
            &form.to_string(),
        );
    };

    let compile = || -> Result<Compiled, CompileError> {
        let bytes = ensure(&mut bytes, fetch)?;
        let decision = dispatch::decide(&args, source.clone(), bytes)?;
        let (kind, code) = engine.precompile(bytes, decision.form)?;
        Ok(Compiled {
            kind,
            code,
            wasm_size: bytes.len() as u64,
        })
    };
    let looked_up = std::time::Instant::now();
    match cache.get_or_compile(&digest, image.as_deref(), compile) {
        Ok((entry, found)) => {
            let kind = entry.record.kind;
            match found {
                Found::Hit => log::info!(
                    "AOT cache hit: {digest} ({}, {} bytes of code, checked in {:.1} ms; \
                     entrypoint resolved in {:.1} ms)",
                    kind.describe(),
                    entry.record.code_size,
                    looked_up.elapsed().as_secs_f64() * 1e3,
                    (looked_up - started).as_secs_f64() * 1e3,
                ),
                Found::Compiled(ms) => log::info!(
                    "AOT cache miss: {digest} compiled ({}, {} bytes of Wasm) in {ms:.1} ms",
                    kind.describe(),
                    entry.record.wasm_size
                ),
                Found::CompiledElsewhere => log::info!(
                    "AOT cache miss: {digest} compiled by a concurrent start ({})",
                    kind.describe()
                ),
            }
            if kind != Workload::Module && func != dispatch::DEFAULT_FUNC {
                return fail(
                    exit::NOT_RUNNABLE,
                    DispatchError::FuncOnComponent { func: func.clone() },
                );
            }
            Prepared {
                entry: Some((cache, digest)),
                ..run_plan(
                    Code::Cached {
                        path: entry.code.clone(),
                        kind,
                    },
                    kind.describe(),
                )
            }
        }
        Err(CompileError::Cache(e)) => {
            log::warn!("AOT cache failed ({e}); compiling in the container's process");
            match bytes.take().map(Ok).unwrap_or_else(fetch) {
                Ok(b) => {
                    let form = match dispatch::sniff(&b) {
                        Ok(f) => f,
                        Err(e) => return fail(exit::NOT_RUNNABLE, e),
                    };
                    run_plan(
                        Code::Wasm {
                            bytes: b,
                            component: form == WasmForm::Component,
                        },
                        &form.to_string(),
                    )
                }
                Err(e) => fail(exit::NOT_RUNNABLE, e),
            }
        }
        Err(e) => fail(exit::NOT_RUNNABLE, e),
    }
}

/// `bytes`, fetched first if not there yet.
fn ensure(
    bytes: &mut Option<Vec<u8>>,
    fetch: impl FnOnce() -> Result<Vec<u8>, CompileError>,
) -> Result<&[u8], CompileError> {
    if bytes.is_none() {
        *bytes = Some(fetch()?);
    }
    Ok(bytes.as_deref().unwrap_or_default())
}

/// Waits for the container's init process through a pidfd.
struct PidFd {
    fd: OwnedFd,
    pid: i32,
    subs: Subscription,
}

impl PidFd {
    fn new(pid: i32) -> Result<Self, SandboxError> {
        let subs = monitor_subscribe(Topic::Pid)
            .map_err(|e| SandboxError::Others(format!("exit monitor: {e}")))?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, libc::PIDFD_NONBLOCK) };
        if fd == -1 {
            return Err(std::io::Error::last_os_error().into());
        }
        // SAFETY: the kernel returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        Ok(Self { fd, pid, subs })
    }

    async fn wait(self) -> std::io::Result<WaitStatus> {
        // SAFETY: the AsyncFd owns the pidfd, which nothing else closes or
        // replaces while it is registered.
        let fd = unsafe { AsyncFd::register(self.fd)? };
        loop {
            // Poll first: readiness is edge-triggered and the process may
            // have exited before the AsyncFd existed.
            match waitid(
                Id::PIDFd(fd.as_fd()),
                WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
            ) {
                Ok(WaitStatus::StillAlive) => {
                    let _ = fd.readable().await?;
                }
                Ok(status) => return Ok(status),
                Err(Errno::ECHILD) => {
                    // Reaped by the shim's reaper: take its exit event.
                    let (pid, subs) = (self.pid, self.subs);
                    let status = tokio::task::spawn_blocking(move || {
                        while let Ok(ExitEvent { subject, exit_code }) =
                            subs.rx.recv_timeout(Duration::from_secs(2))
                        {
                            if let Subject::Pid(p) = subject
                                && p == pid
                            {
                                return Ok(exit_code);
                            }
                        }
                        Err(Errno::ECHILD)
                    })
                    .await
                    .map_err(|_| Errno::ECHILD)??;
                    return Ok(WaitStatus::Exited(nix::unistd::Pid::from_raw(pid), status));
                }
                Err(err) => return Err(err.into()),
            }
        }
    }
}
