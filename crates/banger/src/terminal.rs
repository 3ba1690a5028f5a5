//! The local terminal for interactive streams: raw mode, put back however
//! the command ends, its size, and the keys that detach from a session.

use std::io::IsTerminal;
use std::os::fd::AsFd;

use banger_api::stream::TermSize;
use rustix::termios::{self, OptionalActions, Termios};

/// What a terminal's size is taken to be when it cannot be read.
pub const DEFAULT_SIZE: TermSize = TermSize { rows: 24, cols: 80 };

/// Whether stdin is a terminal.
pub fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

/// The size of the terminal on stdin, else stdout, else stderr.
pub fn size() -> Option<TermSize> {
    let sizes = [
        termios::tcgetwinsize(std::io::stdin().as_fd()),
        termios::tcgetwinsize(std::io::stdout().as_fd()),
        termios::tcgetwinsize(std::io::stderr().as_fd()),
    ];
    sizes
        .into_iter()
        .flatten()
        .find(|w| w.ws_row > 0 && w.ws_col > 0)
        .map(|w| TermSize { rows: w.ws_row, cols: w.ws_col })
}

/// Stdin's terminal in raw mode (no echo, no line editing, no signals
/// from keys: Ctrl-C is a byte for the guest) until this is dropped.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Puts the terminal on stdin in raw mode.
    pub fn enable() -> std::io::Result<RawMode> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd())?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(stdin.as_fd(), OptionalActions::Now, &raw)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // What was typed but not read is not the shell's to run.
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), OptionalActions::Flush, &self.saved);
    }
}

/// A key sequence that detaches from a session, as `--detach-keys` gives
/// it: comma-separated keys, each `ctrl-X` or one character (`ctrl-p,ctrl-q`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachKeys {
    keys: Vec<u8>,
    /// How many of `keys` the input has matched so far (held back).
    matched: usize,
}

/// Ctrl-], as telnet has it.
pub const DEFAULT_DETACH_KEYS: &str = "ctrl-]";

impl std::str::FromStr for DetachKeys {
    type Err = String;

    fn from_str(spec: &str) -> Result<DetachKeys, String> {
        let key = |part: &str| -> Result<u8, String> {
            let bad = || format!("{part:?} is not a key: use ctrl-<letter or one of @[\\]^_> or one character");
            let (ctrl, key) = match part.strip_prefix("ctrl-") {
                Some(rest) => (true, rest),
                None => (false, part),
            };
            let [byte] = key.as_bytes() else { return Err(bad()) };
            match (ctrl, byte.to_ascii_lowercase()) {
                (true, b @ (b'a'..=b'z' | b'@' | b'[' | b'\\' | b']' | b'^' | b'_')) => Ok(b & 0x1f),
                (false, _) if byte.is_ascii_graphic() => Ok(*byte),
                _ => Err(bad()),
            }
        };
        let keys = spec.split(',').map(key).collect::<Result<Vec<_>, _>>()?;
        Ok(DetachKeys { keys, matched: 0 })
    }
}

impl DetachKeys {
    /// Takes typed bytes; returns those to send on, and whether the whole
    /// sequence was typed (what follows it is dropped). Bytes that may
    /// start the sequence are held until it is clear they do not.
    pub fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        for &byte in input {
            if byte == self.keys[self.matched] {
                self.matched += 1;
                if self.matched == self.keys.len() {
                    self.matched = 0;
                    return (out, true);
                }
                continue;
            }
            // The held bytes were typing after all.
            out.extend_from_slice(&self.keys[..self.matched]);
            self.matched = 0;
            if byte == self.keys[0] {
                self.matched = 1;
                if self.keys.len() == 1 {
                    self.matched = 0;
                    return (out, true);
                }
            } else {
                out.push(byte);
            }
        }
        (out, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_parse_like_dockers() {
        assert_eq!("ctrl-]".parse::<DetachKeys>().unwrap().keys, vec![0x1d]);
        assert_eq!("ctrl-p,ctrl-q".parse::<DetachKeys>().unwrap().keys, vec![0x10, 0x11]);
        assert_eq!("ctrl-P,x".parse::<DetachKeys>().unwrap().keys, vec![0x10, b'x']);
        assert!("ctrl-".parse::<DetachKeys>().is_err());
        assert!("ctrl-1".parse::<DetachKeys>().is_err());
        assert!("".parse::<DetachKeys>().is_err());
        assert!("ab".parse::<DetachKeys>().is_err());
    }

    #[test]
    fn the_sequence_detaches_and_near_misses_pass_through() {
        let mut keys: DetachKeys = "ctrl-]".parse().unwrap();
        assert_eq!(keys.feed(b"ls\r"), (b"ls\r".to_vec(), false));
        assert_eq!(keys.feed(b"a\x1dignored"), (b"a".to_vec(), true));

        let mut keys: DetachKeys = "ctrl-p,ctrl-q".parse().unwrap();
        assert_eq!(keys.feed(b"x\x10"), (b"x".to_vec(), false), "a possible start is held");
        assert_eq!(keys.feed(b"y"), (b"\x10y".to_vec(), false), "and sent once it is not");
        assert_eq!(keys.feed(b"\x10\x10"), (b"\x10".to_vec(), false));
        assert_eq!(keys.feed(b"\x11"), (Vec::new(), true), "split across reads");
    }
}
