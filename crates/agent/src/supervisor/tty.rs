//! The terminal, when tether runs in the foreground of one (an interactive shell,
//! `docker run -it`). The child has its own process group, so without help it would be a
//! background job: reading the terminal would stop it, and Ctrl-C or Ctrl-Z would reach
//! tether rather than the program. So the child's group is given the terminal as it starts;
//! when the child stops (Ctrl-Z, or a read from the background) tether takes the terminal
//! back and stops too, so the shell's job control sees a stopped job; when tether is
//! continued in the foreground (`fg`) it gives the terminal back before the child gets its
//! SIGCONT; when the child is gone the terminal returns to tether's group.

use std::os::fd::BorrowedFd;

use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use nix::unistd::{Pid, getpgrp, tcgetpgrp, tcsetpgrp};

/// Standard input, where an interactive program finds its terminal.
fn stdin() -> BorrowedFd<'static> {
    // SAFETY: fd 0 is only borrowed for one call; if it is closed, calls fail with EBADF.
    #[allow(unsafe_code)]
    unsafe {
        BorrowedFd::borrow_raw(0)
    }
}

/// Whether standard input is a terminal at all.
pub fn is_terminal() -> bool {
    std::io::IsTerminal::is_terminal(&stdin())
}

/// The process group in the terminal's foreground, if standard input is a terminal.
pub fn foreground() -> Option<Pid> {
    tcgetpgrp(stdin()).ok()
}

/// Whether tether's own group is in the terminal's foreground.
pub fn tether_in_foreground() -> bool {
    foreground() == Some(getpgrp())
}

/// Put `pgid` in the terminal's foreground. SIGTTOU is blocked in the calling thread
/// meanwhile: a member of a background group may otherwise not do this. Only
/// async-signal-safe calls, so that it may also run in a child between fork and exec.
pub fn give(pgid: Pid) -> nix::Result<()> {
    let mut ttou = SigSet::empty();
    ttou.add(Signal::SIGTTOU);
    let mut old = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&ttou), Some(&mut old))?;
    let result = tcsetpgrp(stdin(), pgid);
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    result
}

/// In the child between fork and exec: take the terminal for the child's new group when
/// tether's group (`parent_pgid`) has it, i.e. when tether runs in the foreground.
pub fn take_in_child(parent_pgid: Pid) {
    if foreground() == Some(parent_pgid) {
        let _ = give(getpgrp());
    }
}

/// The child that holds the terminal stopped: take the terminal back (only if the child's
/// group has it; a job in the background must not steal it) and stop tether as well, so
/// that the shell sees its job stopped.
pub fn child_stopped(pgid: Pid) {
    // As PID 1 or a session leader (`docker run -it`, `kubectl exec -it`, `setsid`) nothing
    // above tether could continue it: the stop is undone rather than leaving the child
    // frozen with the terminal.
    let me = Pid::this();
    if me.as_raw() == 1 || nix::unistd::getsid(None).is_ok_and(|sid| sid == me) {
        tracing::debug!(
            pgid = pgid.as_raw(),
            "child stopped with no job control above tether; continuing it"
        );
        let _ = nix::sys::signal::killpg(pgid, Signal::SIGCONT);
        return;
    }
    if foreground() == Some(pgid) {
        let _ = give(getpgrp());
    }
    tracing::debug!(
        pgid = pgid.as_raw(),
        "child stopped; stopping tether for job control"
    );
    // The whole group, as the terminal would have: a wrapper above tether (`npm run`,
    // `make`) stops too, and the shell sees its job stopped.
    let _ = nix::sys::signal::killpg(getpgrp(), Signal::SIGTSTP);
}

/// The child that held the terminal is gone: the terminal returns to tether's group.
pub fn child_gone(pgid: Pid) {
    if foreground() == Some(pgid) {
        let _ = give(getpgrp());
    }
}
