//! Long-running and short containers side by side; kill with SIGTERM and
//! SIGKILL; nothing left behind after delete.

use std::time::{Duration, Instant};

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

    for (i, image) in [P1_ROOTFS, P2_ROOTFS].into_iter().enumerate() {
        let done = env
            .ctrd
            .run(&env.opts(&format!("short-{i}"), image, &["/wh-cmd.wasm", "hello"]))
            .await
            .expect("short");
        assert_eq!((done.exit_code, done.stdout.trim()), (0, "hello from wasm"));
        assert!(env.leftovers(&format!("short-{i}")).is_empty());
    }
    assert!(
        !env.daemon.shim_pids().is_empty(),
        "the long container's shim must still run"
    );

    let code = stop(&mut long, 15).await;
    assert_eq!(code, 143);
    long.delete().await.expect("delete");
    let left = env.leftovers("long");
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(
        env.daemon.shim_pids().is_empty(),
        "shims still running: {:?}",
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
