//! Bad input fails that one container with a clear message; the shim
//! exits, containerd keeps working and the next container runs.

use wasmhybrid_harness::client::TaskCreateError;
use wasmhybrid_harness::fixtures::Fixture;
use wasmhybrid_harness::image::{ImageSpec, Layer};

use crate::common::{P1_ROOTFS, TestEnv, bytes};

/// How a bad container ended.
#[derive(Debug)]
enum Failure {
    /// `Tasks.Create` was refused, with containerd's error message.
    Refused(String),
    /// The task ran and exited with this code and stderr.
    Exited(u32, String),
}

/// A bad-input case: id, image, args (`None`: the image's), extra env, the
/// expected exit code (`None`: a refused create) and the message the
/// container's stderr and the shim log must carry.
type Case<'a> = (
    &'a str,
    &'a str,
    Option<&'a [&'a str]>,
    &'a [&'a str],
    Option<u32>,
    &'a str,
);

async fn run_bad(
    env: &TestEnv,
    id: &str,
    image: &str,
    args: Option<&[&str]>,
    extra_env: &[&str],
) -> Failure {
    let mut opts = env.opts(id, image, args.unwrap_or(&[])).env(extra_env);
    if args.is_none() {
        opts.args = None;
    }
    match env.ctrd.run(&opts).await {
        Ok(done) => Failure::Exited(done.exit_code, done.stderr),
        Err(e) => match e.downcast_ref::<TaskCreateError>() {
            Some(refused) => Failure::Refused(refused.0.clone()),
            None => panic!("{id}: unexpected harness error: {e:#}"),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_fail_clearly_and_the_next_container_runs() {
    let env = TestEnv::new("errors").await;
    env.import_cmd_images();
    env.import(&ImageSpec::rootfs(
        "localhost/wh/bad:text",
        "app.wasm",
        b"hello world, not wasm\n".to_vec(),
    ));
    // An ELF header in a non-executable file: the Wasm path must name it.
    // (Executable native entrypoints never reach the Wasm path.)
    let mut elf = ImageSpec::rootfs("localhost/wh/bad:elf", "app.wasm", vec![]);
    elf.layers = vec![Layer::Files(vec![(
        "app.wasm".into(),
        b"\x7fELF\x02\x01\x01\0rest".to_vec(),
        0o644,
    )])];
    env.import(&elf);
    env.import(&ImageSpec::rootfs(
        "localhost/wh/bad:garbage",
        "app.wasm",
        b"\0asm\x01\0\0\0\x01\xff\xff\xff".to_vec(),
    ));
    env.import(&ImageSpec::rootfs(
        "localhost/wh/bad:nostart",
        "app.wasm",
        bytes(Fixture::NoStartWat),
    ));
    env.import(&ImageSpec::rootfs(
        "localhost/wh/bad:import",
        "app.wasm",
        wat::parse_str(r#"(module (import "env" "nope" (func)) (func (export "_start")))"#)
            .expect("wat"),
    ));
    let mut empty = ImageSpec::rootfs("localhost/wh/bad:empty", "x", vec![]);
    empty.layers = vec![Layer::Files(vec![])];
    empty.entrypoint = vec![];
    env.import(&empty);

    let cases: &[Case] = &[
        (
            "not-wasm",
            "localhost/wh/bad:text",
            None,
            &[],
            Some(126),
            "not a WebAssembly binary",
        ),
        (
            "elf",
            "localhost/wh/bad:elf",
            None,
            &[],
            Some(126),
            "native executable",
        ),
        (
            "missing",
            P1_ROOTFS,
            Some(&["/nope.wasm"]),
            &[],
            Some(127),
            "/nope.wasm not found",
        ),
        (
            "garbage",
            "localhost/wh/bad:garbage",
            None,
            &[],
            Some(126),
            "invalid core module",
        ),
        (
            "no-start",
            "localhost/wh/bad:nostart",
            None,
            &[],
            Some(126),
            "no export `_start`",
        ),
        (
            "unknown-import",
            "localhost/wh/bad:import",
            None,
            &[],
            Some(126),
            "env::nope",
        ),
        (
            "bad-export",
            P1_ROOTFS,
            Some(&["/wh-cmd.wasm#nosuch"]),
            &[],
            Some(126),
            "no export `nosuch`",
        ),
        (
            "bad-config",
            P1_ROOTFS,
            Some(&["/wh-cmd.wasm"]),
            &["WASMHYBRID_HTTP_ADDR=eighty"],
            Some(125),
            "invalid WASMHYBRID_HTTP_ADDR",
        ),
        (
            "misspelt",
            P1_ROOTFS,
            Some(&["/wh-cmd.wasm"]),
            &["WASMHYBRID_HTTP_ADRR=0.0.0.0:1"],
            Some(125),
            "unknown variable WASMHYBRID_HTTP_ADRR",
        ),
        (
            "nothing",
            "localhost/wh/bad:empty",
            None,
            &[],
            Some(126),
            "no entrypoint",
        ),
    ];
    for (id, image, args, extra_env, expected, message) in cases {
        let failure = run_bad(&env, id, image, *args, extra_env).await;
        match (&failure, expected) {
            (Failure::Exited(code, stderr), Some(want)) => {
                assert_eq!(code, want, "{id}: {failure:?}");
                assert!(
                    stderr.contains(message),
                    "{id}: stderr lacks {message:?}: {failure:?}"
                );
            }
            (Failure::Refused(msg), None) => assert!(!msg.is_empty(), "{id}: {failure:?}"),
            _ => panic!("{id}: expected {expected:?}, got {failure:?}"),
        }
        let log = env.daemon.log();
        if !message.is_empty() {
            assert!(
                log.contains(message),
                "{id}: shim log lacks {message:?}:\n{log}"
            );
        }
        assert!(
            env.leftovers(id).is_empty(),
            "{id}: left behind {:?}",
            env.leftovers(id)
        );

        // containerd and the shim still work.
        let ok = env
            .ctrd
            .run(&env.opts(&format!("after-{id}"), P1_ROOTFS, &["/wh-cmd.wasm"]))
            .await
            .expect("next container");
        assert_eq!(
            (ok.exit_code, ok.stdout.trim()),
            (0, "hello from wasm"),
            "after {id}"
        );
    }
    // A module the host cannot link is not a bad cache entry: its entry is
    // kept, not removed and compiled again.
    assert!(
        !env.daemon
            .log()
            .contains("removing the entry and compiling again"),
        "{}",
        env.daemon.log()
    );
    env.assert_no_panic_logged();
}
