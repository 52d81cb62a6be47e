//! Text codes of the protocol's enumerations, as stored in the database and written in import
//! files: lowercase snake_case, fixed forever (renaming a Rust variant must not change them).

use gatewarden_protocol::{
    Category, CodeColour, Decision, Direction, SubjectStatus, TestResult,
};

use super::ModeKind;

/// Every category with its code, in the order the import tools list them.
pub(super) const CATEGORIES: &[(Category, &str)] = &[
    (Category::ServiceWorker, "service_worker"),
    (Category::Manager, "manager"),
    (Category::Staff, "staff"),
    (Category::Merchant, "merchant"),
    (Category::Buyer, "buyer"),
    (Category::Shopper, "shopper"),
];

const STATUSES: &[(SubjectStatus, &str)] = &[
    (SubjectStatus::Active, "active"),
    (SubjectStatus::Revoked, "revoked"),
    (SubjectStatus::Blocklisted, "blocklisted"),
];

const TEST_RESULTS: &[(TestResult, &str)] = &[
    (TestResult::Negative, "negative"),
    (TestResult::Positive, "positive"),
    (TestResult::Pending, "pending"),
];

const COLOURS: &[(CodeColour, &str)] = &[
    (CodeColour::Green, "green"),
    (CodeColour::Yellow, "yellow"),
    (CodeColour::Red, "red"),
];

const DECISIONS: &[(Decision, &str)] = &[
    (Decision::Admit, "admit"),
    (Decision::Deny, "deny"),
    (Decision::Escalate, "escalate"),
];

const MODES: &[(ModeKind, &str)] = &[
    (ModeKind::Verify, "verify"),
    (ModeKind::Identify, "identify"),
    (ModeKind::SignIn, "sign_in"),
];

const DIRECTIONS: &[(Direction, &str)] = &[(Direction::Entry, "entry"), (Direction::Exit, "exit")];

fn code<T: PartialEq + Copy>(table: &[(T, &'static str)], v: T) -> Option<&'static str> {
    table.iter().find(|(t, _)| *t == v).map(|(_, c)| *c)
}

fn parse<T: Copy>(table: &[(T, &'static str)], s: &str) -> Option<T> {
    table.iter().find(|(_, c)| *c == s).map(|(t, _)| *t)
}

/// All codes of a table, for error messages ("expected one of ...").
fn list<T>(table: &[(T, &'static str)]) -> String {
    table.iter().map(|(_, c)| *c).collect::<Vec<_>>().join(", ")
}

/// The code of a category; `None` only for a category newer than this store.
pub(super) fn category_code(c: Category) -> Option<&'static str> {
    code(CATEGORIES, c)
}

pub(super) fn parse_category(s: &str) -> Option<Category> {
    parse(CATEGORIES, s)
}

pub(super) fn category_list() -> String {
    list(CATEGORIES)
}

pub(super) fn status_code(s: SubjectStatus) -> &'static str {
    match s {
        SubjectStatus::Active => "active",
        SubjectStatus::Revoked => "revoked",
        SubjectStatus::Blocklisted => "blocklisted",
    }
}

pub(super) fn parse_status(s: &str) -> Option<SubjectStatus> {
    parse(STATUSES, s)
}

pub(super) fn status_list() -> String {
    list(STATUSES)
}

pub(super) fn test_result_code(t: TestResult) -> &'static str {
    match t {
        TestResult::Negative => "negative",
        TestResult::Positive => "positive",
        TestResult::Pending => "pending",
    }
}

pub(super) fn parse_test_result(s: &str) -> Option<TestResult> {
    parse(TEST_RESULTS, s)
}

pub(super) fn test_result_list() -> String {
    list(TEST_RESULTS)
}

pub(super) fn colour_code(c: CodeColour) -> &'static str {
    match c {
        CodeColour::Green => "green",
        CodeColour::Yellow => "yellow",
        CodeColour::Red => "red",
    }
}

pub(super) fn parse_colour(s: &str) -> Option<CodeColour> {
    parse(COLOURS, s)
}

pub(super) fn colour_list() -> String {
    list(COLOURS)
}

pub(super) fn decision_code(d: Decision) -> &'static str {
    match d {
        Decision::Admit => "admit",
        Decision::Deny => "deny",
        Decision::Escalate => "escalate",
    }
}

pub(super) fn parse_decision(s: &str) -> Option<Decision> {
    parse(DECISIONS, s)
}

pub(super) fn mode_code(m: ModeKind) -> &'static str {
    match m {
        ModeKind::Verify => "verify",
        ModeKind::Identify => "identify",
        ModeKind::SignIn => "sign_in",
    }
}

pub(super) fn parse_mode(s: &str) -> Option<ModeKind> {
    parse(MODES, s)
}

pub(super) fn direction_code(d: Direction) -> &'static str {
    match d {
        Direction::Entry => "entry",
        Direction::Exit => "exit",
    }
}

pub(super) fn parse_direction(s: &str) -> Option<Direction> {
    parse(DIRECTIONS, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exhaustive `*_code` matches and the parse tables must agree, or a stored value
    /// would not read back.
    #[test]
    fn codes_round_trip() {
        for (s, c) in STATUSES {
            assert_eq!(status_code(*s), *c);
        }
        for (t, c) in TEST_RESULTS {
            assert_eq!(test_result_code(*t), *c);
        }
        for (t, c) in COLOURS {
            assert_eq!(colour_code(*t), *c);
        }
        for (t, c) in DECISIONS {
            assert_eq!(decision_code(*t), *c);
        }
        for (t, c) in MODES {
            assert_eq!(mode_code(*t), *c);
        }
        for (t, c) in DIRECTIONS {
            assert_eq!(direction_code(*t), *c);
        }
        for (t, c) in CATEGORIES {
            assert_eq!(category_code(*t), Some(*c));
            assert_eq!(parse_category(c), Some(*t));
        }
        assert_eq!(parse_decision("admit"), Some(Decision::Admit));
        assert_eq!(parse_mode("sign_in"), Some(ModeKind::SignIn));
        assert_eq!(parse_direction("exit"), Some(Direction::Exit));
        assert_eq!(parse_colour("Green"), None, "codes are exact, lowercase");
    }
}
