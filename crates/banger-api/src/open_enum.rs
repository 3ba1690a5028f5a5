//! Open enums: the sets of values in responses that grow as the daemon
//! does (error codes, operation kinds, VM states, ...). A value this crate
//! does not know decodes as `Unknown` instead of failing the whole body, and
//! the OpenAPI schema says so: the known values, or any other string.

/// Defines an open enum: the listed variants with their wire names, plus
/// `Unknown`, with `as_str`, `Display`, serde and `ToSchema`.
macro_rules! open_enum {
    (
        $(#[doc = $doc:literal])*
        pub enum $name:ident {
            $( $(#[doc = $variant_doc:literal])* $variant:ident = $wire:literal, )+
        }
    ) => {
        $(#[doc = $doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[doc = $variant_doc])* $variant, )+
            /// A value this crate does not know, sent by a newer daemon. The
            /// daemon itself never sends it; it encodes as `"unknown"`.
            Unknown,
        }

        impl $name {
            /// Every value this crate knows, in order.
            pub const KNOWN: &'static [$name] = &[$($name::$variant),+];

            /// The value as it appears on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire,)+
                    $name::Unknown => "unknown",
                }
            }

            /// The value a wire name stands for: `Unknown` for one this crate does not know.
            pub fn from_wire(text: &str) -> $name {
                match text {
                    $($wire => $name::$variant,)+
                    _ => $name::Unknown,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<$name, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Ok($name::from_wire(&text))
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
                crate::open_enum::schema(&[$($wire),+], &[$($doc),*])
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

pub(crate) use open_enum;

use utoipa::openapi::schema::{AnyOfBuilder, ObjectBuilder, Type};
use utoipa::openapi::{RefOr, Schema};

/// The schema of an open enum: one of `known`, or any other string, which
/// a client must accept (and may treat as unknown).
pub(crate) fn schema(known: &[&str], doc: &[&str]) -> RefOr<Schema> {
    let description: Vec<&str> = doc.iter().map(|line| line.strip_prefix(' ').unwrap_or(line)).collect();
    AnyOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String).enum_values(Some(known.iter().copied())))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some("A value a newer daemon added; clients must accept it.")),
        )
        .description(Some(description.join("\n").trim().to_owned()))
        .into()
}
