//! The shim daemon: one process serving the Wasm containers of a group
//! ([`crate::group`]: a pod's, a containerd namespace's, or one
//! container's), spawned by the launcher's `start` and retiring once it has
//! had no container for its linger.
//!
//! The task service ([`Tasks`]) maps containerd's task API onto
//! [`WasmInstance`]s, as `containerd-shimkit`'s own service does for one
//! group, and publishes the task events.

use std::collections::HashMap;
use std::future::Future as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use containerd_shim::api::{
    CheckpointTaskRequest, CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest,
    CreateTaskResponse, DeleteRequest, Empty, ExecProcessRequest, KillRequest, PauseRequest,
    PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest,
    WaitRequest, WaitResponse,
};
use containerd_shim::event::Event;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExit, TaskIO, TaskOOM, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::ttrpc;
use containerd_shim::protos::ttrpc::asynchronous::TtrpcContext;
use containerd_shim::protos::types::task::{ProcessInfo, Status};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{DeleteResponse, TtrpcResult};
use containerd_shim_protos::shim::shim_ttrpc_async;
use containerd_shimkit::sandbox::{Config as RuntimeConfig, Error, Instance, InstanceConfig};
use oci_spec::runtime::{LinuxResources, Spec};

use crate::executor::SHIM_NAME;
use crate::group::{ENV_DAEMON_LINGER_MS, Group, SOCKET_FD};
use crate::instance::WasmInstance;
use crate::launcher::Flags;
use crate::logging;
use crate::tty::Tty;

// ---------------------------------------------------------------------------
// The daemon process.

/// The tokio runtime the task service runs the instances on.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the daemon's tokio runtime")
});

/// Entry point of the shim daemon (and of containerd's `-v` and `-info`),
/// with the command line's flags and argv\[0\].
pub fn run(flags: &Flags, argv0: &std::ffi::OsStr) {
    if flags.version {
        let argv0 = std::path::Path::new(argv0)
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        println!("{argv0}:");
        println!("  Runtime: {SHIM_NAME}");
        println!("  Version: {}", env!("CARGO_PKG_VERSION"));
        println!(
            "  Revision: {}",
            containerd_shimkit::revision!().unwrap_or("<none>")
        );
        return;
    }
    if flags.info {
        print_info();
        return;
    }
    // The zygote is forked before any thread exists; the containers'
    // zygote processes come from it.
    containerd_shimkit::zygote::Zygote::init();
    let debug = flags.debug;
    containerd_shimkit::zygote::Zygote::global().run(
        |(bundle, debug)| logging::init(&bundle, debug),
        (std::env::current_dir().unwrap_or_default(), debug),
    );
    containerd_shimkit::zygote::Zygote::global().run(crate::executor::prewarm, ());
    logging::init(&std::env::current_dir().unwrap_or_default(), debug);
    if let Err(e) = serve(flags) {
        log::error!("shim daemon: {e}");
        eprintln!("{SHIM_NAME}: {e}");
        std::process::exit(1);
    }
}

/// Why the daemon could not serve.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("no namespace: containerd passes -namespace")]
    NoNamespace,
    #[error("{TTRPC_ADDRESS} is not set: containerd starts shims with it")]
    NoTtrpcAddress,
    #[error("cannot become the subreaper of the containers: {0}")]
    Subreaper(nix::Error),
    #[error("cannot handle signals: {0}")]
    Signals(std::io::Error),
    #[error("cannot connect to containerd's events at {address}: {source}")]
    Publisher {
        address: String,
        source: containerd_shim::Error,
    },
    #[error("task service: {0}")]
    Server(#[from] ttrpc::Error),
}

/// containerd's TTRPC address (for events), in the shim's environment.
const TTRPC_ADDRESS: &str = "TTRPC_ADDRESS";

/// Serves the task API on the listening socket the launcher passed
/// ([`crate::group::SOCKET_FD`]) until the daemon retires. The server is
/// ttrpc's asynchronous one on [`RUNTIME`]: a connection (containerd opens
/// one per container) costs a task, not the sync server's six threads.
fn serve(flags: &Flags) -> Result<(), ServeError> {
    if flags.namespace.is_empty() {
        return Err(ServeError::NoNamespace);
    }
    let ttrpc_address = std::env::var(TTRPC_ADDRESS).map_err(|_| ServeError::NoTtrpcAddress)?;
    // Orphans among the containers' processes are reparented here, and
    // every child is reaped by the signal thread.
    nix::sys::prctl::set_child_subreaper(true).map_err(ServeError::Subreaper)?;
    let signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGPIPE,
        signal_hook::consts::SIGCHLD,
    ])
    .map_err(ServeError::Signals)?;
    std::thread::spawn(move || handle_signals(signals));

    let shared = Arc::new(Shared::new(flags));
    let publisher =
        RemotePublisher::new(&ttrpc_address).map_err(|source| ServeError::Publisher {
            address: ttrpc_address.clone(),
            source,
        })?;
    let events = Arc::new(Events::new(Publisher {
        address: ttrpc_address,
        namespace: shared.namespace.clone(),
        client: Some(publisher),
        failing_since: None,
        dropped: 0,
        patience: PUBLISH_PATIENCE,
    }));
    let tasks = Tasks {
        shared: shared.clone(),
        events: events.clone(),
    };
    let service = shim_ttrpc_async::create_task(Arc::new(Box::new(tasks)));
    let mut server = ttrpc::asynchronous::Server::new()
        .add_listener(SOCKET_FD)?
        .set_domain_unix()
        .register_service(service);
    RUNTIME.block_on(server.start())?;
    // Image lookups for the launcher's `start` (it looks them up itself if
    // this is not there).
    // Only the namespace's daemon follows containerd's events: it serves
    // a stream of starts, while a pod's or a container's serves a few, and
    // every subscriber costs containerd a copy of each event.
    let follow_events = shared.group.key() == crate::group::NAMESPACE_GROUP;
    if let Err(e) = RUNTIME.block_on(crate::route::serve(
        shared.group.dir(),
        shared.containerd_address.clone(),
        shared.namespace.clone(),
        follow_events,
    )) {
        log::warn!("cannot serve image lookups for start: {e}");
    }
    log::info!("shim daemon serving {}", shared.group.address());
    {
        let shared = shared.clone();
        std::thread::spawn(move || shared.watch_idle());
    }
    shared.wait_retired();
    RUNTIME.block_on(server.shutdown())?;
    events.flush();
    log::debug!("daemon retired");
    Ok(())
}

