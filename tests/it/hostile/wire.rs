//! Hostile input: what crosses the wire — frame sizes, acks, half-open peers, secrecy.
