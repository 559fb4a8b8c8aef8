//! Links the shim binaries as non-PIE executables, and records the target
//! triple for the AOT cache layout.
//!
//! containerd runs the shim binary for every container start (the `start`
//! action, then the daemon), so its exec cost is on the hot path. As a PIE,
//! the loader must write ~85,000 relative relocations into `.data.rel.ro`
//! and `.got` at each exec, about 330 copy-on-write page faults: measured
//! 4.5 ms vs 3.1 ms per `start` on a 2-core VM. Debian's `containerd`,
//! `containerd-shim-runc-v2` and `runc` are non-PIE executables too; shared
//! libraries, stack, heap and every `mmap` (including Wasmtime's code
//! memory) stay randomized.
fn main() {
    // The AOT cache files code under the target triple it was built for.
    let target = std::env::var("TARGET").unwrap_or_default();
    println!("cargo:rustc-env=WASMHYBRID_TARGET={target}");
    // glibc builds only: the launcher's static musl build is made non-PIE by
    // `-C relocation-model=static` (.cargo/config.toml); `-no-pie` there
    // would link static-PIE start files into a non-PIE binary.
    if std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("gnu") {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
