//! [`SystemCommands`]: the real runner, which spawns processes.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::thread::{self, JoinHandle};

use super::{find_tool, is_path, CommandError, HostCommand, HostCommands};

/// Runs host commands as real processes. Tool names are resolved with
/// [`find_tool`]; output is collected in memory.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemCommands;

impl SystemCommands {
    fn spawn(&self, cmd: &HostCommand) -> Result<Child, CommandError> {
        let program = if is_path(&cmd.program) {
            PathBuf::from(&cmd.program)
        } else {
            let name = cmd.program.to_string_lossy();
            find_tool(&name).ok_or_else(|| CommandError::NotFound { line: cmd.render(), program: name.into_owned() })?
        };
        let mut command = Command::new(program);
        command
            .args(&cmd.args)
            .envs(cmd.env.iter().map(|(k, v)| (k, v)))
            .stdin(if cmd.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = &cmd.cwd {
            command.current_dir(dir);
        }
        command.spawn().map_err(|source| CommandError::Spawn { line: cmd.render(), source })
    }
}

/// Writes stdin and drains stderr on threads of their own, so a command that
/// fills one pipe while we wait on another cannot deadlock.
struct Pipes {
    stdin: Option<JoinHandle<std::io::Result<()>>>,
    stderr: JoinHandle<std::io::Result<Vec<u8>>>,
}

impl Pipes {
    fn start(child: &mut Child, cmd: &HostCommand) -> Pipes {
        let stdin = match (child.stdin.take(), &cmd.stdin) {
            (Some(mut pipe), Some(bytes)) => {
                let bytes = bytes.clone();
                Some(thread::spawn(move || match pipe.write_all(&bytes) {
                    // A command may exit without reading all its input.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                    other => other,
                }))
            }
            _ => None,
        };
        let mut pipe = child.stderr.take().expect("stderr is piped");
        let stderr = thread::spawn(move || {
            let mut text = Vec::new();
            pipe.read_to_end(&mut text).map(|_| text)
        });
        Pipes { stdin, stderr }
    }

    fn finish(self, cmd: &HostCommand, child: &mut Child, stdout: Vec<u8>) -> Result<Output, CommandError> {
        let io = |source| CommandError::Io { line: cmd.render(), source };
        let status = child.wait().map_err(io)?;
        if let Some(writer) = self.stdin {
            writer.join().unwrap_or(Ok(())).map_err(io)?;
        }
        let stderr = self.stderr.join().unwrap_or_else(|_| Ok(Vec::new())).map_err(io)?;
        Ok(Output { status, stdout, stderr })
    }
}

impl HostCommands for SystemCommands {
    fn output(&self, cmd: &HostCommand) -> Result<Output, CommandError> {
        self.output_streaming(cmd, &mut |_| {})
    }

    fn output_streaming(&self, cmd: &HostCommand, on_line: &mut dyn FnMut(&str)) -> Result<Output, CommandError> {
        let mut child = self.spawn(cmd)?;
        let pipes = Pipes::start(&mut child, cmd);
        let mut reader = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let mut stdout = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {
                    on_line(String::from_utf8_lossy(&line).trim_end_matches(['\n', '\r']));
                    stdout.extend_from_slice(&line);
                }
                Err(source) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(CommandError::Io { line: cmd.render(), source });
                }
            }
        }
        pipes.finish(cmd, &mut child, stdout)
    }

    fn find_tool(&self, tool: &str) -> Option<PathBuf> {
        find_tool(tool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_a_real_command_with_stdin_env_and_cwd() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = HostCommand::new("sh")
            .args(["-c", "cat; echo \"$GREETING\"; pwd; echo to-stderr >&2"])
            .env("GREETING", "hello")
            .stdin("fed\n")
            .current_dir(dir.path());
        let mut lines = Vec::new();
        let out = SystemCommands.run_streaming(&cmd, &mut |l| lines.push(l.to_owned())).unwrap();
        let cwd = std::fs::canonicalize(dir.path()).unwrap().display().to_string();
        assert_eq!(lines, ["fed", "hello", cwd.as_str()]);
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("fed\nhello\n{cwd}\n"));
        assert_eq!(out.stderr, b"to-stderr\n");
    }

    #[test]
    fn failures_say_what_ran_and_what_it_said() {
        let cmd = HostCommand::new("sh").args(["-c", "echo first >&2; echo 'no space left' >&2; exit 3"]);
        let err = SystemCommands.run(&cmd).unwrap_err();
        assert!(matches!(err, CommandError::Failed { .. }));
        assert_eq!(
            err.to_string(),
            "sh -c 'echo first >&2; echo 'no space left' >&2; exit 3' failed (exit status: 3): first; no space left"
        );
        // The raw output is there whatever the status.
        assert_eq!(SystemCommands.output(&cmd).unwrap().status.code(), Some(3));
    }

    #[test]
    fn a_missing_program_is_not_found_and_a_bad_path_cannot_spawn() {
        let err = SystemCommands.run(&HostCommand::new("banger-no-such-tool").arg("x")).unwrap_err();
        assert!(matches!(err, CommandError::NotFound { .. }), "{err}");
        assert!(err.to_string().starts_with("cannot run banger-no-such-tool x: banger-no-such-tool not found"));
        let err = SystemCommands.run(&HostCommand::new("/nonexistent/tool")).unwrap_err();
        assert!(matches!(err, CommandError::Spawn { .. }), "{err}");
        assert!(std::error::Error::source(&err).is_some(), "the cause is kept");
    }
}
