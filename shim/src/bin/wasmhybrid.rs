//! `wasmhybrid`: the shim daemon and the operator tool
//! ([`wasmhybrid_shim::cli`]), installed beside the launcher.

fn main() {
    wasmhybrid_shim::cli::main();
}