/// Reaps every child (the zygote processes, a container's process that
/// its pidfd did not catch first, hooks) and tells the exit monitor;
/// SIGTERM and SIGINT do not stop the daemon (it retires on its own).
fn handle_signals(mut signals: signal_hook::iterator::Signals) {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    for sig in signals.forever() {
        if sig != signal_hook::consts::SIGCHLD {
            log::debug!("received signal {sig}");
            continue;
        }
        loop {
            let exited = match waitpid(nix::unistd::Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, status)) => (pid, status),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as i32),
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => break,
                Ok(_) => continue,
                Err(e) => {
                    log::warn!("waitpid: {e}");
                    break;
                }
            };
            if let Err(e) =
                containerd_shim::monitor::monitor_notify_by_pid(exited.0.as_raw(), exited.1)
            {
                log::warn!("exit of {}: {e}", exited.0);
            }
        }
    }
}

fn print_info() {
    use containerd_shim::protos::protobuf::{Message as _, MessageField};
    use containerd_shim::protos::types::introspection;
    use std::io::Write as _;
    let info = introspection::RuntimeInfo {
        name: SHIM_NAME.to_string(),
        version: MessageField::some(introspection::RuntimeVersion {
            version: env!("CARGO_PKG_VERSION").to_string(),
            revision: containerd_shimkit::revision!()
                .unwrap_or("<none>")
                .to_string(),
            ..Default::default()
        }),
        ..Default::default()
    };
    if let Ok(bytes) = info.write_to_bytes() {
        let _ = std::io::stdout().write_all(&bytes);
    }
}

/// What the task service and the retirement watch share.
struct Shared {
    group: Group,
    namespace: String,
    containerd_address: String,
    linger: Duration,
    tasks: Mutex<Tasks_>,
    wake: Condvar,
    retired_cv: (Mutex<bool>, Condvar),
}

/// The daemon's containers and since when it has had none.
struct Tasks_ {
    entries: HashMap<String, Arc<Entry>>,
    idle_since: Option<Instant>,
}

impl Shared {
    fn new(flags: &Flags) -> Self {
        let group = Group::new(&flags.address, &flags.namespace, &flags.id);
        let linger = std::env::var(ENV_DAEMON_LINGER_MS)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .map(Duration::from_millis)
            .unwrap_or(Duration::ZERO);
        // The daemon outlives the bundle it was started in: it works from
        // its group's directory.
        let _ = std::env::set_current_dir(group.dir());
        Shared {
            group,
            namespace: flags.namespace.clone(),
            containerd_address: flags.address.clone(),
            linger,
            tasks: Mutex::new(Tasks_ {
                entries: HashMap::new(),
                idle_since: Some(Instant::now()),
            }),
            wake: Condvar::new(),
            retired_cv: (Mutex::new(false), Condvar::new()),
        }
    }

