//! Container-like signal semantics for the Wasm process.
//!
//! The module runs as PID 1 of the container's PID namespace. The kernel
//! ignores SIGTERM/SIGINT/SIGHUP/SIGQUIT sent to a namespace's init process
//! unless it installed a handler, so without this `ctr task kill` (SIGTERM)
//! would not stop a Wasm workload. A Wasm guest cannot handle signals itself,
//! so the shim gives it the default action of those signals: end the process
//! with the conventional `128 + signo` exit code. SIGKILL needs nothing.

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

/// Signals whose default action is to terminate the process.
const TERMINATING: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

extern "C" fn exit_on_signal(signo: libc::c_int) {
    // SAFETY: `_exit` is async-signal-safe; nothing else runs here.
    unsafe { libc::_exit(crate::exit::signaled(signo)) }
}

/// Makes terminating signals end the process with `128 + signo`.
pub fn exit_on_termination_signals() -> nix::Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(exit_on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in TERMINATING {
        // SAFETY: the handler only calls the async-signal-safe `_exit`, and no
        // other code in this process relies on these signals' dispositions.
        unsafe { sigaction(signal, &action) }?;
    }
    Ok(())
}
