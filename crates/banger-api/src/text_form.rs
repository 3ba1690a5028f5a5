//! Types that travel as one string but are typed in Rust (an image's or a
//! kernel's source): serde and the OpenAPI schema through `Display` and
//! `From<&str>`, which must never fail, so a form a newer daemon invents
//! still decodes.

/// Implements `Serialize`, `Deserialize` and `ToSchema` (a string with
/// `$description`) for `$ty`, given `Display` and `From<&str>`.
macro_rules! string_form {
    ($ty:ty, $description:expr) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<$ty, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Ok(<$ty>::from(&*text))
            }
        }

        impl utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .description(Some($description))
                    .into()
            }
        }

        impl utoipa::ToSchema for $ty {}
    };
}

pub(crate) use string_form;
