//! How Wasm containers share shim daemons (`WASMHYBRID_SHIM_SHARING`,
//! `WASMHYBRID_SHIM_LINGER`): a daemon is never handed out while it
//! leaves, each container can have its own, and a bad setting is a clear
//! error. (Sharing within a namespace and lingering: `lifecycle`; per pod:
//! `cri` and `delegation`.)

use std::time::Duration;

use wasmhybrid_shim::group::{Group, NAMESPACE_GROUP};

use crate::common::{P1_ROOTFS, P2_ROOTFS, TestEnv};

/// The directory of group `key` of this test's containerd and namespace.
fn group_dir(env: &TestEnv, key: &str) -> std::path::PathBuf {
    let address = env.daemon.address().to_string_lossy().into_owned();
    Group::new(&address, &env.ns, key).dir().to_path_buf()
}

/// With no linger, a daemon leaves as soon as its last container is
/// deleted, while new containers keep arriving: every start must find a
/// daemon that takes its container (the group's lock and pending marks),
/// never one on its way out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_leaving_and_starting_under_concurrent_containers_lose_none() {
    let env = TestEnv::with_env("share-race", &[("WASMHYBRID_SHIM_LINGER", "0")]).await;
    env.import_cmd_images();
    let mut pids = std::collections::BTreeSet::new();
    for wave in 0..6 {
        let mut runs = Vec::new();
        for i in 0..5 {
            let ctrd = env.ctrd.clone();
            let image = if i % 2 == 0 { P1_ROOTFS } else { P2_ROOTFS };
            let opts = env.opts(
                &format!("race-{wave}-{i}"),
                image,
                &["/wh-cmd.wasm", "hello"],
            );
            runs.push(tokio::spawn(async move { ctrd.run(&opts).await }));
            // Stagger the starts so that some land while a daemon retires.
            tokio::time::sleep(Duration::from_millis(7 * i)).await;
        }
        pids.extend(env.shim_daemons());
        for (i, run) in runs.into_iter().enumerate() {
            let done = run
                .await
                .expect("join")
                .unwrap_or_else(|e| panic!("race-{wave}-{i}: {e:#}\n{}", env.daemon.log()));
            assert_eq!(
                (done.exit_code, done.stdout.trim()),
                (0, "hello from wasm"),
                "race-{wave}-{i}: {}",
                done.stderr
            );
        }
        // Let the daemon go between some waves, not others.
        if wave % 2 == 1 {
            let left = env.shims_gone_within(Duration::from_secs(5)).await;
            assert!(left.is_empty(), "no linger: the daemon leaves: {left:?}");
        }
    }
    assert!(!pids.is_empty());
    let left = env.shims_gone_within(Duration::from_secs(5)).await;
    assert!(left.is_empty(), "shims left: {left:?}");
    // Each retiring daemon removed its group's directory, and every start
    // that waited on the removed lock took a new one.
    let dir = group_dir(&env, NAMESPACE_GROUP);
    assert!(!dir.exists(), "{} is left", dir.display());
    for wave in 0..6 {
        for i in 0..5 {
            let id = format!("race-{wave}-{i}");
            assert!(
                env.leftovers(&id).is_empty(),
                "{id}: {:?}",
                env.leftovers(&id)
            );
        }
    }
    env.assert_no_panic_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharing_container_gives_each_container_its_own_daemon() {
    let env = TestEnv::with_env("share-alone", &[("WASMHYBRID_SHIM_SHARING", "container")]).await;
    env.import_cmd_images();
    let mut a = env
        .start_ready(
            &env.opts("alone-a", P1_ROOTFS, &["/wh-cmd.wasm", "sleep", "3600"]),
            "sleeping",
        )
        .await;
    let mut b = env
        .start_ready(
            &env.opts("alone-b", P2_ROOTFS, &["/wh-cmd.wasm", "sleep", "3600"]),
            "sleeping",
        )
        .await;
    let daemons = env.shim_daemons();
    assert_eq!(daemons.len(), 2, "one daemon per container: {daemons:?}");
    for c in [&mut a, &mut b] {
        c.kill(9).await.expect("kill");
        assert_eq!(c.wait().await.expect("wait"), 137);
    }
    a.delete().await.expect("delete");
    b.delete().await.expect("delete");
    // Each leaves with its container (no linger for a container's own).
    let left = env.shims_gone_within(Duration::from_secs(5)).await;
    assert!(left.is_empty(), "shims left: {left:?}");
    assert!(env.leftovers("alone-a").is_empty() && env.leftovers("alone-b").is_empty());
    for id in ["alone-a", "alone-b"] {
        let dir = group_dir(&env, id);
        assert!(!dir.exists(), "{} is left", dir.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_sharing_setting_fails_the_container_naming_the_variable() {
    let env = TestEnv::with_env("share-bad", &[("WASMHYBRID_SHIM_LINGER", "soon")]).await;
    env.import_cmd_images();
    let opts = env.opts("bad-linger", P1_ROOTFS, &["/wh-cmd.wasm", "hello"]);
    let err = match env.ctrd.create(&opts).await {
        Ok(_) => panic!("created a task with WASMHYBRID_SHIM_LINGER=soon"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("WASMHYBRID_SHIM_LINGER") && err.contains("\"soon\""),
        "the error names the setting: {err}"
    );
    env.ctrd.cleanup("bad-linger").await;
    assert!(env.leftovers("bad-linger").is_empty());
    assert!(env.daemon.shim_pids().is_empty(), "no daemon was started");
}

/// The price of sharing: a namespace's daemon that dies takes its running
/// containers with it. containerd notices, runs the shim's `delete` for
/// each, which kills and removes what is left; the next container gets a
/// new daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_shared_daemon_leaves_nothing_and_the_next_container_gets_a_new_one() {
    let env = TestEnv::new("share-dead").await;
    env.import_cmd_images();
    let mut running = Vec::new();
    for (id, image) in [("dead-a", P1_ROOTFS), ("dead-b", P2_ROOTFS)] {
        let opts = env.opts(id, image, &["/wh-cmd.wasm", "sleep", "3600"]);
        running.push((id, env.start_ready(&opts, "sleeping").await));
    }
    let daemons = env.shim_daemons();
    assert_eq!(daemons.len(), 1, "one daemon for both: {daemons:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemons[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the daemon");
    for (id, mut c) in running {
        tokio::time::timeout(Duration::from_secs(20), c.wait())
            .await
            .unwrap_or_else(|_| panic!("{id}: the task never ended after its daemon died"))
            .ok();
        env.ctrd.cleanup(id).await;
        assert!(
            env.leftovers(id).is_empty(),
            "{id}: {:?}",
            env.leftovers(id)
        );
    }
    // The containers' processes (clones of the daemon) are gone too.
    let left = env.shims_gone_within(Duration::from_secs(5)).await;
    assert!(left.is_empty(), "processes left: {left:?}");

    let done = env
        .ctrd
        .run(&env.opts("dead-next", P1_ROOTFS, &["/wh-cmd.wasm", "hello"]))
        .await
        .expect("the next container");
    assert_eq!((done.exit_code, done.stdout.trim()), (0, "hello from wasm"));
    let now = env.shim_daemons();
    assert!(
        !now.is_empty() && now != daemons,
        "a new daemon: {now:?} vs {daemons:?}"
    );
}
