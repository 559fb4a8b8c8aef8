//! WASI commands in both image shapes: args, env, stdio, exit codes, traps,
//! mounts as preopens and rootfs writes.

use wasmhybrid_harness::fixtures::Fixture;
use wasmhybrid_harness::image::{
    APPLICATION_WASM, ImageSpec, WASM_COMPONENT_LAYER, WASM_CONTENT_LAYER,
};

use crate::common::{P1_ROOTFS, P2_ROOTFS, TestEnv, bytes};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn args_env_and_stdio_reach_the_module_in_both_forms() {
    let env = TestEnv::new("cmd-args").await;
    env.import_cmd_images();
    for (i, image) in [P1_ROOTFS, P2_ROOTFS].into_iter().enumerate() {
        let opts = env
            .opts(
                &format!("args-{i}"),
                image,
                &[
                    "/wh-cmd.wasm",
                    "hello",
                    "--",
                    "args",
                    "--",
                    "env",
                    "FOO",
                    "--",
                    "stderr",
                    "to-stderr",
                ],
            )
            .env(&["FOO=bar baz"]);
        let done = env.ctrd.run(&opts).await.expect("run");
        assert_eq!(done.exit_code, 0, "{image}: {done:?}");
        assert!(done.stdout.contains("hello from wasm"), "{image}: {done:?}");
        assert!(
            done.stdout
                .contains("/wh-cmd.wasm|hello|--|args|--|env|FOO|--|stderr|to-stderr"),
            "{image}: argv not passed through: {done:?}"
        );
        assert!(done.stdout.contains("FOO=bar baz"), "{image}: {done:?}");
        assert_eq!(done.stderr.trim(), "to-stderr", "{image}: {done:?}");
    }
    env.assert_no_panic_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_config_entrypoint_cmd_and_env_are_used() {
    let env = TestEnv::new("cmd-imgcfg").await;
    let spec = ImageSpec::rootfs(
        "localhost/wh/cmd-cfg:1",
        "bin/wh-cmd.wasm",
        bytes(Fixture::CmdP1),
    )
    .with_cmd(&["env", "FROM_IMAGE"])
    .with_env(&["FROM_IMAGE=yes"]);
    env.import(&spec);
    let mut opts = env.opts("imgcfg", "localhost/wh/cmd-cfg:1", &[]);
    opts.args = None;
    let done = env.ctrd.run(&opts).await.expect("run");
    assert_eq!(done.exit_code, 0, "{done:?}");
    assert_eq!(done.stdout.trim(), "FROM_IMAGE=yes", "{done:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_artifacts_of_every_wasm_media_type_run() {
    let env = TestEnv::new("cmd-artifact").await;
    let cases = [
        (
            "localhost/wh/art:component",
            WASM_COMPONENT_LAYER,
            Fixture::CmdP2,
        ),
        (
            "localhost/wh/art:content",
            WASM_CONTENT_LAYER,
            Fixture::CmdP1,
        ),
        ("localhost/wh/art:appwasm", APPLICATION_WASM, Fixture::CmdP1),
    ];
    for (i, (name, media_type, fixture)) in cases.into_iter().enumerate() {
        env.import(&ImageSpec::artifact(name, media_type, bytes(fixture)));
        let opts = env.opts(
            &format!("art-{i}"),
            name,
            &["/main.wasm", "echo", media_type],
        );
        let done = env.ctrd.run(&opts).await.expect("run");
        assert_eq!(done.exit_code, 0, "{media_type}: {done:?}");
        assert_eq!(done.stdout.trim(), media_type, "{done:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_and_traps() {
    let env = TestEnv::new("cmd-exit").await;
    env.import_cmd_images();
    // A WASI 0.2 component built against wasi:cli@0.2.6 (as Rust's std is)
    // can only report success or failure: `exit(42)` becomes 1.
    for (i, (image, exit_42)) in [(P1_ROOTFS, 42), (P2_ROOTFS, 1)].into_iter().enumerate() {
        let done = env
            .ctrd
            .run(&env.opts(&format!("exit-{i}"), image, &["/wh-cmd.wasm", "exit", "42"]))
            .await
            .expect("run");
        assert_eq!(done.exit_code, exit_42, "{image}: {done:?}");

        let done = env
            .ctrd
            .run(&env.opts(&format!("trap-{i}"), image, &["/wh-cmd.wasm", "trap"]))
            .await
            .expect("run");
        assert_eq!(done.exit_code, 134, "{image}: a trap exits 134: {done:?}");
        assert!(
            done.stderr.contains("Wasm trap"),
            "{image}: trap not reported on stderr: {done:?}"
        );
    }
    let log = env.daemon.log();
    assert!(log.contains("trapped"), "trap not in the shim log:\n{log}");
    env.assert_no_panic_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_are_preopens_and_nothing_else_of_the_host_is_visible() {
    let env = TestEnv::new("cmd-mounts").await;
    env.import_cmd_images();
    let host_dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(host_dir.path().join("in.txt"), "from the host\n").expect("write");
    let mount = oci_spec::runtime::MountBuilder::default()
        .destination("/data")
        .typ("bind")
        .source(host_dir.path())
        .options(vec!["rbind".to_string(), "rw".to_string()])
        .build()
        .expect("mount");
    for (i, image) in [P1_ROOTFS, P2_ROOTFS].into_iter().enumerate() {
        let mut opts = env.opts(
            &format!("mounts-{i}"),
            image,
            &[
                "/wh-cmd.wasm",
                "cat",
                "/data/in.txt",
                "--",
                "write",
                "/data/out.txt",
                image,
                "--",
                "ls",
                "/",
                "--",
                "ls",
                "/data",
                "--",
                "write",
                "/made-in-rootfs",
                "x",
                "--",
                "cat",
                "/made-in-rootfs",
            ],
        );
        opts.mounts.push(mount.clone());
        let done = env.ctrd.run(&opts).await.expect("run");
        assert_eq!(done.exit_code, 0, "{image}: {done:?}");
        let lines: Vec<&str> = done.stdout.lines().collect();
        assert_eq!(lines[0], "from the host", "{image}: {done:?}");
        let root: Vec<&str> = lines[1].split(' ').collect();
        assert!(
            root.contains(&"wh-cmd.wasm") && root.contains(&"data"),
            "{image}: / is {root:?}"
        );
        for host_only in ["usr", "work", "root", "home", "var"] {
            assert!(
                !root.contains(&host_only),
                "{image}: host dir /{host_only} visible: {root:?}"
            );
        }
        assert!(lines[2].contains("in.txt"), "{image}: {done:?}");
        assert_eq!(lines[3], "x", "{image}: rootfs write: {done:?}");
        let written =
            std::fs::read_to_string(host_dir.path().join("out.txt")).expect("out.txt on the host");
        assert_eq!(written, image);
    }
}
