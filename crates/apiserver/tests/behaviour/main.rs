//! Behaviour tests: real clients (kube-rs, kubectl) against the in-memory API server.

mod common;
mod conversion;
mod crd;
mod crud;
mod faults;
mod kubectl;
mod operator;
mod watch;
mod webhook;
mod writes;
