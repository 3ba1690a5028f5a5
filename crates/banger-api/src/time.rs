//! The one timestamp type of the wire: a point in time that travels as an
//! RFC 3339 UTC string (`2026-01-01T00:00:00Z`), so every `created_at` and
//! `finished_at` is checked when decoded and compared as a time, not text.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::{RefOr, Schema};

/// A point in time, written as RFC 3339 in UTC: whole seconds when it has
/// no fraction (all the daemon makes), else with nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(SystemTime);

impl Timestamp {
    /// Now, to the whole second: what the daemon stamps is exactly what it serves.
    pub fn now() -> Timestamp {
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Timestamp(UNIX_EPOCH + Duration::from_secs(since_epoch.as_secs()))
    }

    /// The time itself.
    pub fn system_time(self) -> SystemTime {
        self.0
    }
}

impl From<SystemTime> for Timestamp {
    fn from(time: SystemTime) -> Timestamp {
        Timestamp(time)
    }
}

impl From<Timestamp> for SystemTime {
    fn from(time: Timestamp) -> SystemTime {
        time.0
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_rfc3339(self.0).fmt(f)
    }
}

/// Why a string is not a timestamp.
#[derive(Debug, thiserror::Error)]
#[error("not an RFC 3339 UTC timestamp: {text:?}")]
pub struct TimestampError {
    text: String,
    #[source]
    source: humantime::TimestampError,
}

impl FromStr for Timestamp {
    type Err = TimestampError;

    /// Accepts RFC 3339 in UTC (`Z` or `+00:00`), with any fraction of a second.
    fn from_str(text: &str) -> Result<Timestamp, TimestampError> {
        humantime::parse_rfc3339(text).map(Timestamp).map_err(|source| TimestampError { text: text.to_owned(), source })
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl utoipa::PartialSchema for Timestamp {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some("A point in time, RFC 3339 in UTC (`2026-01-01T00:00:00Z`)."))
            .into()
    }
}

impl utoipa::ToSchema for Timestamp {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_wire_form() {
        let t: Timestamp = serde_json::from_str(r#""2026-01-01T00:00:00Z""#).unwrap();
        assert_eq!(t.system_time(), UNIX_EPOCH + Duration::from_secs(1_767_225_600));
        assert_eq!(serde_json::to_string(&t).unwrap(), r#""2026-01-01T00:00:00Z""#);
        let now = Timestamp::now();
        assert_eq!(now.to_string().parse::<Timestamp>().unwrap(), now);
        assert!(!now.to_string().contains('.'), "{now}");
    }

    #[test]
    fn accepts_fractions_and_refuses_what_is_not_utc() {
        let t: Timestamp = "2026-01-01T00:00:00.5Z".parse().unwrap();
        assert_eq!(t.to_string(), "2026-01-01T00:00:00.500000000Z");
        assert!("2026-01-01T00:00:00+02:00".parse::<Timestamp>().is_err());
        assert!("yesterday".parse::<Timestamp>().is_err());
        assert!(serde_json::from_str::<Timestamp>("1767225600").is_err());
    }
}
