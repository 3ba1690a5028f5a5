//! `banger session start|list|show|send|stop|wait|rm|attach|logs`: commands
//! that run in a VM under a terminal and outlive every client (attach and
//! logs are in `attach`).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context as _;
use banger_api::{Session, SessionStartRequest, SessionState, Signal, VmState};
use clap::Subcommand;
use serde::Serialize;

use crate::terminal::{DetachKeys, DEFAULT_DETACH_KEYS};
use crate::{output, Context};

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Start a session: a command under a terminal, running whether or not
    /// anyone is attached. Prints its name.
    Start {
        /// VM name.
        vm: String,
        /// The session's name [default: the smallest number no session of the VM has].
        #[arg(long)]
        name: Option<String>,
        /// Working directory in the guest [default: the user's home, else /].
        #[arg(short = 'w', long = "workdir", value_name = "DIR")]
        cwd: Option<String>,
        /// An environment variable, KEY=VALUE (repeatable).
        #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
        env: Vec<(String, String)>,
        /// Run as this user, a name or a uid [default: root].
        #[arg(short, long)]
        user: Option<String>,
        /// The command and its arguments (after `--`, or after the options).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Sessions of one VM, or of every running VM.
    #[command(alias = "ls")]
    List {
        /// VM name [default: every running VM].
        vm: Option<String>,
    },
    /// One session's details.
    Show {
        /// VM name.
        vm: String,
        /// Session name.
        session: String,
    },
    /// Type into a session without attaching. TEXT is sent exactly as given,
    /// as tmux's send-keys does: no newline unless --enter.
    Send {
        /// VM name.
        vm: String,
        /// Session name.
        session: String,
        /// What to type.
        #[arg(required_unless_present = "stdin", conflicts_with = "stdin")]
        text: Option<String>,
        /// Type what banger reads from its stdin, until its end (at most 16 MiB).
        #[arg(long)]
        stdin: bool,
        /// Press Enter after TEXT (append a newline).
        #[arg(long, conflicts_with = "stdin")]
        enter: bool,
    },
    /// Signal a session's processes (SIGTERM unless --signal says otherwise).
    Stop {
        /// VM name.
        vm: String,
        /// Session name.
        session: String,
        /// The signal: a name (TERM, KILL, INT, HUP, with or without SIG) or a number.
        #[arg(short, long, default_value = "TERM")]
        signal: Signal,
    },
    /// Wait for a session to end; banger exits with its exit status (the
    /// code, or 128 + the signal), and with 255 when banger itself fails.
    Wait {
        /// VM name.
        vm: String,
        /// Session name.
        session: String,
    },
    /// Remove an ended session and its output.
    #[command(alias = "remove")]
    Rm {
        /// VM name.
        vm: String,
        /// Session name.
        session: String,
    },
    /// Attach this terminal to a session: its screen comes back as it is,
    /// typing goes to it. The detach keys (Ctrl-] by default) leave it
    /// running; when its process ends, banger exits with its status.
    Attach {
        /// VM name.
        vm: String,
        /// Session name.
        session: String,
        /// Watch without typing (the detach keys still work).
        #[arg(long)]
        read_only: bool,
        /// The keys that detach: comma-separated, each `ctrl-X` or one
        /// character, e.g. `ctrl-p,ctrl-q`.
        #[arg(long, value_name = "KEYS", default_value = DEFAULT_DETACH_KEYS)]
        detach_keys: DetachKeys,
    },
    /// A session's output: what it kept, then with -f what comes, until its process ends.
    Logs {
        /// VM name.
        vm: String,
        /// Session name.
        session: String,
        /// Keep following until the session's process ends.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines of what it kept.
        #[arg(long, value_name = "N")]
        tail: Option<u64>,
    },
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

pub async fn run(command: SessionCommand, ctx: &Context) -> anyhow::Result<ExitCode> {
    match command {
        SessionCommand::Start { vm, name, cwd, env, user, command } => {
            let env: BTreeMap<String, String> = env.into_iter().collect();
            let request = SessionStartRequest { name, argv: command, env, cwd, user };
            let session = ctx.client.start_session(&vm, &request).await?;
            if ctx.json {
                output::json(&Listed { vm: &vm, session: &session })?;
            } else {
                println!("{}", session.name);
            }
        }
        SessionCommand::List { vm } => list(ctx, vm).await?,
        SessionCommand::Show { vm, session } => {
            let session = ctx.client.session(&vm, &session).await?;
            show(ctx, &vm, &session)?;
        }
        SessionCommand::Send { vm, session, text, stdin, enter } => {
            if stdin {
                ctx.client.send_to_session_from(&vm, &session, tokio::io::stdin()).await?;
            } else {
                let mut text = text.unwrap_or_default();
                if enter {
                    text.push('\n');
                }
                ctx.client.send_to_session(&vm, &session, text).await?;
            }
        }
        SessionCommand::Stop { vm, session, signal } => ctx.client.stop_session(&vm, &session, Some(signal)).await?,
        SessionCommand::Wait { vm, session } => return Ok(wait(ctx, &vm, &session).await),
        SessionCommand::Attach { vm, session, read_only, detach_keys } => {
            let status = super::attach::attach(ctx, &vm, &session, read_only, detach_keys).await?;
            return Ok(ExitCode::from(status.clamp(0, 255) as u8));
        }
        SessionCommand::Logs { vm, session, follow, tail } => {
            super::attach::logs(ctx, &vm, &session, follow, tail).await?
        }
        SessionCommand::Rm { vm, session } => {
            ctx.client.remove_session(&vm, &session).await?;
            if ctx.json {
                output::json(&serde_json::json!({ "removed": session, "vm": vm }))?;
            } else {
                println!("removed session {session} of VM {vm}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A session with the VM it runs in: what `--json` prints.
#[derive(Serialize)]
struct Listed<'a> {
    vm: &'a str,
    #[serde(flatten)]
    session: &'a Session,
}

async fn list(ctx: &Context, vm: Option<String>) -> anyhow::Result<()> {
    let mut found: Vec<(String, Session)> = Vec::new();
    match vm {
        Some(vm) => found.extend(ctx.client.sessions(&vm).await?.into_iter().map(|s| (vm.clone(), s))),
        None => {
            for vm in ctx.client.vms().await?.into_iter().filter(|v| v.state == VmState::Running) {
                match ctx.client.sessions(&vm.name).await {
                    Ok(sessions) => found.extend(sessions.into_iter().map(|s| (vm.name.clone(), s))),
                    // One VM that cannot answer does not hide the others'.
                    Err(e) => eprintln!("warning: VM {}: {e}", vm.name),
                }
            }
        }
    }
    if ctx.json {
        let listed: Vec<Listed> = found.iter().map(|(vm, session)| Listed { vm, session }).collect();
        return output::json(&listed);
    }
    let now = SystemTime::now();
    let rows: Vec<Vec<String>> = found
        .iter()
        .map(|(vm, s)| {
            vec![
                vm.clone(),
                s.name.clone(),
                s.state.to_string(),
                command(s),
                ago(now, s.started_at.system_time()),
                ended(s),
            ]
        })
        .collect();
    output::table(&["VM", "SESSION", "STATE", "COMMAND", "STARTED", "EXIT CODE"], &rows);
    Ok(())
}

fn show(ctx: &Context, vm: &str, s: &Session) -> anyhow::Result<()> {
    if ctx.json {
        return output::json(&Listed { vm, session: s });
    }
    println!("vm:       {vm}");
    println!("session:  {}", s.name);
    println!("state:    {}", s.state);
    println!("command:  {}", command(s));
    if let Some(pid) = s.pid {
        println!("pid:      {pid}");
    }
    println!("started:  {}", s.started_at);
    if let Some(ended) = s.ended_at {
        println!("ended:    {ended}");
    }
    if s.state != SessionState::Running {
        println!("exit:     {}", ended(s));
    }
    println!("attached: {}", s.attached);
    Ok(())
}

/// Waits for the session and turns its end into banger's exit code.
async fn wait(ctx: &Context, vm: &str, session: &str) -> ExitCode {
    let waited = async {
        let exit =
            ctx.client.wait_session(vm, session).await.with_context(|| format!("cannot wait for session {session}"))?;
        if ctx.json {
            output::json(&exit)?;
        }
        anyhow::Ok(exit.exit_status)
    };
    match waited.await {
        Ok(status) => ExitCode::from(u8::try_from(status.clamp(0, 255)).unwrap_or(255)),
        Err(error) => {
            // The session's status is banger's: banger's own failures use 255, as `vm exec` does.
            eprintln!("error: {}", crate::one_line(&error));
            ExitCode::from(255)
        }
    }
}

/// The command as a shell would show it.
fn command(s: &Session) -> String {
    let quoted: Vec<String> = s
        .command
        .iter()
        .map(|arg| {
            let plain = !arg.is_empty() && arg.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
            if plain {
                arg.clone()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect();
    quoted.join(" ")
}

/// The exit column: `-` while it runs, the status (and the signal) after.
fn ended(s: &Session) -> String {
    match (s.exit_status, s.signal.and_then(Signal::new)) {
        (None, _) => "-".into(),
        (Some(status), Some(signal)) => format!("{status} ({signal})"),
        (Some(status), None) => status.to_string(),
    }
}

/// How long ago `then` was, roughly: `12s ago`, `5m ago`, `3h ago`, `2d ago`.
fn ago(now: SystemTime, then: SystemTime) -> String {
    let Ok(elapsed) = now.duration_since(then) else {
        return "just now".into();
    };
    let secs = elapsed.as_secs();
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn session(command: &[&str], exit_status: Option<i32>, signal: Option<i32>) -> Session {
        Session {
            name: "0".into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            state: if exit_status.is_some() { SessionState::Exited } else { SessionState::Running },
            pid: None,
            started_at: SystemTime::UNIX_EPOCH.into(),
            ended_at: None,
            exit_code: None,
            signal,
            exit_status,
            attached: 0,
        }
    }

    #[test]
    fn columns_read_as_a_shell_would() {
        assert_eq!(command(&session(&["sh", "-c", "echo 'hi' there"], None, None)), r#"sh -c 'echo '\''hi'\'' there'"#);
        assert_eq!(command(&session(&["nc", "-l", "-p", "8080"], None, None)), "nc -l -p 8080");
        assert_eq!(ended(&session(&["x"], None, None)), "-");
        assert_eq!(ended(&session(&["x"], Some(3), None)), "3");
        assert_eq!(ended(&session(&["x"], Some(143), Some(15))), "143 (SIGTERM)");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100_000);
        assert_eq!(ago(now, now - Duration::from_secs(5)), "5s ago");
        assert_eq!(ago(now, now - Duration::from_secs(7200)), "2h ago");
        assert_eq!(ago(now, now + Duration::from_secs(3)), "just now");
    }

    #[test]
    fn env_pairs_split_at_the_first_equals_sign() {
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert_eq!(parse_env("EMPTY="), Ok(("EMPTY".into(), String::new())));
        assert!(parse_env("=x").is_err() && parse_env("novalue").is_err());
    }
}
