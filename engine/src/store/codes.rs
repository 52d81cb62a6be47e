//! Text codes of enumerations as stored in the database, written in import files and printed
//! by the query tools: the protocol's permanent snake-case names (`admit`, `service_worker`,
//! `test_age`), plus [`ModeKind`]'s. Serde would write the protocol's numeric wire codes, so
//! the rows the store returns serialise these names instead.

use gatewarden_protocol::{
    Category, CheckKind, CodeColour, Decision, Direction, SubjectStatus, TestResult,
};
use serde::Serializer;
use serde::ser::SerializeSeq;

use super::ModeKind;

/// An enumeration with a permanent snake-case name per variant.
pub(super) trait Named: Copy + 'static {
    /// Every variant.
    const ALL: &'static [Self];
    /// The variant's name.
    fn label(self) -> &'static str;

    /// The variant with this name (exact, lowercase).
    fn from_label(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.label() == s)
    }

    /// Every name, for "expected one of ..." messages.
    fn labels() -> String {
        Self::ALL
            .iter()
            .map(|v| v.label())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

macro_rules! named_by_protocol {
    ($($t:ty),+) => {
        $(
            impl Named for $t {
                const ALL: &'static [Self] = <$t>::ALL;
                fn label(self) -> &'static str {
                    self.name()
                }
            }
        )+
    };
}

named_by_protocol!(
    Category,
    CheckKind,
    CodeColour,
    Decision,
    Direction,
    SubjectStatus,
    TestResult
);

impl Named for ModeKind {
    const ALL: &'static [Self] = &[Self::Verify, Self::Identify, Self::SignIn];
    fn label(self) -> &'static str {
        self.name()
    }
}

/// Serialises a value as its name.
pub(super) fn ser<T: Named, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.label())
}

/// Serialises an optional value as its name or null.
pub(super) fn ser_opt<T: Named, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_some(v.label()),
        None => s.serialize_none(),
    }
}

/// Serialises a list as names.
pub(super) fn ser_list<T: Named, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
    let mut seq = s.serialize_seq(Some(v.len()))?;
    for item in v {
        seq.serialize_element(item.label())?;
    }
    seq.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trips<T: Named + PartialEq + std::fmt::Debug>() {
        for v in T::ALL {
            assert_eq!(T::from_label(v.label()), Some(*v));
        }
    }

    /// Every stored name must read back, or a stored row would be unreadable.
    #[test]
    fn names_round_trip() {
        round_trips::<Category>();
        round_trips::<CheckKind>();
        round_trips::<CodeColour>();
        round_trips::<Decision>();
        round_trips::<Direction>();
        round_trips::<SubjectStatus>();
        round_trips::<TestResult>();
        round_trips::<ModeKind>();
        assert_eq!(ModeKind::SignIn.label(), "sign_in");
        assert_eq!(
            Category::from_label("service_worker"),
            Some(Category::ServiceWorker)
        );
        assert_eq!(
            Decision::from_label("Admit"),
            None,
            "names are exact, lowercase"
        );
    }
}
