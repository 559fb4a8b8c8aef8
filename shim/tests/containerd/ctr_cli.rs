//! The shim through the `ctr` command line, as a user would drive it.
//! (`ctr` 1.6.20 cannot unpack OCI Wasm artifacts, so this uses the
//! rootfs-shaped image; artifacts are covered through the API.)

use std::process::Output;
use std::time::{Duration, Instant};

use wasmhybrid_harness::fixtures::Fixture;
use wasmhybrid_harness::image::{ImageSpec, write_oci_archive};

use crate::common::{TestEnv, bytes};

const IMAGE: &str = "localhost/wh/ctr-cli:latest";
const RUNTIME: &str = "io.containerd.wasmhybrid.v1";

fn ctr(env: &TestEnv, args: &[&str]) -> Output {
    env.daemon.ctr(&env.ns, args).expect("run ctr")
}

/// `ctr run [flags] --runtime wasmhybrid --platform wasi/wasm IMAGE id args`.
fn ctr_run(env: &TestEnv, flags: &[&str], id: &str, args: &[&str]) -> Output {
    let mut all = vec!["run"];
    all.extend_from_slice(flags);
    all.extend_from_slice(&["--runtime", RUNTIME, "--platform", "wasi/wasm", IMAGE, id]);
    all.extend_from_slice(args);
    ctr(env, &all)
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctr_run_kill_and_delete() {
    let env = TestEnv::new("ctr").await;
    let archive = env.daemon.dir().join("ctr-cli.tar");
    write_oci_archive(
        &ImageSpec::rootfs(IMAGE, "wh-cmd.wasm", bytes(Fixture::CmdP1)),
        &archive,
    )
    .expect("archive");
    let o = ctr(
        &env,
        &[
            "images",
            "import",
            "--platform",
            "wasi/wasm",
            archive.to_str().expect("path"),
        ],
    );
    assert!(o.status.success(), "import: {}", text(&o));

    let o = ctr_run(
        &env,
        &["--rm", "--env", "X=1"],
        "c1",
        &["/wh-cmd.wasm", "hello", "--", "env", "X"],
    );
    assert!(o.status.success(), "ctr run: {}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hello from wasm\nX=1\n");

    let o = ctr_run(&env, &["--rm"], "c2", &["/wh-cmd.wasm", "exit", "42"]);
    assert_eq!(o.status.code(), Some(42), "ctr run exit code: {}", text(&o));

    let o = ctr_run(&env, &["-d"], "c3", &["/wh-cmd.wasm", "sleep", "3600"]);
    assert!(o.status.success(), "ctr run -d: {}", text(&o));
    let o = ctr(&env, &["task", "ls"]);
    assert!(text(&o).contains("RUNNING"), "{}", text(&o));
    // The task commands a user reaches for, as under runc.
    let o = ctr(&env, &["task", "ps", "c3"]);
    assert!(o.status.success(), "task ps: {}", text(&o));
    assert_eq!(
        text(&o).lines().count(),
        2,
        "a header and one process: {}",
        text(&o)
    );
    for (verb, status) in [("pause", "PAUSED"), ("resume", "RUNNING")] {
        let o = ctr(&env, &["task", verb, "c3"]);
        assert!(o.status.success(), "task {verb}: {}", text(&o));
        let o = ctr(&env, &["task", "ls"]);
        assert!(text(&o).contains(status), "after {verb}: {}", text(&o));
    }
    let o = ctr(&env, &["task", "kill", "--signal", "SIGTERM", "c3"]);
    assert!(o.status.success(), "kill: {}", text(&o));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !text(&ctr(&env, &["task", "ls"])).contains("STOPPED") {
        assert!(Instant::now() < deadline, "c3 did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = ctr(&env, &["task", "delete", "c3"]);
    assert!(o.status.success(), "task delete: {}", text(&o));
    let o = ctr(&env, &["container", "delete", "c3"]);
    assert!(o.status.success(), "container delete: {}", text(&o));

    // `ctr run -t`, from a terminal (`script` gives ctr one): the guest's
    // stdio is a terminal, ctr's size reaches it, its exit code comes back.
    let ctr_t = format!(
        "ctr --address {} --namespace {} run -t --rm --runtime {RUNTIME} --platform wasi/wasm \
         {IMAGE} c4 /wh-cmd.wasm tty -- exit 7",
        env.daemon.address().display(),
        env.ns
    );
    let o = std::process::Command::new("script")
        .args(["-qec", &ctr_t, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script");
    assert_eq!(o.status.code(), Some(7), "ctr run -t: {}", text(&o));
    assert!(
        text(&o).contains("stdin, stdout and stderr are terminals"),
        "ctr run -t: {}",
        text(&o)
    );

    for id in ["c1", "c2", "c3", "c4"] {
        assert!(
            env.leftovers(id).is_empty(),
            "{id}: {:?}",
            env.leftovers(id)
        );
    }
}
