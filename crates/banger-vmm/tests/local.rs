//! VMM processes and the Local test driver, against real processes: `sleep`
//! children for [`VmmProcess`], and the real static guest agent (built as
//! for guests) run by [`Local`] on a socket in a temporary run directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use banger_agent_proto::{read_frame, write_frame, Frame, Reply, Request, PROTOCOL_VERSION};
use banger_vmm::local::{BootFault, Local, DIES_AT_BOOT_LINE};
use banger_vmm::{AgentEndpoint, AgentSocket, VmSpec, Vmm, VmmProcess, CONNECT_ATTEMPT_TIMEOUT};

/// Every test's bound, building the agent included.
const TEST_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a started agent may take to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

const SIGKILL: i32 = 9;
const SIGTERM: i32 = 15;

async fn with_timeout<F: std::future::Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_TIMEOUT, test).await.expect("test timed out");
}

/// A `sleep` child, killed when dropped.
struct Sleeper(std::process::Child);

impl Sleeper {
    fn spawn() -> Sleeper {
        Sleeper(Command::new("sleep").arg("300").stdin(Stdio::null()).spawn().expect("spawn sleep"))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Whether it has exited (reaping it if so).
    fn has_exited(&mut self) -> bool {
        self.0.try_wait().unwrap().is_some()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_real_process_is_known_by_pid_and_start_time() {
    with_timeout(async {
        let mut sleeper = Sleeper::spawn();
        let process = VmmProcess::of(sleeper.pid()).unwrap();
        assert_eq!(process.pid, sleeper.pid());
        assert!(process.is_running());

        // The same pid with another start time is someone else: a reused
        // pid. It is not running, not signalled, and not waited for.
        let forged = VmmProcess { start_time: process.start_time + 1, ..process };
        assert!(!forged.is_running());
        forged.signal(SIGKILL).expect("a process that is not ours is no error");
        tokio::time::timeout(Duration::from_secs(1), forged.exited()).await.expect("exited() waits for a stranger");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!sleeper.has_exited(), "the forged identity's signal reached the real process");
        assert!(process.is_running());

        // The real identity is signalled, and exited() sees it go.
        let waiting = tokio::spawn(async move { process.exited().await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "exited() resolved while the process runs");
        process.signal(SIGTERM).unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("exited() after the process died").unwrap();
        // A zombie until reaped: not running.
        assert!(!process.is_running());
        assert!(sleeper.has_exited());
        // Gone altogether: signals and waits are no-ops.
        process.signal(SIGKILL).unwrap();
        process.exited().await;
    })
    .await;
}

#[tokio::test]
async fn kill_and_wait_ends_a_process_that_ignores_sigterm() {
    with_timeout(async {
        let child =
            Command::new("sh").args(["-c", "trap '' TERM; exec sleep 300"]).stdin(Stdio::null()).spawn().unwrap();
        let mut sleeper = Sleeper(child);
        let process = VmmProcess::of(sleeper.pid()).unwrap();
        // Once the shell has exec'd sleep, SIGTERM is ignored.
        while std::fs::read_to_string(format!("/proc/{}/comm", process.pid)).unwrap() != "sleep\n" {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        process.signal(SIGTERM).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(process.is_running(), "SIGTERM is ignored");
        process.kill_and_wait(Duration::from_secs(5)).await.unwrap();
        assert!(!process.is_running());
        assert!(sleeper.has_exited());
        assert!(VmmProcess::of(u32::MAX).is_err());
        assert!(process.signal(0x7fff).is_err(), "not a signal");
    })
    .await;
}

/// A run directory and the Local driver over the real agent.
struct LocalVm {
    _dir: tempfile::TempDir,
    spec: VmSpec,
    local: Local,
    vmm: Vmm,
}

impl LocalVm {
    fn new(name: &str) -> LocalVm {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = dir.path().join("run");
        std::fs::create_dir(&run_dir).unwrap();
        let spec = VmSpec {
            name: name.into(),
            run_dir,
            kernel: PathBuf::from("/nonexistent/vmlinux"),
            initrd: None,
            cmdline: String::new(),
            cpus: 1,
            memory_mib: 64,
            disks: Vec::new(),
            nics: Vec::new(),
        };
        let local = Local::new(banger_testkit::guest::agent_binary());
        LocalVm { _dir: dir, spec, vmm: Vmm::Local(local.clone()), local }
    }

    fn run_dir(&self) -> &Path {
        &self.spec.run_dir
    }

    /// Connects to the agent, retrying as the daemon does until it listens.
    async fn connect(&self) -> AgentSocket {
        let endpoint = self.vmm.agent_endpoint(self.run_dir());
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        loop {
            match endpoint.connect().await {
                Ok(socket) => return socket,
                Err(e) if Instant::now() > deadline => panic!("the agent never listened: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn files(&self) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(self.run_dir()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.vmm.console_log(self.run_dir())).unwrap_or_default()
    }
}

impl Drop for LocalVm {
    fn drop(&mut self) {
        if let Some(process) = self.vmm.process(self.run_dir()) {
            let _ = process.signal(SIGKILL);
        }
    }
}

/// Sends a hello and reads the agent's answer.
async fn hello(socket: &mut AgentSocket) -> Reply {
    let frame = Frame::control(0, &Request::Hello(banger_agent_proto::Hello::ours()));
    write_frame(socket, &frame).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), read_frame(socket)).await.expect("no answer to hello");
    answer.unwrap().expect("the agent closed the connection").message().unwrap()
}

fn session_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command: state, ppid, pgrp, session.
    stat.rsplit_once(')').unwrap().1.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[tokio::test]
async fn the_local_agent_starts_detached_answers_and_stops() {
    with_timeout(async {
        let vm = LocalVm::new("local-ok");
        let started = Instant::now();
        let process = vm.vmm.start(&vm.spec).await.expect("start");
        assert!(process.is_running());
        assert_ne!(session_of(process.pid), session_of(std::process::id()), "the agent shares the test's session");
        let pid_file = std::fs::read_to_string(vm.run_dir().join("vmm.pid")).unwrap();
        assert_eq!(pid_file, format!("{} {}\n", process.pid, process.start_time));
        // A restarted daemon finds it from the run directory alone.
        let restarted = Vmm::Local(Local::new(vm.local.agent.clone()));
        assert_eq!(restarted.process(vm.run_dir()), Some(process));
        assert_eq!(vm.vmm.agent_endpoint(vm.run_dir()), AgentEndpoint::Unix(vm.run_dir().join("agent.sock")));

        let mut socket = vm.connect().await;
        let Reply::Hello(banger_agent_proto::Hello { protocol, .. }) = hello(&mut socket).await else {
            panic!("not a hello")
        };
        assert_eq!(protocol, PROTOCOL_VERSION);
        eprintln!("the agent answered {:?} after start", started.elapsed());
        assert!(vm.vmm.start(&vm.spec).await.is_err(), "a second start while it runs");
        assert_eq!(
            vm.vmm.release(vm.run_dir()).unwrap_err().kind(),
            std::io::ErrorKind::ResourceBusy,
            "release while it runs"
        );

        let stopping = Instant::now();
        vm.vmm.stop(vm.run_dir(), process, Duration::from_secs(10)).await.expect("stop");
        eprintln!("stop took {:?}", stopping.elapsed());
        assert!(stopping.elapsed() < Duration::from_secs(5), "SIGTERM ends the agent");
        assert!(!process.is_running());
        assert_eq!(vm.vmm.process(vm.run_dir()), None);
        vm.vmm.release(vm.run_dir()).expect("release");
        assert_eq!(vm.files(), ["console.log"]);
        assert!(vm.console().contains("serving on unix socket"), "the agent's output is the console: {}", vm.console());
        vm.vmm.release(vm.run_dir()).expect("release is idempotent");
        vm.vmm.stop(vm.run_dir(), process, Duration::from_secs(1)).await.expect("stop when stopped");

        // And it starts again in the same run directory.
        let again = vm.vmm.start(&vm.spec).await.expect("second start");
        assert_ne!(again, process);
        let Reply::Hello { .. } = hello(&mut vm.connect().await).await else { panic!("not a hello") };
        vm.vmm.kill(vm.run_dir(), again).await.expect("kill");
        assert!(!again.is_running());
        vm.vmm.release(vm.run_dir()).unwrap();
        assert_eq!(vm.files(), ["console.log"]);
    })
    .await;
}

#[tokio::test]
async fn a_power_off_ends_the_local_agent_as_it_ends_a_vmm() {
    with_timeout(async {
        let vm = LocalVm::new("local-poweroff");
        let process = vm.vmm.start(&vm.spec).await.expect("start");
        let mut socket = vm.connect().await;
        hello(&mut socket).await;
        write_frame(&mut socket, &Frame::control(1, &Request::Poweroff)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), process.exited())
            .await
            .expect("the agent outlived its power-off");
        assert_eq!(vm.vmm.process(vm.run_dir()), None);
        vm.vmm.release(vm.run_dir()).unwrap();
        assert_eq!(vm.files(), ["console.log"]);
    })
    .await;
}

#[tokio::test]
async fn never_listens_runs_but_no_socket_appears() {
    with_timeout(async {
        let vm = LocalVm::new("local-never");
        vm.local.faults.set("local-never", BootFault::NeverListens);
        let process = vm.vmm.start(&vm.spec).await.expect("start");
        let endpoint = vm.vmm.agent_endpoint(vm.run_dir());
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(process.is_running());
        assert!(!vm.run_dir().join("agent.sock").exists());
        assert!(endpoint.connect().await.is_err());
        vm.vmm.stop(vm.run_dir(), process, Duration::from_secs(5)).await.unwrap();
        assert!(!process.is_running());
        vm.vmm.release(vm.run_dir()).unwrap();
        assert_eq!(vm.files(), ["console.log"]);
    })
    .await;
}

#[tokio::test]
async fn a_silent_listener_accepts_but_never_answers() {
    with_timeout(async {
        let vm = LocalVm::new("local-silent");
        vm.local.faults.set("local-silent", BootFault::SilentListener);
        let process = vm.vmm.start(&vm.spec).await.expect("start");
        assert!(vm.run_dir().join("agent.sock").exists(), "the socket is there at once");
        let mut socket = vm.vmm.agent_endpoint(vm.run_dir()).connect().await.expect("the connection is accepted");
        write_frame(&mut socket, &Frame::control(0, &Request::Hello(banger_agent_proto::Hello::ours()))).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_millis(500), read_frame(&mut socket)).await;
        assert!(answer.is_err(), "the silent listener answered: {answer:?}");
        assert!(process.is_running());
        vm.vmm.kill(vm.run_dir(), process).await.unwrap();
        vm.vmm.release(vm.run_dir()).unwrap();
        assert_eq!(vm.files(), ["console.log"]);
    })
    .await;
}

#[tokio::test]
async fn dies_at_boot_says_so_on_the_console_and_exits() {
    with_timeout(async {
        let vm = LocalVm::new("local-dies");
        vm.local.faults.set("local-dies", BootFault::DiesAtBoot);
        let process = vm.vmm.start(&vm.spec).await.expect("start: the VMM started, the guest dies after");
        tokio::time::timeout(Duration::from_secs(5), process.exited()).await.expect("it exits at once");
        assert_eq!(vm.vmm.process(vm.run_dir()), None);
        assert!(vm.console().contains(DIES_AT_BOOT_LINE), "{}", vm.console());
        let report = vm.vmm.failure_report(vm.run_dir());
        assert!(report.contains(DIES_AT_BOOT_LINE), "{report}");
        vm.vmm.release(vm.run_dir()).unwrap();
        assert_eq!(vm.files(), ["console.log"]);

        // Faults are set at run time: cleared, the VM boots.
        vm.local.faults.clear("local-dies");
        let process = vm.vmm.start(&vm.spec).await.expect("start");
        hello(&mut vm.connect().await).await;
        vm.vmm.kill(vm.run_dir(), process).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn ignores_stop_makes_stop_fall_back_to_kill() {
    with_timeout(async {
        let vm = LocalVm::new("local-stubborn");
        vm.local.faults.set("local-stubborn", BootFault::IgnoresStop);
        let process = vm.vmm.start(&vm.spec).await.expect("start");
        // Stopped at once, before the agent listens: SIGTERM is already ignored.
        let timeout = Duration::from_millis(500);
        let stopping = Instant::now();
        vm.vmm.stop(vm.run_dir(), process, timeout).await.expect("stop");
        let took = stopping.elapsed();
        assert!(took >= timeout, "stop did not wait for SIGTERM first: {took:?}");
        assert!(took < timeout + Duration::from_secs(5), "{took:?}");
        assert!(!process.is_running());

        // And when the agent runs normally.
        let process = vm.vmm.start(&vm.spec).await.expect("start");
        let Reply::Hello { .. } = hello(&mut vm.connect().await).await else { panic!("not a hello") };
        let stopping = Instant::now();
        vm.vmm.stop(vm.run_dir(), process, timeout).await.expect("stop");
        assert!(stopping.elapsed() >= timeout, "{:?}", stopping.elapsed());
        assert!(!process.is_running());
        vm.vmm.release(vm.run_dir()).unwrap();
        assert_eq!(vm.files(), ["console.log"]);
    })
    .await;
}

#[tokio::test]
async fn a_run_dir_that_is_missing_or_too_long_is_refused_and_nothing_runs() {
    with_timeout(async {
        let vm = LocalVm::new("local-bad");
        let missing = VmSpec { run_dir: vm.run_dir().join("missing"), ..vm.spec.clone() };
        assert!(vm.vmm.start(&missing).await.is_err());
        let long = vm.run_dir().join("x".repeat(120));
        std::fs::create_dir(&long).unwrap();
        let long = VmSpec { run_dir: long, ..vm.spec.clone() };
        let err = vm.vmm.start(&long).await.unwrap_err();
        assert!(err.to_string().contains("too long"), "{err}");
        let broken = Vmm::Local(Local::new(vm.run_dir().join("no-agent")));
        let err = broken.start(&vm.spec).await.unwrap_err();
        assert!(matches!(err, banger_vmm::VmmError::MissingBinary { .. }), "{err}");
        assert_eq!(broken.process(vm.run_dir()), None);
        assert!(!vm.run_dir().join("vmm.pid").exists());
    })
    .await;
}

/// Firecracker keeps a vsock connection in its listen queue until the
/// guest activates the device, and never answers `CONNECT` meanwhile: each
/// attempt must end anyway.
#[tokio::test]
async fn a_firecracker_vsock_that_never_answers_connect_times_out() {
    with_timeout(async {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let listener = tokio::net::UnixListener::bind(&uds).unwrap();
        // Accepted and held, never answered.
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let endpoint = AgentEndpoint::FirecrackerVsock { uds, port: banger_agent_proto::VSOCK_PORT };
        for _ in 0..2 {
            let started = Instant::now();
            let err = endpoint.connect().await.unwrap_err();
            let took = started.elapsed();
            assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
            assert!(took >= CONNECT_ATTEMPT_TIMEOUT && took < CONNECT_ATTEMPT_TIMEOUT * 2, "{took:?}");
        }
        held.abort();
    })
    .await;
}

/// Starts `sleep 300` through the agent on `stream`; its process.
async fn exec_sleep(socket: &mut AgentSocket, stream: u32) -> VmmProcess {
    let exec = banger_agent_proto::ExecRequest { argv: vec!["sleep".into(), "300".into()], ..Default::default() };
    write_frame(socket, &Frame::control(stream, &Request::Exec(exec))).await.unwrap();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), read_frame(socket)).await.unwrap().unwrap().unwrap();
        if frame.stream == stream {
            let Reply::Started { pid } = frame.message().unwrap() else { panic!("not started: {frame:?}") };
            return VmmProcess::of(pid).unwrap();
        }
    }
}

/// What the agent runs ends with it, as a guest's processes end with the VM.
#[tokio::test]
async fn the_commands_of_the_agent_end_with_stop_and_kill() {
    with_timeout(async {
        let vm = LocalVm::new("local-commands");
        for kill in [false, true] {
            let process = vm.vmm.start(&vm.spec).await.expect("start");
            let mut socket = vm.connect().await;
            hello(&mut socket).await;
            let commands = [exec_sleep(&mut socket, 1).await, exec_sleep(&mut socket, 3).await];
            assert!(commands.iter().all(VmmProcess::is_running));
            if kill {
                vm.vmm.kill(vm.run_dir(), process).await.unwrap();
            } else {
                vm.vmm.stop(vm.run_dir(), process, Duration::from_secs(5)).await.unwrap();
            }
            for command in commands {
                tokio::time::timeout(Duration::from_secs(5), command.exited()).await.unwrap_or_else(|_| {
                    panic!("a command outlived the agent's {}", if kill { "kill" } else { "stop" })
                });
            }
            vm.vmm.release(vm.run_dir()).unwrap();
        }
    })
    .await;
}
