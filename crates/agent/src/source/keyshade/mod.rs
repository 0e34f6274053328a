//! The keyshade source: follows one keyshade environment (its secrets and variables) over
//! keyshade's Socket.IO change notifier ([`sio`]), with REST snapshots ([`rest`]) after
//! every registration and periodically, so that nothing is lost ([`follow`]); its secrets
//! decrypted the way eccrypto does it ([`crypto`]).

pub mod config;
pub mod crypto;
pub mod rest;
pub mod sio;