    /// Blocks until [`Shared::watch_idle`] retires the daemon.
    fn wait_retired(&self) {
        let (lock, cv) = &self.retired_cv;
        let mut retired = lock.lock().unwrap_or_else(|e| e.into_inner());
        while !*retired {
            retired = cv.wait(retired).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, Tasks_> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Retires the daemon once it has been idle for its linger.
    fn watch_idle(&self) {
        // Shutdown wakes this at once; the tick only ends a linger.
        let tick = Duration::from_secs(1);
        loop {
            let idle_for = {
                let tasks = self.tasks();
                let tasks = self
                    .wake
                    .wait_timeout(tasks, tick)
                    .map(|(t, _)| t)
                    .unwrap_or_else(|e| e.into_inner().0);
                tasks.idle_since.map(|t| t.elapsed())
            };
            if idle_for.is_some_and(|d| d >= self.linger) && self.try_retire() {
                let (lock, cv) = &self.retired_cv;
                *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
                cv.notify_all();
                return;
            }
        }
    }

    /// Under the group's lock: with no containers and no container on its
    /// way, removes the socket so that no `start` hands this daemon out.
    fn try_retire(&self) -> bool {
        let Ok(lock) = self.group.lock() else {
            return false;
        };
        if !self.tasks().entries.is_empty() || self.group.has_pending() {
            return false;
        }
        let _ = std::fs::remove_file(self.group.socket());
        // Nothing of the group is left on the node (a pod's group never
        // comes back; any other is made again by the next start).
        self.group.remove_dir(&lock);
        log::info!("no containers for {:?}: shim daemon exiting", self.linger);
        lock.hold_until_exit();
        true
    }
}

// ---------------------------------------------------------------------------
// The task service.

/// containerd's task API for the daemon's containers.
#[derive(Clone)]
pub struct Tasks {
    shared: Arc<Shared>,
    events: Arc<Events>,
}

/// Publishes task events to containerd, in order, from a thread of its
/// own (as containerd's Go shims do): a request does not wait for
/// containerd to take its event.
struct Events {
    queue: std::sync::mpsc::Sender<Publish>,
}

enum Publish {
    Event(String, Box<dyn MessageDyn>),
    /// Answers once every event before it is published.
    Flush(std::sync::mpsc::Sender<()>),
}

/// How long an event is retried while containerd does not take it (it is
/// restarting: an upgrade, a config change, the node installer); later
/// events wait behind it, so that containerd gets them in order. After
/// that, events are dropped, each after one try, until containerd is back.
const PUBLISH_PATIENCE: Duration = Duration::from_secs(30);

/// containerd's time to take one event.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// The connection events go over, made again when containerd restarts
/// (its socket is new; `RemotePublisher` never reconnects by itself).
struct Publisher {
    address: String,
    namespace: String,
    client: Option<RemotePublisher>,
    /// Since when containerd has not taken an event.
    failing_since: Option<Instant>,
    /// Events dropped in this outage.
    dropped: usize,
    /// [`PUBLISH_PATIENCE`] (shorter in tests).
    patience: Duration,
}

impl Publisher {
    fn publish(&mut self, topic: &str, event: &dyn MessageDyn) {
        let mut pause = Duration::from_millis(50);
        loop {
            let error = match self.try_publish(topic, event) {
                Ok(()) => {
                    if let Some(since) = self.failing_since.take() {
                        let dropped = std::mem::take(&mut self.dropped);
                        log::info!(
                            "containerd takes events again after {:.1} s ({dropped} dropped meanwhile)",
                            since.elapsed().as_secs_f64(),
                        );
                    }
                    return;
                }
                Err(Rejected(e)) => {
                    log::warn!("containerd refused event {topic}: {e}");
                    return;
                }
                Err(Unreachable(e)) => e,
            };
            self.client = None;
            let since = *self.failing_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= self.patience {
                self.dropped += 1;
                log::warn!(
                    "cannot publish {topic}: containerd unreachable for {:.0} s: {error}",
                    since.elapsed().as_secs_f64()
                );
                return;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    fn try_publish(&mut self, topic: &str, event: &dyn MessageDyn) -> Result<(), PublishError> {
        let client = match &mut self.client {
            Some(client) => client,
            None => self.client.insert(
                RemotePublisher::new(&self.address).map_err(|e| Unreachable(e.to_string()))?,
            ),
        };
        let ctx = ttrpc::context::with_timeout(PUBLISH_TIMEOUT.as_nanos() as i64);
        match client.publish(ctx, topic, &self.namespace, event.clone_box()) {
            Ok(()) => Ok(()),
            Err(containerd_shim::Error::Ttrpc(ttrpc::Error::RpcStatus(status)))
                if !matches!(
                    status.code(),
                    ttrpc::Code::DEADLINE_EXCEEDED
                        | ttrpc::Code::UNAVAILABLE
                        | ttrpc::Code::CANCELLED
                ) =>
            {
                Err(Rejected(status.message().to_string()))
            }
            Err(e) => Err(Unreachable(e.to_string())),
        }
    }
}

/// Why containerd did not take an event.
enum PublishError {
    /// It answered with an error: trying again would not help.
    Rejected(String),
    /// No answer: it is down or restarting.
    Unreachable(String),
}
use PublishError::{Rejected, Unreachable};

impl Events {
    fn new(mut publisher: Publisher) -> Self {
        let (queue, rx) = std::sync::mpsc::channel::<Publish>();
        std::thread::spawn(move || {
            for item in rx {
                match item {
                    Publish::Event(topic, event) => publisher.publish(&topic, &*event),
                    Publish::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        Self { queue }
    }

    fn send(&self, event: impl Event + Send + 'static) {
        let _ = self
            .queue
            .send(Publish::Event(event.topic(), Box::new(event)));
    }

    /// Waits (up to 5 s) for the events sent so far to be published.
    fn flush(&self) {
        let (done, wait) = std::sync::mpsc::channel();
        if self.queue.send(Publish::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(Duration::from_secs(5));
        }
    }
}

fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
        ..Default::default()
    }
}

/// A task's life, as containerd's task API allows it to move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Created,
    Starting,
    Started,
    /// Frozen by `Tasks.Pause` until `Tasks.Resume`.
    Paused,
    Exited,
    Deleting,
}

/// One container of the daemon.
struct Entry {
    instance: WasmInstance,
    config: InstanceConfig,
    pid: OnceLock<u32>,
    phase: tokio::sync::Mutex<Phase>,
    /// Whether `phase` is `Paused`, for `Tasks.State` (which does not wait
    /// for the phase's lock).
    paused: AtomicBool,
    /// A write end of the stdin FIFO, held until `Tasks.CloseIO` (as runc's
    /// shim does), so that the guest sees end-of-file only after that, not
    /// whenever a client's writer goes away (e.g. containerd restarting).
    stdin: Mutex<Option<std::fs::File>>,
    /// The task publishing its OOM kills ([`Tasks::watch_oom`]).
    oom_task: Mutex<Option<tokio::task::AbortHandle>>,
    /// Its terminal, when the task asked for one.
    tty: Option<Tty>,
    /// The logging binary its output goes to (`binary://`).
    logger: Mutex<Option<crate::stdio::Logger>>,
}

impl Entry {
    /// Stops publishing OOM kills (before the cgroup goes).
    fn stop_oom_watch(&self) {
        if let Some(task) = self
            .oom_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.stop_oom_watch();
    }
}

fn send_oom(events: &Events, id: &str) {
    log::info!("{id}: OOM kill in the container's memory cgroup");
    events.send(TaskOOM {
        container_id: id.to_string(),
        ..Default::default()
    });
}

/// Opens the stdin FIFO's keep-alive write end (nothing for no stdin or a
/// path that is not a FIFO).
fn stdin_keeper(path: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
    if path.as_os_str().is_empty() {
        return None;
    }
    // Read-write: opening a FIFO so never waits for a reader.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| log::warn!("stdin {}: {e}", path.display()))
        .ok()?;
    let is_fifo = file.metadata().is_ok_and(|m| m.file_type().is_fifo());
    is_fifo.then_some(file)
}

fn transition(phase: &mut Phase, to: Phase) -> Result<(), Error> {
    use Phase::*;
    let ok = match to {
        Starting => *phase == Created,
        Started => matches!(*phase, Starting | Paused),
        Paused => *phase == Started,
        Deleting => matches!(*phase, Created | Exited),
        Exited => matches!(*phase, Starting | Started | Paused | Deleting),
        Created => false,
    };
    if ok {
        *phase = to;
        Ok(())
    } else {
        Err(Error::FailedPrecondition(format!(
            "invalid state transition: {phase:?} => {to:?}"
        )))
    }
}

impl Entry {
    async fn wait(&self) -> (u32, DateTime<Utc>) {
        let res = self.instance.wait().await;
        *self.phase.lock().await = Phase::Exited;
        res
    }

    fn exited(&self) -> Option<(u32, DateTime<Utc>)> {
        let wait = std::pin::pin!(self.instance.wait());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match wait.poll(&mut cx) {
            std::task::Poll::Ready(exited) => Some(exited),
            std::task::Poll::Pending => None,
        }
    }
}

/// Runs a request's handler, turning a panic into an error for that one
/// request (the daemon and its other containers go on).
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, Error>) -> TtrpcResult<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(res) => res.map_err(ttrpc::Error::from),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            log::error!("{what}: the shim panicked: {msg}");
            Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                ttrpc::Code::INTERNAL,
                format!("{what}: the shim panicked: {msg}"),
            )))
        }
    }
}

