//! Protocol version negotiation (pure).

use crate::PROTOCOL_VERSION;
use crate::message::{ErrorCode, ErrorReply, Hello};

/// Lowest protocol version this crate speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// Chooses the version for a connection: the highest version both sides speak.
///
/// # Errors
///
/// An [`ErrorCode::VersionUnsupported`] reply naming both ranges when they do not overlap;
/// the server sends it and closes the connection.
pub fn negotiate(hello: &Hello) -> Result<u16, ErrorReply> {
    let version = hello.max_version.min(PROTOCOL_VERSION);
    if hello.min_version <= hello.max_version
        && version >= hello.min_version
        && version >= MIN_PROTOCOL_VERSION
    {
        return Ok(version);
    }
    Err(ErrorReply::new(
        ErrorCode::VersionUnsupported,
        format!(
            "gate speaks protocol versions {}..={}, server speaks {}..={}; upgrade the gate",
            hello.min_version, hello.max_version, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION
        ),
    ))
}
