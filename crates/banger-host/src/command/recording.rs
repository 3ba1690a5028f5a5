//! [`RecordingCommands`]: the fake for unit tests. It runs nothing, records
//! every command, and answers each from a script matched on the command
//! line, so a test can assert the exact sequence a piece of code runs and
//! drive it down its failure paths.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Output;
use std::sync::Mutex;

use super::{output_with_code, CommandError, HostCommand, HostCommands};

/// What the fake answers a command with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeReply {
    /// The exit code.
    pub code: i32,
    /// What it "printed" on stdout.
    pub stdout: Vec<u8>,
    /// What it "printed" on stderr.
    pub stderr: Vec<u8>,
}

impl FakeReply {
    /// Exit 0 with `stdout`.
    pub fn ok(stdout: impl Into<Vec<u8>>) -> Self {
        FakeReply { code: 0, stdout: stdout.into(), stderr: Vec::new() }
    }

    /// Exit `code` with `stderr`.
    pub fn exit(code: i32, stderr: impl Into<Vec<u8>>) -> Self {
        FakeReply { code, stdout: Vec::new(), stderr: stderr.into() }
    }
}

struct Rule {
    prefix: String,
    reply: FakeReply,
    once: bool,
}

/// What a matching command does to the world, standing in for the tool.
type Effect = Box<dyn Fn(&HostCommand) + Send + Sync>;

#[derive(Default)]
struct State {
    ran: Vec<HostCommand>,
    rules: Vec<Rule>,
    effects: Vec<(String, Effect)>,
    missing: BTreeSet<String>,
}

/// Records commands instead of running them. A command is answered by the
/// first unused one-shot rule whose prefix its [`HostCommand::render`]ed
/// line starts with, else the first standing rule that matches, else exit 0
/// with no output. Every tool is "installed" unless marked missing.
#[derive(Default)]
pub struct RecordingCommands {
    state: Mutex<State>,
}

impl RecordingCommands {
    /// A fake that answers everything with success.
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers the next command whose line starts with `prefix` with `reply`,
    /// once. One-shot rules for one prefix are used in the order given.
    pub fn reply_once(self, prefix: impl Into<String>, reply: FakeReply) -> Self {
        self.lock().rules.push(Rule { prefix: prefix.into(), reply, once: true });
        self
    }

    /// Answers every command whose line starts with `prefix` with `reply`.
    pub fn reply_always(self, prefix: impl Into<String>, reply: FakeReply) -> Self {
        self.lock().rules.push(Rule { prefix: prefix.into(), reply, once: false });
        self
    }

    /// Runs `effect` for every command whose line starts with `prefix`, before
    /// it is answered: a stand-in for what the tool would leave on disk (the
    /// tree `debootstrap` makes, say).
    pub fn with_effect(self, prefix: impl Into<String>, effect: impl Fn(&HostCommand) + Send + Sync + 'static) -> Self {
        self.lock().effects.push((prefix.into(), Box::new(effect)));
        self
    }

    /// Makes [`HostCommands::find_tool`] report `tool` as not installed.
    pub fn without_tool(self, tool: impl Into<String>) -> Self {
        self.lock().missing.insert(tool.into());
        self
    }

    /// Every command run so far, in order.
    pub fn commands(&self) -> Vec<HostCommand> {
        self.lock().ran.clone()
    }

    /// The command lines run so far, in order.
    pub fn lines(&self) -> Vec<String> {
        self.lock().ran.iter().map(HostCommand::render).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn answer(&self, cmd: &HostCommand) -> FakeReply {
        let mut state = self.lock();
        state.ran.push(cmd.clone());
        let line = cmd.render();
        for (prefix, effect) in &state.effects {
            if line.starts_with(prefix.as_str()) {
                effect(cmd);
            }
        }
        let matches = |rule: &Rule| line.starts_with(&rule.prefix);
        if let Some(i) = state.rules.iter().position(|r| r.once && matches(r)) {
            return state.rules.remove(i).reply;
        }
        state.rules.iter().find(|r| !r.once && matches(r)).map_or_else(|| FakeReply::ok(""), |r| r.reply.clone())
    }
}

impl HostCommands for RecordingCommands {
    fn output(&self, cmd: &HostCommand) -> Result<Output, CommandError> {
        let reply = self.answer(cmd);
        Ok(output_with_code(reply.code, reply.stdout, reply.stderr))
    }

    fn output_streaming(&self, cmd: &HostCommand, on_line: &mut dyn FnMut(&str)) -> Result<Output, CommandError> {
        let output = self.output(cmd)?;
        String::from_utf8_lossy(&output.stdout).lines().for_each(on_line);
        Ok(output)
    }

    fn find_tool(&self, tool: &str) -> Option<PathBuf> {
        (!self.lock().missing.contains(tool)).then(|| PathBuf::from("/fake/bin").join(tool))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_in_order_and_answers_from_the_script() {
        let fake = RecordingCommands::new()
            .reply_once("losetup --find", FakeReply::ok("/dev/loop1\n"))
            .reply_once("losetup --find", FakeReply::ok("/dev/loop2\n"))
            .reply_always("dmsetup", FakeReply::exit(1, "no device-mapper"))
            .without_tool("dmsetup");
        let find = HostCommand::new("losetup").args(["--find", "--show", "/a"]);
        assert_eq!(fake.run(&find).unwrap().stdout, b"/dev/loop1\n");
        assert_eq!(fake.run(&find).unwrap().stdout, b"/dev/loop2\n");
        assert_eq!(fake.run(&find).unwrap().stdout, b"", "one-shot replies are used up");
        let err = fake.run(&HostCommand::new("dmsetup").arg("ls")).unwrap_err();
        assert_eq!(err.to_string(), "dmsetup ls failed (exit status: 1): no device-mapper");
        assert_eq!(fake.lines().len(), 4);
        assert_eq!(fake.lines()[3], "dmsetup ls");
        assert_eq!(fake.find_tool("dmsetup"), None);
        assert!(fake.find_tool("losetup").is_some());
    }

    #[test]
    fn effects_stand_in_for_what_a_tool_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("made");
        let fake = RecordingCommands::new().with_effect("touch", |cmd| std::fs::write(&cmd.args[0], "").unwrap());
        fake.run(&HostCommand::new("touch").arg(&marker)).unwrap();
        assert!(marker.exists());
    }

    #[test]
    fn streaming_hands_over_scripted_lines() {
        let fake = RecordingCommands::new().reply_always("debootstrap", FakeReply::ok("I: one\nI: two\n"));
        let mut seen = Vec::new();
        fake.run_streaming(&HostCommand::new("debootstrap"), &mut |l| seen.push(l.to_owned())).unwrap();
        assert_eq!(seen, ["I: one", "I: two"]);
    }
}