fn no_exec(exec_id: &str) -> Result<(), Error> {
    if exec_id.is_empty() {
        Ok(())
    } else {
        Err(Error::Shim(containerd_shim::Error::Unimplemented(
            "exec is not supported for Wasm containers".to_string(),
        )))
    }
}

/// The `SystemdCgroup` knob of the runtime's options (CRI's
/// `runtimeoptions.v1.Options`, whose `config_body` is TOML).
fn runtime_config(options: Option<&Any>) -> Result<RuntimeConfig, Error> {
    #[derive(prost::Message)]
    struct Options {
        #[prost(string, tag = "1")]
        type_url: String,
        #[prost(string, tag = "2")]
        config_path: String,
        #[prost(string, tag = "3")]
        config_body: String,
    }
    let Some(options) = options else {
        return Ok(RuntimeConfig::default());
    };
    if options.type_url != "runtimeoptions.v1.Options" {
        return Err(Error::InvalidArgument(format!(
            "runtime options of type {:?}: expected runtimeoptions.v1.Options",
            options.type_url
        )));
    }
    let options = <Options as prost::Message>::decode(options.value.as_slice())
        .map_err(|e| Error::InvalidArgument(format!("runtime options: {e}")))?;
    toml::from_str(&options.config_body)
        .map_err(|e| Error::InvalidArgument(format!("runtime options: {e}")))
}

