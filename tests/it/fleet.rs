//! Paced rollouts on the node side (issue 16): scripted agents speaking the protocol
//! (`bots`) ask a real node for slots and report their health, on one node (`single`:
//! pacing, halts, resume, a fix, restarts, leases, the policy API) and on three nodes over
//! Redis (`cluster`).

mod bots;
mod cluster;
mod reconnect;
mod single;
