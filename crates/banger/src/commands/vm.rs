//! `banger vm create|list|show|start|stop|restart|kill|rm|set|disk|logs|stats|ports|cp|exec`.

use std::io::Write;
use std::process::ExitCode;

use banger_api::{Vm, VmCreateRequest, VmSetRequest, VmmChoice};
use clap::{Subcommand, ValueEnum};
use http_body_util::BodyExt;

use crate::{output, progress, size, Context};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum VmmArg {
    /// Firecracker (needs KVM).
    Firecracker,
    /// QEMU (KVM when usable, else TCG emulation).
    Qemu,
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Create a VM and boot it.
    Create {
        /// Name: lowercase letters, digits and hyphens (a DNS label).
        name: String,
        /// The image to clone its root disk from.
        #[arg(long)]
        image: String,
        /// A kernel other than the image's.
        #[arg(long)]
        kernel: Option<String>,
        /// vCPUs [default: 1].
        #[arg(long)]
        cpus: Option<u32>,
        /// Memory, e.g. 512M or 1G [default: 512M].
        #[arg(long, value_parser = size::parse_mib)]
        memory: Option<u32>,
        /// Root disk size, e.g. 8G [default: the image's size].
        #[arg(long, value_parser = size::parse)]
        disk_size: Option<u64>,
        /// A writable work disk of this size, mounted at /work.
        #[arg(long, value_parser = size::parse)]
        work_disk: Option<u64>,
        /// The VMM [default: chosen from what the host can do; see `banger doctor`].
        #[arg(long, value_enum)]
        vmm: Option<VmmArg>,
        /// Make it, but do not boot it.
        #[arg(long)]
        no_start: bool,
        /// `nat` (a NIC on banger's bridge, NAT out, a NAME.vm name) or
        /// `none` (no NIC: exec, ssh and forwards still work through banger).
        #[arg(long, value_enum)]
        network: Option<NetworkArg>,
        #[command(flatten)]
        wait: Wait,
    },
    /// Every VM.
    #[command(alias = "ls")]
    List,
    /// One VM's details.
    Show {
        /// VM name.
        name: String,
    },
    /// Boot a stopped VM.
    Start {
        /// VM name.
        name: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Shut a VM down (the guest powers off; after 10 s its VMM is killed).
    /// A boot in progress is cancelled.
    Stop {
        /// VM name.
        name: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Stop, then start.
    Restart {
        /// VM name.
        name: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Kill a VM's VMM at once, cancelling a boot or a stop in progress.
    Kill {
        /// VM name.
        name: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Remove a VM and everything it holds.
    #[command(alias = "remove")]
    Rm {
        /// VM name.
        name: String,
        /// Kill it first if it is not stopped (cancelling a boot in progress).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        wait: Wait,
    },
    /// Change a stopped VM's vCPUs or memory.
    Set {
        /// VM name.
        name: String,
        /// vCPUs.
        #[arg(long)]
        cpus: Option<u32>,
        /// Memory, e.g. 1G.
        #[arg(long, value_parser = size::parse_mib)]
        memory: Option<u32>,
    },
    /// A VM's disks.
    #[command(subcommand)]
    Disk(DiskCommand),
    /// The VM's console output.
    Logs {
        /// VM name.
        name: String,
        /// Keep following it.
        #[arg(short, long)]
        follow: bool,
    },
    /// What a running VM uses: the guest's CPU, memory, disks and network,
    /// and its VMM process's host CPU and memory.
    Stats {
        /// VM name.
        name: String,
        /// Refresh every second until Ctrl-C.
        #[arg(short, long)]
        watch: bool,
    },
    /// The guest's listening TCP and UDP sockets.
    Ports {
        /// VM name.
        name: String,
    },
    /// SSH into a VM through banger (its image needs sshd, as debian has):
    /// `ssh NAME.vm` with banger's config, no prompt.
    Ssh {
        /// VM name.
        name: String,
        /// A command to run instead of a login shell.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Carry one TCP connection to a port on the guest's loopback over
    /// stdin and stdout, through banger (no guest network needed): what
    /// ssh's ProxyCommand uses.
    Connect {
        /// VM name (`NAME.vm` is taken too).
        name: String,
        /// The guest port.
        port: u16,
    },
    /// Forward a port of the host's loopback to a guest port, through
    /// banger: `banger vm forward dev 8080` makes 127.0.0.1:8080 reach
    /// port 8080 in dev; `18080:8080` picks the host port. Forwards last
    /// until removed or until the VM is.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["spec", "list", "rm"])))]
    Forward {
        /// VM name.
        name: String,
        /// [HOST_PORT:]GUEST_PORT.
        #[arg(value_parser = super::ports::parse_spec)]
        spec: Option<banger_api::ForwardRequest>,
        /// List the VM's forwards.
        #[arg(long)]
        list: bool,
        /// Remove the forward of this host port.
        #[arg(long, value_name = "HOST_PORT")]
        rm: Option<u16>,
    },
    /// Copy files between the host and a VM: one of SRC and DST is
    /// VM:/path. Trees, modes, symlinks and times are kept, owners too when
    /// banger runs as root. Into an existing directory the copy goes
    /// inside it; otherwise DST is its new name.
    Cp {
        /// What to copy: a host path, or VM:/path.
        src: String,
        /// Where it goes: a host path, or VM:/path.
        dst: String,
    },
    /// Run a command in a VM; its exit status becomes banger's (128+N
    /// for a command killed by signal N).
    Exec(super::exec::ExecArgs),
}

/// `--network`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum NetworkArg {
    /// A NIC on banger's bridge.
    Nat,
    /// No NIC.
    None,
}

/// Whether to wait for the operation a command starts.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Wait {
    /// Print the operation's id and return at once instead of waiting for it
    /// (follow it with `banger operation wait ID`).
    #[arg(long)]
    no_wait: bool,
}

#[derive(Debug, Subcommand)]
pub enum DiskCommand {
    /// Grow a stopped VM's root disk and its filesystem.
    Resize {
        /// VM name.
        name: String,
        /// New size, e.g. 16G.
        #[arg(value_parser = size::parse)]
        size: u64,
    },
}

pub async fn run(command: VmCommand, ctx: &Context) -> anyhow::Result<ExitCode> {
    match command {
        VmCommand::Create { name, image, kernel, cpus, memory, disk_size, work_disk, vmm, no_start, network, wait } => {
            let request = VmCreateRequest {
                name,
                image,
                kernel,
                cpus,
                memory_mib: memory,
                disk_size_bytes: disk_size,
                work_disk_bytes: work_disk,
                vmm: vmm.map(|v| match v {
                    VmmArg::Firecracker => VmmChoice::Firecracker,
                    VmmArg::Qemu => VmmChoice::Qemu,
                }),
                no_start,
                network: network.map(|n| match n {
                    NetworkArg::Nat => banger_api::NetworkMode::Nat,
                    NetworkArg::None => banger_api::NetworkMode::None,
                }),
            };
            let op = ctx.client.create_vm(&request).await?;
            finish(ctx, &op, wait).await?;
        }
        VmCommand::List => {
            let vms = ctx.client.vms().await?;
            if ctx.json {
                return output::json(&vms).map(|_| ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = vms
                .iter()
                .map(|v| {
                    vec![
                        v.name.clone(),
                        state(v),
                        v.image.clone(),
                        v.cpus.to_string(),
                        format!("{} MiB", v.memory_mib),
                        output::size(v.disk_size_bytes),
                        vmm(v),
                    ]
                })
                .collect();
            output::table(&["NAME", "STATE", "IMAGE", "CPUS", "MEMORY", "DISK", "VMM"], &rows);
        }
        VmCommand::Show { name } => show(ctx, &ctx.client.vm(&name).await?)?,
        VmCommand::Start { name, wait } => finish(ctx, &ctx.client.start_vm(&name, false).await?, wait).await?,
        VmCommand::Restart { name, wait } => finish(ctx, &ctx.client.start_vm(&name, true).await?, wait).await?,
        VmCommand::Stop { name, wait } => finish(ctx, &ctx.client.stop_vm(&name, false).await?, wait).await?,
        VmCommand::Kill { name, wait } => finish(ctx, &ctx.client.stop_vm(&name, true).await?, wait).await?,
        VmCommand::Rm { name, force, wait } => {
            let op = ctx.client.remove_vm(&name, force).await?;
            if wait.no_wait {
                return started(ctx, &op).map(|()| ExitCode::SUCCESS);
            }
            progress::follow(ctx, &op).await?;
            if ctx.json {
                output::json(&serde_json::json!({ "removed": name }))?;
            } else {
                println!("removed VM {name}");
            }
        }
        VmCommand::Set { name, cpus, memory } => {
            let vm = ctx.client.set_vm(&name, &VmSetRequest { cpus, memory_mib: memory }).await?;
            show(ctx, &vm)?;
        }
        VmCommand::Disk(DiskCommand::Resize { name, size }) => {
            let vm = ctx.client.resize_vm_disk(&name, size).await?;
            done(ctx, &vm, &format!("root disk is now {}", output::size(vm.disk_size_bytes)))?;
        }
        VmCommand::Logs { name, follow } => {
            let mut body = ctx.client.vm_logs(&name, follow).await?;
            let mut stdout = std::io::stdout();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame?.into_data() {
                    stdout.write_all(&data)?;
                    stdout.flush()?;
                }
            }
        }
        VmCommand::Stats { name, watch } => super::stats::stats(ctx, &name, watch).await?,
        VmCommand::Ports { name } => super::stats::ports(ctx, &name).await?,
        VmCommand::Ssh { name, command } => return super::ssh::vm_ssh(ctx, &name, &command).await,
        VmCommand::Connect { name, port } => return super::ports::connect(ctx, &name, port).await,
        VmCommand::Forward { name, spec, list, rm } => {
            use super::ports::ForwardAction;
            let action = match (spec, list, rm) {
                (Some(spec), _, _) => ForwardAction::Add(spec),
                (None, true, _) => ForwardAction::List,
                (None, false, Some(port)) => ForwardAction::Remove(port),
                (None, false, None) => unreachable!("clap requires one of them"),
            };
            super::ports::forward(ctx, &name, action).await?
        }
        VmCommand::Cp { src, dst } => return super::cp::run(ctx, &src, &dst).await,
        VmCommand::Exec(args) => {
            let status = super::exec::run(ctx, args).await;
            return Ok(ExitCode::from(status.clamp(0, 255) as u8));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits for a VM operation (unless `--no-wait`) and says where the VM is now.
async fn finish(ctx: &Context, op: &banger_api::Operation, wait: Wait) -> anyhow::Result<()> {
    if wait.no_wait {
        return started(ctx, op);
    }
    let done = progress::follow(ctx, op).await?;
    let vm: Vm = done
        .result
        .and_then(banger_api::OperationResult::into_vm)
        .ok_or_else(|| anyhow::anyhow!("the operation's result is not a VM"))?;
    self::done(ctx, &vm, state(&vm).as_str())
}

/// What `--no-wait` prints: the operation (its id, for people).
fn started(ctx: &Context, op: &banger_api::Operation) -> anyhow::Result<()> {
    if ctx.json {
        return output::json(op);
    }
    println!("{}", op.id);
    Ok(())
}

fn done(ctx: &Context, vm: &Vm, what: &str) -> anyhow::Result<()> {
    if ctx.json {
        return output::json(vm);
    }
    println!("VM {} {what} ({})", vm.name, vmm(vm));
    Ok(())
}

fn show(ctx: &Context, v: &Vm) -> anyhow::Result<()> {
    if ctx.json {
        return output::json(v);
    }
    println!("name:      {}", v.name);
    println!("state:     {}", state(v));
    println!("image:     {}", v.image);
    println!("kernel:    {}", v.kernel);
    println!("vmm:       {}", vmm(v));
    println!("cpus:      {}", v.cpus);
    println!("memory:    {} MiB", v.memory_mib);
    println!("disk:      {} ({})", output::size(v.disk_size_bytes), v.disk_strategy);
    if let Some(work) = v.work_disk_bytes {
        println!("work disk: {} at /work", output::size(work));
    }
    match &v.network {
        Some(n) => {
            println!("network:   {}/{} ({}), gateway {}, mac {}", n.address, n.prefix, n.dns_name, n.gateway, n.mac)
        }
        None => println!("network:   none"),
    }
    if let Some(pid) = v.pid {
        println!("pid:       {pid}");
    }
    if let Some(agent) = &v.agent_version {
        println!("agent:     {agent}");
    }
    println!("created:   {}", v.created_at);
    Ok(())
}

fn state(v: &Vm) -> String {
    let state = v.state.as_str();
    match (&v.pause_reason, v.agent) {
        (Some(reason), _) if v.state == banger_api::VmState::Paused => format!("{state} ({reason})"),
        (_, Some(banger_api::AgentStatus::NotAnswering)) => format!("{state} (agent not answering)"),
        _ => state.to_owned(),
    }
}

fn vmm(v: &Vm) -> String {
    match (v.vmm, v.kvm) {
        (VmmChoice::Firecracker, _) => "firecracker".into(),
        (VmmChoice::Qemu, true) => "qemu/kvm".into(),
        (VmmChoice::Qemu, false) => "qemu/tcg".into(),
        (VmmChoice::Unknown, _) => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use banger_api::{AgentStatus, DiskStrategy, VmState};

    use super::*;

    fn vm(state: VmState, agent: Option<AgentStatus>, pause_reason: Option<&str>) -> Vm {
        Vm {
            name: "dev".into(),
            state,
            image: "tiny".into(),
            kernel: "k".into(),
            vmm: VmmChoice::Qemu,
            kvm: false,
            cpus: 1,
            memory_mib: 256,
            disk_size_bytes: 1 << 30,
            work_disk_bytes: None,
            disk_strategy: DiskStrategy::SparseCopy,
            pid: Some(7),
            agent,
            agent_version: None,
            pause_reason: pause_reason.map(Into::into),
            network: None,
            created_at: std::time::UNIX_EPOCH.into(),
        }
    }

    #[test]
    fn the_state_column_says_why_a_vm_is_paused_or_silent() {
        assert_eq!(state(&vm(VmState::Paused, None, Some("io-error"))), "paused (io-error)");
        assert_eq!(
            state(&vm(VmState::Running, Some(AgentStatus::NotAnswering), None)),
            "running (agent not answering)"
        );
        assert_eq!(state(&vm(VmState::Running, Some(AgentStatus::Answering), None)), "running");
    }
}