impl Tasks {
    fn entry(&self, id: &str) -> Result<Arc<Entry>, Error> {
        self.shared
            .tasks()
            .entries
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(id.to_string()))
    }

    fn create_task(&self, req: CreateTaskRequest) -> Result<CreateTaskResponse, Error> {
        let id = req.id.clone();
        logging::add_container(&id, Path::new(&req.bundle));
        let created = self.create_entry(&req);
        {
            let mut tasks = self.shared.tasks();
            match &created {
                Ok(entry) => {
                    tasks.entries.insert(id.clone(), entry.clone());
                    tasks.idle_since = None;
                }
                Err(_) if tasks.entries.is_empty() => tasks.idle_since = Some(Instant::now()),
                Err(_) => {}
            }
        }
        self.shared.group.unmark_pending(&id);
        let entry = match created {
            Ok(entry) => entry,
            Err(e) => {
                logging::remove_container(&id);
                self.shared.wake.notify_all();
                return Err(e);
            }
        };
        self.events.send(TaskCreate {
            container_id: req.id,
            bundle: req.bundle,
            rootfs: req.rootfs,
            io: Some(TaskIO {
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        });
        self.watch_oom(&entry, &id);
        Ok(CreateTaskResponse {
            pid: std::process::id(),
            ..Default::default()
        })
    }

    /// Publishes `TaskOOM` for each OOM kill in the container's memory
    /// cgroup, from its creation until its deletion (as runc's shim does);
    /// a kill is also looked for before `TaskExit` (see [`Tasks::start_task`]).
    fn watch_oom(&self, entry: &Arc<Entry>, id: &str) {
        let Some(watch) = entry.instance.oom() else {
            return;
        };
        let (events, id) = (self.events.clone(), id.to_string());
        let task = RUNTIME.spawn(async move {
            while watch.notified().await.is_ok() {
                watch.report_kills(true, || send_oom(&events, &id));
            }
        });
        *entry.oom_task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.abort_handle());
    }

    fn create_entry(&self, req: &CreateTaskRequest) -> Result<Arc<Entry>, Error> {
        let config = runtime_config(req.options.as_ref())?;
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            return Err(Error::Shim(containerd_shim::Error::Unimplemented(
                "checkpoint is not supported".to_string(),
            )));
        }
        if self.shared.tasks().entries.contains_key(&req.id) {
            return Err(Error::AlreadyExists(req.id.clone()));
        }
        let bundle = PathBuf::from(&req.bundle);
        let mut spec = Spec::load(bundle.join("config.json"))
            .map_err(|e| Error::InvalidArgument(format!("could not load runtime spec: {e}")))?;
        spec.canonicalize_rootfs(&bundle)
            .map_err(|e| Error::InvalidArgument(format!("could not canonicalize rootfs: {e}")))?;
        let terminal = crate::tty::requested(&spec);
        if terminal != req.terminal {
            return Err(Error::InvalidArgument(format!(
                "the task asks for terminal={} but the spec's process.terminal is {terminal}",
                req.terminal
            )));
        }
        let rootfs = spec
            .root()
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("rootfs is not set in runtime spec".into()))?
            .path()
            .clone();
        let _ = std::fs::create_dir_all(&rootfs);
        for m in &req.rootfs {
            crate::rootfs::mount_one(&m.type_, &m.source, &m.options, &rootfs)
                .map_err(Error::Others)?;
        }
        let config = InstanceConfig {
            namespace: self.shared.namespace.clone(),
            containerd_address: self.shared.containerd_address.clone(),
            bundle,
            stdout: req.stdout.clone().into(),
            stderr: req.stderr.clone().into(),
            stdin: req.stdin.clone().into(),
            config,
        };
        // With a terminal, the container's stdio is its slave; the daemon
        // copies between the FIFOs and the master.
        let tty = terminal
            .then(|| Tty::open().map_err(|e| Error::Others(format!("open a pseudo-terminal: {e}"))))
            .transpose()?;
        let outputs = crate::stdio::resolve(&req.stdout, &req.stderr, &req.id, &config.namespace)
            .map_err(Error::InvalidArgument)?;
        let mut logger = outputs.logger;
        // The container's own stdio paths, where they are not containerd's
        // FIFOs (the common case, which needs no copy of the config).
        let streams = match &tty {
            Some(tty) => Some([tty.slave(); 3].map(Path::to_path_buf)),
            None if outputs.stdout != config.stdout || outputs.stderr != config.stderr => Some([
                config.stdin.clone(),
                outputs.stdout.clone(),
                outputs.stderr.clone(),
            ]),
            None => None,
        };
        let own;
        let instance_config = match streams {
            Some([stdin, stdout, stderr]) => {
                own = InstanceConfig {
                    stdin,
                    stdout,
                    stderr,
                    ..config.clone()
                };
                &own
            }
            None => &config,
        };
        let instance = RUNTIME.block_on(WasmInstance::new(req.id.clone(), instance_config))?;
        if let Err(e) = crate::hooks::prestart(&spec, &req.id, instance.pid(), &config.bundle) {
            // Never started: the process is killed, the cgroup removed.
            let _ = RUNTIME.block_on(instance.delete());
            return Err(e);
        }
        let stdin = stdin_keeper(&config.stdin);
        if let Some(tty) = &tty
            && let Err(e) = tty.start(&config.stdin, &outputs.stdout)
        {
            let _ = RUNTIME.block_on(instance.delete());
            return Err(Error::Others(format!("terminal I/O: {e}")));
        }
        if let Some(logger) = logger.as_mut() {
            logger.handed_over();
        }
        Ok(Arc::new(Entry {
            instance,
            config,
            pid: OnceLock::new(),
            phase: tokio::sync::Mutex::new(Phase::Created),
            paused: AtomicBool::new(false),
            stdin: Mutex::new(stdin),
            oom_task: Mutex::new(None),
            tty,
            logger: Mutex::new(logger),
        }))
    }

    fn start_task(&self, req: StartRequest) -> Result<StartResponse, Error> {
        no_exec(&req.exec_id)?;
        let entry = self.entry(&req.id)?;
        let pid = RUNTIME.block_on(async {
            let mut phase = entry.phase.lock().await;
            transition(&mut phase, Phase::Starting)?;
            match entry.instance.start().await {
                Ok(pid) => {
                    let _ = entry.pid.set(pid);
                    transition(&mut phase, Phase::Started)?;
                    Ok(pid)
                }
                Err(e) => {
                    let _ = transition(&mut phase, Phase::Exited);
                    Err(e)
                }
            }
        })?;
        self.events.send(TaskStart {
            container_id: req.id.clone(),
            pid,
            ..Default::default()
        });
        let events = self.events.clone();
        let id = req.id;
        RUNTIME.spawn(async move {
            let (exit_status, at) = entry.wait().await;
            if let Some(tty) = &entry.tty {
                // Everything the process wrote to its terminal reaches the
                // stdout FIFO before its exit is published.
                tty.drained().await;
            }
            // An OOM kill ends the process with SIGKILL; its report comes
            // before the exit, whether or not the watch has woken yet.
            if let Some(watch) = entry.instance.oom().filter(|_| exit_status == 137) {
                watch.report_kills(false, || send_oom(&events, &id));
            }
            events.send(TaskExit {
                container_id: id.clone(),
                id,
                pid,
                exit_status,
                exited_at: Some(timestamp(at)).into(),
                ..Default::default()
            });
        });
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn kill_task(&self, req: KillRequest) -> Result<Empty, Error> {
        no_exec(&req.exec_id)?;
        let entry = self.entry(&req.id)?;
        RUNTIME.block_on(async {
            let mut phase = entry.phase.lock().await;
            if !matches!(*phase, Phase::Started | Phase::Paused) {
                return Err(Error::FailedPrecondition(format!(
                    "invalid state transition: {:?} => Killing",
                    *phase
                )));
            }
            if *phase == Phase::Paused && req.signal == nix::sys::signal::Signal::SIGKILL as u32 {
                // SIGKILL thaws a paused task, so that it dies now.
                entry.instance.kill(req.signal).await?;
                entry.paused.store(false, Ordering::Release);
                *phase = Phase::Started;
                return Ok(());
            }
            drop(phase);
            entry.instance.kill(req.signal).await
        })?;
        Ok(Empty::new())
    }

    fn delete_task(&self, req: DeleteRequest) -> Result<DeleteResponse, Error> {
        no_exec(&req.exec_id)?;
        let entry = self.entry(&req.id)?;
        RUNTIME.block_on(async {
            let mut phase = entry.phase.lock().await;
            transition(&mut phase, Phase::Deleting)?;
            entry.stop_oom_watch();
            let res = entry.instance.delete().await;
            if res.is_err() {
                let _ = transition(&mut phase, Phase::Exited);
            }
            res
        })?;
        // The logger takes the rest of the output and exits.
        let logger = entry
            .logger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut logger) = logger {
            logger.finish();
        }
        let pid = entry.pid.get().copied().unwrap_or_default();
        let (exit_status, at) = entry.exited().unzip();
        {
            let mut tasks = self.shared.tasks();
            tasks.entries.remove(&req.id);
            if tasks.entries.is_empty() {
                tasks.idle_since = Some(Instant::now());
            }
        }
        let exited_at = at.map(timestamp);
        self.events.send(TaskDelete {
            container_id: req.id.clone(),
            pid,
            exit_status: exit_status.unwrap_or_default(),
            exited_at: exited_at.clone().into(),
            ..Default::default()
        });
        logging::remove_container(&req.id);
        Ok(DeleteResponse {
            pid,
            exit_status: exit_status.unwrap_or_default(),
            exited_at: exited_at.into(),
            ..Default::default()
        })
    }

    /// `Tasks.ListPids` (`ctr task ps`): the container's one process (Wasm
    /// threads are its threads) until it exits.
    fn list_pids(&self, req: PidsRequest) -> Result<PidsResponse, Error> {
        let entry = self.entry(&req.id)?;
        let mut resp = PidsResponse::new();
        if entry.exited().is_none() {
            resp.processes.push(ProcessInfo {
                pid: entry.instance.pid(),
                ..Default::default()
            });
        }
        Ok(resp)
    }

    /// `Tasks.ResizePty`: the terminal's new size (nothing to do for a task
    /// without one, as under runc).
    fn resize_task_pty(&self, req: ResizePtyRequest) -> Result<Empty, Error> {
        no_exec(&req.exec_id)?;
        let entry = self.entry(&req.id)?;
        if let Some(tty) = &entry.tty {
            tty.resize(req.width, req.height)
                .map_err(|e| Error::Others(format!("resize the terminal: {e}")))?;
        }
        Ok(Empty::new())
    }

    /// `Tasks.CloseIO`: with `stdin`, lets the guest see end-of-file once
    /// the client's writers are gone too.
    fn close_task_io(&self, req: CloseIORequest) -> Result<Empty, Error> {
        no_exec(&req.exec_id)?;
        let entry = self.entry(&req.id)?;
        if req.stdin {
            entry.stdin.lock().unwrap_or_else(|e| e.into_inner()).take();
        }
        Ok(Empty::new())
    }

    /// `Tasks.Update`: new cgroup limits (a JSON `LinuxResources`, as
    /// containerd sends them) for a task that has not exited.
    fn update_task(&self, req: UpdateTaskRequest) -> Result<Empty, Error> {
        let entry = self.entry(&req.id)?;
        let any = req
            .resources
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("update without resources".into()))?;
        if !any.type_url.ends_with("/LinuxResources") && !any.type_url.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "update: resources of type {:?}; a Linux container takes LinuxResources",
                any.type_url
            )));
        }
        let resources: LinuxResources = serde_json::from_slice(&any.value)
            .map_err(|e| Error::InvalidArgument(format!("update: invalid LinuxResources: {e}")))?;
        RUNTIME.block_on(async {
            let phase = entry.phase.lock().await;
            if matches!(*phase, Phase::Exited | Phase::Deleting) {
                return Err(Error::FailedPrecondition(format!(
                    "cannot update {}: its process has exited",
                    req.id
                )));
            }
            entry.instance.update(&resources)
        })?;
        Ok(Empty::new())
    }

    /// `Tasks.Pause` (`frozen`) and `Tasks.Resume`: freezes or thaws the
    /// running task's process through its cgroup's freezer.
    fn freeze_task(&self, id: &str, frozen: bool) -> Result<Empty, Error> {
        let entry = self.entry(id)?;
        RUNTIME.block_on(async {
            let mut phase = entry.phase.lock().await;
            let was = *phase;
            if !frozen && was != Phase::Paused {
                return Err(Error::FailedPrecondition(format!(
                    "invalid state transition: {was:?} => Resumed: the task is not paused"
                )));
            }
            transition(
                &mut phase,
                if frozen {
                    Phase::Paused
                } else {
                    Phase::Started
                },
            )?;
            if let Err(e) = entry.instance.freeze(frozen) {
                *phase = was;
                return Err(e);
            }
            entry.paused.store(frozen, Ordering::Release);
            Ok(())
        })?;
        if frozen {
            self.events.send(TaskPaused {
                container_id: id.to_string(),
                ..Default::default()
            });
        } else {
            self.events.send(TaskResumed {
                container_id: id.to_string(),
                ..Default::default()
            });
        }
        Ok(Empty::new())
    }

    async fn wait_task(&self, req: WaitRequest) -> Result<WaitResponse, Error> {
        no_exec(&req.exec_id)?;
        let entry = self.entry(&req.id)?;
        let (exit_status, at) = entry.wait().await;
        if let Some(tty) = &entry.tty {
            // As before `TaskExit`: the CRI plugin acts on `Wait`.
            tty.drained().await;
        }
        Ok(WaitResponse {
            exit_status,
            exited_at: Some(timestamp(at)).into(),
            ..Default::default()
        })
    }

    fn state_task(&self, req: StateRequest) -> Result<StateResponse, Error> {
        no_exec(&req.exec_id)?;
        let entry = self.entry(&req.id)?;
        let pid = entry.pid.get().copied();
        let exited = entry.exited();
        let status = match (pid, exited) {
            (None, _) => Status::CREATED,
            (Some(_), None) if entry.paused.load(Ordering::Acquire) => Status::PAUSED,
            (Some(_), None) => Status::RUNNING,
            (Some(_), Some(_)) => Status::STOPPED,
        };
        let (exit_status, at) = exited.unzip();
        let path = |p: &Path| p.to_string_lossy().to_string();
        Ok(StateResponse {
            id: req.id,
            bundle: path(&entry.config.bundle),
            stdin: path(&entry.config.stdin),
            stdout: path(&entry.config.stdout),
            stderr: path(&entry.config.stderr),
            pid: pid.unwrap_or_default(),
            exit_status: exit_status.unwrap_or_default(),
            exited_at: at.map(timestamp).into(),
            status: status.into(),
            ..Default::default()
        })
    }

    fn stats_task(&self, req: StatsRequest) -> Result<StatsResponse, Error> {
        let entry = self.entry(&req.id)?;
        let pid = entry
            .pid
            .get()
            .copied()
            .ok_or_else(|| Error::InvalidArgument("task is not running".to_string()))?;
        let metrics = containerd_shim::cgroup::collect_metrics(pid)?;
        let stats = containerd_shim::util::convert_to_any(Box::new(metrics))?;
        Ok(StatsResponse {
            stats: Some(stats).into(),
            ..Default::default()
        })
    }
}

