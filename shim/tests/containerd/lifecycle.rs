//! Long-running and short containers side by side, served by one shim
//! daemon; kill with SIGTERM and SIGKILL; nothing left behind after delete,
//! and the daemon gone once its linger is over; pause freezes a module and
//! resume thaws it.

use std::time::{Duration, Instant};

use wasmhybrid_harness::{cpu_ticks, uses_cpu_within};

use crate::common::{P1_ROOTFS, P2_ROOTFS, TestEnv, stop};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_and_short_side_by_side_then_nothing_left() {
    let env = TestEnv::new("life").await;
    env.import_cmd_images();
    let mut long = env
        .start_ready(
            &env.opts("long", P1_ROOTFS, &["/wh-cmd.wasm", "sleep", "3600"]),
            "sleeping",
        )
        .await;
    let daemon = env.shim_daemons();
    assert_eq!(daemon.len(), 1, "one shim daemon: {daemon:?}");
    // Its global zygote process (its first child), which every container's
    // zygote is forked from, holds the Wasmtime engine and no thread.
    let stat = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let field = |pid: i32, n: usize| -> u64 {
        let s = stat(pid);
        let after = s
            .rsplit_once(')')
            .map(|x| x.1.to_string())
            .unwrap_or_default();
        after
            .split_whitespace()
            .nth(n)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let zygote = env
        .daemon
        .shim_pids()
        .into_iter()
        .filter(|p| field(*p, 1) == daemon[0] as u64)
        .min_by_key(|p| field(*p, 19))
        .expect("the daemon's zygote process");
    let threads = std::fs::read_to_string(format!("/proc/{zygote}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:").map(|v| v.trim().to_string()));
    assert_eq!(
        threads.as_deref(),
        Some("1"),
        "the global zygote forks safely"
    );

    for (i, image) in [P1_ROOTFS, P2_ROOTFS].into_iter().enumerate() {
        let done = env
            .ctrd
            .run(&env.opts(&format!("short-{i}"), image, &["/wh-cmd.wasm", "hello"]))
            .await
            .expect("short");
        assert_eq!((done.exit_code, done.stdout.trim()), (0, "hello from wasm"));
        assert!(env.leftovers(&format!("short-{i}")).is_empty());
    }
    assert_eq!(
        env.shim_daemons(),
        daemon,
        "the namespace's one daemon served the short containers too"
    );

    // Exec: refused, saying why and what to do instead; checkpoint too.
    let err = long
        .exec("shell", &["/bin/sh"])
        .await
        .expect_err("exec into a Wasm container");
    let err = format!("{err:#}");
    assert!(
        err.contains("has no programs to exec") && err.contains("kubectl debug"),
        "{err}"
    );
    let err = format!("{:#}", long.checkpoint().await.expect_err("checkpoint"));
    assert!(
        err.contains("Unimplemented") && err.contains("checkpoint of Wasm container long"),
        "{err}"
    );

    let code = stop(&mut long, 15).await;
    assert_eq!(code, 143);
    long.delete().await.expect("delete");
    let left = env.leftovers("long");
    assert!(left.is_empty(), "left behind: {left:?}");

    // With no container left, the daemon lingers: the next container is
    // its, and its log still reaches containerd's (through the new
    // container's FIFO: the first bundle's is gone).
    let done = env
        .ctrd
        .run(&env.opts("after", P1_ROOTFS, &["/wh-cmd.wasm", "hello"]))
        .await
        .expect("after");
    assert_eq!((done.exit_code, done.stdout.trim()), (0, "hello from wasm"));
    assert_eq!(env.shim_daemons(), daemon, "the lingering daemon served it");
    let log = env.daemon.log();
    assert!(
        log.lines()
            .any(|l| l.contains("starting instance: after") && l.contains("level=info")),
        "the daemon's log line for the later container reached containerd:\n{log}"
    );
    assert!(env.leftovers("after").is_empty());

    // The daemon lingers (10 s by default), then leaves with its socket.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !env.daemon.shim_pids().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        env.daemon.shim_pids().is_empty(),
        "shims still running 20 s after the last container: {:?}",
        env.daemon.shim_pids()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_sigkill_stop_sleeping_and_spinning_modules() {
    let env = TestEnv::new("kill").await;
    env.import_cmd_images();
    // (image, verb, signal, expected exit code)
    let cases = [
        (P1_ROOTFS, "sleep", 15, 143),
        (P2_ROOTFS, "sleep", 15, 143),
        (P1_ROOTFS, "spin", 15, 143),
        (P2_ROOTFS, "spin", 9, 137),
        (P1_ROOTFS, "sleep", 2, 130),
    ];
    for (i, (image, verb, signal, expected)) in cases.into_iter().enumerate() {
        let id = format!("kill-{i}");
        let mut running = env
            .ctrd
            .start(&env.opts(&id, image, &["/wh-cmd.wasm", verb, "3600"]))
            .await
            .expect("start");
        running
            .wait_for_stdout(verb, Duration::from_secs(20))
            .await
            .expect("running");
        let t = Instant::now();
        running.kill(signal).await.expect("kill");
        let code = tokio::time::timeout(Duration::from_secs(10), running.wait())
            .await
            .expect("stops")
            .expect("wait");
        eprintln!(
            "{image} {verb}: signal {signal} -> exit {code} after {:.1} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
        assert_eq!(code, expected, "{image} {verb} signal {signal}");
        running.delete().await.expect("delete");
        assert!(
            env.leftovers(&id).is_empty(),
            "{id}: {:?}",
            env.leftovers(&id)
        );
    }
}

/// CPU ticks `pid` uses over 400 ms.
async fn ticks_over_400ms(pid: u32) -> u64 {
    let before = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_millis(400)).await;
    cpu_ticks(pid) - before
}

/// Whether `pid` uses CPU within 10 s (bounded, not a timing claim).
async fn runs(pid: u32) -> bool {
    tokio::task::spawn_blocking(move || uses_cpu_within(pid, Duration::from_secs(10)))
        .await
        .expect("poll CPU time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_freezes_and_resume_thaws_a_spinning_module() {
    let env = TestEnv::new("pause").await;
    env.import_cmd_images();
    for (i, image) in [P1_ROOTFS, P2_ROOTFS].into_iter().enumerate() {
        let id = format!("pause-{i}");
        let mut running = env
            .start_ready(
                &env.opts(&id, image, &["/wh-cmd.wasm", "spin", "3600"]),
                "spin",
            )
            .await;
        assert!(
            running.resume().await.is_err(),
            "{image}: resume of a running task is refused"
        );
        assert!(runs(running.pid).await, "{image}: spins");
        assert_eq!(
            running.pids().await.expect("pids"),
            [running.pid],
            "{image}: ctr task ps lists its one process"
        );

        running.pause().await.expect("pause");
        assert_eq!(running.status().await.expect("status"), "PAUSED", "{image}");
        assert!(
            running.pause().await.is_err(),
            "{image}: pause of a paused task is refused"
        );
        assert_eq!(
            ticks_over_400ms(running.pid).await,
            0,
            "{image}: a paused module uses no CPU"
        );

        running.resume().await.expect("resume");
        assert_eq!(
            running.status().await.expect("status"),
            "RUNNING",
            "{image}"
        );
        assert!(runs(running.pid).await, "{image}: spins again after resume");

        running.pause().await.expect("pause again");
        let code = if i == 0 {
            // SIGKILL ends a paused task at once (it is thawed to die).
            stop(&mut running, 9).await
        } else {
            // SIGTERM waits for the resume, as under runc.
            running.kill(15).await.expect("kill");
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(
                running.status().await.expect("status"),
                "PAUSED",
                "{image}: SIGTERM is held while paused"
            );
            running.resume().await.expect("resume");
            tokio::time::timeout(Duration::from_secs(10), running.wait())
                .await
                .expect("stops once resumed")
                .expect("wait")
        };
        assert_eq!(code, if i == 0 { 137 } else { 143 }, "{image}");
        running.delete().await.expect("delete");
        let left = env.leftovers(&id);
        assert!(left.is_empty(), "{image}: left behind: {left:?}");
    }
}

/// containerd restarts (an upgrade, a config change, the node installer)
/// under running Wasm containers: they run on under the same daemon, a
/// running one still answers status, pause, resume and kill, one reading
/// stdin gets input from before and after the restart up to `CloseIO`, two
/// that exit (one trapping) while containerd is down report their exit
/// codes afterwards, containerd gets their exit events when it is back and
/// new ones after, the daemon's log reaches it again, and all are deleted
/// as before, leaving nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_containers_survive_a_containerd_restart() {
    let mut env = TestEnv::new("life-restart").await;
    env.import_cmd_images();
    let mut long = env
        .start_ready(
            &env.opts("survivor", P2_ROOTFS, &["/wh-cmd.wasm", "spin", "3600"]),
            "spin",
        )
        .await;
    let mut short = env
        .start_ready(
            &env.opts(
                "exits-while-down",
                P1_ROOTFS,
                &["/wh-cmd.wasm", "sleep", "1", "--", "exit", "7"],
            ),
            "sleeping",
        )
        .await;
    let mut trapping = env
        .start_ready(
            &env.opts(
                "traps-while-down",
                P1_ROOTFS,
                &["/wh-cmd.wasm", "sleep", "1", "--", "trap"],
            ),
            "sleeping",
        )
        .await;
    let mut reader_opts = env.opts("reader", P1_ROOTFS, &["/wh-cmd.wasm", "stdin"]);
    reader_opts.stdin = true;
    let mut reader = env.start_ready(&reader_opts, "reading stdin").await;
    reader.write_stdin(b"before\n").await.expect("write stdin");
    let daemons = env.shim_daemons();
    assert_eq!(daemons.len(), 1, "one shim daemon: {daemons:?}");

    let pids = [short.pid, trapping.pid];
    env.daemon
        .restart_after(|| {
            let deadline = Instant::now() + Duration::from_secs(20);
            for pid in pids {
                while std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    assert!(Instant::now() < deadline, "the short modules did not exit");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        })
        .expect("restart containerd");
    env.reconnect().await;
    long.reconnect(&env.ctrd);
    short.reconnect(&env.ctrd);
    trapping.reconnect(&env.ctrd);
    reader.reconnect(&env.ctrd);
    assert_eq!(env.shim_daemons(), daemons, "the same daemon serves them");
    // What containerd logged since it restarted.
    let since_restart = |env: &TestEnv| {
        let log = env.daemon.log();
        let at = log.rfind("starting containerd").unwrap_or(0);
        log[at..].to_string()
    };
    // The daemon held the exit events of the two modules while containerd
    // was down and published them once it was back.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !since_restart(&env).contains("containerd takes events again") {
        assert!(
            Instant::now() < deadline,
            "the exits while containerd was down were never published:\n{}",
            since_restart(&env)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And it publishes new events over its new connection.
    let mut exits = env.ctrd.task_exits();

    assert_eq!(short.status().await.expect("status"), "STOPPED");
    let code = tokio::time::timeout(Duration::from_secs(10), short.wait())
        .await
        .expect("the exit is known")
        .expect("wait");
    assert_eq!(
        code, 7,
        "the exit code of a module that ended while containerd was down"
    );
    let (stdout, _, _) = short.delete().await.expect("delete");
    assert!(stdout.contains("sleeping 1s"), "{stdout:?}");
    assert_eq!(
        trapping.wait().await.expect("wait"),
        134,
        "a trap while containerd was down"
    );
    let (_, stderr, _) = trapping.delete().await.expect("delete");
    assert!(stderr.contains("Wasm trap"), "{stderr:?}");

    assert_eq!(long.status().await.expect("status"), "RUNNING");
    assert!(runs(long.pid).await, "still spinning after the restart");
    long.pause().await.expect("pause");
    assert_eq!(long.status().await.expect("status"), "PAUSED");
    long.resume().await.expect("resume");
    assert_eq!(stop(&mut long, 15).await, 143);
    assert_eq!(
        exits.next(Duration::from_secs(10)).await.expect("TaskExit"),
        ("survivor".to_string(), 143),
        "containerd is told of an exit after its restart"
    );
    long.delete().await.expect("delete");
    // Input across the restart, to its end at CloseIO.
    reader.write_stdin(b"after\n").await.expect("write stdin");
    reader.close_stdin().await.expect("close stdin");
    let code = tokio::time::timeout(Duration::from_secs(10), reader.wait())
        .await
        .expect("end of input after CloseIO")
        .expect("wait");
    let (stdout, _, _) = reader.delete().await.expect("delete");
    assert_eq!(code, 0);
    assert!(
        stdout.contains("stdin: 13 bytes"),
        "the whole input: {stdout:?}"
    );
    // The daemon's log reaches containerd again, from the daemon and from
    // the container's own process.
    let log = since_restart(&env);
    for line in [
        "sending signal 15 to instance: survivor",
        "instance=\"reader\" msg=\"WASI preview 1 module exited with code 0\"",
    ] {
        assert!(
            log.contains(line),
            "{line:?} not logged after the restart:\n{log}"
        );
    }

    for id in ["survivor", "exits-while-down", "traps-while-down", "reader"] {
        let left = env.leftovers(id);
        assert!(left.is_empty(), "{id}: left behind: {left:?}");
    }
    env.assert_no_panic_logged();
}
