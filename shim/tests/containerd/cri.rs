//! The kubelet's path: pods through containerd's CRI plugin with the
//! `wasmhybrid` handler, on a private containerd with its CRI plugin, a CNI
//! bridge network of the test's own and a locally built pause image
//! (`wasmhybrid_harness::cri`). Each test removes its pods as the kubelet
//! does (StopPodSandbox, RemovePodSandbox) and checks nothing is left:
//! sandboxes, containers, shims, network namespaces, mounts, state,
//! cgroups, bridge ports or address reservations.
//!
//! Like every containerd test these need root and fail, never skip, when
//! containerd or its CRI plugin cannot start.

use std::net::SocketAddr;
use std::time::Duration;

use wasmhybrid_harness::cri::api::ContainerState;
use wasmhybrid_harness::cri::{
    ContainerSpec, Cri, CriEnv, CriLog, Pod, RUNC_HANDLER, WASMHYBRID_HANDLER,
    shared_pid_namespaces,
};
use wasmhybrid_harness::fixtures::Fixture;
use wasmhybrid_harness::image::ImageSpec;
use wasmhybrid_harness::netns::{HttpResponse, http_get_here};

use crate::common::{P1_ROOTFS, P2_ROOTFS, bytes, shim_dir};

const HTTP_ROOTFS: &str = "localhost/wh/http:rootfs";
const BUSYBOX: &str = "localhost/wh/busybox:latest";
const HEAVY_IO: (&str, &str) = ("wasmhybrid.io/workload", "heavy-io");
/// Upper bound for a container to exit (a hang fails instead of blocking).
const EXIT_WITHIN: Duration = Duration::from_secs(60);

async fn start_env() -> CriEnv {
    CriEnv::start(&shim_dir())
        .await
        .unwrap_or_else(|e| panic!("the CRI test environment did not start: {e:#}"))
}

async fn import(env: &mut CriEnv, spec: ImageSpec) {
    env.import(&spec)
        .await
        .unwrap_or_else(|e| panic!("import {}: {e:#}", spec.name));
}

/// wh-cmd as a WASI p1 module and a p2 component, in rootfs images.
async fn import_wh_cmd(env: &mut CriEnv) {
    import(
        env,
        ImageSpec::rootfs(P1_ROOTFS, "wh-cmd.wasm", bytes(Fixture::CmdP1)),
    )
    .await;
    import(
        env,
        ImageSpec::rootfs(P2_ROOTFS, "wh-cmd.wasm", bytes(Fixture::CmdP2)),
    )
    .await;
}

async fn run_pod(env: &mut CriEnv, name: &str, annotations: &[(&str, &str)]) -> Pod {
    let pod = env
        .cri
        .run_pod_sandbox(name, WASMHYBRID_HANDLER, annotations)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\ncontainerd's log:\n{}", env.daemon.log()));
    assert_dispatched(env, &pod.id, "dispatch: runc: pod sandbox container");
    pod
}

async fn run(env: &mut CriEnv, pod: &Pod, spec: &ContainerSpec) -> String {
    env.cri
        .run_container(pod, spec)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\ncontainerd's log:\n{}", env.daemon.log()))
}

/// Waits for container `id` to exit; returns its exit code and its CRI log.
async fn exited(env: &mut CriEnv, pod: &Pod, name: &str, id: &str) -> (i32, CriLog) {
    let status = env
        .cri
        .wait_exited(id, EXIT_WITHIN)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\ncontainerd's log:\n{}", env.daemon.log()));
    let log = CriLog::read(&Cri::log_path(pod, name)).unwrap_or_else(|e| panic!("{e:#}"));
    let expected_reason = if status.exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    assert_eq!(status.reason, expected_reason, "{name}: {status:?}");
    (status.exit_code, log)
}

/// GET from the host to the pod's IP over the test's bridge.
async fn get(ip: &str, path: &str) -> HttpResponse {
    let addr: SocketAddr = format!("{ip}:8080").parse().expect("pod address");
    let path = path.to_string();
    tokio::task::spawn_blocking(move || http_get_here(addr, &path, Duration::from_secs(30)))
        .await
        .expect("GET thread")
        .unwrap_or_else(|e| panic!("GET {addr}: {e:#}"))
}

