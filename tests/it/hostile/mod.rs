//! Hostile clients and careless operators, kept from the black-box probe (issue 11): slow
//! bodies and headers, half-open and never-reading sockets, oversized and escaped values,
//! damaged store files, a fake node sending garbage. Each test names the defect it guards.

mod acks;
mod agent;
mod http;
mod store;
mod wire;
