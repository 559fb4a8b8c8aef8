//! Exit codes the shim gives a Wasm container when the module itself did not
//! choose one. They follow the conventions container users already know from
//! shells and from the `wasmtime` CLI.

/// The module trapped (e.g. `unreachable`, out-of-bounds access, stack
/// overflow). Same code as the `wasmtime` CLI and as a native `abort()`.
pub const TRAP: i32 = 134;
/// The Wasm binary could not be run: not Wasm, failed to compile or link, or
/// the requested export does not exist (a shell's "cannot execute").
pub const NOT_RUNNABLE: i32 = 126;
/// The entrypoint file does not exist (a shell's "command not found").
pub const NOT_FOUND: i32 = 127;
/// The workload's configuration (a `WASMHYBRID_*` variable) is invalid.
pub const BAD_CONFIG: i32 = 125;

/// Exit code of a process ended by signal `signo`, as shells report it.
pub const fn signaled(signo: i32) -> i32 {
    128 + signo
}
