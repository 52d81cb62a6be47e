//! The admin HTTP API over a real socket. Written by the HTTP work.