/// Runs a request's blocking handler on the runtime's blocking pool (its
/// threads are kept and reused, so a request starts no thread), panics
/// contained ([`guarded`]).
async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> TtrpcResult<T> {
    tokio::task::spawn_blocking(move || guarded(what, f))
        .await
        .unwrap_or_else(|e| {
            Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                ttrpc::Code::INTERNAL,
                format!("{what}: {e}"),
            )))
        })
}

#[async_trait::async_trait]
impl shim_ttrpc_async::Task for Tasks {
    async fn create(
        &self,
        _: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        let this = self.clone();
        blocking("create", move || this.create_task(req)).await
    }

    async fn start(&self, _: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let this = self.clone();
        blocking("start", move || this.start_task(req)).await
    }

    async fn kill(&self, _: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let this = self.clone();
        blocking("kill", move || this.kill_task(req)).await
    }

    async fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let this = self.clone();
        blocking("delete", move || this.delete_task(req)).await
    }

    async fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
            ttrpc::Code::UNIMPLEMENTED,
            format!(
                "exec in Wasm container {}: it runs one Wasm module and has no programs to \
                 exec; for a shell beside it, run a native container in its pod \
                 (`kubectl debug --image=...`), which wasmhybrid runs under runc",
                req.id
            ),
        )))
    }

    async fn checkpoint(&self, _: &TtrpcContext, req: CheckpointTaskRequest) -> TtrpcResult<Empty> {
        Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
            ttrpc::Code::UNIMPLEMENTED,
            format!("checkpoint of Wasm container {}: not supported", req.id),
        )))
    }

    async fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        self.list_pids(req).map_err(ttrpc::Error::from)
    }

    async fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        self.resize_task_pty(req).map_err(ttrpc::Error::from)
    }

    async fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        self.close_task_io(req).map_err(ttrpc::Error::from)
    }

    async fn update(&self, _: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        let this = self.clone();
        blocking("update", move || this.update_task(req)).await
    }

    async fn pause(&self, _: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        let this = self.clone();
        blocking("pause", move || this.freeze_task(&req.id, true)).await
    }

    async fn resume(&self, _: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        let this = self.clone();
        blocking("resume", move || this.freeze_task(&req.id, false)).await
    }

    async fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        // Until the task exits: a future, not a thread.
        self.wait_task(req).await.map_err(ttrpc::Error::from)
    }

    async fn state(&self, _: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        guarded("state", || self.state_task(req))
    }

    async fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let this = self.clone();
        blocking("stats", move || this.stats_task(req)).await
    }

    async fn connect(&self, _: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        guarded("connect", || {
            let entry = self.entry(&req.id)?;
            Ok(ConnectResponse {
                shim_pid: std::process::id(),
                task_pid: entry.pid.get().copied().unwrap_or_default(),
                ..Default::default()
            })
        })
    }

    async fn shutdown(&self, _: &TtrpcContext, _: ShutdownRequest) -> TtrpcResult<Empty> {
        // The daemon leaves when it has had no container for its linger
        // (at once for a pod's); see [`Shared::watch_idle`].
        self.shared.wake.notify_all();
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// containerd's events service, recording the container ids of the
    /// `TaskExit`s it is forwarded.
    struct FakeContainerd(Arc<Mutex<Vec<String>>>);

    impl containerd_shim::protos::Events for FakeContainerd {
        fn forward(
            &self,
            _: &ttrpc::TtrpcContext,
            req: containerd_shim::protos::shim::events::ForwardRequest,
        ) -> ttrpc::Result<containerd_shim::protos::api::Empty> {
            let exit = <TaskExit as containerd_shim::protos::protobuf::Message>::parse_from_bytes(
                &req.envelope().event().value,
            )
            .expect("a TaskExit");
            self.0.lock().unwrap().push(exit.container_id);
            Ok(Default::default())
        }
    }

    fn serve_events(path: &Path, got: &Arc<Mutex<Vec<String>>>) -> ttrpc::Server {
        use std::os::fd::IntoRawFd as _;
        let listener = std::os::unix::net::UnixListener::bind(path).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let service =
            containerd_shim::protos::create_events(Arc::new(Box::new(FakeContainerd(got.clone()))));
        let mut server = ttrpc::Server::new()
            .add_listener(listener.into_raw_fd())
            .expect("listener")
            .register_service(service);
        server.start().expect("serve");
        server
    }

    fn exit(id: &str) -> TaskExit {
        TaskExit {
            container_id: id.to_string(),
            ..Default::default()
        }
    }

    /// While containerd is down an event waits (later ones behind it) up to
    /// the publisher's patience, then it and each next one is dropped; once
    /// containerd is back, events reach it in order over a new connection,
    /// also one that was waiting when containerd came back.
    #[test]
    fn events_wait_for_a_restarting_containerd_then_are_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("containerd.sock.ttrpc");
        let got = Arc::new(Mutex::new(Vec::new()));
        let mut publisher = Publisher {
            address: path.display().to_string(),
            namespace: "ns".to_string(),
            client: None,
            failing_since: None,
            dropped: 0,
            patience: Duration::from_millis(300),
        };

        // containerd is down for longer than the patience.
        publisher.publish("/tasks/exit", &exit("lost-1"));
        publisher.publish("/tasks/exit", &exit("lost-2"));
        assert_eq!(publisher.dropped, 2);
        assert!(publisher.failing_since.is_some());

        // It is back.
        let server = serve_events(&path, &got);
        publisher.publish("/tasks/exit", &exit("a"));
        publisher.publish("/tasks/exit", &exit("b"));
        assert_eq!(*got.lock().unwrap(), ["a", "b"]);
        assert!(publisher.failing_since.is_none());
        assert_eq!(publisher.dropped, 0);

        // It restarts while an event waits: the event reaches the new one.
        server.shutdown();
        std::fs::remove_file(&path).expect("remove the socket");
        publisher.patience = Duration::from_secs(20);
        let restarted = {
            let (path, got) = (path.clone(), got.clone());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                serve_events(&path, &got)
            })
        };
        publisher.publish("/tasks/exit", &exit("c"));
        publisher.publish("/tasks/exit", &exit("d"));
        assert_eq!(*got.lock().unwrap(), ["a", "b", "c", "d"]);
        assert_eq!(publisher.dropped, 0);
        restarted.join().expect("server thread").shutdown();
    }

    #[test]
    fn task_phases_follow_containerds_task_api() {
        let mut p = Phase::Created;
        assert!(transition(&mut p, Phase::Started).is_err());
        transition(&mut p, Phase::Starting).expect("start");
        transition(&mut p, Phase::Started).expect("started");
        assert!(transition(&mut p, Phase::Deleting).is_err(), "running");
        transition(&mut p, Phase::Paused).expect("pause");
        assert!(transition(&mut p, Phase::Paused).is_err(), "paused twice");
        assert!(transition(&mut p, Phase::Deleting).is_err(), "paused");
        transition(&mut p, Phase::Started).expect("resume");
        transition(&mut p, Phase::Paused).expect("pause again");
        transition(&mut p, Phase::Exited).expect("exit");
        transition(&mut p, Phase::Deleting).expect("delete");
        let mut never_started = Phase::Created;
        transition(&mut never_started, Phase::Deleting).expect("delete a created task");
    }

    #[test]
    fn runtime_options_give_systemd_cgroup() {
        use prost::Message as _;
        #[derive(prost::Message)]
        struct Options {
            #[prost(string, tag = "1")]
            type_url: String,
            #[prost(string, tag = "2")]
            config_path: String,
            #[prost(string, tag = "3")]
            config_body: String,
        }
        let body = Options {
            type_url: String::new(),
            config_path: String::new(),
            config_body: "SystemdCgroup = true\n".into(),
        };
        let any = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: body.encode_to_vec(),
            ..Default::default()
        };
        assert!(runtime_config(Some(&any)).expect("valid").systemd_cgroup);
        assert!(!runtime_config(None).expect("none").systemd_cgroup);
        let wrong = Any {
            type_url: "runc.v1.Options".into(),
            ..Default::default()
        };
        assert!(runtime_config(Some(&wrong)).is_err());
    }
}
