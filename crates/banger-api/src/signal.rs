//! A Linux signal as a request names it: a number, or a name with or
//! without `SIG` (`TERM`, `SIGKILL`, `int`), so neither a script nor a
//! person must know the numbers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
use utoipa::openapi::{RefOr, Schema};

/// The standard signals' names, by number (x86_64 Linux).
const NAMES: [&str; 31] = [
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2", "PIPE", "ALRM", "TERM",
    "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG", "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO",
    "PWR", "SYS",
];

/// The highest signal number (the last real-time signal).
pub const MAX_SIGNAL: i32 = 64;

/// A signal number from 1 to [`MAX_SIGNAL`]. It decodes from a number or a
/// name (`"TERM"`, `"SIGTERM"`, `"15"`) and encodes as the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signal(i32);

impl Signal {
    /// SIGTERM, what a stop sends unless told otherwise.
    pub const TERM: Signal = Signal(15);
    /// SIGKILL.
    pub const KILL: Signal = Signal(9);

    /// The signal numbered `number`, if Linux has one.
    pub fn new(number: i32) -> Option<Signal> {
        (1..=MAX_SIGNAL).contains(&number).then_some(Signal(number))
    }

    /// Its number.
    pub fn number(self) -> i32 {
        self.0
    }

    /// Its name without `SIG` for a standard signal (`TERM`), else `None`.
    pub fn name(self) -> Option<&'static str> {
        usize::try_from(self.0 - 1).ok().and_then(|i| NAMES.get(i).copied())
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "SIG{name}"),
            None => write!(f, "signal {}", self.0),
        }
    }
}

/// Why text does not name a signal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a signal: {0:?} (a name like TERM, KILL, INT, HUP, or a number from 1 to 64)")]
pub struct SignalError(String);

impl FromStr for Signal {
    type Err = SignalError;

    fn from_str(text: &str) -> Result<Signal, SignalError> {
        let refused = || SignalError(text.to_owned());
        let trimmed = text.trim();
        if let Ok(number) = trimmed.parse::<i32>() {
            return Signal::new(number).ok_or_else(refused);
        }
        let upper = trimmed.to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        let at = NAMES.iter().position(|n| *n == bare).ok_or_else(refused)?;
        Ok(Signal(at as i32 + 1))
    }
}

impl Serialize for Signal {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i32(self.0)
    }
}

impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Signal, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given {
            Number(i64),
            Name(String),
        }
        match Given::deserialize(deserializer)? {
            Given::Number(n) => i32::try_from(n)
                .ok()
                .and_then(Signal::new)
                .ok_or_else(|| serde::de::Error::custom(SignalError(n.to_string()))),
            Given::Name(name) => name.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl utoipa::PartialSchema for Signal {
    fn schema() -> RefOr<Schema> {
        let names: Vec<String> = NAMES.iter().flat_map(|n| [n.to_string(), format!("SIG{n}")]).collect();
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1)).maximum(Some(MAX_SIGNAL)))
            .item(ObjectBuilder::new().schema_type(Type::String).enum_values(Some(names)))
            .description(Some(
                "A Linux signal: its number (1 to 64) or its name, with or without `SIG` (`TERM`, `SIGKILL`).",
            ))
            .into()
    }
}

impl utoipa::ToSchema for Signal {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        for text in ["TERM", "SIGTERM", "term", "15", " SigTerm "] {
            assert_eq!(text.parse::<Signal>(), Ok(Signal::TERM), "{text}");
        }
        assert_eq!("KILL".parse::<Signal>().unwrap().number(), 9);
        assert_eq!("SIGSYS".parse::<Signal>().unwrap().number(), 31);
        assert_eq!("40".parse::<Signal>().unwrap().to_string(), "signal 40");
        assert_eq!(Signal::new(2).unwrap().to_string(), "SIGINT");
        for bad in ["0", "65", "-9", "TERMINATE", "", "SIG"] {
            assert!(bad.parse::<Signal>().is_err(), "{bad}");
        }
    }

    #[test]
    fn json_takes_either_and_gives_the_number() {
        assert_eq!(serde_json::from_str::<Signal>("9").unwrap(), Signal::KILL);
        assert_eq!(serde_json::from_str::<Signal>(r#""SIGKILL""#).unwrap(), Signal::KILL);
        assert!(serde_json::from_str::<Signal>("0").is_err());
        assert!(serde_json::from_str::<Signal>("4294967311").is_err());
        assert!(serde_json::from_str::<Signal>("1.5").is_err());
        assert_eq!(serde_json::to_string(&Signal::TERM).unwrap(), "15");
    }
}
