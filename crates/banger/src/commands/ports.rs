//! `vm connect` and `vm forward`: a guest's TCP ports from the host over
//! the agent channel, so they need no guest network. `connect` carries one
//! connection on stdin and stdout (what ssh's ProxyCommand wants);
//! forwards listen on the host's loopback, in the daemon.

use std::process::ExitCode;

use banger_api::ForwardRequest;
use banger_client::{ClientError, StreamEvent, StreamEvents};
use tokio::io::AsyncWriteExt;

use crate::{output, Context};

/// A VM's name as ssh passes it (`dev.vm`) or as typed (`dev`).
pub fn vm_name(host: &str) -> &str {
    host.strip_suffix(".vm").unwrap_or(host)
}

/// `vm connect NAME PORT`: stdin to the guest's port, its answer to stdout.
pub async fn connect(ctx: &Context, name: &str, port: u16) -> anyhow::Result<ExitCode> {
    let (sender, mut events) = ctx.client.connect(vm_name(name), port).await?;
    let input = tokio::spawn(super::exec::pump_stdin(sender.clone()));
    let result = relay(&mut events).await;
    input.abort();
    let _ = sender.close().await;
    result.map(|()| ExitCode::SUCCESS)
}

/// Writes what the guest sends to stdout, closing it at the guest's end.
async fn relay(events: &mut StreamEvents) -> anyhow::Result<()> {
    let mut stdout = Some(tokio::io::stdout());
    while let Some(event) = events.next().await? {
        match event {
            StreamEvent::Stdout(data) => {
                if let Some(out) = stdout.as_mut() {
                    out.write_all(&data).await?;
                    out.flush().await?;
                }
            }
            // Closing stdout is how the program on the other end learns it.
            StreamEvent::StdoutEof => {
                stdout = None;
                crate::close_stdout();
            }
            StreamEvent::Error { error, .. } => return Err(ClientError::Api(error).into()),
            StreamEvent::Stderr(_) | StreamEvent::Started { .. } | StreamEvent::Exited { .. } => {}
        }
    }
    Ok(())
}

/// What `vm forward` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardAction {
    /// Forward `[HOST:]GUEST`.
    Add(ForwardRequest),
    /// List the VM's forwards.
    List,
    /// Remove the forward of a host port.
    Remove(u16),
}

/// `[HOST_PORT:]GUEST_PORT`.
pub fn parse_spec(spec: &str) -> Result<ForwardRequest, String> {
    let port = |s: &str| match s.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{s:?} is not a port (1 to 65535)")),
        Ok(port) => Ok(port),
    };
    Ok(match spec.split_once(':') {
        Some((host, guest)) => ForwardRequest { guest_port: port(guest)?, host_port: Some(port(host)?) },
        None => ForwardRequest { guest_port: port(spec)?, host_port: None },
    })
}

/// `vm forward NAME [HOST:]GUEST | --list | --rm HOST_PORT`.
pub async fn forward(ctx: &Context, name: &str, action: ForwardAction) -> anyhow::Result<()> {
    match action {
        ForwardAction::Add(request) => {
            let forward = ctx.client.add_forward(name, &request).await?;
            if ctx.json {
                return output::json(&forward);
            }
            println!(
                "{}:{} -> {name}.vm:{} (remove with `banger vm forward {name} --rm {}`)",
                forward.host_address, forward.host_port, forward.guest_port, forward.host_port
            );
        }
        ForwardAction::List => {
            let forwards = ctx.client.forwards(name).await?;
            if ctx.json {
                return output::json(&forwards);
            }
            let rows: Vec<Vec<String>> = forwards
                .into_iter()
                .map(|f| vec![format!("{}:{}", f.host_address, f.host_port), format!("{}.vm:{}", f.vm, f.guest_port)])
                .collect();
            output::table(&["HOST", "GUEST"], &rows);
        }
        ForwardAction::Remove(host_port) => {
            ctx.client.remove_forward(name, host_port).await?;
            if ctx.json {
                return output::json(&serde_json::json!({ "removed": host_port }));
            }
            println!("forward of host port {host_port} removed");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_a_guest_port_and_maybe_a_host_port() {
        assert_eq!(parse_spec("8080"), Ok(ForwardRequest { guest_port: 8080, host_port: None }));
        assert_eq!(parse_spec("18080:8080"), Ok(ForwardRequest { guest_port: 8080, host_port: Some(18080) }));
        for bad in ["0", "x", "1:0", "70000", ":80", "80:"] {
            assert!(parse_spec(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ssh_host_names_are_vm_names() {
        assert_eq!(vm_name("dev.vm"), "dev");
        assert_eq!(vm_name("dev"), "dev");
    }
}
