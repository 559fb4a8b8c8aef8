//! What confines a Wasm container's process (`isolation` in the shim): its
//! own PID, mount, network, IPC and UTS namespaces, its cgroup with the
//! spec's memory limit, `no_new_privs`, the spec's capabilities only, and a
//! root of its rootfs where every mount is `nodev,nosuid` and no kernel
//! filesystem is mounted; `Tasks.Update` changes its cgroup's limits.

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

/// A cgroup file of `pid`'s cgroup: `v1` in the `controller` hierarchy
/// (cgroup v1) or `v2` (unified).
fn cgroup_file(pid: u32, controller: &str, v1: &str, v2: &str) -> String {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
    let line = |want: &str| {
        cgroups.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
            names
                .split(',')
                .any(|n| n == want)
                .then(|| path.trim_start_matches('/').to_string())
        })
    };
    let path = match line(controller) {
        Some(rel) => Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(rel)
            .join(v1),
        None => Path::new("/sys/fs/cgroup")
            .join(line("").expect("a v2 cgroup line"))
            .join(v2),
    };
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_changes_the_limits_of_a_running_wasm_container() {
    let env = TestEnv::new("update").await;
    env.import_cmd_images();
    let mut opts = env.opts("upd", P1_ROOTFS, &["/wh-cmd.wasm", "sleep", "3600"]);
    opts.memory_limit = Some(LIMIT);
    let mut running = env.start_ready(&opts, "sleeping").await;
    let pid = running.pid;
    let memory = || cgroup_file(pid, "memory", "memory.limit_in_bytes", "memory.max");
    let pids = || cgroup_file(pid, "pids", "pids.max", "pids.max");
    let quota = || {
        let v1 = cgroup_file(pid, "cpu", "cpu.cfs_quota_us", "cpu.max");
        // v2's cpu.max is "quota period".
        v1.split_whitespace().next().unwrap_or_default().to_string()
    };
    assert_eq!(memory(), LIMIT.to_string());

    // Raised with its swap, as the CRI sends it (on v1, memory first would
    // be refused above memory+swap: the shim orders the writes as runc
    // does), then lowered again.
    let raised = 2 * LIMIT;
    running
        .update(serde_json::json!({
            "memory": {"limit": raised, "swap": raised},
            "cpu": {"quota": 50000, "period": 100000},
            "pids": {"limit": 32},
        }))
        .await
        .expect("update");
    assert_eq!(memory(), raised.to_string());
    assert_eq!(quota(), "50000");
    assert_eq!(pids(), "32");
    running
        .update(serde_json::json!({"memory": {"limit": LIMIT, "swap": LIMIT}}))
        .await
        .expect("lower");
    assert_eq!(memory(), LIMIT.to_string());
    assert_eq!(
        (quota(), pids()),
        ("50000".into(), "32".into()),
        "untouched"
    );

    // A CPU set given for the first time (a new v1 cpuset cgroup).
    running
        .update(serde_json::json!({"cpu": {"cpus": "0"}}))
        .await
        .expect("cpus");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert_eq!(status_field(&status, "Cpus_allowed_list"), "0");

    // Raised alone past memory+swap (v1 with swap accounting): refused, as
    // runc refuses it, with a hint.
    let alone = running
        .update(serde_json::json!({"memory": {"limit": 4 * LIMIT}}))
        .await;
    if Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists() {
        let err = alone.expect_err("memory above memory+swap");
        assert!(
            err.to_string().contains("give the swap limit too"),
            "{err:#}"
        );
        assert_eq!(memory(), LIMIT.to_string());
    } else {
        alone.expect("memory alone");
        running
            .update(serde_json::json!({"memory": {"limit": LIMIT}}))
            .await
            .expect("lower");
    }

    // Input that is not LinuxResources is refused, and changes nothing.
    let err = running
        .update(serde_json::json!({"memory": {"limit": "lots"}}))
        .await
        .expect_err("invalid resources");
    assert!(
        err.to_string().contains("invalid LinuxResources"),
        "{err:#}"
    );
    assert_eq!(memory(), LIMIT.to_string());

    // The module still runs, and stops as usual.
    assert_eq!(running.status().await.expect("status"), "RUNNING");
    assert_eq!(stop(&mut running, 15).await, 143);
    let err = running
        .update(serde_json::json!({"pids": {"limit": 64}}))
        .await
        .expect_err("update after exit");
    assert!(err.to_string().contains("exited"), "{err:#}");
    running.delete().await.expect("delete");
    assert!(
        env.leftovers("upd").is_empty(),
        "{:?}",
        env.leftovers("upd")
    );
}
