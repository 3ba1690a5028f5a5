//! The VM state machine: every action on a VM, and the one function that
//! admits or refuses each action in each state (Firecracker's API server is
//! the model). Every entry point (the HTTP API today; the dashboard and the
//! MCP server later) asks [`admit`] before it acts, and asks again once it
//! holds the VM's lock, since the state may have changed in between.

use banger_api::VmState;

/// Something a client can ask of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmAction {
    /// Make it (asked of a name that already has a VM, it is refused).
    Create,
    /// Boot it.
    Start,
    /// Shut it down gracefully, then kill it.
    Stop,
    /// Stop it if it runs, then boot it.
    Restart,
    /// Kill its VMM at once.
    Kill,
    /// Remove it and its disks; `force` stops it first.
    Remove {
        /// Stop a VM that is not stopped instead of refusing.
        force: bool,
    },
    /// Change its vCPUs or memory.
    Set,
    /// Grow its root disk.
    ResizeDisk,
    /// Run a command in it.
    Exec,
    /// Anything else asked of its guest agent: sessions, copies, stats;
    /// `verb` is the command as a user types it (`session start`).
    Guest {
        /// The command.
        verb: &'static str,
    },
}

impl VmAction {
    /// The action as a user types it.
    pub fn verb(self) -> &'static str {
        match self {
            VmAction::Create => "vm create",
            VmAction::Start => "vm start",
            VmAction::Stop => "vm stop",
            VmAction::Restart => "vm restart",
            VmAction::Kill => "vm kill",
            VmAction::Remove { force: false } => "vm rm",
            VmAction::Remove { force: true } => "vm rm --force",
            VmAction::Set => "vm set",
            VmAction::ResizeDisk => "vm disk resize",
            VmAction::Exec => "vm exec",
            VmAction::Guest { verb } => verb,
        }
    }
}

/// What an admitted action does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// Go ahead.
    Proceed,
    /// Go ahead, first cutting short the boot or stop in progress (which
    /// holds the VM's lock until it sees it is preempted).
    Preempt,
    /// The VM is already where the action would take it.
    AlreadyDone,
}

/// Why an action was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A VM of that name exists.
    Exists,
    /// The action needs the VM in another state; says which.
    WrongState {
        /// The state the action needs, in words.
        wanted: &'static str,
    },
}

