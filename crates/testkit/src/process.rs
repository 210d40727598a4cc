//! Child processes for end-to-end tests: killed when dropped (and when the test binary dies,
//! via PR_SET_PDEATHSIG), with stdout and stderr captured so tests can wait for a line and
//! grep everything the process printed for planted secrets.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use tokio::sync::Notify;

#[derive(Default)]
struct Captured {
    text: Mutex<String>,
    changed: Notify,
}

pub struct Proc {
    child: Child,
    captured: Arc<Captured>,
}

fn pump(stream: impl Read + Send + 'static, captured: Arc<Captured>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let mut text = captured.text.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
            drop(text);
            captured.changed.notify_waiters();
        }
        captured.changed.notify_waiters();
    });
}

impl Proc {
    pub fn spawn(mut cmd: Command, name: &str) -> Result<Proc> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl in the forked child before exec; async-signal-safe.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().with_context(|| format!("spawning {name}"))?;
        let captured = Arc::new(Captured::default());
        pump(child.stdout.take().unwrap(), captured.clone());
        pump(child.stderr.take().unwrap(), captured.clone());
        Ok(Proc { child, captured })
    }

    /// Everything printed so far (stdout and stderr, interleaved by line).
    pub fn output(&self) -> String {
        self.captured.text.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until a line containing `needle` appears; fails if the process exits first or
    /// `timeout` passes. Woken by each new line, no polling.
    pub async fn wait_for_output(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.captured.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let out = self.output();
            if let Some(line) = out.lines().find(|l| l.contains(needle)) {
                return Ok(line.to_owned());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("process exited ({status}) before printing {needle:?}:\n{out}");
            }
            // An exiting process closes its pipes (the last wake-up) a moment before it can
            // be reaped: the step notices the exit that follows, as in `wait_exit`.
            let step = tokio::time::Instant::now() + Duration::from_millis(200);
            if tokio::time::timeout_at(step.min(deadline), changed)
                .await
                .is_err()
                && tokio::time::Instant::now() >= deadline
            {
                bail!("timed out waiting for {needle:?}:\n{out}");
            }
        }
    }

    /// Sends a signal (SIGTERM for a graceful stop, SIGKILL for a crash).
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for the process to exit, at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.captured.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            // Exit closes the pipes, which wakes us; the timeout covers a process that
            // closed its streams early.
            let step = tokio::time::Instant::now() + Duration::from_millis(200);
            if tokio::time::timeout_at(step.min(deadline), changed)
                .await
                .is_err()
                && tokio::time::Instant::now() >= deadline
            {
                bail!("process did not exit within {timeout:?}");
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
