//! What confines a Wasm container's process (`isolation` in the shim): its
//! own PID, mount, network, IPC and UTS namespaces, its cgroup with the
//! spec's memory limit, `no_new_privs`, the spec's capabilities only, and a
//! root of its rootfs where every mount is `nodev,nosuid` and no kernel
//! filesystem is mounted.

use std::path::Path;

use crate::common::{P1_ROOTFS, TestEnv, stop};

const LIMIT: i64 = 64 << 20;

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("{key} in /proc/PID/status"))
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_process_is_confined_as_the_spec_says() {
    let env = TestEnv::new("iso").await;
    env.import_cmd_images();
    let mut opts = env.opts("iso", P1_ROOTFS, &["/wh-cmd.wasm", "sleep", "3600"]);
    opts.memory_limit = Some(LIMIT);
    let mut running = env.start_ready(&opts, "sleeping").await;
    let pid = running.pid;
    let proc = Path::new("/proc").join(pid.to_string());

    let status = std::fs::read_to_string(proc.join("status")).expect("status");
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    let nspid = status_field(&status, "NSpid");
    assert_eq!(
        nspid.split_whitespace().last(),
        Some("1"),
        "pid 1 of its own PID namespace: {nspid}"
    );
    let bnd = u64::from_str_radix(&status_field(&status, "CapBnd"), 16).expect("CapBnd");
    let eff = u64::from_str_radix(&status_field(&status, "CapEff"), 16).expect("CapEff");
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    assert_eq!(bnd & CAP_SYS_ADMIN, 0, "CapBnd {bnd:x}");
    assert_eq!(eff & !bnd, 0, "CapEff {eff:x} within CapBnd {bnd:x}");

    for ns in ["pid", "mnt", "net", "ipc", "uts"] {
        let theirs = std::fs::read_link(proc.join("ns").join(ns)).expect("ns");
        let ours = std::fs::read_link(Path::new("/proc/self/ns").join(ns)).expect("ns");
        assert_ne!(theirs, ours, "{ns} namespace of its own");
    }

    // As under runc, `lo` is up in a new network namespace.
    let lo = std::process::Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-n",
            "ip",
            "-o",
            "link",
            "show",
            "lo",
        ])
        .output()
        .expect("nsenter ip");
    let lo = String::from_utf8_lossy(&lo.stdout).into_owned();
    assert!(lo.contains("<LOOPBACK,UP"), "lo: {lo}");

    let cgroups = std::fs::read_to_string(proc.join("cgroup")).expect("cgroup");
    let want = format!("/{}/iso", env.ns);
    let memory = cgroups
        .lines()
        .find(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|c| c.is_empty() || c == "memory")
        })
        .expect("a memory cgroup line");
    assert!(memory.ends_with(&want), "{memory} is {want}");
    let v1 = Path::new("/sys/fs/cgroup/memory").join(want.trim_start_matches('/'));
    let limit = if v1.is_dir() {
        std::fs::read_to_string(v1.join("memory.limit_in_bytes"))
    } else {
        std::fs::read_to_string(
            Path::new("/sys/fs/cgroup")
                .join(want.trim_start_matches('/'))
                .join("memory.max"),
        )
    }
    .expect("memory limit");
    assert_eq!(limit.trim(), LIMIT.to_string());

    let mountinfo = std::fs::read_to_string(proc.join("mountinfo")).expect("mountinfo");
    let mut root = false;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (point, options) = (fields[4], fields[5]);
        let fstype = line.split(" - ").nth(1).and_then(|r| r.split(' ').next());
        assert!(
            options.split(',').any(|o| o == "nodev") && options.split(',').any(|o| o == "nosuid"),
            "every mount nodev,nosuid: {line}"
        );
        assert!(
            !matches!(
                fstype,
                Some("proc" | "sysfs" | "devpts" | "cgroup" | "cgroup2")
            ),
            "no kernel filesystem: {line}"
        );
        root |= point == "/";
    }
    assert!(root, "the rootfs is /: {mountinfo}");

    assert_eq!(stop(&mut running, 9).await, 137);
    running.delete().await.expect("delete");
    let left = env.leftovers("iso");
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_that_cannot_be_joined_fails_create_and_leaves_nothing() {
    let env = TestEnv::new("isobad").await;
    env.import_cmd_images();
    let mut opts = env.opts("isobad", P1_ROOTFS, &["/wh-cmd.wasm", "hello"]);
    opts.netns = Some("/run/netns/wasmhybrid-no-such-netns".into());
    let err = match env.ctrd.create(&opts).await {
        Ok(_) => panic!("created a container in a missing network namespace"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("wasmhybrid-no-such-netns"),
        "the error names the namespace: {err}"
    );
    env.ctrd.cleanup("isobad").await;
    let left = env.leftovers("isobad");
    assert!(left.is_empty(), "left behind: {left:?}");

    // The next container runs.
    let done = env
        .ctrd
        .run(&env.opts("isook", P1_ROOTFS, &["/wh-cmd.wasm", "hello"]))
        .await
        .expect("run");
    assert_eq!((done.exit_code, done.stdout.trim()), (0, "hello from wasm"));
}