/// Admits or refuses `action` on a VM in `state`. The one place that
/// knows which actions fit which states.
pub fn admit(state: VmState, action: VmAction) -> Result<Admitted, Refused> {
    use Admitted::{AlreadyDone, Preempt, Proceed};
    use VmState::{Created, Paused, Running, Starting, Stopped, Stopping};
    let wrong = |wanted| Err(Refused::WrongState { wanted });
    match (action, state) {
        (VmAction::Create, _) => Err(Refused::Exists),
        // A record a newer daemon wrote, in a state this one does not know.
        (_, VmState::Unknown) => wrong("in a state this bangerd knows"),

        (VmAction::Start, Created | Stopped) => Ok(Proceed),
        (VmAction::Start, Running) => Ok(AlreadyDone),
        (VmAction::Start, Starting | Stopping | Paused) => wrong("stopped"),

        // A paused guest cannot shut down: its VMM is ended at once.
        (VmAction::Stop, Running | Paused) => Ok(Proceed),
        (VmAction::Stop, Starting) => Ok(Preempt),
        (VmAction::Stop, Created | Stopped) => Ok(AlreadyDone),
        // A stop under way: a second one would only wait behind it.
        (VmAction::Stop, Stopping) => wrong("running (it is already stopping; `vm kill` ends it now)"),

        (VmAction::Restart, Running | Paused | Created | Stopped) => Ok(Proceed),
        (VmAction::Restart, Starting) => Ok(Preempt),
        (VmAction::Restart, Stopping) => wrong("running or stopped"),

        (VmAction::Kill, Running | Paused) => Ok(Proceed),
        (VmAction::Kill, Starting | Stopping) => Ok(Preempt),
        (VmAction::Kill, Created | Stopped) => Ok(AlreadyDone),

        (VmAction::Remove { .. }, Created | Stopped) => Ok(Proceed),
        (VmAction::Remove { force: true }, Running | Paused) => Ok(Proceed),
        (VmAction::Remove { force: true }, Starting | Stopping) => Ok(Preempt),
        (VmAction::Remove { force: false }, Running | Starting | Stopping | Paused) => {
            wrong("stopped (or use --force)")
        }

        (VmAction::Set | VmAction::ResizeDisk, Created | Stopped) => Ok(Proceed),
        (VmAction::Set | VmAction::ResizeDisk, Running | Starting | Stopping | Paused) => wrong("stopped"),

        (VmAction::Exec | VmAction::Guest { .. }, Running) => Ok(Proceed),
        (VmAction::Exec | VmAction::Guest { .. }, Paused) => {
            wrong("running (its VMM paused the guest, see `banger vm show`; `banger vm stop` ends it)")
        }
        (VmAction::Exec | VmAction::Guest { .. }, Created | Starting | Stopping | Stopped) => wrong("running"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Admitted::{AlreadyDone as Done, Preempt as Pre, Proceed as Go};

    const STATES: [VmState; 6] =
        [VmState::Created, VmState::Starting, VmState::Running, VmState::Stopping, VmState::Stopped, VmState::Paused];

    /// `None` stands for a refusal. Columns: created, starting, running, stopping, stopped, paused.
    const TABLE: &[(VmAction, [Option<Admitted>; 6])] = &[
        (VmAction::Create, [None, None, None, None, None, None]),
        (VmAction::Start, [Some(Go), None, Some(Done), None, Some(Go), None]),
        (VmAction::Stop, [Some(Done), Some(Pre), Some(Go), None, Some(Done), Some(Go)]),
        (VmAction::Restart, [Some(Go), Some(Pre), Some(Go), None, Some(Go), Some(Go)]),
        (VmAction::Kill, [Some(Done), Some(Pre), Some(Go), Some(Pre), Some(Done), Some(Go)]),
        (VmAction::Remove { force: false }, [Some(Go), None, None, None, Some(Go), None]),
        (VmAction::Remove { force: true }, [Some(Go), Some(Pre), Some(Go), Some(Pre), Some(Go), Some(Go)]),
        (VmAction::Set, [Some(Go), None, None, None, Some(Go), None]),
        (VmAction::ResizeDisk, [Some(Go), None, None, None, Some(Go), None]),
        (VmAction::Exec, [None, None, Some(Go), None, None, None]),
        (VmAction::Guest { verb: "session start" }, [None, None, Some(Go), None, None, None]),
    ];

    #[test]
    fn every_action_in_every_state_is_as_the_table_says() {
        for (action, row) in TABLE {
            for (state, expected) in STATES.iter().zip(row) {
                assert_eq!(admit(*state, *action).ok(), *expected, "{action:?} when {state:?}");
            }
        }
    }

    #[test]
    fn the_table_covers_every_action() {
        let covered = |a: VmAction| TABLE.iter().any(|(b, _)| *b == a);
        // Adding an action without a row here fails to compile below.
        for action in [
            VmAction::Create,
            VmAction::Start,
            VmAction::Stop,
            VmAction::Restart,
            VmAction::Kill,
            VmAction::Remove { force: false },
            VmAction::Remove { force: true },
            VmAction::Set,
            VmAction::ResizeDisk,
            VmAction::Exec,
            VmAction::Guest { verb: "session start" },
        ] {
            match action {
                VmAction::Create
                | VmAction::Start
                | VmAction::Stop
                | VmAction::Restart
                | VmAction::Kill
                | VmAction::Remove { .. }
                | VmAction::Set
                | VmAction::ResizeDisk
                | VmAction::Exec
                | VmAction::Guest { .. } => assert!(covered(action), "{action:?} has no row"),
            }
        }
    }

    #[test]
    fn refusals_say_what_is_needed() {
        assert_eq!(admit(VmState::Running, VmAction::Create), Err(Refused::Exists));
        assert_eq!(
            admit(VmState::Running, VmAction::Remove { force: false }),
            Err(Refused::WrongState { wanted: "stopped (or use --force)" })
        );
        assert_eq!(admit(VmState::Stopped, VmAction::Exec), Err(Refused::WrongState { wanted: "running" }));
    }
}
