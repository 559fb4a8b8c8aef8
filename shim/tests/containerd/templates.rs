//! Template processes: a daemon clones every container of a cached module
//! from one process holding that module's code, and nothing of one
//! container stays in it for the next.

use std::collections::BTreeSet;
use std::path::PathBuf;

use sha2::{Digest as _, Sha256};
use wasmhybrid_harness::daemon::remove_aot_entry;
use wasmhybrid_harness::fixtures::Fixture;

use crate::common::{P1_ROOTFS, P2_ROOTFS, TestEnv, bytes};

fn ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn pid_ns(pid: i32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).expect("pid namespace")
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The daemon's children that are not containers: the global zygote and
/// the templates.
fn zygotes(env: &TestEnv, containers: &BTreeSet<i32>) -> Vec<i32> {
    let daemons = env.shim_daemons();
    assert_eq!(daemons.len(), 1, "one namespace daemon: {daemons:?}");
    env.daemon
        .shim_pids()
        .into_iter()
        .filter(|p| ppid(*p) == Some(daemons[0]) && !containers.contains(p))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_of_a_module_share_one_template_that_keeps_nothing_of_them() {
    let env = TestEnv::new("templates").await;
    env.import_cmd_images();
    let sleep = ["/wh-cmd.wasm", "sleep", "3600"];
    let first = env
        .start_ready(&env.opts("tpl-a", P1_ROOTFS, &sleep), "sleeping")
        .await;
    let a = first.pid as i32;
    let mut containers = BTreeSet::from([a]);
    let before = zygotes(&env, &containers);
    assert_eq!(
        before.len(),
        2,
        "the global zygote and one template: {before:?}"
    );
    let fds: Vec<usize> = before.iter().map(|p| fd_count(*p)).collect();

    // A container joining the first one's PID namespace, then one with a
    // new PID namespace: both from the same template, and the second is
    // not left in the first one's namespace.
    let mut joined = env.opts("tpl-b", P1_ROOTFS, &sleep);
    joined.pidns = Some(PathBuf::from(format!("/proc/{a}/ns/pid")));
    let joined = env.start_ready(&joined, "sleeping").await;
    let own = env
        .start_ready(&env.opts("tpl-c", P1_ROOTFS, &sleep), "sleeping")
        .await;
    let (b, c) = (joined.pid as i32, own.pid as i32);
    assert_eq!(pid_ns(b), pid_ns(a), "tpl-b joined tpl-a's PID namespace");
    assert_ne!(pid_ns(c), pid_ns(a), "tpl-c has a PID namespace of its own");
    assert_ne!(pid_ns(c), pid_ns(std::process::id() as i32));
    containers.extend([b, c]);
    for z in zygotes(&env, &containers) {
        assert_ne!(
            pid_ns(z),
            pid_ns(a),
            "zygote {z} went back to its own namespace"
        );
    }

    // Short-lived containers of the same module, then another module.
    for i in 0..3 {
        let done = env
            .ctrd
            .run(&env.opts(
                &format!("tpl-run-{i}"),
                P1_ROOTFS,
                &["/wh-cmd.wasm", "hello"],
            ))
            .await
            .expect("run");
        assert_eq!((done.exit_code, done.stdout.trim()), (0, "hello from wasm"));
    }
    let after = zygotes(&env, &containers);
    assert_eq!(after, before, "still the same template for this module");
    let fds_after: Vec<usize> = after.iter().map(|p| fd_count(*p)).collect();
    assert_eq!(
        fds_after, fds,
        "no descriptor of a container stays in a zygote"
    );
    let other = env
        .ctrd
        .run(&env.opts("tpl-p2", P2_ROOTFS, &["/wh-cmd.wasm", "hello"]))
        .await
        .expect("run p2");
    assert_eq!(other.exit_code, 0, "{other:?}");
    assert_eq!(
        zygotes(&env, &containers).len(),
        3,
        "a second module has a template of its own"
    );
    let loads = env.daemon.log().matches("template process for").count();
    assert_eq!(loads, 2, "one code load per module");
    // Starts after the first asked the running daemon for the image facts.
    let log = env.daemon.log();
    let routed = log
        .lines()
        .filter(|l| l.contains("dispatch: wasm") && l.contains("from the group's shim daemon"))
        .count();
    assert!(
        routed >= 6,
        "{routed} of 7 starts routed through the daemon:\n{log}"
    );

    // The module's cache entry rebuilt (removed here, compiled again by
    // the next start): its template is replaced, not kept beside the new one.
    let hex = format!("{:x}", Sha256::digest(bytes(Fixture::CmdP1)));
    let removed = remove_aot_entry(&env.daemon.aot_cache_dir(), &hex).expect("remove");
    assert_eq!(removed, 2, "the p1 module's entry and record");
    let again = env
        .ctrd
        .run(&env.opts("tpl-rebuilt", P1_ROOTFS, &["/wh-cmd.wasm", "hello"]))
        .await
        .expect("run after the rebuild");
    assert_eq!(again.exit_code, 0, "{again:?}");
    assert_eq!(
        zygotes(&env, &containers).len(),
        3,
        "the rebuilt entry's template replaced the old one"
    );

    // Killing tpl-a, the init of the PID namespace tpl-b joined, ends both.
    for c in [first, joined, own] {
        let _ = c.kill(9).await;
        let _ = c.wait_and_delete().await;
    }
}
