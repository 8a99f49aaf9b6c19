//! Child processes we own: stopped by PID on drop, never by name.

use std::process::Child;

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Owned(pub Child);

impl Owned {
    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: i32) {
        // The pid is our own child's and still unreaped, so it cannot name another process.
        signal(self.pid(), sig);
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `sig` to the process `pid` (one this program started and knows by its pid file).
pub fn signal(pid: i32, sig: i32) {
    use nix::sys::signal::{kill, Signal};
    let sent = Signal::try_from(sig).and_then(|s| kill(nix::unistd::Pid::from_raw(pid), s));
    // Gone already (ESRCH) is what a stop wants; anything else is worth seeing.
    match sent {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => eprintln!("testkit: kill({pid}, {sig}) failed: {e}"),
    }
}

/// The state letter of process `pid` from `/proc/PID/stat` (`T` when stopped), if it exists.
pub fn state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (COMM) S ...": COMM may hold spaces and parentheses, so read after the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Runs `script ARGS` to completion; its stdout, or an error with everything it printed.
pub fn run_script(script: &std::path::Path, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(script)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{} {} failed: {}{}",
        script.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `program` is on PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// Installs Debian packages with apt-get when `program` is missing (we run as root on the dev
/// and CI machines; elsewhere this fails with apt's own message).
pub fn ensure_installed(program: &str, packages: &[&str]) -> anyhow::Result<()> {
    if on_path(program) {
        return Ok(());
    }
    eprintln!(
        "{program} not found; installing {} with apt-get",
        packages.join(" ")
    );
    let ok = std::process::Command::new("apt-get")
        .arg("update")
        .arg("-qq")
        .status()?
        .success()
        && std::process::Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()?
            .success();
    anyhow::ensure!(
        ok && on_path(program),
        "could not install {program}; install {} by hand",
        packages.join(" ")
    );
    Ok(())
}