/// Asserts containerd's log has the shim's routing line for `id` and that
/// it contains `expected`.
fn assert_dispatched(env: &CriEnv, id: &str, expected: &str) {
    let lines = env.dispatch_lines(id);
    assert!(
        lines.len() == 1 && lines[0].contains(expected),
        "routing of {id}: expected one line with {expected:?}, got {lines:#?}"
    );
}

/// Removes the pod as the kubelet does and asserts nothing is left.
async fn remove_and_check(env: &mut CriEnv, pods: &[&Pod]) {
    for pod in pods {
        env.cri
            .remove_pod(pod)
            .await
            .unwrap_or_else(|e| panic!("{e:#}\ncontainerd's log:\n{}", env.daemon.log()));
    }
    let left = env.leftovers().await;
    assert!(left.is_empty(), "left behind: {left:#?}");
    let log = env.daemon.log();
    assert!(
        !log.contains("panicked"),
        "a panic reached containerd's log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_command_pod_logs_and_exit_codes() {
    let mut env = start_env().await;
    import_wh_cmd(&mut env).await;
    let pod = run_pod(&mut env, "wasm-cmd", &[]).await;

    let hello = ContainerSpec::new(
        "hello",
        P2_ROOTFS,
        &[
            "/wh-cmd.wasm",
            "hello",
            "--",
            "env",
            "GREETING",
            "--",
            "stderr",
            "to-stderr",
        ],
    )
    .env("GREETING", "from-cri");
    let id = run(&mut env, &pod, &hello).await;
    let (code, log) = exited(&mut env, &pod, "hello", &id).await;
    assert_eq!(code, 0, "{log:?}");
    assert_eq!(
        log.text("stdout"),
        "hello from wasm\nGREETING=from-cri\n",
        "{log:?}"
    );
    assert_eq!(log.text("stderr"), "to-stderr\n", "{log:?}");
    assert_dispatched(
        &env,
        &id,
        "dispatch: wasm: Wasm image localhost/wh/cmd-p2:rootfs (wasi/wasm)",
    );

    let failing = ContainerSpec::new(
        "failing",
        P1_ROOTFS,
        &["/wh-cmd.wasm", "echo", "bye", "--", "exit", "3"],
    );
    let id = run(&mut env, &pod, &failing).await;
    let (code, log) = exited(&mut env, &pod, "failing", &id).await;
    assert_eq!(code, 3, "{log:?}");
    assert_eq!(log.text("stdout"), "bye\n", "{log:?}");
    assert_dispatched(&env, &id, "dispatch: wasm: Wasm image localhost/wh/cmd-p1");

    // `tty: true`: the guest's stdio is a terminal, its output (stderr's
    // too) logged as stdout, lines ending at the terminal's `\r\n`.
    let tty = ContainerSpec::new(
        "tty",
        P1_ROOTFS,
        &["/wh-cmd.wasm", "tty", "--", "stderr", "to-stderr"],
    )
    .tty();
    let id = run(&mut env, &pod, &tty).await;
    let (code, mut log) = exited(&mut env, &pod, "tty", &id).await;
    assert_eq!(code, 0, "{log:?}");
    let want = "stdin, stdout and stderr are terminals\nto-stderr\n";
    // The CRI plugin writes the log as it reads the FIFO: allow it a moment.
    for _ in 0..50 {
        if log.text("stdout") == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        log = CriLog::read(&Cri::log_path(&pod, "tty")).unwrap_or_else(|e| panic!("{e:#}"));
    }
    let terminal_lines: Vec<String> = env
        .daemon
        .log()
        .lines()
        .filter(|l| l.contains("terminal"))
        .map(str::to_string)
        .collect();
    assert_eq!(log.text("stdout"), want, "{log:?} {terminal_lines:#?}");
    assert_eq!(log.text("stderr"), "", "{log:?}");

    remove_and_check(&mut env, &[&pod]).await;
}

/// `shareProcessNamespace: true`: the Wasm container joins the pod's PID
/// namespace (the pause process is PID 1 there) by path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_container_in_a_pod_sharing_one_pid_namespace() {
    let mut env = start_env().await;
    import(
        &mut env,
        ImageSpec::rootfs(P1_ROOTFS, "wh-cmd.wasm", bytes(Fixture::CmdP1)),
    )
    .await;
    let pod = env
        .cri
        .run_pod_sandbox_with(
            "shared-pid",
            WASMHYBRID_HANDLER,
            &[],
            shared_pid_namespaces(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}\ncontainerd's log:\n{}", env.daemon.log()));
    let hello = ContainerSpec::new("hello", P1_ROOTFS, &["/wh-cmd.wasm", "hello"]);
    let id = run(&mut env, &pod, &hello).await;
    let (code, log) = exited(&mut env, &pod, "hello", &id).await;
    assert_eq!(code, 0, "{log:?}");
    assert_eq!(log.text("stdout"), "hello from wasm\n", "{log:?}");
    assert_dispatched(&env, &id, "dispatch: wasm: Wasm image localhost/wh/cmd-p1");

    // A long-running one is not PID 1 of its namespace: the pause is.
    let sleeper = ContainerSpec::new("sleeper", P1_ROOTFS, &["/wh-cmd.wasm", "sleep", "3600"]);
    let id = run(&mut env, &pod, &sleeper).await;
    let nspid = tokio::task::spawn_blocking(move || nspid_of_container(&id))
        .await
        .expect("join");
    let levels: Vec<&str> = nspid.split_whitespace().collect();
    assert_eq!(levels.len(), 2, "NSpid {nspid}");
    assert_ne!(
        levels[1], "1",
        "the pod's pause is PID 1, not the Wasm process: {nspid}"
    );
    remove_and_check(&mut env, &[&pod]).await;
}

/// `NSpid` of the process whose cgroup is named after container `id`.
fn nspid_of_container(id: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let dir = entry.path();
            let cgroup = std::fs::read_to_string(dir.join("cgroup")).unwrap_or_default();
            if cgroup.lines().any(|l| l.ends_with(id)) {
                let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
                if let Some(v) = status.lines().find_map(|l| l.strip_prefix("NSpid:")) {
                    return v.trim().to_string();
                }
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no process in container {id}'s cgroup"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_http_pod_answers_on_its_pod_ip() {
    let mut env = start_env().await;
    import(
        &mut env,
        ImageSpec::rootfs(HTTP_ROOTFS, "http.wasm", bytes(Fixture::Http)),
    )
    .await;
    let pod = run_pod(&mut env, "wasm-http", &[]).await;
    let ip = env.cri.pod_ip(&pod).await.expect("pod IP");
    let subnet_base = env.network.subnet().trim_end_matches("0/24").to_string();
    assert!(
        ip.starts_with(&subnet_base),
        "pod IP {ip} not in {}",
        env.network.subnet()
    );

    // The image's entrypoint (/http.wasm); the default address 0.0.0.0:8080.
    let web = ContainerSpec::new("web", HTTP_ROOTFS, &[]).env("WH_GREETING", "from-cri");
    let id = run(&mut env, &pod, &web).await;
    let resp = get(&ip, "/hello?x=1").await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert!(
        resp.body.starts_with("hello from wasi:http GET /hello?x=1"),
        "{resp:?}"
    );
    assert!(resp.body.contains("greeting=from-cri"), "{resp:?}");
    assert_eq!(get(&ip, "/missing").await.status, 404);
    assert_dispatched(
        &env,
        &id,
        "dispatch: wasm: Wasm image localhost/wh/http:rootfs",
    );

    // containerd restarts under the pod (an upgrade, the node installer):
    // the server answers on, the CRI plugin finds it running, and stops
    // it later as before.
    env.restart().await.expect("restart containerd");
    assert_eq!(get(&ip, "/after-restart").await.status, 200);
    let status = env.cri.container_status(&id).await.expect("status");
    assert_eq!(
        status.state,
        ContainerState::ContainerRunning as i32,
        "{status:?}"
    );

    // StopContainer: SIGTERM, as the kubelet sends it.
    env.cri.stop_container(&id, 10).await.expect("stop");
    let (code, _) = exited(&mut env, &pod, "web", &id).await;
    assert_eq!(code, 143, "SIGTERM ends the server with 128 + 15");

    remove_and_check(&mut env, &[&pod]).await;
}

/// A container killed by its memory limit's OOM killer is `OOMKilled` to
/// the kubelet (the CRI plugin's reason, from the shim's `TaskOOM` event):
/// the same for a Wasm container, a delegated native one and one under the
/// plain runc handler. A Wasm container that stays under its limit, or is
/// killed by StopContainer, is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_killed_under_a_memory_limit_as_under_runc() {
    const LIMIT: i64 = 32 << 20;
    let mut env = start_env().await;
    import_wh_cmd(&mut env).await;
    import(
        &mut env,
        ImageSpec::busybox(BUSYBOX).expect("busybox image"),
    )
    .await;
    let pod = run_pod(&mut env, "oom", &[]).await;
    let plain = env
        .cri
        .run_pod_sandbox("oom-runc", RUNC_HANDLER, &[])
        .await
        .expect("runc pod");
    // Grows a shell variable until the limit kills it.
    let grow = [
        "/bin/sh",
        "-c",
        "x=0123456789abcdef; while :; do x=\"$x$x\"; done",
    ];
    let cases = [
        (
            &pod,
            ContainerSpec::new("hog-p1", P1_ROOTFS, &["/wh-cmd.wasm", "alloc", "512"]),
        ),
        (
            &pod,
            ContainerSpec::new("hog-p2", P2_ROOTFS, &["/wh-cmd.wasm", "alloc", "512"]),
        ),
        (&pod, ContainerSpec::new("hog-native", BUSYBOX, &grow)),
        (&plain, ContainerSpec::new("hog-runc", BUSYBOX, &grow)),
    ];
    for (pod, spec) in cases {
        let spec = spec.memory_limit(LIMIT);
        let id = run(&mut env, pod, &spec).await;
        let mut status = env
            .cri
            .wait_exited(&id, EXIT_WITHIN)
            .await
            .unwrap_or_else(|e| panic!("{e:#}\ncontainerd's log:\n{}", env.daemon.log()));
        let wasm = spec.name.starts_with("hog-p");
        if !wasm {
            // runc's shim reports the kill from a watcher of its own, which
            // may come after the exit: give it a moment. wasmhybrid's
            // report comes before the exit, so a Wasm container is
            // `OOMKilled` from the moment it has exited.
            for _ in 0..50 {
                if status.reason == "OOMKilled" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                status = env.cri.container_status(&id).await.expect("status");
            }
        }
        let log = CriLog::read(&Cri::log_path(pod, &spec.name)).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            (status.exit_code, status.reason.as_str()),
            (137, "OOMKilled"),
            "{}: {status:?} {log:?}",
            spec.name
        );
        if wasm {
            // The Wasm guest got some way before the limit.
            assert!(log.text("stdout").contains("allocated 16 MiB\n"), "{log:?}");
        }
    }

    // Under the limit: completes, no OOM.
    let small =
        ContainerSpec::new("small", P1_ROOTFS, &["/wh-cmd.wasm", "alloc", "8"]).memory_limit(LIMIT);
    let id = run(&mut env, &pod, &small).await;
    let (code, log) = exited(&mut env, &pod, "small", &id).await;
    assert_eq!(
        (code, log.text("stdout").as_str()),
        (0, "allocated 8 MiB in all\n")
    );
    // Killed by StopContainer: an error, not an OOM.
    let sleeper = ContainerSpec::new("sleeper", P1_ROOTFS, &["/wh-cmd.wasm", "sleep", "600"])
        .memory_limit(LIMIT);
    let id = run(&mut env, &pod, &sleeper).await;
    env.cri.stop_container(&id, 0).await.expect("stop");
    let (code, _) = exited(&mut env, &pod, "sleeper", &id).await;
    assert_eq!(code, 137);

    remove_and_check(&mut env, &[&pod, &plain]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_io_pod_runs_under_runc_as_the_runc_handler_does() {
    let mut env = start_env().await;
    import(
        &mut env,
        ImageSpec::busybox(BUSYBOX).expect("busybox image"),
    )
    .await;
    let script = "dd if=/dev/zero of=/tmp/io bs=1M count=32 && \
                  dd if=/tmp/io of=/dev/null bs=1M && echo heavy-io done; exit 3";
    let io = ContainerSpec::new("io", BUSYBOX, &["/bin/sh", "-c", script]);

    let tagged = run_pod(&mut env, "heavy-io", &[HEAVY_IO]).await;
    let id = run(&mut env, &tagged, &io).await;
    let (code, log) = exited(&mut env, &tagged, "io", &id).await;
    assert_dispatched(
        &env,
        &id,
        "dispatch: runc: tagged wasmhybrid.io/workload=heavy-io (container/pod annotation)",
    );

    // The same pod under containerd's plain runc handler.
    let plain = env
        .cri
        .run_pod_sandbox("plain-runc", RUNC_HANDLER, &[HEAVY_IO])
        .await
        .expect("runc pod");
    let plain_id = run(&mut env, &plain, &io).await;
    let (plain_code, plain_log) = exited(&mut env, &plain, "io", &plain_id).await;
    assert!(
        env.dispatch_lines(&plain_id).is_empty(),
        "the runc handler does not go through the shim"
    );

    assert_eq!(code, 3, "{log:?}");
    assert_eq!(log.text("stdout"), "heavy-io done\n", "{log:?}");
    assert!(log.text("stderr").contains("32+0 records in"), "{log:?}");
    assert_eq!(
        (code, log.text("stdout"), log.text("stderr").lines().count()),
        (
            plain_code,
            plain_log.text("stdout"),
            plain_log.text("stderr").lines().count()
        ),
        "wasmhybrid differs from runc: {log:?} vs {plain_log:?}"
    );

    remove_and_check(&mut env, &[&tagged, &plain]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_pod_wasm_app_and_native_sidecar_share_the_pod() {
    let mut env = start_env().await;
    import(
        &mut env,
        ImageSpec::rootfs(HTTP_ROOTFS, "http.wasm", bytes(Fixture::Http)),
    )
    .await;
    import(
        &mut env,
        ImageSpec::busybox(BUSYBOX).expect("busybox image"),
    )
    .await;
    let pod = run_pod(&mut env, "mixed", &[]).await;
    let ip = env.cri.pod_ip(&pod).await.expect("pod IP");

    let app = ContainerSpec::new("app", HTTP_ROOTFS, &[]).env("WH_GREETING", "mixed");
    let app_id = run(&mut env, &pod, &app).await;
    // Serving (checked from the host) before the sidecar asks.
    assert_eq!(get(&ip, "/ready").await.status, 200);

    // The sidecar reaches the app over the pod's loopback: one network
    // namespace for both runtimes.
    let sidecar = ContainerSpec::new(
        "sidecar",
        BUSYBOX,
        &[
            "/bin/busybox",
            "wget",
            "-q",
            "-O",
            "-",
            "http://127.0.0.1:8080/from-sidecar",
        ],
    );
    let sidecar_id = run(&mut env, &pod, &sidecar).await;
    let (code, log) = exited(&mut env, &pod, "sidecar", &sidecar_id).await;
    assert_eq!(code, 0, "{log:?}");
    assert_eq!(
        log.text("stdout"),
        "hello from wasi:http GET /from-sidecar\ngreeting=mixed\n",
        "{log:?}"
    );
    assert_dispatched(&env, &app_id, "dispatch: wasm: Wasm image");
    assert_dispatched(
        &env,
        &sidecar_id,
        "dispatch: runc: native image localhost/wh/busybox:latest (linux/",
    );
    let app_status = env.cri.container_status(&app_id).await.expect("status");
    assert_eq!(
        app_status.state,
        ContainerState::ContainerRunning as i32,
        "the app keeps running after its sidecar exited: {app_status:?}"
    );

    remove_and_check(&mut env, &[&pod]).await;
}

/// node-setup end to end on the private containerd: its config at first
/// has no `wasmhybrid` handler (pods asking for it are refused); the
/// installer puts the shim in a bin directory on containerd's PATH,
/// registers the handler and warms the cache; after a restart a Wasm pod
/// runs from the warm cache; uninstall restores the config byte for byte
/// and, after a restart, the handler is gone again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_setup_installs_into_containerd_and_a_wasm_pod_runs() {
    use wasmhybrid_node_setup::node::{Flavor, Node};
    use wasmhybrid_node_setup::setup::{self, Options, Restart};

    let work = tempfile::tempdir().expect("tempdir");
    let bin = work.path().join("bin");
    let config = work.path().join("config.toml");
    // containerd's PATH starts with `bin`, empty until the installer runs.
    std::fs::create_dir_all(&bin).expect("mkdir");
    let mut env = CriEnv::start_with(&bin, Some(config.clone()))
        .await
        .unwrap_or_else(|e| panic!("the CRI test environment did not start: {e:#}"));
    // The node before wasmhybrid: the same config without its handler.
    let generated = std::fs::read_to_string(&config).expect("config");
    let original = wasmhybrid_node_setup::config::remove(&generated).expect("remove");
    assert!(!original.contains("io.containerd.wasmhybrid.v1"));
    std::fs::write(&config, &original).expect("write");
    env.restart().await.expect("restart");
    let refused = env
        .cri
        .run_pod_sandbox("before-install", WASMHYBRID_HANDLER, &[])
        .await
        .expect_err("no wasmhybrid handler yet");
    assert!(format!("{refused:#}").contains("wasmhybrid"), "{refused:#}");
    import(
        &mut env,
        ImageSpec::rootfs(P1_ROOTFS, "wh-cmd.wasm", bytes(Fixture::CmdP1)),
    )
    .await;

    let options = Options {
        node: Node {
            flavor: Flavor::Containerd,
            root: "/".into(),
            config: config.clone(),
            seed: None,
            socket: env.daemon.address(),
            service: "containerd",
        },
        shim: Some(shim_dir().join("containerd-shim-wasmhybrid-v1")),
        bin_dir: bin.clone(),
        // The harness owns this containerd: the test restarts it.
        restart: Restart::Never,
        warm: true,
        namespaces: vec!["k8s.io".into()],
        cache_dir: Some(env.daemon.aot_cache_dir()),
        node_name: None,
        kubectl: "kubectl".into(),
        dry_run: false,
        wait: Duration::from_secs(30),
    };
    setup::install(&options).expect("install");
    assert!(bin.join("containerd-shim-wasmhybrid-v1").exists());
    let installed = std::fs::read_to_string(&config).expect("config");
    assert!(installed.contains("io.containerd.wasmhybrid.v1"));
    // Warmed: the image's module is in the cache before any start.
    let cached = std::fs::read_dir(env.daemon.aot_cache_dir())
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(cached, 1, "one target directory in the cache after warming");
    setup::install(&options).expect("second install");
    assert_eq!(std::fs::read_to_string(&config).expect("config"), installed);

    env.restart().await.expect("restart");
    let pod = run_pod(&mut env, "after-install", &[]).await;
    let hello = ContainerSpec::new("hello", P1_ROOTFS, &["/wh-cmd.wasm", "hello"]);
    let id = run(&mut env, &pod, &hello).await;
    let (code, log) = exited(&mut env, &pod, "hello", &id).await;
    assert_eq!(
        (code, log.text("stdout")),
        (0, "hello from wasm\n".into()),
        "{log:?}"
    );
    let daemon_log = env.daemon.log();
    assert!(
        daemon_log.contains("AOT cache hit") && !daemon_log.contains("AOT cache miss"),
        "the installer's warm-up should make the first start a hit:\n{daemon_log}"
    );
    remove_and_check(&mut env, &[&pod]).await;

    setup::uninstall(&options).expect("uninstall");
    assert_eq!(
        std::fs::read_to_string(&config).expect("config"),
        original,
        "restored byte for byte"
    );
    assert!(!bin.join("containerd-shim-wasmhybrid-v1").exists());
    env.restart().await.expect("restart");
    env.cri
        .run_pod_sandbox("after-uninstall", WASMHYBRID_HANDLER, &[])
        .await
        .expect_err("the handler is gone");
    let left = env.leftovers().await;
    assert!(left.is_empty(), "left behind: {left:#?}");
}
