//! The keyshade source: a keyshade API followed over Socket.IO and REST, its secrets
//! decrypted the way eccrypto does it.

pub mod crypto;
